"""Layers, each with its backward pass written out by hand.

Every layer maps an activation ``a_prev`` (n, *in_shape) to its output (n, *out_shape) in ``forward``
and maps dC/d(output) back to dC/d(a_prev) in ``backward``. For Conv2D and Dense the output is the
pre-activation z, so what ``backward`` receives is Nielsen's delta = dC/dz. For an activation the
output is a = sigma(z), so ``backward`` receives dC/da and returns delta = dC/da * sigma'(z).

Shapes checked at construction come from ``output_shape(in_shape)`` (per sample, without n).
Parameters live on the network's backend; ``layer.W = numpy_array`` converts and checks the shape.
"""
import math

import numpy as np

from .errors import ShapeError


def _pair(value, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _positive(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class Layer:
    """Base class: no parameters, identity bookkeeping."""
    param_names = ()

    def bind(self, backend, dtype, rng):
        """Attach to a backend; layers with parameters draw their initial values from rng."""
        self.backend, self.xp, self.dtype = backend, backend.xp, dtype

    def output_shape(self, in_shape):
        return in_shape

    def config(self):
        """The constructor arguments, for the JSON architecture in a saved model."""
        return {}

    def __repr__(self):
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in self.config().items()}
        args = ", ".join(f"{v!r}" if k in self._positional else f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"

    _positional = ()


class ParamLayer(Layer):
    """A layer with weights W and biases b, and their gradients dW, db after ``backward``."""
    param_names = ("W", "b")

    def bind(self, backend, dtype, rng):
        super().bind(backend, dtype, rng)
        # PyTorch's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b, so the
        # seed recipe can be compared with PyTorch on equal terms.
        bound = 1.0 / math.sqrt(self.fan_in)
        self._params = {name: backend.asarray(rng.uniform(-bound, bound, shape), dtype)
                        for name, shape in self.param_shapes().items()}
        self._grads = {name: None for name in self.param_names}

    def _set_param(self, name, value):
        if not hasattr(value, "shape"):
            value = np.asarray(value, dtype=np.float64)
        shape = self.param_shapes()[name]
        if tuple(value.shape) != shape:
            raise ShapeError(f"{self!r}.{name} must have shape {shape}, got {tuple(value.shape)}")
        # A copy: training updates parameters in place, never the caller's array.
        self._params[name] = self.backend.asarray(value, self.dtype).copy()

    W = property(lambda self: self._params["W"], lambda self, v: self._set_param("W", v))
    b = property(lambda self: self._params["b"], lambda self, v: self._set_param("b", v))
    dW = property(lambda self: self._grads["W"])
    db = property(lambda self: self._grads["b"])


class Conv2D(ParamLayer):
    """z = W * a_prev + b: cross-correlation of (n, c, h, w) with W (f, c, kh, kw) -> (n, f, oh, ow).

    oh = (h + 2*ph - kh) // stride + 1. ``padding`` is an int, a pair, or "same" (stride 1, odd kernel).
    """
    _positional = ("in_channels", "out_channels", "kernel_size")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        self.in_channels = _positive(in_channels, "in_channels")
        self.out_channels = _positive(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        if min(self.kernel_size) < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
        self.stride = _positive(stride, "stride")
        self.padding = self._resolve_padding(padding)
        self._padding_arg = padding

    def _resolve_padding(self, padding):
        kh, kw = self.kernel_size
        if padding == "same":
            if self.stride != 1 or kh % 2 == 0 or kw % 2 == 0:
                raise ValueError('padding="same" needs stride 1 and an odd kernel_size, '
                                 f"got stride {self.stride}, kernel_size {self.kernel_size}")
            return kh // 2, kw // 2
        ph, pw = _pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        return ph, pw

    @property
    def fan_in(self):
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def param_shapes(self):
        return {"W": (self.out_channels, self.in_channels, *self.kernel_size), "b": (self.out_channels,)}

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise ShapeError(f"{self!r} expects input (in_channels={self.in_channels}, h, w), "
                             f"got {in_shape}")
        (kh, kw), (ph, pw), s = self.kernel_size, self.padding, self.stride
        oh, ow = (in_shape[1] + 2 * ph - kh) // s + 1, (in_shape[2] + 2 * pw - kw) // s + 1
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self!r}: input {in_shape} is smaller than the kernel {self.kernel_size}")
        return (self.out_channels, oh, ow)

    def forward(self, a_prev):
        self.a_prev = a_prev
        return self.backend.ops.conv2d_forward(a_prev, self.W, self.b, self.stride, self.padding)

    def backward(self, delta):
        ops = self.backend.ops
        self._grads["W"] = ops.conv2d_backward_weight(self.a_prev, delta, self.kernel_size,
                                                      self.stride, self.padding)
        self._grads["b"] = ops.conv2d_backward_bias(delta)
        return ops.conv2d_backward_input(delta, self.W, self.a_prev.shape[2:], self.stride, self.padding)

    def config(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=self.stride,
                    padding=self._padding_arg if self._padding_arg == "same" else list(self.padding))


class Dense(ParamLayer):
    """z = a_prev W^T + b, W of shape (out, in) as in Nielsen's w^l_jk (j: output, k: input)."""
    _positional = ("in_features", "out_features")

    def __init__(self, in_features, out_features):
        self.in_features = _positive(in_features, "in_features")
        self.out_features = _positive(out_features, "out_features")

    fan_in = property(lambda self: self.in_features)

    def param_shapes(self):
        return {"W": (self.out_features, self.in_features), "b": (self.out_features,)}

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ShapeError(f"{self!r} expects input of shape ({self.in_features},), got {in_shape}")
        return (self.out_features,)

    def forward(self, a_prev):
        self.a_prev = a_prev
        return a_prev @ self.W.T + self.b

    def backward(self, delta):
        self._grads["W"] = delta.T @ self.a_prev          # dC/dw_jk = a_k delta_j, summed over the batch
        self._grads["b"] = delta.sum(axis=0)
        return delta @ self.W                              # (w^T delta), before the sigma' of the layer below

    def config(self):
        return dict(in_features=self.in_features, out_features=self.out_features)


class MaxPool2D(Layer):
    """a[y, x] = max of the size x size window at (y*stride, x*stride); default stride = size.

    Tie rule: the FIRST maximum in row-major window order is the argmax and receives the whole delta,
    on every backend. (Real digits have many ties: blank background.)
    """
    _positional = ("size",)

    def __init__(self, size=2, stride=None):
        self.size = _positive(size, "size")
        self.stride = self.size if stride is None else _positive(stride, "stride")

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[1] < self.size or in_shape[2] < self.size:
            raise ShapeError(f"{self!r} expects input (c, h, w) with h, w >= {self.size}, got {in_shape}")
        c, h, w = in_shape
        return (c, (h - self.size) // self.stride + 1, (w - self.size) // self.stride + 1)

    def forward(self, a_prev):
        self.in_hw = a_prev.shape[2:]
        a, self.argmax = self.backend.ops.maxpool2d_forward(a_prev, self.size, self.stride)
        return a

    def backward(self, da):
        return self.backend.ops.maxpool2d_backward(da, self.argmax, self.in_hw, self.size, self.stride)

    def config(self):
        return dict(size=self.size, stride=self.stride)


class Flatten(Layer):
    """(n, c, h, w) -> (n, c*h*w), row-major, so delta (n, 432) reshapes back to (n, 3, 12, 12)."""

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, a_prev):
        self.in_shape = a_prev.shape
        return a_prev.reshape(a_prev.shape[0], -1)

    def backward(self, da):
        return da.reshape(self.in_shape)


class Activation(Layer):
    """a = sigma(z); backward: delta = dC/da * sigma'(z), sigma' computed from the cached a or z."""

    def forward(self, z):
        self.z = z
        self.a = self.sigma(z)
        return self.a

    def backward(self, da):
        return da * self.sigma_prime()


class Sigmoid(Activation):
    def sigma(self, z):
        return 0.5 * self.xp.tanh(0.5 * z) + 0.5      # = 1 / (1 + e^-z), without overflow for z << 0

    def sigma_prime(self):
        return self.a * (1 - self.a)


class ReLU(Activation):
    def sigma(self, z):
        return self.xp.maximum(z, 0)

    def sigma_prime(self):
        return (self.z > 0).astype(self.z.dtype)


class Tanh(Activation):
    def sigma(self, z):
        return self.xp.tanh(z)

    def sigma_prime(self):
        return 1 - self.a * self.a


LAYER_TYPES = {cls.__name__: cls for cls in (Conv2D, Dense, MaxPool2D, Flatten, Sigmoid, ReLU, Tanh)}
