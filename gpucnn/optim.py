"""Optimizers: they see a network only through its Parameter objects (value and grad).

SGD with momentum and weight decay (PyTorch's update rule, so runs compare):

    g = dC/dW + weight_decay * W
    v = momentum * v + g            (v starts at g on the first step; no v when momentum == 0)
    W = W - lr * v

With momentum = weight_decay = 0 this is Nielsen's W -> W - eta * nabla_W.

Per-parameter state lives in ``optimizer.state[param.name]`` (a dict of arrays on the backend), so a
checkpoint can save it and a resumed run continue bit for bit.
"""
import math
import numbers


def check_real(value, name, minimum=0.0, strict=False):
    """Any real number (Python or NumPy) that is finite and >= minimum (> when strict) -> float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be a finite real number {bound}, got {value!r}")
    return float(value)


def check_lr(lr):
    return check_real(lr, "lr (the learning rate)", strict=True)


class Optimizer:
    """Base: ``step(params)`` updates every Parameter from its grad; per-parameter ``state``."""
    name = None

    def __init__(self, lr):
        self.lr = check_lr(lr)
        self.state = {}                    # param name -> {slot: array}

    def step(self, params):
        for p in params:
            if p.grad is not None:
                self.update(p, self.state.setdefault(p.name, {}))

    def update(self, p, state):
        raise NotImplementedError

    def hyperparameters(self):
        """What a resumed run must match (JSON values)."""
        return {"optimizer": self.name, "lr": self.lr}


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = check_real(momentum, "momentum")
        self.weight_decay = check_real(weight_decay, "weight_decay")

    def update(self, p, state):
        W, g = p.value, p.grad
        if self.weight_decay:
            g = g + self.weight_decay * W
        if self.momentum:
            v = state.get("velocity")
            g = g if v is None else self.momentum * v + g
            state["velocity"] = g
        W -= self.lr * g                   # in place: the array stays where it lives (host or device)

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum, "weight_decay": self.weight_decay}
