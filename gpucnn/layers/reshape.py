"""Flatten: (n, c, h, w) -> (n, c*h*w), row-major."""
import math

from .base import Layer, register_layer


@register_layer
class Flatten(Layer):
    """(n, c, h, w) -> (n, c*h*w), row-major, so delta (n, 432) reshapes back to (n, 3, 12, 12)."""

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def forward(self, a_prev):
        self.in_shape = a_prev.shape
        return a_prev.reshape(a_prev.shape[0], -1)

    def backward(self, da):
        return da.reshape(self.in_shape)
