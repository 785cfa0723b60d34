"""Checks on what users hand the network. Each failure names the problem: type, shape or value."""
import numbers

import numpy as np

from .errors import DataError, ShapeError


def _is_array(a):
    return isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__")


def check_inputs(x, input_shape, name="x"):
    """x must be a real-valued array of shape (n, *input_shape), n >= 1, all finite."""
    if not _is_array(x):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 1 + len(input_shape) or tuple(x.shape[1:]) != tuple(input_shape):
        raise ShapeError(f"{name} must have shape (n, {', '.join(map(str, input_shape))}), "
                         f"got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty (0 samples)")
    _check_finite(x, name)


def check_labels(y, n, classes, name="y"):
    """y: int labels (n,) in [0, classes) or one-hot / target rows (n, classes). Returns its kind."""
    if not _is_array(y):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(y).__name__}")
    if y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} as labels must be integers, got dtype {y.dtype}")
        _check_length(y, n, name)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            i = int(_module(y).flatnonzero((y < 0) | (y >= classes))[0])
            raise DataError(f"{name} has labels outside 0..{classes - 1}: {name}[{i}] = {int(y[i])} "
                            f"(min {lo}, max {hi})")
        return "labels"
    if y.ndim == 2:
        if y.shape[1] != classes:
            raise ShapeError(f"{name} as one-hot rows must have shape (n, {classes}), got {tuple(y.shape)}")
        if y.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
        _check_length(y, n, name)
        _check_finite(y, name)
        return "onehot"
    raise ShapeError(f"{name} must be labels (n,) or one-hot rows (n, {classes}), got shape {tuple(y.shape)}")


def _check_length(y, n, name):
    if y.shape[0] != n:
        raise ShapeError(f"{name} has {y.shape[0]} entries but x has {n} samples")


def _check_finite(a, name):
    if a.dtype.kind != "f":
        return
    xp = _module(a)
    bad = ~xp.isfinite(a)
    if bool(bad.any()):
        first = ", ".join(str(int(i)) for i in xp.argwhere(bad)[0])
        raise DataError(f"{name} contains NaN or inf: {int(xp.isnan(a).sum())} NaN, "
                        f"{int(xp.isinf(a).sum())} inf of {a.size} values (first at {name}[{first}])")


def check_positive_int(value, name, upper=None):
    """A count such as epochs or batch_size: TypeError unless an int, ValueError unless >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} ({value}) is larger than the data ({upper} samples)")
    return int(value)


def _module(a):
    return np if isinstance(a, np.ndarray) else __import__("cupy")
