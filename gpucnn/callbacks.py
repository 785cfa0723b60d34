"""Per-epoch hooks for ``fit(..., callbacks=[...])``.

A callback subclasses ``Callback`` and overrides what it needs:

    on_train_begin(net)                     before the first epoch (also on a resumed run)
    on_epoch_end(epoch, logs, net) -> bool  after each epoch; epoch is 0-based, logs the epoch's
                                            values (loss, accuracy, val_loss, val_accuracy when there
                                            is validation, time, lr); return True to stop training
    on_train_end(net)                       after the last epoch, or the one that stopped training

    class PrintLR(gpucnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs, net):
            print(epoch, logs["lr"])

``EarlyStopping`` stops when a monitored value has not improved for ``patience`` epochs and, with
``restore_best=True``, puts back the parameters and buffers of the best epoch at the end.

A resumed run (``fit(..., resume=True)``) calls ``on_train_begin`` and then ``resume_from(history)``
with the epochs the checkpoint already holds; it returns True when training should not go on.

NOTE: a callback's own state is not part of a training checkpoint. A resumed EarlyStopping rebuilds
its counters from the history, so it stops at the same epoch; the best epoch's parameters, though, are
known only if that epoch ran after the resume (else restore_best keeps the final ones).
"""
import numbers

from .validation import check_real


class Callback:
    def on_train_begin(self, net):
        pass

    def on_epoch_end(self, epoch, logs, net):
        return False

    def on_train_end(self, net):
        pass

    def resume_from(self, history):
        """A resumed run: ``history`` holds the epochs already done (dict of lists); True: stop now."""
        return False


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    monitor      "val_loss" (default), "val_accuracy", "loss" or "accuracy"; losses must go down,
                 accuracies up. val_* need fit(..., validation=(x, y)).
    patience     epochs without improvement before stopping (>= 0)
    min_delta    the smallest change that counts as an improvement (>= 0)
    restore_best put the best epoch's parameters and buffers back at the end of training

    After fit: ``best`` (the best value), ``best_epoch`` and ``stopped_epoch`` (0-based; None when
    training ran to the end).
    """
    MONITORS = {"val_loss": -1, "loss": -1, "val_accuracy": 1, "accuracy": 1}   # sign of "better"

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=True):
        if monitor not in self.MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(self.MONITORS)}, got {monitor!r}")
        if not isinstance(patience, numbers.Integral) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        self.monitor, self.patience = monitor, int(patience)
        self.min_delta = check_real(min_delta, "min_delta")
        self.restore_best = bool(restore_best)
        self._reset()

    def _reset(self):
        self.best, self.best_epoch, self.stopped_epoch, self.wait = None, None, None, 0
        self.best_arrays = None

    def on_train_begin(self, net):
        self._reset()

    def resume_from(self, history):
        self._reset()
        values = history.get(self.monitor, [])
        for epoch, value in enumerate(values):
            self._observe(epoch, value, None)
        if self._due():                        # the run being resumed had reached its stop
            self.stopped_epoch = len(values) - 1
            return True
        return False

    def _due(self):
        return self.wait > 0 and self.wait >= self.patience

    def _observe(self, epoch, value, net):
        sign = self.MONITORS[self.monitor]
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best and net is not None:
                self.best_arrays = net.get_arrays()          # host copies, parameters and buffers
            return
        self.wait += 1

    def on_epoch_end(self, epoch, logs, net):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not compute"
                             + (" (pass validation=(x, y) to fit)" if self.monitor.startswith("val_") else ""))
        self._observe(epoch, logs[self.monitor], net)
        if self._due():
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, net):
        if self.restore_best and self.best_arrays is not None:
            net.set_params(self.best_arrays)

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, restore_best={self.restore_best})")
