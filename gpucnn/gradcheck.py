"""Gradient check: float64 centred finite differences against the hand-written backward pass.

    numeric  dC/dtheta ~ (C(theta + eps) - C(theta - eps)) / (2 eps)      on a float64 NumPy copy
    analytic the backward pass, twice: on that float64 copy (checks the math) and on the network's own
             backend and dtype (checks the implementation there, e.g. float32 CUDA kernels)

rel_error = ||analytic - numeric|| / ||numeric|| per parameter array. Near kinks (pooling near-ties,
ReLU inputs near 0) the step is shrunk until both sides take the same branch.
"""
import sys

import numpy as np
from tqdm import tqdm

from . import layers as L
from .backend import to_numpy
from .layers.dropout import fixed_masks
from .network import Network
from .validation import check_inputs, check_positive_int, check_real


def float64_copy(net):
    """The same architecture, parameters, buffers and mode on the NumPy backend in float64."""
    ref = Network([type(layer)(**_ctor_args(layer)) for layer in net.layers], loss=net.loss.name,
                  backend="numpy", input_shape=net.input_shape, dtype=np.float64)
    ref.set_params(net.get_arrays())
    return ref.train(net.training)


def _ctor_args(layer):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in layer.config().items()}


DEFAULT_MAX_PER_PARAM = 64


def gradcheck(net, x, y, eps=1e-6, max_per_param=DEFAULT_MAX_PER_PARAM, seed=0, inputs=False,
              progress=None):
    """Per parameter: {'rel_error', 'rel_error_backend', 'max_abs_error', 'checked', 'size', 'kinks'}.

    ``kinks`` counts the entries where no step small enough kept both sides on the same branch (an
    exact pooling tie broken by moving an input pixel, say): there the function has no derivative, the
    difference quotient is an average of two slopes, and a large rel_error is expected.

    ``max_per_param`` (default 64) checks that many entries of each array, drawn at random with
    ``seed``; ``None`` checks every entry (two forward passes each: minutes for a wide network).
    ``inputs=True`` also checks dC/dx, the gradient ``backward`` returns, under the name 'x'.
    ``progress``: a bar on stderr (tqdm); None shows it on a terminal when over 2,000 entries are checked.
    """
    if not isinstance(net, Network):
        raise TypeError(f"gradcheck checks a gpucnn Network, got {type(net).__name__}")
    check_inputs(x, net.input_shape)          # before the float64 copy is made of it
    eps = check_real(eps, "eps (the finite-difference step)", strict=True)
    if max_per_param is not None:
        max_per_param = check_positive_int(max_per_param, "max_per_param (or None for every entry)")
    ref = float64_copy(net)
    x64 = np.array(to_numpy(x), dtype=np.float64)
    net.forward(x)                                     # draws the net's dropout masks (train mode)
    dx = to_numpy(net.backward(y))
    for layer, twin in zip(net.layers, ref.layers):    # the copy takes them, held for every difference
        if isinstance(layer, L.Dropout):
            twin.keep = layer.keep
    with fixed_masks():
        return _check(net, ref, x64, y, dx, eps, max_per_param, seed, inputs, progress)


def _check(net, ref, x64, y, dx, eps, max_per_param, seed, inputs, progress):
    ref.forward(x64)
    dx64 = ref.backward(y)
    y1 = ref.targets(y, x64.shape[0])                  # checked once, not per difference
    rng = np.random.default_rng(seed)
    checks = [(p.name, p.value, p.grad, to_numpy(own.grad))
              for p, own in zip(ref.parameters(), net.parameters())]
    if inputs:
        checks.append(("x", x64, dx64, dx))
    picks = [np.arange(theta.size) if max_per_param is None or theta.size <= max_per_param
             else np.sort(rng.choice(theta.size, max_per_param, replace=False)) for _, theta, _, _ in checks]
    total = sum(flat.size for flat in picks)
    show = sys.stderr.isatty() and total > 2000 if progress is None else bool(progress)
    report = {}
    with tqdm(total=total, desc="gradcheck", unit="entry", disable=not show, leave=False) as bar:
        for (name, theta, analytic, backend_grad), flat in zip(checks, picks):
            bar.set_postfix_str(name)
            numeric, kinks = [], 0
            for i in flat:
                slope, kink = _centred_difference(ref, x64, y1, theta, i, eps)
                numeric.append(slope)
                kinks += kink
                bar.update()
            report[name] = _compare(np.array(numeric), analytic.reshape(-1)[flat],
                                    backend_grad.astype(np.float64).reshape(-1)[flat], theta.size)
            report[name]["kinks"] = int(kinks)
    return report


def _compare(numeric, analytic, backend_grad, size):
    scale = max(np.linalg.norm(numeric), 1e-30)
    return {
        "rel_error": float(np.linalg.norm(analytic - numeric) / scale),
        "rel_error_backend": float(np.linalg.norm(backend_grad - numeric) / scale),
        "max_abs_error": float(np.abs(analytic - numeric).max()),
        "checked": int(numeric.size), "size": int(size),
    }


def _centred_difference(net, x, y1, theta, i, eps):
    """-> ((C(theta_i + eps) - C(theta_i - eps)) / 2 eps, whether it straddles a kink), with eps shrunk
    while the step crosses a kink.

    A pooling window whose two largest values are closer than the step (a near-tie that is not an
    exact tie) or a ReLU input near 0 makes the difference quotient straddle a kink: then the argmax
    or ReLU pattern differs between the two sides, and a smaller eps is tried.
    """
    flat = theta.reshape(-1)            # a view: writes go into the parameter
    old = flat[i]
    while True:
        flat[i] = old + eps
        plus, plus_pattern = _cost(net, x, y1), _kink_pattern(net)
        flat[i] = old - eps
        minus, minus_pattern = _cost(net, x, y1), _kink_pattern(net)
        flat[i] = old
        smooth = all(np.array_equal(p, m) for p, m in zip(plus_pattern, minus_pattern))
        if smooth or eps < 1e-9:
            return (plus - minus) / (2 * eps), not smooth
        eps /= 10


def _cost(net, x, y1):
    """The batch cost of the float64 copy (layer by layer, its caches filled for _kink_pattern), with
    x and the targets y1 checked once by the caller."""
    return net.loss.cost(np, net._forward(x), y1)


def _kink_pattern(net):
    """Which branch every non-smooth layer took: pooling argmaxes and ReLU signs."""
    return [layer.argmax.copy() if isinstance(layer, L.MaxPool2D) else layer.z > 0
            for layer in net.layers if isinstance(layer, (L.MaxPool2D, L.ReLU))]
