"""The conv lowering and the pooling route, written once: the NumPy reference ops (reference.py) and the
fused CPU plans (gpucnn/fast/) both call these, in either layout.

``axes`` names the two spatial axes: (2, 3) for the reference's (n, c, h, w), (1, 2) for the plans'
channel-last (n, h, w, c). Everything returns views where it can (no copy).

    pad(x, padding, axes)                 zeros around the spatial axes (ph, pw)
    windows(x, kh, kw, stride, axes)      every (kh, kw) window at the stride: the spatial axes become
                                          (oh, ow) and (kh, kw) are appended. Copying this view into a
                                          matrix is im2col (the plans do it channel-last, one matmul
                                          per conv); the reference contracts it with W by tensordot.
    pool_taps(x, size, stride, axes)      the size*size strided views tap k = i*size + j of every
                                          pooling window, (n, c, oh, ow) / (n, oh, ow, c)
    window_max(taps)                      the window maxima (what inference needs)
    first_max(taps)                       (the window maxima, argmax): the FIRST maximum in row-major
                                          window order, a NaN counting as the maximum (np.argmax's
                                          rule, and the CUDA kernel's)
    route_to_argmax(delta, argmax, taps)  adds each window's delta to the one input its argmax names
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided


def pad(x, padding, axes=(2, 3)):
    """x with ph zero rows and pw zero columns on both sides of the spatial axes (x itself if none)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axes[0]], widths[axes[1]] = (ph, ph), (pw, pw)
    return np.pad(x, widths)


def windows(x, kh, kw, stride, axes=(2, 3)):
    """View of every (kh, kw) window of x at the stride (an int, or (rows, columns)); (kh, kw) appended
    as the last two axes.

    (n, c, h, w), axes (2, 3) -> (n, c, oh, ow, kh, kw);  (n, h, w, c), axes (1, 2) -> (n, oh, ow, c,
    kh, kw), with oh = (h - kh) // stride + 1. No copy.
    """
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    (ay, ax), shape, strides = axes, list(x.shape), list(x.strides)
    if shape[ay] < kh or shape[ax] < kw:
        raise ValueError(f"windows of {kh}x{kw} do not fit in {x.shape} along axes {axes}")
    shape[ay], shape[ax] = (shape[ay] - kh) // sy + 1, (shape[ax] - kw) // sx + 1
    strides[ay], strides[ax] = strides[ay] * sy, strides[ax] * sx
    # as numpy's sliding_window_view then a strided slice, without its ~20 us of Python per call
    return as_strided(x, shape + [kh, kw], strides + [x.strides[ay], x.strides[ax]], writeable=False)


def pool_taps(x, size, stride, axes=(2, 3)):
    """[tap k for k = i*size + j]: x at (y*stride + i, x*stride + j) for every window (y, x). Views.

    Each tap has the pooled shape: oh = (h - size) // stride + 1 on the spatial axes.
    """
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    taps = []
    for k in range(size * size):
        i, j = divmod(k, size)
        index = [slice(None)] * x.ndim
        index[axes[0]] = slice(i, h - size + 1 + i, stride)
        index[axes[1]] = slice(j, w - size + 1 + j, stride)
        taps.append(x[tuple(index)])
    return taps


def window_max(taps, pooled=None):
    """Each window's maximum (a NaN wins); ``pooled`` may be given as the output array."""
    if pooled is None:
        pooled = np.empty(taps[0].shape, taps[0].dtype)
    np.copyto(pooled, taps[0])
    for tap in taps[1:]:
        np.maximum(pooled, tap, out=pooled)
    return pooled


def first_max(taps, pooled=None, argmax=None, signed_zeros=True):
    """-> (pooled, argmax): each window's maximum and the index k of its FIRST maximum.

    An earlier equal maximum keeps the window (the tie rule); a NaN counts as the maximum, its
    first position the argmax (np.argmax's rule, and the CUDA kernel's). ``pooled`` / ``argmax`` may
    be given as output arrays of the taps' shape (argmax of any integer dtype; int32 by default).
    ``signed_zeros``: a window whose maximum is a zero gives the zero of its first maximum, -0.0 or
    0.0, bit for bit (np.maximum may give either); the fused plans, for which the two are the same
    number, pass False.
    Branch-free arithmetic, not masked copies: pooling masks are random and a masked copy pays a
    mispredicted branch per element.
    """
    n = len(taps)
    pooled = window_max(taps, pooled)
    if argmax is None:
        argmax = np.empty(pooled.shape, np.int32)
    argmax.fill(n - 1)
    hit = np.empty(pooled.shape, bool)
    step = np.empty(pooled.shape, argmax.dtype)
    for k in range(n - 2, -1, -1):                      # the earliest hit is written last: it wins
        np.equal(taps[k], pooled, out=hit)
        if pooled.size < 4096:                          # small: the calls cost more than the branches
            np.copyto(argmax, k, where=hit)
            continue
        np.subtract(argmax, k, out=step)
        np.multiply(step, hit, out=step)
        np.subtract(argmax, step, out=argmax)           # hit: k; else unchanged
    if np.isnan(np.add.reduce(pooled, axis=None)):      # a NaN (never equal to itself) is here
        for k in range(n - 1, -1, -1):
            np.copyto(argmax, k, where=np.isnan(taps[k]))
    if signed_zeros and not pooled.all():               # zeros: the argmax's own sign
        zero = pooled == 0
        for k in range(n):
            np.copyto(pooled, taps[k], where=zero & (argmax == k))
    return pooled, argmax


def route_to_argmax(delta, argmax, taps, fresh=False):
    """taps[k] += delta where argmax == k: every window's delta goes to its argmax input, in place.

    ``taps`` are the pool_taps views of the (zeroed) dC/d(input); overlapping windows add up.
    ``fresh``: the taps do not overlap and cover their array, which need not be zeroed (each entry is
    written once: delta or 0).
    """
    hit = np.empty(argmax.shape, bool)
    finite = bool(np.isfinite(delta).all())             # else inf * 0 would make a NaN where 0 goes
    for k, tap in enumerate(taps):
        np.equal(argmax, k, out=hit)
        if not finite:
            if fresh:
                tap.fill(0)
            np.add(tap, delta, out=tap, where=hit)
        elif fresh:
            np.multiply(delta, hit, out=tap)
        else:
            tap += delta * hit
    return taps
