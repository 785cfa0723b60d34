"""BatchNorm2D: per-channel batch normalisation with a learned scale and shift (PyTorch's semantics)."""
import numpy as np

from ..errors import ShapeError
from ..validation import check_real
from .base import Layer, grad_property, param_property, positive_int, register_layer


@register_layer
class BatchNorm2D(Layer):
    """a = gamma * xhat + beta per channel, xhat = (a_prev - mu) / sqrt(var + eps); a_prev (n, c, h, w).

    Parameters ``gamma`` (the scale, init 1) and ``beta`` (the shift, init 0), both (c,); buffers
    ``running_mean`` (init 0) and ``running_var`` (init 1), (c,), saved with the model.

    Train mode: mu, var are the batch's, over the m = n*h*w values of each channel (var biased, 1/m;
    both summed in float64, then in the network's dtype);
    the running statistics move towards them, with the *unbiased* variance (PyTorch's rule):
        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
    Eval mode: mu, var are the running statistics (a fixed affine map, nothing updated).

    Backward, in the seed's notation (da = dC/da arriving from above; sums over the m positions
    (n, y, x) of one channel, sigma = sqrt(var + eps)):
        dbeta  = sum da                     (a_k = gamma xhat_k + beta)
        dgamma = sum da * xhat
        dxhat  = da * gamma
    In train mode mu and var depend on every input of the channel:
        d mu / d a_prev_i = 1/m,   d var / d a_prev_i = 2 (a_prev_i - mu) / m,   so
        d xhat_k / d a_prev_i = ([k = i] - 1/m) / sigma - xhat_k xhat_i / (m sigma), and summing over k:
        da_prev = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sigma        (means over the m)
    In eval mode mu and var are constants: da_prev = dxhat / sigma.
    """
    _positional = ("num_features",)
    _caches = Layer._caches + ("xhat", "inv_std", "batch_stats")

    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        self.num_features = positive_int(num_features, "num_features")
        self.momentum = check_real(momentum, "momentum", maximum=1.0)
        self.eps = check_real(eps, "eps", strict=True)
        super().__init__()

    def param_shapes(self):
        return {"gamma": (self.num_features,), "beta": (self.num_features,)}

    def buffer_shapes(self):
        return {"running_mean": (self.num_features,), "running_var": (self.num_features,)}

    gamma, beta = param_property("gamma"), param_property("beta")
    dgamma, dbeta = grad_property("gamma"), grad_property("beta")

    def initial_value(self, key, shape, rng):
        return np.ones(shape) if key == "gamma" else np.zeros(shape)      # draws nothing from rng

    def bind(self, owner, index, backend, dtype, rng):
        super().bind(owner, index, backend, dtype, rng)
        for key, shape in self.buffer_shapes().items():
            value = self.buffers.get(key)                 # kept from a deep copy: moved to the backend
            if value is None or tuple(value.shape) != shape:
                value = np.zeros(shape) if key == "running_mean" else np.ones(shape)
            self.buffers[key] = backend.asarray(value, dtype).copy()

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.num_features:
            raise ShapeError(f"{self!r} expects input (num_features={self.num_features}, h, w), got {in_shape}")
        return in_shape

    def forward(self, a_prev):
        n, c, h, w = a_prev.shape
        axes, col = (0, 2, 3), (1, c, 1, 1)
        if self.training:
            self.check_batch(tuple(a_prev.shape))
            # the means accumulate in float64 (a float32 sum over n*h*w values drifts by ~1e-4)
            mu = a_prev.mean(axis=axes, dtype=np.float64).astype(a_prev.dtype)
            centred = a_prev - mu.reshape(col)
            var = (centred * centred).mean(axis=axes, dtype=np.float64).astype(a_prev.dtype)
            self.update_running(mu, var, n * h * w)
        else:
            mu, var = self.buffers["running_mean"], self.buffers["running_var"]
            centred = a_prev - mu.reshape(col)
        self.inv_std = 1.0 / self.xp.sqrt(var + self.eps)
        self.xhat = centred * self.inv_std.reshape(col)
        self.batch_stats = self.training
        return self.xhat * self.gamma.reshape(col) + self.beta.reshape(col)

    def check_batch(self, shape):
        """Train mode needs more than one value per channel in an input of ``shape`` (n, c, h, w)."""
        n, _, h, w = shape
        if n * h * w < 2:
            raise ValueError(f"{self!r} in train mode needs more than 1 value per channel, got input "
                             f"{tuple(shape)}; use eval mode or a larger batch")

    def update_running(self, mu, var, m):
        """Move the running statistics towards a batch's mu and (biased) var over m values per channel,
        with the unbiased variance (PyTorch's rule)."""
        keep, running = 1.0 - self.momentum, self.buffers
        running["running_mean"] = keep * running["running_mean"] + self.momentum * mu
        running["running_var"] = keep * running["running_var"] + (self.momentum * m / (m - 1)) * var

    def backward(self, da, need_da_prev=True):
        c = da.shape[1]
        axes, col = (0, 2, 3), (1, c, 1, 1)
        self.params["beta"].grad = da.sum(axis=axes)
        self.params["gamma"].grad = (da * self.xhat).sum(axis=axes)
        if not need_da_prev:
            return None
        dxhat = da * self.gamma.reshape(col)
        if not self.batch_stats:
            return dxhat * self.inv_std.reshape(col)
        mean_dxhat = dxhat.mean(axis=axes).reshape(col)
        mean_dxhat_xhat = (dxhat * self.xhat).mean(axis=axes).reshape(col)
        return (dxhat - mean_dxhat - self.xhat * mean_dxhat_xhat) * self.inv_std.reshape(col)

    def backward_params(self, da):
        """backward() as the network's first layer: dgamma, dbeta only."""
        self.backward(da, need_da_prev=False)

    def config(self):
        return dict(num_features=self.num_features, momentum=self.momentum, eps=self.eps)
