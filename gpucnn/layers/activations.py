"""Activations a = sigma(z), and sigma'(z), each written once.

The class-level functions are the one definition of each formula: the layer below uses them, and so
do the fused plans (gpucnn/fast/), which may call them on views with ``out=`` to avoid temporaries.

    sigma(xp, z, out=None)        = sigma_scaled(xp, prescale * z)     the activation
    sigma_scaled(xp, s, out=None) sigma from s = prescale * z (a plan may fold prescale into the
                                  weights of the layer before: prescale is a power of 2, so exact)
    prime(a, z)                   sigma'(z), from the output a alone (ReLU: [a > 0] = [z > 0]), so a
                                  layer that took a from a fused conv+activation kernel (``adopt``)
                                  needs no z; at a pooling window's argmax it is a function of the
                                  pooled value, so a plan may pass the pooled value as both
"""
from .base import Layer, register_layer


class Activation(Layer):
    """a = sigma(z); backward: delta = dC/da * sigma'(z)."""
    prescale = 1.0

    @classmethod
    def sigma(cls, xp, z, out=None):
        if cls.prescale == 1.0:
            return cls.sigma_scaled(xp, z, out=out)
        s = xp.multiply(z, cls.prescale, out=out)
        return cls.sigma_scaled(xp, s, out=s)

    def forward(self, z):
        self.z = z
        self.a = self.sigma(self.xp, z)
        return self.a

    def adopt(self, a):
        """Take a = sigma(z) computed below, by a fused conv+activation kernel (the CUDA backends):
        backward needs only a."""
        self.z, self.a = None, a
        return a

    def sigma_prime(self):
        """sigma'(z) of the last forward."""
        return self.prime(self.a, self.z)

    def backward(self, da):
        return da * self.sigma_prime()


@register_layer
class Sigmoid(Activation):
    """sigma(z) = 1 / (1 + e^-z) = 0.5 * tanh(0.5 z) + 0.5 (the form without overflow for z << 0)."""
    prescale = 0.5

    @staticmethod
    def sigma_scaled(xp, s, out=None):
        out = xp.tanh(s, out=out)
        xp.multiply(out, 0.5, out=out)
        xp.add(out, 0.5, out=out)
        return out

    @staticmethod
    def prime(a, z):
        return a * (1 - a)


@register_layer
class ReLU(Activation):
    """sigma(z) = max(z, 0); sigma'(z) = [z > 0] = [a > 0]."""

    @staticmethod
    def sigma_scaled(xp, s, out=None):
        return xp.maximum(s, 0, out=out)

    @staticmethod
    def prime(a, z):
        return (a > 0).astype(a.dtype)


@register_layer
class Tanh(Activation):
    """sigma(z) = tanh(z); sigma'(z) = 1 - a^2."""

    @staticmethod
    def sigma_scaled(xp, s, out=None):
        return xp.tanh(s, out=out)

    @staticmethod
    def prime(a, z):
        return 1 - a * a


ACTIVATIONS = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh}


def activation_class(name):
    """The activation layer class for 'sigmoid', 'relu' or 'tanh' (the network builders' argument)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
