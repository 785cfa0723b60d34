"""The fused CPU path: a network as a plan of per-layer stages, each built from that layer's own code,
checked against the layer-by-layer path (layers/ + ops/reference.py), which stays the definition.

``plan_for(net)`` returns (StagePlan, None) for a NumPy float32 network whose every layer has a stage,
else (None, the reason) and the network runs layer by layer. The stages (stages.py, banded.py), one per
layer type from the table ``STAGES`` (adding a layer type = adding one stage):

    Conv2D (any padding, stride)   im2col channel-last (ops/lowering.windows) + one matmul
    Sigmoid, ReLU, Tanh            the class's sigma / sigma_scaled / prime
    MaxPool2D (any size, stride)   ops/lowering.first_max / route_to_argmax (the reference's rule)
    AvgPool2D                      ops/reference.avgpool2d_* on channel-last views
    Flatten, Dense                 layers/dense.dense_forward / dense_backward; Flatten's order folded
                                   into the next dense layer's columns
    Dropout                        the identity in eval mode; in train mode the layer's own ``draw``
                                   for the whole batch at the step's start, each chunk its rows
    conv(1 -> f <= 8) -> act -> max-pool 2   one banded stage (the seed network's block, LeNet's first)
    BatchNorm2D                    the layer's formulas channel-last; in train mode the batch statistics
                                   (and the backward's sums) need the whole batch, so the plan runs in
                                   phases: every chunk up to it, the sums in chunk order, every chunk on
Both losses through the loss object's own ``gradient``. ``Network.forward`` runs the plan too, keeping
what ``Network.backward`` needs (then dC/dx is formed as well, which training skips).

What the plan guarantees (tests/test_fast.py):
  * parameters are read from the layers' Parameter objects on every step and the gradients left in
    their ``grad``, so ``optimizer.step(net.parameters())`` and ``layer.W = ...`` between steps work;
  * outputs, cost, gradients and dC/dx equal the layer-by-layer path's to float32 rounding, pooling
    ties resolved by the same code (the first maximum in row-major window order gets the whole delta).
    An activation before a max-pool is applied after it (they commute: the activations never
    decrease), so the argmax is taken of z: a tie that only the activation's float32 rounding makes
    (two z a rounding apart) may go to another position of the window; a tie at ReLU's 0 or a
    saturated sigmoid carries sigma' = 0, so only mid-range near-ties can show;
  * a step is bitwise reproducible: chunks and the two-thread split depend on the batch size only,
    and partial gradients are summed in a fixed order; forward + backward gives a step's bits;
  * the layers' own forward caches are NOT filled: a training step sets ``net.out = None``.

How it is fast: chunks of the batch of equal sizes, up to a scratch budget (plan.py); from the
plan's thread_min images on, this thread and one worker thread take chunks from a shared queue
(NumPy and OpenBLAS release the GIL), with OpenBLAS held to one thread and the GIL switch interval
lowered meanwhile (common.Plan._run says why); the conv before a max-pool computes only what the
pool reads, rows in tap-major order so each pooling tap is one contiguous block; sigma' only at the
pooling argmax; an activation's prescale folded into the weights before it; the first layer's dC/dx
never formed in training; inference skips the argmax.
NOTE: the two settings are process-wide: refcounted scopes (common.ProcessSetting) set them for the
first step in and restore them when the last one out returns, however calls overlap.

Data-parallel contract (exact distributed training builds on exactly these; ``train_step`` is made of
them, so one process and N ranks run identical code):

    plan.chunks(n)          -> [(start, stop), ...] the chunks of a global batch of n rows; a function
                               of n only (the same on every rank, every step)
    plan.params(n)          -> this step's parameters in the plan's layouts (read from the layers) and
                               its dropout masks for the whole global batch of n (every rank draws
                               the same ones from the same generator states)
    plan.chunk_parts(x, y1, out, params, chunk_ids, n)
                            -> [parts dict per chunk, in the order of chunk_ids]. x (n, *input_shape),
                               y1 (n, classes) one-hot float32 and out (n, classes) float32 are the
                               WHOLE global batch; only the rows of the given chunks are read (x, y1)
                               and written (out). Every part is already divided by the global n.
    plan.combine(parts_list)-> the sum of the parts in list order (pass them in chunk order 0, 1, ...
                               for the single-process bits); dict of float32 arrays, fixed keys
    plan.store_grads(combined) -> writes every layer's Parameter.grad (their shapes)
    plan.finish_step(out, y1, combined, optimizer) -> (cost, out): the cost of the whole batch; when
                               finite, store_grads(combined()) and the optimizer step

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
    mode = (os.environ.get("GPUCNN_FAST") or "auto").lower()
    if mode not in ("auto", "strict", "off"):
        raise ValueError(f"$GPUCNN_FAST must be auto, strict or off, got {mode!r}")
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
