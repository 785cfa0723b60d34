"""MaxPool2D: the maximum of each window, its delta routed back to the argmax; AvgPool2D: the mean."""
from ..errors import ShapeError
from .base import Layer, conv_outsize, positive_int, register_layer


@register_layer
class MaxPool2D(Layer):
    """a[y, x] = max of the size x size window at (y*stride, x*stride); default stride = size.

    Tie rule: the FIRST maximum in row-major window order is the argmax and receives the whole delta,
    on every backend. (Real digits have many ties: blank background.)
    """
    _positional = ("size",)

    def __init__(self, size=2, stride=None):
        self.size = positive_int(size, "size")
        self.stride = self.size if stride is None else positive_int(stride, "stride")
        super().__init__()

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[1] < self.size or in_shape[2] < self.size:
            raise ShapeError(f"{self!r} expects input (c, h, w) with h, w >= {self.size}, got {in_shape}")
        c, h, w = in_shape
        return (c, conv_outsize(h, self.size, 0, self.stride), conv_outsize(w, self.size, 0, self.stride))

    def forward(self, a_prev):
        self.in_hw = a_prev.shape[2:]
        a, self.argmax = self.backend.ops.maxpool2d_forward(a_prev, self.size, self.stride)
        return a

    def backward(self, da):
        return self.backend.ops.maxpool2d_backward(da, self.argmax, self.in_hw, self.size, self.stride)

    def config(self):
        return dict(size=self.size, stride=self.stride)


@register_layer
class AvgPool2D(Layer):
    """a[y, x] = the mean of the size x size window at (y*stride, x*stride); default stride = size.

    Backward: every input of a window receives delta / size^2 of that window (summed over the windows
    that cover it when stride < size); an input no window reaches gets 0. A CUDA kernel on the CUDA
    backends (cuda/avgpool2d.cu), ``ops.reference.avgpool2d_*`` on NumPy.
    """
    _positional = ("size",)

    def __init__(self, size=2, stride=None):
        self.size = positive_int(size, "size")
        self.stride = self.size if stride is None else positive_int(stride, "stride")
        super().__init__()

    output_shape = MaxPool2D.output_shape

    def forward(self, a_prev):
        self.in_hw = a_prev.shape[2:]
        return self.backend.ops.avgpool2d_forward(a_prev, self.size, self.stride)

    def backward(self, da):
        return self.backend.ops.avgpool2d_backward(da, self.in_hw, self.size, self.stride)

    def config(self):
        return dict(size=self.size, stride=self.stride)
