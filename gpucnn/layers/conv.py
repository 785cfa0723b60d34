"""Conv2D: z = W * a_prev + b, the cross-correlation of the layer input with its kernels."""
from ..errors import ShapeError
from .base import Layer, conv_outsize, grad_property, pair, param_property, positive_int, register_layer


@register_layer
class Conv2D(Layer):
    """z = W * a_prev + b: cross-correlation of (n, c, h, w) with W (f, c, kh, kw) -> (n, f, oh, ow).

    oh = (h + 2*ph - kh) // stride + 1. ``padding`` is an int, a pair, or "same" (stride 1, odd kernel).
    Backward (BP3, BP4): db = delta summed over the map; dW = the valid cross-correlation of the input
    with delta; da_prev = the full convolution of delta with the flipped kernel.
    """
    _positional = ("in_channels", "out_channels", "kernel_size")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = pair(kernel_size, "kernel_size")
        if min(self.kernel_size) < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
        self.stride = positive_int(stride, "stride")
        self.padding = self._resolve_padding(padding)
        self._padding_arg = padding
        super().__init__()

    def _resolve_padding(self, padding):
        kh, kw = self.kernel_size
        if isinstance(padding, str):
            if padding != "same":
                raise ValueError(f'padding must be an int, a pair of ints or "same", got {padding!r}')
            if self.stride != 1 or kh % 2 == 0 or kw % 2 == 0:
                raise ValueError('padding="same" needs stride 1 and an odd kernel_size, '
                                 f"got stride {self.stride}, kernel_size {self.kernel_size}")
            return kh // 2, kw // 2
        ph, pw = pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        return ph, pw

    @property
    def fan_in(self):
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def param_shapes(self):
        return {"W": (self.out_channels, self.in_channels, *self.kernel_size), "b": (self.out_channels,)}

    W, b = param_property("W"), param_property("b")
    dW, db = grad_property("W"), grad_property("b")

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise ShapeError(f"{self!r} expects input (in_channels={self.in_channels}, h, w), "
                             f"got {in_shape}")
        (kh, kw), (ph, pw), s = self.kernel_size, self.padding, self.stride
        oh, ow = conv_outsize(in_shape[1], kh, ph, s), conv_outsize(in_shape[2], kw, pw, s)
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self!r}: input {in_shape} is smaller than the kernel {self.kernel_size}")
        return (self.out_channels, oh, ow)

    def forward(self, a_prev):
        self.a_prev = a_prev
        return self.backend.ops.conv2d_forward(a_prev, self.W, self.b, self.stride, self.padding)

    def forward_activated(self, a_prev, act, kernel_name):
        """act's sigma(W * a_prev + b) in one kernel, where the op set has one (the CUDA backends'
        ``conv2d_forward_activation``, the activation layers' formulas); ``act`` adopts the result."""
        self.a_prev = a_prev
        return act.adopt(self.backend.ops.conv2d_forward_activation(a_prev, self.W, self.b, self.stride,
                                                                    self.padding, kernel_name))

    def backward(self, delta, need_da_prev=True):
        """delta = dC/dz -> dC/da_prev (None when ``need_da_prev`` is False: the first layer)."""
        ops = self.backend.ops
        self.params["W"].grad = ops.conv2d_backward_weight(self.a_prev, delta, self.kernel_size,
                                                           self.stride, self.padding)
        self.params["b"].grad = ops.conv2d_backward_bias(delta)
        if not need_da_prev:
            return None
        return ops.conv2d_backward_input(delta, self.W, self.a_prev.shape[2:], self.stride, self.padding)

    def backward_params(self, delta):
        """backward() as the network's first layer: the gradients only, no dC/d(input)."""
        self.backward(delta, need_da_prev=False)

    def config(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=self.stride,
                    padding=self._padding_arg if self._padding_arg == "same" else list(self.padding))
