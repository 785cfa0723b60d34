"""The network's layout, the one place pixels and labels are converted into it.

    x  float32 (n, 1, 28, 28), values in [0, 1]  (pixel / 255; 0 is background, 1 is ink)
    y  int64   (n,), values in 0..9
"""
import numpy as np

from ..errors import DataError


def _to_network(x, y):
    """uint8 (n, 28, 28) and labels -> float32 (n, 1, 28, 28) in [0, 1] and int64 (n,)."""
    x = (x.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return x, y.astype(np.int64)


def one_hot(y, classes=10):
    """Integer labels (n,) -> float32 (n, classes) with a single 1 per row."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"one_hot needs 1-D integer labels, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"labels must be in 0..{classes - 1}, got {y.min()}..{y.max()}")
    out = np.zeros((y.size, classes), dtype=np.float32)
    out[np.arange(y.size), y] = 1.0
    return out
