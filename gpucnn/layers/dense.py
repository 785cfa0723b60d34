"""Dense: z = a_prev W^T + b, with W (out, in) as in Nielsen's w^l_jk (j: output, k: input)."""
from ..errors import ShapeError
from .base import Layer, grad_property, param_property, positive_int, register_layer


def dense_forward(a_prev, W, b):
    """z = a_prev W^T + b: (n, in) -> (n, out)."""
    return a_prev @ W.T + b


def dense_backward(delta, a_prev, W, need_da_prev=True):
    """(BP4) dW_jk = sum_n a_k delta_j; (BP3) db = sum_n delta; (BP2, before the sigma' of the layer
    below) da_prev = delta W. -> (dW, db, da_prev or None)."""
    return delta.T @ a_prev, delta.sum(axis=0), (delta @ W if need_da_prev else None)


@register_layer
class Dense(Layer):
    """z = a_prev W^T + b, W of shape (out, in) as in Nielsen's w^l_jk (j: output, k: input)."""
    _positional = ("in_features", "out_features")

    def __init__(self, in_features, out_features):
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        super().__init__()

    fan_in = property(lambda self: self.in_features)

    def param_shapes(self):
        return {"W": (self.out_features, self.in_features), "b": (self.out_features,)}

    W, b = param_property("W"), param_property("b")
    dW, db = grad_property("W"), grad_property("b")

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ShapeError(f"{self!r} expects input of shape ({self.in_features},), got {in_shape}")
        return (self.out_features,)

    def forward(self, a_prev):
        self.a_prev = a_prev
        return dense_forward(a_prev, self.W, self.b)

    def backward(self, delta, need_da_prev=True):
        dW, db, da_prev = dense_backward(delta, self.a_prev, self.W, need_da_prev)
        self.params["W"].grad, self.params["b"].grad = dW, db
        return da_prev

    def backward_params(self, delta):
        """backward() as the network's first layer: the gradients only, no dC/d(input)."""
        self.backward(delta, need_da_prev=False)

    def config(self):
        return dict(in_features=self.in_features, out_features=self.out_features)
