"""Fused CPU fast paths for the network patterns this project exists for, checked against the
layer-by-layer reference (layers.py + ops/reference.py), which stays the definition of the numbers.

``plan_for(net)`` returns a plan (``train_step``, ``forward``) or None, and then the network runs its
generic path. Plans exist for the NumPy backend in float32 and these patterns:

    SeedPlan       Conv2D(1 -> f, stride 1, no padding) -> act -> MaxPool2D(2) -> Flatten -> Dense
                   -> [act]                                                     (gpucnn/fast/seed.py)
    ConvStackPlan  [Conv2D(c -> f, stride 1, no padding) -> act -> MaxPool2D(2)] x k -> Flatten
                   -> Dense -> [act]: the wide network                          (convstack.py)
    act: Sigmoid, ReLU or Tanh; loss quadratic or cross_entropy.

What every plan guarantees (tests/test_fast.py):
  * parameters are read from the layers' Parameter objects on every step and the gradients left in
    their ``grad``, so ``optimizer.step(net.parameters())`` and ``layer.W = ...`` between steps work;
  * outputs, cost and gradients equal the reference's to float32 rounding, pooling ties resolved by
    the same rule (the first maximum in row-major window order gets the whole delta);
  * a step is bitwise reproducible: chunks and the two-thread split depend on the batch size only,
    and partial gradients are summed in a fixed order;
  * the layers' forward caches (a_prev, z, argmax) are NOT filled: ``Network.backward`` after a fast
    step would read stale caches, so a fast step sets ``net.out = None`` (backward() then refuses).

How they are fast: chunks of the batch sized to stay in cache; from a plan's thread_min images on
(THREAD_MIN = 64 for the seed net, two chunks for the wide one) this thread and one worker thread
take chunks from a shared queue (NumPy and OpenBLAS release the GIL), with OpenBLAS held to one
thread and the GIL switch interval lowered during the step (common.Plan._run says why); sigma'
evaluated only at the pooling argmax; the first conv's dC/dx never formed.
NOTE: those two settings are process-wide; a step sets them and restores them before it returns.

Data-parallel contract (exact distributed training builds on exactly these; ``train_step`` is made of
them, so one process and N ranks run identical code):

    plan.chunks(n)          -> [(start, stop), ...] the chunks of a global batch of n rows; a function
                               of n only (the same on every rank, every step)
    plan.params()           -> this step's parameters in the plan's layouts (read from the layers)
    plan.chunk_parts(x, y1, out, params, chunk_ids, n)
                            -> [parts dict per chunk, in the order of chunk_ids]. x (n, *input_shape),
                               y1 (n, classes) one-hot float32 and out (n, classes) float32 are the
                               WHOLE global batch; only the rows of the given chunks are read (x, y1)
                               and written (out). Every part is already divided by the global n.
    plan.combine(parts_list)-> the sum of the parts in list order (pass them in chunk order 0, 1, ...
                               for the single-process bits); dict of float32 arrays, fixed keys
    plan.store_grads(combined) -> writes every layer's Parameter.grad (their shapes)

A rank takes whole chunks in order (rank r of R: a contiguous run of chunk ids), all-gathers the
per-chunk parts, and combines them in chunk order: bitwise the parameters of one process.
"""
import os

import numpy as np

from ..errors import GpucnnError
from .common import THREAD_MIN, Plan
from .plan import StagePlan
from .stages import NO_STAGE, STAGES

__all__ = ["plan_for", "NoPlan", "StagePlan", "Plan", "STAGES", "THREAD_MIN"]


class NoPlan(GpucnnError, RuntimeError):
    """GPUCNN_FAST=strict and no fused plan covers a NumPy float32 network that one should cover."""


def plan_for(net):
    """-> (plan, None) when a fused plan covers ``net``, else (None, the reason); then the generic path runs.

    ``GPUCNN_FAST=strict`` (the tests use it) raises NoPlan instead of falling back when a NumPy float32
    network holds a library layer that has no stage and no stated reason (NO_STAGE), so a layer type
    added without its stage fails loudly; ``GPUCNN_FAST=off`` always runs the generic path.
    """
    mode = os.environ.get("GPUCNN_FAST", "auto").lower()
    if mode == "off":
        return None, "GPUCNN_FAST=off"
    if net.backend.name != "numpy":
        return None, f"the fused CPU plans run on the numpy backend, this is {net.backend.name!r}"
    if net.dtype != np.float32:
        return None, f"the fused CPU plans run float32, this network is {net.dtype.name}"
    for i, layer in enumerate(net.layers):
        name = type(layer).__name__
        if name in STAGES and type(layer).__module__.startswith("gpucnn."):
            continue
        if name in NO_STAGE:
            return None, f"layer {i} {name} has no fused stage: {NO_STAGE[name]}"
        reason = f"layer {i} {name} has no fused stage"
        if not type(layer).__module__.startswith("gpucnn."):
            return None, reason + " (a custom layer)"
        if mode == "strict":
            raise NoPlan(f"no fused CPU plan for this network: {reason} (GPUCNN_FAST=strict)")
        return None, reason
    return StagePlan(net), None
