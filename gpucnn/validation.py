"""Checks on what users hand the network. Each failure names the problem: type, shape or value."""
import numbers

import numpy as np

from .errors import ShapeError


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
        raise ValueError(f"{name} is empty (0 samples)")
    if x.dtype.kind == "f" and not bool(_module(x).isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


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
            raise ValueError(f"{name} has labels outside 0..{classes - 1} (min {lo}, max {hi})")
        return "labels"
    if y.ndim == 2:
        if y.shape[1] != classes:
            raise ShapeError(f"{name} as one-hot rows must have shape (n, {classes}), got {tuple(y.shape)}")
        if y.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
        _check_length(y, n, name)
        if y.dtype.kind == "f" and not bool(_module(y).isfinite(y).all()):
            raise ValueError(f"{name} contains NaN or inf")
        return "onehot"
    raise ShapeError(f"{name} must be labels (n,) or one-hot rows (n, {classes}), got shape {tuple(y.shape)}")


def _check_length(y, n, name):
    if y.shape[0] != n:
        raise ShapeError(f"{name} has {y.shape[0]} entries but x has {n} samples")


def check_positive_int(value, name, upper=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} ({value}) is larger than the data ({upper} samples)")
    return int(value)


def _module(a):
    return np if isinstance(a, np.ndarray) else __import__("cupy")
