"""The sync-free epoch engine for the CUDA backends (cupy, emulated).

``engine_for(trainer)`` returns an engine with ``run_epoch(order)``, ``sync()`` and ``reload()``, or
None, and then the host loop (training/loop.py ``HostEpoch``) runs the epoch.

Inside an epoch nothing is read back to the host: the training set is resident (the trainer's ``xd``,
``yd``), the epoch's permutation is uploaded once, each step's cost and count of correct predictions
are written to device arrays, and a non-finite cost freezes the parameters on the device at the last
good ones. ``sync()`` reads those arrays once -- at the epoch's end and at each requested checkpoint
step -- adds them to the trainer's running sums in step order, as the host loop does, and raises
the host loop's ``Divergence`` naming the step.

    FusedEpoch    the seed family: three launches a step (gpucnn/gpu_step.py), a CUDA graph on CuPy
    GenericEpoch  any other network: the layers' own forward/backward and the optimizer, with the
                  cost, the accuracy and the divergence guard kept in xp arrays
"""
import math

from .. import gpu_step
from ..gpu_step import to_host
from .progress import Progress

DEVICE_BACKENDS = ("cupy", "emulated")


def engine_for(trainer):
    """A device engine for the cupy and emulated backends; None (the host loop) for NumPy."""
    net = trainer.net
    if net.backend.name not in DEVICE_BACKENDS:
        return None
    step, reason = gpu_step.plan_gpu_step(net, trainer.batch_size, trainer.optimizer)
    if step is not None:
        return FusedEpoch(trainer, step)
    return GenericEpoch(trainer, reason)


def _batch_size_of(trainer, step):
    return min(trainer.batch_size, trainer.n - step * trainer.batch_size)


class _DeviceEpoch:
    """What both engines share: the loop over steps, checkpoint steps, the one read per sync."""

    def run_epoch(self, order):
        t = self.t
        self.accounted = t.step                  # steps of this epoch already in the running sums
        self.start_epoch(order)
        progress = Progress(t.epoch + 1, t.epochs, t.n, t.verbose, initial=min(t.step * t.batch_size, t.n))
        try:
            for step, start, stop in t.batches():
                self.run_step(step, start, stop)
                self.pending = True
                t.step += 1
                if t.checkpoint_due(stop):
                    t.save_checkpoint()          # calls sync(): the only mid-epoch read
                t.check_stop()                   # a Ctrl-C / SIGTERM: sync, checkpoint, Interrupted
            self.sync()
            progress.update(t.n, t.cost_sum / t.n)   # once, at the end: a running loss needs reads
        finally:
            progress.close()

    pending = False                              # steps run since the last sync

    def sync(self):
        """Bring the device's cost, correct counts and divergence flag to the trainer: one read,
        none when nothing ran since the last (the epoch end's checkpoint after run_epoch's sync)."""
        if self.pending:
            self.pending = False
            self._read()

    def _account(self, costs, corrects, upto):
        """Add steps [accounted, upto) to the trainer's sums, in order, as HostEpoch adds them."""
        t = self.t
        for step in range(self.accounted, upto):
            t.cost_sum += float(costs[step]) * _batch_size_of(t, step)
            t.correct += int(corrects[step])
        self.accounted = upto


class FusedEpoch(_DeviceEpoch):
    """The fused step: per step one graph replay (or three eager launches), no host work."""

    def __init__(self, trainer, step):
        self.t, self.step = trainer, step
        self.mode, self.accounted = step.mode, 0
        step.bind(trainer.xd, trainer.yd)

    def start_epoch(self, order):
        self.step.start_epoch(order, self.t.step)

    def run_step(self, step, start, stop):
        self.step.run()

    def _read(self):
        t, result = self.t, self.step.read_epoch()
        diverged = result["diverged"]
        upto = t.step if diverged is None else diverged
        self._account(result["cost"], result["correct"], upto)    # indexed by the epoch's step
        if diverged is not None:
            if result["updates"]:                # as HostEpoch: back to the last parameters whose
                self.step.restore_previous()     # cost was finite, when this fit had any
            t.step = diverged
            raise t.divergence(result["diverged_cost"], diverged, _batch_size_of(t, diverged))

    def reload(self):
        """After a resume: the optimizer's velocities into the packed buffer (parameters are
        re-read at the next epoch's start, and the graph re-captured if their arrays changed)."""
        self.step.load_velocity()


class GenericEpoch(_DeviceEpoch):
    """Any network, layer by layer, without a host sync per step.

    Guard, on the device: after each step, ``last_good`` takes the parameters and buffers (batch
    norm's running statistics) the step started from when its cost was finite; from the first
    non-finite cost on, ``frozen`` is set and every step ends with them put back to ``last_good`` --
    the host loop's result (HostEpoch), without its read.
    """

    def __init__(self, trainer, reason):
        self.t, self.accounted = trainer, 0
        self.mode = f"layer by layer on the device, no per-step sync (no fused step: {reason})"
        xp, steps = trainer.net.backend.xp, -(-trainer.n // trainer.batch_size)
        # the state a step may spoil: the parameter values and the buffers, (dict, key) each
        self.buffer_keys = [(layer.buffers, key) for layer in trainer.net.layers for key in layer.buffers]
        self.before = [xp.empty_like(a) for a in self._state()]
        self.costs = xp.zeros(steps, trainer.net.dtype)
        self.corrects = xp.zeros(steps, xp.int64)
        self.reload()

    def reload(self):
        xp = self.t.net.backend.xp
        self.last_good = [a.copy() for a in self._state()]
        self.frozen = xp.zeros((), dtype=bool)

    def _state(self):
        """The arrays a step changes: parameter values (updated in place) and buffers (replaced by each
        forward in train mode, so read afresh)."""
        return [p.value for p in self.t.params] + [buffers[key] for buffers, key in self.buffer_keys]

    def start_epoch(self, order):
        self.order = self.t.net.backend.xp.asarray(order)

    def run_step(self, step, start, stop):
        t, net, xp = self.t, self.t.net, self.t.net.backend.xp
        idx = self.order[start:stop]
        xb, yb = t.xd[idx], t.yd[idx]
        for saved, a in zip(self.before, self._state()):
            saved[...] = a
        out = net._forward(xb)
        cost = net.loss.cost_array(xp, out, yb)          # 0-d, stays on the device
        net._backward(yb, need_dx=False)
        t.optimizer.step(t.params)
        bad = ~xp.isfinite(cost)
        finite_and_live = ~(bad | self.frozen)
        for last, saved in zip(self.last_good, self.before):
            xp.copyto(last, saved, where=finite_and_live)      # in place: no temporary per parameter
        self.frozen = self.frozen | bad
        for a, last in zip(self._state(), self.last_good):
            xp.copyto(a, last, where=self.frozen)
        self.costs[step] = cost
        self.corrects[step] = (out.argmax(axis=1) == t.labels[idx]).sum()

    def _read(self):
        t = self.t
        costs, corrects = to_host(self.costs), to_host(self.corrects)
        for step in range(self.accounted, t.step):
            if not math.isfinite(float(costs[step])):
                self._account(costs, corrects, step)
                t.step = step
                raise t.divergence(float(costs[step]), step, _batch_size_of(t, step))
        self._account(costs, corrects, t.step)
