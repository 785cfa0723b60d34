"""Gradient check: float64 centred finite differences against the hand-written backward pass.

    numeric  dC/dtheta ~ (C(theta + eps) - C(theta - eps)) / (2 eps)      on a float64 NumPy copy
    analytic the backward pass, twice: on that float64 copy (checks the math) and on the network's own
             backend and dtype (checks the implementation there, e.g. float32 CUDA kernels)

rel_error = ||analytic - numeric|| / ||numeric|| per parameter array.
"""
import numpy as np

from .backend import to_numpy


def float64_copy(net):
    """The same architecture and parameters on the NumPy backend in float64."""
    from .network import Network
    ref = Network([type(layer)(**_ctor_args(layer)) for layer in net.layers], loss=net.loss.name,
                  backend="numpy", input_shape=net.input_shape, dtype=np.float64)
    for name, layer, p in ref.parameters():
        layer._params[p] = net.get_params()[name].astype(np.float64)
    return ref


def _ctor_args(layer):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in layer.config().items()}


def gradcheck(net, x, y, eps=1e-6, max_per_param=None, seed=0):
    """Per parameter: {'rel_error', 'rel_error_backend', 'max_abs_error', 'checked', 'size'}.

    ``max_per_param`` checks a random subset of entries of big arrays (all entries by default).
    """
    ref = float64_copy(net)
    x64 = np.asarray(to_numpy(x), dtype=np.float64)
    ref.forward(x64)
    ref.backward(y)
    net.forward(x)
    net.backward(y)
    rng = np.random.default_rng(seed)
    report = {}
    for (name, layer, p), (_, own, _) in zip(ref.parameters(), net.parameters()):
        theta = layer._params[p]
        flat = np.arange(theta.size)
        if max_per_param is not None and theta.size > max_per_param:
            flat = np.sort(rng.choice(theta.size, max_per_param, replace=False))
        numeric = np.array([_centred_difference(ref, x64, y, theta, i, eps) for i in flat])
        analytic = layer._grads[p].reshape(-1)[flat]
        backend_grad = to_numpy(own._grads[p]).astype(np.float64).reshape(-1)[flat]
        scale = max(np.linalg.norm(numeric), 1e-30)
        report[name] = {
            "rel_error": float(np.linalg.norm(analytic - numeric) / scale),
            "rel_error_backend": float(np.linalg.norm(backend_grad - numeric) / scale),
            "max_abs_error": float(np.abs(analytic - numeric).max()),
            "checked": int(flat.size), "size": int(theta.size),
        }
    return report


def _centred_difference(net, x, y, theta, i, eps):
    flat = theta.reshape(-1)            # a view: writes go into the parameter
    old = flat[i]
    flat[i] = old + eps
    plus = net.cost(x, y)
    flat[i] = old - eps
    minus = net.cost(x, y)
    flat[i] = old
    return (plus - minus) / (2 * eps)
