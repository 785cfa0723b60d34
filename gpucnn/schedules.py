"""Learning-rate schedules for ``fit(..., lr_schedule=...)``: the lr of each epoch, set before it runs.

    StepLR(step_size=None, gamma=0.1)   lr_e = lr * gamma^(e // step_size); step_size None: a third of
                                         the fit's epochs (at least 1).  "step" = StepLR()
    CosineLR(min_lr=0.0, epochs=None)    lr_e = min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2;
                                         epochs None: the fit's epochs.  "cosine" = CosineLR()
    a callable  epoch -> lr              any function of the 0-based epoch (wrapped in LambdaLR)

``e`` counts epochs from 0, ``lr`` is the optimizer's lr given to fit (the base). PyTorch's StepLR and
CosineAnnealingLR (T_max = epochs, eta_min = min_lr) give the same values per epoch. The lr each epoch
ran with is in ``history["lr"]``.
"""
import math
import numbers

from .optim import check_lr
from .validation import check_real


class Schedule:
    """Base: ``lr_at(epoch, base_lr, epochs)`` -> the lr of that epoch (0-based)."""

    def lr_at(self, epoch, base_lr, epochs):
        raise NotImplementedError

    def describe(self):
        """What a resumed run must match (a JSON value)."""
        return repr(self)


class StepLR(Schedule):
    def __init__(self, step_size=None, gamma=0.1):
        if step_size is not None and (not isinstance(step_size, numbers.Integral) or isinstance(step_size, bool)
                                      or step_size < 1):
            raise ValueError(f"step_size must be a positive int or None, got {step_size!r}")
        self.step_size = None if step_size is None else int(step_size)
        self.gamma = check_real(gamma, "gamma", strict=True)

    def lr_at(self, epoch, base_lr, epochs):
        step_size = self.step_size or max(1, epochs // 3)
        return base_lr * self.gamma ** (epoch // step_size)

    def __repr__(self):
        return f"StepLR(step_size={self.step_size!r}, gamma={self.gamma!r})"


class CosineLR(Schedule):
    def __init__(self, min_lr=0.0, epochs=None):
        self.min_lr = check_real(min_lr, "min_lr")
        if epochs is not None and (not isinstance(epochs, numbers.Integral) or isinstance(epochs, bool)
                                   or epochs < 1):
            raise ValueError(f"epochs must be a positive int or None, got {epochs!r}")
        self.epochs = None if epochs is None else int(epochs)

    def lr_at(self, epoch, base_lr, epochs):
        period = self.epochs or epochs
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * min(epoch, period) / period)) / 2

    def __repr__(self):
        return f"CosineLR(min_lr={self.min_lr!r}, epochs={self.epochs!r})"


class LambdaLR(Schedule):
    """A user's function of the 0-based epoch -> lr (a positive finite number)."""

    def __init__(self, function):
        if not callable(function):
            raise TypeError(f"LambdaLR takes a callable epoch -> lr, got {function!r}")
        self.function = function

    def lr_at(self, epoch, base_lr, epochs):
        return self.function(epoch)

    def __repr__(self):
        return f"LambdaLR({getattr(self.function, '__qualname__', type(self.function).__name__)})"


SCHEDULES = {"step": StepLR, "cosine": CosineLR}


def get_schedule(spec):
    """None | "step" | "cosine" | a Schedule | a callable epoch -> lr  ->  a Schedule or None."""
    if spec is None or isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        if spec.lower() not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(map(repr, SCHEDULES))}, a Schedule or "
                             f"a callable epoch -> lr, got {spec!r}")
        return SCHEDULES[spec.lower()]()
    if callable(spec):
        return LambdaLR(spec)
    raise TypeError(f"lr_schedule must be a name, a Schedule or a callable epoch -> lr, got {spec!r}")


def scheduled_lr(schedule, epoch, base_lr, epochs):
    """The checked lr of ``epoch``: a schedule giving 0, a negative or a non-finite lr is an error."""
    lr = schedule.lr_at(epoch, base_lr, epochs)
    try:
        return check_lr(lr)
    except ValueError as exc:
        raise ValueError(f"{schedule!r} gave epoch {epoch} the learning rate {lr!r}: {exc}") from None
