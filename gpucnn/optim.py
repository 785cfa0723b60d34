"""Mini-batch SGD with momentum and weight decay (PyTorch's update rule, so runs compare):

    g = dC/dW + weight_decay * W
    v = momentum * v + g            (v starts at g on the first step; no v when momentum == 0)
    W = W - lr * v

With momentum = weight_decay = 0 this is Nielsen's W -> W - eta * nabla_W.
"""
import math


def check_lr(lr):
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
    return float(lr)


class SGD:
    def __init__(self, lr, momentum=0.0, weight_decay=0.0):
        self.lr = check_lr(lr)
        for name, value in (("momentum", momentum), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.velocity = {}                 # (layer index, param name) -> array

    def step(self, layers):
        for i, layer in enumerate(layers):
            for name in layer.param_names:
                self._update(layer, (i, name), name)

    def _update(self, layer, key, name):
        W, g = layer._params[name], layer._grads[name]
        if self.weight_decay:
            g = g + self.weight_decay * W
        if self.momentum:
            v = self.velocity.get(key)
            g = g if v is None else self.momentum * v + g
            self.velocity[key] = g
        W -= self.lr * g                   # in place: the array stays where it lives (host or device)
