"""The training loop behind ``Network.fit``: epochs of shuffled mini-batches, divergence guard,
atomic checkpoints and exact resume.

A checkpoint is a model file (gpucnn/serialization.py) plus the loop's state: the epoch and step,
the shuffle generator's state at the start of that epoch, the SGD velocities, the running sums of
the epoch and the history so far. Resuming rebuilds the epoch's permutation from that generator
state and skips the steps already done, so a resumed run gives the same parameters, bit for bit,
as one that was never interrupted (same backend).
"""
import copy
import json
import math
import sys
import time

import numpy as np

from .backend import to_numpy
from .errors import ModelFileError
from .serialization import assign_params, read_model_file, save

STATE_KEY = "training_state"


class Divergence(FloatingPointError):
    """Training produced a NaN or inf loss; the parameters are the last good ones."""


class Trainer:
    def __init__(self, net, xd, yd, epochs, batch_size, optimizer, shuffle=True, verbose=True,
                 checkpoint=None, every=None):
        self.net, self.xd, self.yd = net, xd, yd
        self.n, self.epochs, self.batch_size = xd.shape[0], epochs, batch_size
        self.optimizer, self.shuffle, self.verbose = optimizer, shuffle, verbose
        self.checkpoint, self.every = checkpoint, every
        self.epoch, self.step = 0, 0                 # next epoch to run, steps done in it
        self.cost_sum, self.correct = 0.0, 0         # running sums of the current epoch
        self.epoch_rng_state = None                  # shuffle generator state at the epoch's start
        self.history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        self.labels = yd.argmax(axis=1)              # once, not per step
        # Divergence guard: the parameters before each step are copied into one of two buffer sets,
        # alternately, so the set that gave the last finite loss is never the one being written.
        self.slots = [(layer, p) for _, layer, p in net.parameters()]
        self.snapshots = [[net.backend.xp.empty_like(layer._params[p]) for layer, p in self.slots]
                          for _ in range(2)]
        self.last_good = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self, validation=None):
        """validation: None or (x, one-hot rows, labels), already checked."""
        while self.epoch < self.epochs:
            self._run_epoch()
            self._end_epoch(validation)
        return self.history

    def _run_epoch(self):
        net, xp = self.net, self.net.backend.xp
        if self.step == 0:
            self.epoch_rng_state = copy.deepcopy(net.shuffle_rng.bit_generator.state)
        order = xp.asarray(self._order())
        progress = Progress(self.epoch + 1, self.epochs, self.n, self.verbose)
        for start in range(self.step * self.batch_size, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            xb, yb = self.xd[idx], self.yd[idx]
            cost, out = self._guarded_step(xb, yb)
            self.cost_sum += cost * xb.shape[0]
            self.correct += (out.argmax(axis=1) == self.labels[idx]).sum()   # stays on the device
            self.step += 1
            progress.update(start + xb.shape[0], self.cost_sum / (start + xb.shape[0]))
            last = start + xb.shape[0] >= self.n          # the epoch's end writes one anyway
            if self.checkpoint and self.every and self.step % self.every == 0 and not last:
                self.save_checkpoint()
        progress.close()

    def _order(self):
        """This epoch's permutation, drawn from the generator state saved at the epoch's start."""
        if not self.shuffle:
            return np.arange(self.n)
        self.net.shuffle_rng.bit_generator.state = copy.deepcopy(self.epoch_rng_state)
        return self.net.shuffle_rng.permutation(self.n)

    def _guarded_step(self, xb, yb):
        params = [layer._params[p] for layer, p in self.slots]
        before = self.snapshots[0] if self.last_good is not self.snapshots[0] else self.snapshots[1]
        for saved, value in zip(before, params):
            saved[...] = value
        cost, out = self.net.train_step(xb, yb, self.optimizer)
        if not math.isfinite(cost):
            if self.last_good is not None:
                for value, saved in zip(params, self.last_good):
                    value[...] = saved
            raise Divergence(f"loss became {cost} at epoch {self.epoch + 1}, step {self.step + 1} "
                             f"(batch of {xb.shape[0]}); try a smaller learning rate "
                             f"(lr={self.optimizer.lr}). The last good parameters are kept.")
        self.last_good = before              # these parameters gave a finite loss
        return cost, out

    def _end_epoch(self, validation):
        h = self.history
        h["loss"].append(self.cost_sum / self.n)
        h["accuracy"].append(int(self.correct) / self.n)
        line = f"epoch {self.epoch + 1}/{self.epochs}: loss {h['loss'][-1]:.4f}, accuracy {h['accuracy'][-1]:.4f}"
        if validation is not None:
            cost, accuracy = self.net._score(*validation)    # one batched pass, fast path if any
            h["val_loss"].append(cost)
            h["val_accuracy"].append(accuracy)
            line += f", held-out accuracy {h['val_accuracy'][-1]:.4f}"
        if self.verbose:
            print(line, flush=True)
        self.epoch, self.step, self.cost_sum, self.correct = self.epoch + 1, 0, 0.0, 0
        if self.checkpoint:
            self.save_checkpoint()

    # -- checkpoints -------------------------------------------------------------------------
    def _signature(self):
        """What must match for a resume to continue the same run."""
        return {"n": self.n, "batch_size": self.batch_size, "epochs": self.epochs, "shuffle": self.shuffle,
                "lr": self.optimizer.lr, "momentum": self.optimizer.momentum,
                "weight_decay": self.optimizer.weight_decay}

    def save_checkpoint(self):
        state = {"signature": self._signature(), "epoch": self.epoch, "step": self.step,
                 "cost_sum": self.cost_sum, "correct": int(self.correct), "history": self.history,
                 "epoch_rng_state": self.epoch_rng_state,
                 "shuffle_rng_state": self.net.shuffle_rng.bit_generator.state,
                 "velocity": sorted(f"{i}.{p}" for i, p in self.optimizer.velocity)}
        extra = {STATE_KEY: np.array(json.dumps(state))}
        for (i, p), v in self.optimizer.velocity.items():
            extra[f"velocity.{i}.{p}"] = to_numpy(v)
        save(self.net, self.checkpoint, extra=extra)

    def resume(self, path):
        """Load parameters and loop state from a checkpoint written by an identical ``fit`` call."""
        description, arrays = read_model_file(path)
        if {k: v for k, v in description.items() if k != "format"} != self.net.architecture():
            raise ModelFileError(f"{path}: the checkpoint is of another architecture (layers, loss or input shape)")
        if STATE_KEY not in arrays:
            raise ModelFileError(f"{path} is a model file, not a training checkpoint (no training state)")
        try:
            state = json.loads(str(arrays[STATE_KEY]))
            mismatch = {k: (state["signature"].get(k), v) for k, v in self._signature().items()
                        if state["signature"].get(k) != v}
            if mismatch:
                raise ModelFileError(f"{path}: cannot resume, fit() arguments differ from the checkpoint's "
                                     + ", ".join(f"{k} {a!r} (checkpoint) vs {b!r}" for k, (a, b) in mismatch.items()))
            assign_params(self.net, arrays, path)
            self.optimizer.velocity = {}
            for key in state["velocity"]:
                i, p = key.split(".")
                self.optimizer.velocity[(int(i), p)] = self.net.backend.asarray(arrays[f"velocity.{key}"], self.net.dtype)
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.cost_sum, self.correct = float(state["cost_sum"]), int(state["correct"])
            self.history = state["history"]
            self.epoch_rng_state = state["epoch_rng_state"]
            self.net.shuffle_rng.bit_generator.state = state["shuffle_rng_state"]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"{path}: corrupt training state ({type(exc).__name__}: {exc})") from None


class Progress:
    """A one-line progress bar with the running loss, on stderr; only on a terminal."""

    def __init__(self, epoch, epochs, total, verbose):
        self.prefix, self.total = f"epoch {epoch}/{epochs}", total
        self.enabled = verbose and sys.stderr.isatty()
        self.last = 0.0

    def update(self, done, running_loss):
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        filled = int(30 * done / self.total)
        sys.stderr.write(f"\r{self.prefix} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{done}/{self.total} loss {running_loss:.4f}")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * 79 + "\r")
