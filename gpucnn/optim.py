"""Optimizers: they see a network only through its Parameter objects (value and grad).

SGD with momentum and weight decay (PyTorch's update rule, so runs compare):

    g = dC/dW + weight_decay * W
    v = momentum * v + g            (v starts at g on the first step; no v when momentum == 0)
    W = W - lr * v

With momentum = weight_decay = 0 this is Nielsen's W -> W - eta * nabla_W.

Adam (torch.optim.Adam's update, L2 weight decay added to the gradient, step counted per parameter):

    g = dC/dW + weight_decay * W;   t = t + 1
    m = beta1 * m + (1 - beta1) * g             v = beta2 * v + (1 - beta2) * g^2      (m, v start at 0)
    W = W - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Per-parameter state lives in ``optimizer.state[param.name]`` (a dict of arrays on the backend; Adam's
step count ``t`` is a host int64 0-d array), so a checkpoint can save it and a resumed run continue
bit for bit. ``get_optimizer("sgd" | "adam" | an Optimizer, lr=None, ...)`` is what ``fit`` uses:
``lr=None`` means the optimizer's default (SGD 0.5, Adam 1e-3).
"""
import math

import numpy as np

from .validation import check_real


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
    default_lr = 0.5

    def __init__(self, lr=default_lr, momentum=0.0, weight_decay=0.0):
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


class Adam(Optimizer):
    """torch.optim.Adam's update (no amsgrad); slots ``m``, ``v`` (backend arrays) and ``t`` (host int)."""
    name = "adam"
    default_lr = 1e-3

    def __init__(self, lr=default_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(check_real(b, f"betas[{i}]") for i, b in enumerate(betas))
        if not all(b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.eps = check_real(eps, "eps")
        self.weight_decay = check_real(weight_decay, "weight_decay")

    def update(self, p, state):
        W, g = p.value, p.grad
        beta1, beta2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * W
        if "m" not in state:
            state["m"], state["v"] = _zeros_like(W), _zeros_like(W)
            state["t"] = np.array(0, dtype=np.int64)
        t = int(state["t"]) + 1
        state["t"] = np.array(t, dtype=np.int64)
        m, v = state["m"], state["v"]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        step_size = self.lr / (1 - beta1 ** t)
        denom = v ** 0.5                   # sqrt, on numpy or cupy alike
        denom /= math.sqrt(1 - beta2 ** t)
        denom += self.eps
        W -= step_size * (m / denom)       # in place, on the parameter's own backend

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}


def _zeros_like(array):
    """Zeros of the array's shape and dtype on its own backend (the optimizer sees no backend)."""
    zeros = array.copy()
    zeros[...] = 0
    return zeros


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get_optimizer(spec="sgd", lr=None, momentum=0.0, weight_decay=0.0):
    """"sgd" | "adam" | an Optimizer -> an Optimizer. ``lr=None``: the optimizer's default lr.

    With an Optimizer object, lr/momentum/weight_decay belong to it: passing them too is an error.
    """
    if isinstance(spec, Optimizer):
        if lr is not None or momentum or weight_decay:
            raise ValueError("an Optimizer object carries its own lr, momentum and weight_decay; "
                             "do not pass them to fit as well")
        return spec
    if not isinstance(spec, str) or spec.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))} or an "
                         f"Optimizer object, got {spec!r}")
    cls = OPTIMIZERS[spec.lower()]
    lr = cls.default_lr if lr is None else lr
    if cls is Adam:
        if momentum:
            raise ValueError("momentum is SGD's; Adam's moments are set by betas "
                             "(pass optimizer=gpucnn.optim.Adam(betas=...))")
        return Adam(lr, weight_decay=weight_decay)
    return SGD(lr, momentum, weight_decay)
