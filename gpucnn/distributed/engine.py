"""Data-parallel training and evaluation on a communicator (comm.py): the Trainer and its epoch engine.

``DistributedTrainer`` is the Trainer of training/loop.py with three changes: before the first step
it checks that every rank runs the same fit on the same data and broadcasts rank 0's parameters;
only rank 0 writes checkpoints (and every rank learns whether that worked); a resume is read by
rank 0 and its bytes broadcast, so every rank resumes from the same file, whatever the number of
ranks that wrote it. Its engine, ``DistributedEpoch``, is the host loop with a distributed step:

  fused CPU plan, mode "exact"      chunks to ranks in order; all-gather the per-chunk parts and the
                                    output rows; add the parts in chunk order (plan.combine): bitwise
                                    one process
  fused CPU plan, mode "allreduce"  each rank adds its chunks' parts; MPI/NCCL sum the ranks' totals
                                    (the library's order); the output rows still gathered
  layer by layer (any backend)      rows to ranks in order; each rank's gradients scaled by its share;
                                    "exact": all-gathered and added in rank order (reproducible, and
                                    within float rounding of one process: the matmuls change shape);
                                    "allreduce": summed by the library

Every rank computes the cost from all output rows, so every rank sees the same cost, and a
divergence is raised by every rank at the same step with the same message. A failure on one rank
only (an exception, not a collective decision) would leave the others waiting: ``run`` prints
``gpucnn: error: rank R: ...`` and aborts the job instead.
"""
import hashlib
import json
import math
import os
import tempfile

import numpy as np

from .. import layers as L
from ..backend import to_numpy
from ..errors import ModelFileError
from ..fast.common import ordered_sum
from ..training import Divergence, HostEpoch, Trainer
from . import exchange
from .comm import DistributedError


def all_ranks(exc):
    """Mark an exception as raised by every rank at the same point (no abort needed)."""
    exc.gpucnn_all_ranks = True
    return exc


def is_all_ranks(exc):
    return isinstance(exc, Divergence) or getattr(exc, "gpucnn_all_ranks", False)


class DistributedTrainer(Trainer):
    def __init__(self, comm, net, xd, yd, epochs, batch_size, optimizer, shuffle=True, verbose=True,
                 checkpoint_path=None, every=None, validation=None, **options):
        comm = comm.for_network(net)
        self.comm = comm
        super().__init__(net, xd, yd, epochs, batch_size, optimizer, shuffle, verbose and comm.rank == 0,
                         checkpoint_path, every, **options)
        check_agreement(comm, net, _facts(self, validation))
        broadcast_parameters(comm, net)

    def make_engine(self):
        return DistributedEpoch(self, self.comm)

    def run(self, validation=None):
        try:
            return super().run(validation)
        except BaseException as exc:
            if is_all_ranks(exc):
                raise
            self.comm.abort(f"{type(exc).__name__}: {exc}")

    def save_checkpoint(self):
        """Rank 0 writes (atomically, as one process does); every rank learns the outcome."""
        error = None
        if self.comm.rank == 0:
            try:
                super().save_checkpoint()
            except Exception as exc:
                error = exc
        told = self.comm.broadcast_object(None if error is None else f"{type(error).__name__}: {error}",
                                          what="the checkpoint write on rank 0")
        if error is not None:
            raise all_ranks(error)
        if told is not None:
            raise all_ranks(DistributedError(f"rank 0 could not write the checkpoint {self.checkpoint}: {told}"))

    def resume(self, path):
        """Continue from the checkpoint rank 0 finds at ``path`` (a fresh start when it finds none)."""
        payload = None
        if self.comm.rank == 0 and os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    payload = f.read()
            except OSError as exc:
                payload = exc
        payload = self.comm.broadcast_object(payload, what="the broadcast of the checkpoint")
        if payload is None:
            return False
        if isinstance(payload, OSError):
            raise all_ranks(DistributedError(f"rank 0 cannot read the checkpoint {path}: {payload}"))
        try:
            if self.comm.rank == 0:
                super().resume(path)
            else:
                _resume_from_bytes(self, payload, path)
        except Exception as exc:              # the same bytes on every rank: the same error on every rank
            raise all_ranks(exc)
        return True


def _resume_from_bytes(trainer, payload, path):
    fd, tmp = tempfile.mkstemp(prefix="gpucnn-resume-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        try:
            Trainer.resume(trainer, tmp)
        except ModelFileError as exc:
            raise ModelFileError(str(exc).replace(tmp, os.fspath(path))) from None
    finally:
        os.unlink(tmp)


# -- before the first step ---------------------------------------------------------------------
def _digest(*arrays):
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = np.ascontiguousarray(to_numpy(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _facts(trainer, validation):
    """What must be the same on every rank for the ranks to run one training together."""
    net = trainer.net
    facts = {
        "seed": net.seed,
        "architecture": json.dumps(net.architecture(), sort_keys=True),
        "dtype": net.dtype.name, "backend": net.backend.name, "execution path": net.execution_path(),
        "fit arguments": json.dumps(trainer.signature(), sort_keys=True),
        "data shape": [list(trainer.xd.shape), list(trainer.yd.shape)],
        "data hash": _digest(trainer.xd, trainer.yd),
        "validation hash": None if validation is None else _digest(validation[0], validation[1]),
        "shuffle state": hashlib.blake2b(json.dumps(net.shuffle_rng.bit_generator.state, sort_keys=True,
                                                    default=str).encode(), digest_size=8).hexdigest(),
        "mode": trainer.comm.mode, "communicator": trainer.comm.backend,
    }
    buffered = [i for i, layer in enumerate(net.layers) if layer.buffers]
    random = [i for i, layer in enumerate(net.layers) if isinstance(layer, L.Dropout) and layer.p > 0]
    if buffered:
        facts["refused"] = (f"layers {buffered} keep buffers (batch statistics): each rank would see its "
                            "own slice of the batch; data-parallel training of such layers is not supported")
    elif random and trainer.comm.mode == "exact":
        facts["refused"] = (f"layers {random} are Dropout: each rank draws its own masks, so the run cannot "
                            "be bitwise one process (mode 'exact'); use init(mode='allreduce')")
    return facts


def check_agreement(comm, net, facts):
    """All-gather the facts; raise on every rank, naming the ranks that differ from rank 0."""
    everyone = comm.allgather_object(facts, what="the start-of-training check")
    problems = [everyone[0]["refused"]] if "refused" in everyone[0] else []
    for key in everyone[0]:
        if key == "refused":
            continue
        ref = everyone[0][key]
        odd = [r for r, f in enumerate(everyone) if f.get(key) != ref]
        if odd:
            shown = ", ".join(f"rank {r} has {_short(everyone[r].get(key))}" for r in odd)
            problems.append(f"{key}: {shown} where rank 0 has {_short(ref)}")
    if problems:
        raise all_ranks(DistributedError(
            "the ranks cannot train together (every rank must run the same fit on the same data): "
            + "; ".join(problems)))


def _short(value):
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def broadcast_parameters(comm, net):
    """Rank 0's parameters (and buffers) on every rank."""
    for p in net.parameters():
        comm.broadcast(p.value)
    for layer in net.layers:
        for value in layer.buffers.values():
            comm.broadcast(value)


# -- the step ----------------------------------------------------------------------------------
class DistributedEpoch(HostEpoch):
    """The host loop (guard, sums, checkpoints) with one distributed step per global batch."""

    def __init__(self, trainer, comm):
        super().__init__(trainer)
        self.comm = comm
        self.net = trainer.net
        self.layout = None                                  # of a chunk's parts, on the first fused step

    def train_step(self, xb, y1, optimizer):
        plan = self.net._plan()                             # as Network.train_step decides, every step
        if plan is not None:
            return self._fused_step(plan, xb, y1, optimizer)
        return self._generic_step(xb, y1, optimizer)

    def _fused_step(self, plan, xb, y1, optimizer):
        comm = self.comm
        xb, y1 = np.ascontiguousarray(xb, np.float32), np.ascontiguousarray(y1, np.float32)
        n, classes = xb.shape[0], y1.shape[1]
        chunks = plan.chunks(n)
        owners = exchange.chunk_owners(len(chunks), comm.size)
        rows = exchange.chunk_rows(chunks, owners)
        first, stop = owners[comm.rank]
        (r0, r1) = rows[comm.rank]
        if self.layout is None:                         # before this step's parts: the probe reuses scratch
            self.layout = _layout(plan)
        out = np.empty((n, classes), np.float32)
        params = plan.params(n)                  # every rank draws the whole batch's masks, the same ones
        parts = plan.chunk_parts(xb, y1, out, params, range(first, stop), n) if stop > first else []
        lay = self.layout
        if comm.mode == "exact":
            send = np.concatenate([out[r0:r1].reshape(-1).astype(lay.dtype), lay.pack(np, parts)])
            counts = [(b - a) * classes + (hi - lo) * lay.size for (a, b), (lo, hi) in zip(rows, owners)]
            pieces = exchange.split_gathered(comm.allgather(send, counts), counts)
            everyone = []
            for (a, b), (lo, hi), piece in zip(rows, owners, pieces):
                out[a:b] = piece[:(b - a) * classes].reshape(b - a, classes)
                everyone += lay.unpack(piece[(b - a) * classes:], hi - lo)
            combined = lambda: plan.combine(everyone)
        else:
            counts = [(b - a) * classes for a, b in rows]
            out = comm.allgather(out[r0:r1], counts).reshape(n, classes)
            total = lay.pack(np, [plan.combine(parts)]) if parts else np.zeros(lay.size, lay.dtype)
            comm.allreduce_sum(total)
            combined = lambda: lay.unpack(total, 1)[0]
        return plan.finish_step(out, y1, combined, optimizer)

    def _generic_step(self, xb, y1, optimizer):
        net, comm, xp = self.net, self.comm, self.net.backend.xp
        n, classes = xb.shape[0], y1.shape[1]
        ranges = exchange.row_ranges(n, comm.size)
        r0, r1 = ranges[comm.rank]
        m = r1 - r0
        out_local = net._forward(xb[r0:r1]) if m else xp.empty((0, classes), net.dtype)
        out = comm.allgather(out_local, [(b - a) * classes for a, b in ranges]).reshape(n, classes)
        cost = float(net.loss.cost(xp, out, y1))
        params = list(net.parameters())
        if math.isfinite(cost):
            if m:
                net._backward(y1[r0:r1], need_dx=False)
                # loss.gradient divides by the m local rows; one process divides by all n
                flat = xp.concatenate([(p.grad * (m / n)).reshape(-1) for p in params])
            else:
                flat = xp.zeros(sum(p.value.size for p in params), net.dtype)
            if comm.mode == "exact":
                total = ordered_sum(exchange.split_gathered(
                    comm.allgather(flat, [flat.size] * comm.size), [flat.size] * comm.size))
            else:
                total = comm.allreduce_sum(flat)
            at = 0
            for p in params:
                p.grad = total[at:at + p.value.size].reshape(p.value.shape).copy()
                at += p.value.size
            optimizer.step(params)
        net.out = None
        return cost, out


def _layout(plan):
    """The keys and shapes of one chunk's parts, from a one-image step on zeros (nothing is stored)."""
    net = plan.net
    x = np.zeros((1, *net.input_shape), np.float32)
    y1 = np.zeros((1, net.classes), np.float32)
    out = np.empty((1, net.classes), np.float32)
    return exchange.PartLayout(plan.chunk_parts(x, y1, out, plan.params(), [0], 1)[0])


# -- evaluation --------------------------------------------------------------------------------
def score(net, comm, x, y1, labels, batch_size=1024):
    """Network.score over the ranks: each batch's rows split (at the plan's chunks when there is
    one), the outputs all-gathered, the sums as one process makes them."""
    comm = comm.for_network(net)
    xp, plan = net.backend.xp, net._plan()
    cost, correct, n = 0.0, 0, x.shape[0]
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        nb = xb.shape[0]
        if plan is not None:
            chunks = plan.chunks(nb)
            ranges = exchange.chunk_rows(chunks, exchange.chunk_owners(len(chunks), comm.size))
        else:
            ranges = exchange.row_ranges(nb, comm.size)
        a, b = ranges[comm.rank]
        mine = net._infer(xb[a:b]) if b > a else xp.empty((0, net.classes), net.dtype)
        out = comm.allgather(mine, [(e - s) * net.classes for s, e in ranges]).reshape(nb, net.classes)
        cost += net.loss.cost(xp, out, y1[i:i + batch_size]) * nb
        correct += int((out.argmax(axis=1) == labels[i:i + batch_size]).sum())
    return cost / n, correct / n
