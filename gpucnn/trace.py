"""Every quantity of one forward and backward pass, per layer, as NumPy arrays in the seed's notation.

    step["a_prev"]       what came into the layer             step["out"]   what it gave out
    step["dout"]         dC/d(out), arriving from above       step["da_prev"]  dC/d(a_prev), sent below
  Conv2D / Dense:        z = out, delta = dout, dW, db  (delta = dC/dz, Nielsen's delta)
  Sigmoid / ReLU / Tanh: z = a_prev, a = out, sigma_prime = sigma'(z), delta = da_prev = dout * sigma'(z)
  MaxPool2D:             argmax (index in the window, first maximum wins), mask (1 where a delta goes)
  Flatten:               only the reshape: dout (n, 432) -> da_prev (n, 3, 12, 12)
  AvgPool2D:             only the spreading: da_prev = dout / size^2 over each window (summed where
                         windows overlap)
  BatchNorm2D:           z = out = gamma * xhat + beta, delta = dout, xhat, inv_std = 1/sqrt(var + eps),
                         dgamma, dbeta; da_prev = (dxhat - mean dxhat - xhat mean(dxhat xhat)) * inv_std
                         in train mode, dxhat * inv_std in eval mode (dxhat = delta * gamma)
  Dropout:               mask = keep / (1 - p) (ones in eval mode), da_prev = dout * mask
"""
import numpy as np

from . import layers as L
from .backend import to_numpy
from .validation import check_inputs


class Trace(list):
    """A list of per-layer dicts; ``print(trace)`` shows every array's shape."""

    def __init__(self, steps, cost):
        super().__init__(steps)
        self.cost = cost

    def table(self):
        lines = [f"cost C = {self.cost:.6g}"]
        for i, step in enumerate(self):
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in step.items()
                               if isinstance(v, np.ndarray) and k not in ("a_prev", "out", "dout", "da_prev"))
            lines.append(f"{i:>2} {step['layer']:<28} {tuple(step['a_prev'].shape)} -> "
                         f"{tuple(step['out'].shape)}   {shapes}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    __repr__ = __str__


def trace(net, x, y):
    """Run forward and backward on (x, y), fill dW/db as backward does, and record everything."""
    check_inputs(x, net.input_shape)
    a, steps = net.backend.asarray(x, net.dtype), []
    for layer in net.layers:
        step = {"layer": repr(layer), "a_prev": to_numpy(a)}
        a = layer.forward(a)
        step["out"] = to_numpy(a)
        steps.append(step)
    net.out = a
    y1 = net.targets(y, a.shape[0])
    cost = net.loss.cost(net.backend.xp, a, y1)
    grad = net.loss.gradient(net.backend.xp, a, y1)
    for layer, step in zip(reversed(net.layers), reversed(steps)):
        step["dout"] = to_numpy(grad)
        grad = layer.backward(grad)
        step["da_prev"] = to_numpy(grad)
        step.update(_named_quantities(layer, step))
    return Trace(steps, cost)


def _named_quantities(layer, step):
    if isinstance(layer, (L.Conv2D, L.Dense)):
        return {"z": step["out"], "delta": step["dout"],
                "dW": to_numpy(layer.dW), "db": to_numpy(layer.db)}
    if isinstance(layer, L.Activation):
        return {"z": step["a_prev"], "a": step["out"],
                "sigma_prime": to_numpy(layer.sigma_prime()), "delta": step["da_prev"]}
    if isinstance(layer, L.BatchNorm2D):
        return {"z": step["out"], "delta": step["dout"], "xhat": to_numpy(layer.xhat),
                "inv_std": to_numpy(layer.inv_std), "dgamma": to_numpy(layer.dgamma),
                "dbeta": to_numpy(layer.dbeta)}
    if isinstance(layer, L.Dropout):
        mask = to_numpy(layer.mask) if layer.mask is not None else np.ones_like(step["a_prev"])
        return {"mask": mask}
    if isinstance(layer, L.MaxPool2D):
        argmax = to_numpy(layer.argmax)
        return {"argmax": argmax, "mask": _argmax_mask(argmax, step["a_prev"].shape, layer)}
    return {}


def _argmax_mask(argmax, x_shape, layer):
    """1 at the input position each window's argmax points to."""
    mask = np.zeros(x_shape, dtype=np.uint8)
    n, c, oh, ow = argmax.shape
    i, j = np.divmod(argmax, layer.size)
    rows = np.arange(oh)[None, None, :, None] * layer.stride + i
    cols = np.arange(ow)[None, None, None, :] * layer.stride + j
    nn, cc = np.indices((n, c))[..., None, None]
    mask[nn, cc, rows, cols] = 1
    return mask
