"""Checks on what users hand the network. Each failure names the problem: type, shape or value."""
import math
import numbers
import warnings

import numpy as np

from .errors import DataError, PixelRangeWarning, ShapeError


def _is_array(a, name):
    """A NumPy array, or a CuPy one; another library's device array is refused by name, not by a
    failed ``import cupy`` deep inside a check."""
    if isinstance(a, np.ndarray):
        return True
    if not hasattr(a, "__cuda_array_interface__"):
        return False
    kind = f"{type(a).__module__}.{type(a).__qualname__}"
    if not type(a).__module__.split(".")[0] == "cupy":
        raise TypeError(f"{name} is a {kind} (a GPU array, it has __cuda_array_interface__); gpucnn takes "
                        "NumPy arrays, or CuPy arrays on the cupy backend: convert it first "
                        "(e.g. cupy.asarray(x), or copy it to the host as a NumPy array)")
    return True


def check_real(value, name, minimum=0.0, strict=False, maximum=None):
    """Any real number (Python or NumPy, or a 0-d real array) that is finite, >= minimum (> when
    strict) and, when given, <= maximum -> float."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (value <= minimum if strict else value < minimum) or (maximum is not None and value > maximum):
        if maximum is not None:
            bound = f"in {'(' if strict else '['}{minimum:g}, {maximum:g}]"
        else:
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be a finite real number {bound}, got {value!r}")
    return float(value)


def check_inputs(x, input_shape, name="x"):
    """x must be a float array of shape (n, *input_shape), n >= 1, all finite.

    Integer arrays are refused, not guessed at: uint8 0..255 pixels fed as they are train a net to
    chance level (11% on MNIST), and scaling them silently would make an int64 array of counts mean
    something else. The message says how to convert (``x.astype(np.float32) / 255`` for 8-bit pixels).
    """
    if not _is_array(x, name):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype.kind in "iu":
        hint = (f"for 8-bit pixels 0..255 pass {name}.astype(np.float32) / 255" if x.dtype == np.uint8
                else f"convert it with {name}.astype(np.float32) (divided by 255 if it holds 0..255 pixels)")
        raise TypeError(f"{name} has integer dtype {x.dtype}; gpucnn takes float inputs "
                        f"(images as float32 in [0, 1]): {hint}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must hold real numbers (float16, float32 or float64), got dtype {x.dtype}")
    if x.ndim != 1 + len(input_shape) or tuple(x.shape[1:]) != tuple(input_shape):
        raise ShapeError(f"{name} must have shape (n, {', '.join(map(str, input_shape))}), "
                         f"got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty (0 samples)")
    _check_finite(x, name)
    if x.ndim == 4:
        _warn_if_unscaled_pixels(x, name)


def _warn_if_unscaled_pixels(x, name):
    """Images given as float whole numbers 0..255 (``x.astype(np.float32)`` without the ``/ 255``) train
    to chance as silently as uint8 did: warned, not refused, since such values can be meant."""
    xp = _module(x)
    hi = float(x.max())
    if hi > 1 and hi <= 255 and float(x.min()) >= 0 and bool(xp.all(x == xp.round(x))):
        warnings.warn(f"{name} holds whole numbers 0..{hi:g}, like 8-bit pixels in a float array; gpucnn takes "
                      f"images in [0, 1]: pass {name} / 255 if these are pixel values", PixelRangeWarning,
                      stacklevel=4)


def check_labels(y, n, classes, name="y", distributions=False):
    """y: int labels (n,) in [0, classes) or one-hot / target rows (n, classes). Returns its kind.

    ``distributions=True`` (cross-entropy): target rows must be probability distributions, entries
    >= 0 summing to 1 (within 1e-3), since dC/dz = p - y is the gradient of -sum y log p only then.
    """
    if not _is_array(y, name):
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
        if distributions:
            _check_distributions(y, name)
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


def _check_distributions(y, name, tol=1e-3):
    xp = _module(y)
    if bool((y < 0).any()):
        first = ", ".join(str(int(i)) for i in xp.argwhere(y < 0)[0])
        raise DataError(f"{name} as cross-entropy target rows must be >= 0, got {name}[{first}] = "
                        f"{float(y[tuple(int(i) for i in xp.argwhere(y < 0)[0])]):g}")
    sums = y.sum(axis=1, dtype=np.float64)
    bad = xp.flatnonzero(xp.abs(sums - 1) > tol)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{name} as cross-entropy target rows must each sum to 1 (probabilities), "
                        f"row {i} sums to {float(sums[i]):g} ({int(bad.size)} of {y.shape[0]} rows do not); "
                        "pass integer labels (n,) or one-hot rows")


def check_positive_int(value, name, upper=None):
    """A count such as epochs or batch_size: TypeError unless an int, ValueError unless >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} ({value}) is larger than the data ({upper} samples)")
    return int(value)


def check_flag(value, name):
    """A yes/no argument: True/False (NumPy's too) or 0/1; a string such as 'False' is refused, not
    taken as true."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _module(a):
    return np if isinstance(a, np.ndarray) else __import__("cupy")
