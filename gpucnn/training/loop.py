"""The training loop behind ``Network.fit``: epochs of shuffled mini-batches, divergence guard,
validation, history, checkpoints (gpucnn/training/checkpoint.py) and exact resume.

An epoch runs on an *engine*: the host loop below (one ``net.train_step`` per batch), or, on the
CUDA backends, a sync-free device engine (``device_epoch.engine_for``) that keeps the data, the
shuffle, the cost and the accuracy on the device and reads them once per epoch.
"""
import contextlib
import copy
import math
import signal
import threading

import numpy as np

from ..schedules import scheduled_lr
from . import checkpoint, device_epoch
from .progress import EpochTimer, Progress


class Divergence(FloatingPointError):
    """Training produced a NaN or inf loss; the parameters are the last good ones."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM after a finished step (inside ``stop_on_signals``).

    ``checkpoint``: where the state after that step was saved (resume from it), ``epoch`` and ``step``:
    where it stopped (1-based epoch, steps done in it), ``signal_name``: 'SIGINT' or 'SIGTERM'.
    """

    def __init__(self, signal_name, checkpoint, epoch, step, steps):
        super().__init__(f"{signal_name}: stopped in epoch {epoch} after step {step} of {steps}; "
                         f"checkpoint {checkpoint}")
        self.signal_name, self.checkpoint, self.epoch, self.step, self.steps = \
            signal_name, checkpoint, epoch, step, steps


class _StopRequest:
    """Set by the signal handlers of ``stop_on_signals``; read by the loop after each finished step."""
    signal_name = None       # None: no stop asked for
    fallback = None          # where to save when fit() was given no checkpoint path


_STOP = _StopRequest()


@contextlib.contextmanager
def stop_on_signals(fallback_checkpoint, signals=(signal.SIGINT, signal.SIGTERM)):
    """Inside: Ctrl-C or SIGTERM lets the step in flight finish, saves a checkpoint (fit's ``checkpoint``
    path, else ``fallback_checkpoint``) and raises ``Interrupted``. A second signal stops at once
    (KeyboardInterrupt). Outside the main thread signals cannot be caught: then nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield _STOP
        return
    def handler(signum, frame):
        if _STOP.signal_name is not None:
            raise KeyboardInterrupt
        _STOP.signal_name = signal.Signals(signum).name
    previous = {s: signal.signal(s, handler) for s in signals}
    _STOP.signal_name, _STOP.fallback = None, fallback_checkpoint
    try:
        yield _STOP
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _STOP.signal_name, _STOP.fallback = None, None


class Trainer:
    comm = None         # a DistributedTrainer's communicator (gpucnn/distributed/): validation split over ranks

    def __init__(self, net, xd, yd, epochs, batch_size, optimizer, shuffle=True, verbose=True,
                 checkpoint_path=None, every=None, schedule=None, callbacks=()):
        self.net, self.xd, self.yd = net, xd, yd
        self.n, self.epochs, self.batch_size = xd.shape[0], epochs, batch_size
        self.optimizer, self.shuffle, self.verbose = optimizer, shuffle, verbose
        self.checkpoint, self.every = checkpoint_path, every
        self.epoch, self.step = 0, 0                 # next epoch to run, steps done in it
        self.cost_sum, self.correct = 0.0, 0         # running sums of the current epoch
        self.epoch_rng_state = None                  # shuffle generator state at the epoch's start
        self.history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [], "time": [], "lr": []}
        self.schedule, self.base_lr = schedule, optimizer.lr     # the schedule sets optimizer.lr per epoch
        self.callbacks, self.resumed = list(callbacks), False
        self.labels = yd.argmax(axis=1)              # once, not per step
        self.params = list(net.parameters())
        self.engine = self.make_engine()

    def make_engine(self):
        """The engine the epochs run on: the device engine on the CUDA backends, else the host loop.
        (A subclass with its own engine, e.g. distributed training, overrides this: nothing is
        compiled or bound for an engine that would not run.)"""
        return device_epoch.engine_for(self) or HostEpoch(self)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, validation=None):
        """validation: None or (x, one-hot rows, labels), already checked.

        Per epoch: the schedule's lr, the epoch on its engine, validation, history (with the epoch's
        seconds and lr), a checkpoint, then the callbacks (one returning True stops training).
        """
        stop = False
        for callback in self.callbacks:
            callback.on_train_begin(self.net)
            if self.resumed:
                stop = bool(callback.resume_from(self.history)) or stop
        while self.epoch < self.epochs and not stop:
            if self.step == 0:
                self.epoch_rng_state = copy.deepcopy(self.net.shuffle_rng.bit_generator.state)
            if self.schedule is not None:
                self.optimizer.lr = scheduled_lr(self.schedule, self.epoch, self.base_lr, self.epochs)
            timer, first = EpochTimer(), min(self.step * self.batch_size, self.n)
            self.engine.run_epoch(self.order())
            self._end_epoch(validation, timer, self.n - first)
            stop = self._callbacks_stop()
            if self.epoch < self.epochs and not stop:
                self.check_stop()
        for callback in self.callbacks:
            callback.on_train_end(self.net)
        return self.history

    def _callbacks_stop(self):
        """Every callback sees the epoch just ended; True when one of them asks to stop."""
        logs = {key: values[-1] for key, values in self.history.items() if values}
        stop = False
        for callback in self.callbacks:
            stop = bool(callback.on_epoch_end(self.epoch - 1, logs, self.net)) or stop
        return stop

    def order(self):
        """This epoch's permutation (NumPy), drawn from the generator state saved at the epoch's start."""
        if not self.shuffle:
            return np.arange(self.n)
        self.net.shuffle_rng.bit_generator.state = copy.deepcopy(self.epoch_rng_state)
        return self.net.shuffle_rng.permutation(self.n)

    def batches(self):
        """(step, start, stop) of the steps still to run in this epoch."""
        for start in range(self.step * self.batch_size, self.n, self.batch_size):
            yield start // self.batch_size, start, min(start + self.batch_size, self.n)

    def checkpoint_due(self, stop):
        """A mid-epoch checkpoint after the step that ended at ``stop`` (the epoch's end writes one anyway)."""
        return bool(self.checkpoint and self.every and self.step % self.every == 0 and stop < self.n)

    def divergence(self, cost, step, batch):
        return Divergence(f"loss became {cost} at epoch {self.epoch + 1}, step {step + 1} "
                          f"(batch of {batch}); try a smaller learning rate "
                          f"(lr={self.optimizer.lr}). The last good parameters are kept.")

    def check_stop(self):
        """After a finished step: on a pending Ctrl-C / SIGTERM save a checkpoint and raise Interrupted."""
        if _STOP.signal_name is None:
            return
        path = self.checkpoint or _STOP.fallback
        epoch, step = (self.epoch, -(-self.n // self.batch_size)) if self.step == 0 else (self.epoch + 1, self.step)
        if path:
            self.engine.sync()
            checkpoint.save(self, path)
        raise Interrupted(_STOP.signal_name, path, epoch, step, -(-self.n // self.batch_size))

    def _end_epoch(self, validation, timer, images):
        """History and the epoch line; ``timer`` started with the epoch, ``images`` trained since."""
        h = self.history
        h["loss"].append(self.cost_sum / self.n)
        h["accuracy"].append(int(self.correct) / self.n)
        line = f"epoch {self.epoch + 1}/{self.epochs}: loss {h['loss'][-1]:.4f}, accuracy {h['accuracy'][-1]:.4f}"
        if validation is not None:
            cost, accuracy = self.net.score(*validation, comm=self.comm)   # one batched pass, fast path if any
            h["val_loss"].append(cost)
            h["val_accuracy"].append(accuracy)
            line += f", held-out accuracy {h['val_accuracy'][-1]:.4f}"
        seconds = timer.seconds()
        timing = timer.describe(images, seconds)
        h["time"].append(seconds)
        h["lr"].append(self.optimizer.lr)
        line += f" ({timing})"
        if self.verbose:
            print(line, flush=True)
        self.epoch, self.step, self.cost_sum, self.correct = self.epoch + 1, 0, 0.0, 0
        if self.checkpoint:
            self.save_checkpoint()

    # -- checkpoints -------------------------------------------------------------------------
    def signature(self):
        """What must match for a resume to continue the same run."""
        return {"n": self.n, "batch_size": self.batch_size, "epochs": self.epochs, "shuffle": self.shuffle,
                **self.optimizer.hyperparameters(), "lr": self.base_lr,
                "lr_schedule": None if self.schedule is None else self.schedule.describe()}

    def save_checkpoint(self):
        self.engine.sync()
        checkpoint.save(self, self.checkpoint)

    def resume(self, path):
        checkpoint.resume(self, path)
        self.resumed = True
        self.engine.reload()


class HostEpoch:
    """One ``net.train_step`` per batch; the divergence guard keeps the last good parameters.

    Guard: the parameters before each step are copied into one of two buffer sets, alternately, so the
    set that gave the last finite loss is never the one being written. The layers' buffers (BatchNorm's
    running statistics, which a forward that overflows fills with NaN) are kept with each set and come
    back with it.
    """

    def __init__(self, trainer):
        self.t = trainer
        xp = trainer.net.backend.xp
        self.snapshots = [[xp.empty_like(p.value) for p in trainer.params] for _ in range(2)]
        self.last_good = None
        self.buffer_keys = [(layer.buffers, key) for layer in trainer.net.layers for key in layer.buffers]
        self.saved_buffers = [[], []]            # the buffers that go with snapshots[0] and [1]

    def run_epoch(self, order):
        t, xp = self.t, self.t.net.backend.xp
        order = xp.asarray(order)
        progress = Progress(t.epoch + 1, t.epochs, t.n, t.verbose, initial=min(t.step * t.batch_size, t.n))
        for _, start, stop in t.batches():
            idx = order[start:stop]
            xb, yb = t.xd[idx], t.yd[idx]
            cost, out = self._guarded_step(xb, yb)
            t.cost_sum += cost * xb.shape[0]
            t.correct += (out.argmax(axis=1) == t.labels[idx]).sum()   # stays on the device
            t.step += 1
            progress.update(stop, t.cost_sum / stop)
            if t.checkpoint_due(stop):
                t.save_checkpoint()
            if _STOP.signal_name is not None:
                progress.close()
                t.check_stop()
        progress.close()

    def train_step(self, xb, y1, optimizer):
        """One step of the network (a distributed engine, gpucnn/distributed/, brings its own)."""
        return self.t.net.train_step(xb, y1, optimizer)

    def _guarded_step(self, xb, yb):
        t = self.t
        which = 0 if self.last_good is not self.snapshots[0] else 1
        before = self.snapshots[which]
        for saved, p in zip(before, t.params):
            saved[...] = p.value
        self.saved_buffers[which] = [buffers[key].copy() for buffers, key in self.buffer_keys]
        cost, out = self.train_step(xb, yb, t.optimizer)
        if not math.isfinite(cost):
            good = which                         # the failed step skipped its update: its own start
            if self.last_good is not None:
                for p, saved in zip(t.params, self.last_good):
                    p.value[...] = saved
                good = 1 - which
            for (buffers, key), saved in zip(self.buffer_keys, self.saved_buffers[good]):
                buffers[key] = saved
            raise t.divergence(cost, t.step, xb.shape[0])
        self.last_good = before              # these parameters gave a finite loss
        return cost, out

    def sync(self):
        """Nothing to bring back: the host loop keeps its state in the trainer."""

    def reload(self):
        """Nothing to refresh after a resume."""
