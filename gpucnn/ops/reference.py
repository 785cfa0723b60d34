"""The NumPy reference op set: the readable definition of every op that has a CUDA kernel.

Every backend exports these functions with these exact signatures (``gpucnn.ops.OP_NAMES``,
asserted by a test). Shapes use lower-case dimension names:

    x, a_prev : (n, c, h, w)         layer input
    W         : (f, c, kh, kw)       conv kernels;  b : (f,)
    z, delta  : (n, f, oh, ow)       oh = (h + 2*ph - kh) // stride + 1   (same for ow)
    argmax    : (n, c, oh, ow) int32 index inside the pooling window, row-major: i * size + j

The chain of trust: float64 finite differences check these functions (tests/test_gradcheck.py),
and these functions check the CUDA kernels (tests/test_backends.py).

NOTE: clarity first. A vectorised fast path may live elsewhere; it is checked against this file.
"""
import numpy as np

from .lowering import first_max, pad, pool_taps, route_to_argmax, windows


# The conv lowering and the pooling route are written once, in lowering.py: the fused CPU plans
# (gpucnn/fast/) call the same functions channel-last.
def _pad(x, padding):
    return pad(x, padding, axes=(2, 3))


def _windows(x, kh, kw, stride):
    """View of every (kh, kw) window of x at the given stride: (n, c, oh, ow, kh, kw). No copy."""
    return windows(x, kh, kw, stride, axes=(2, 3))


def conv2d_forward(x, W, b, stride, padding):
    """z[n,f,y,x] = sum_{c,i,j} x_pad[n, c, y*s+i, x*s+j] * W[f,c,i,j] + b[f]   (cross-correlation)

    x (n, c, h, w), W (f, c, kh, kw), b (f,), padding (ph, pw) -> z (n, f, oh, ow)
    """
    f, c, kh, kw = W.shape
    windows = _windows(_pad(x, padding), kh, kw, stride)           # (n, c, oh, ow, kh, kw)
    z = np.tensordot(windows, W, axes=([1, 4, 5], [1, 2, 3]))      # (n, oh, ow, f)
    z = z.transpose(0, 3, 1, 2) + b.reshape(1, f, 1, 1)
    return np.ascontiguousarray(z, dtype=x.dtype)


def conv2d_backward_weight(x, delta, kernel_size, stride, padding):
    """dW[f,c,i,j] = sum_{n,y,x} x_pad[n, c, y*s+i, x*s+j] * delta[n,f,y,x]

    The valid cross-correlation of the layer input with its delta, summed over the batch
    (dz[y,x]/dW[i,j] = x[y*s+i, x*s+j]). x (n, c, h, w), delta (n, f, oh, ow) -> dW (f, c, kh, kw)
    """
    kh, kw = kernel_size
    oh, ow = delta.shape[2:]
    windows = _windows(_pad(x, padding), kh, kw, stride)[:, :, :oh, :ow]
    dW = np.tensordot(delta, windows, axes=([0, 2, 3], [0, 2, 3]))  # (f, c, kh, kw)
    return np.ascontiguousarray(dW, dtype=x.dtype)


def conv2d_backward_bias(delta):
    """db[f] = sum_{n,y,x} delta[n,f,y,x]: every output position of map f adds b[f] once."""
    return delta.sum(axis=(0, 2, 3)).astype(delta.dtype)


def conv2d_backward_input(delta, W, x_shape, stride, padding):
    """da_prev[n,c,h,w] = sum_{f,i,j: h+ph = y*s+i, w+pw = x*s+j} delta[n,f,y,x] * W[f,c,i,j]

    The full convolution of delta with the flipped kernel (for stride 1). Written here as the
    equivalent scatter, one kernel tap (i, j) at a time; the CUDA kernel writes it as a gather.
    delta (n, f, oh, ow), W (f, c, kh, kw), x_shape (h, w) -> da_prev (n, c, h, w)
    """
    n, f, oh, ow = delta.shape
    _, c, kh, kw = W.shape
    h, w = x_shape
    ph, pw = padding
    da_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=delta.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = np.tensordot(delta, W[:, :, i, j], axes=([1], [0]))  # (n, oh, ow, c)
            da_pad[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += tap.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(da_pad[:, :, ph:ph + h, pw:pw + w])


def flush_subnormals(x):
    """Every subnormal -> the zero of its sign: what a GPU reads under CuPy's -ftz=true."""
    if x.dtype.kind != "f":
        return x
    return np.where(np.abs(x) < np.finfo(x.dtype).tiny, np.copysign(np.zeros_like(x), x), x)


def maxpool2d_forward(x, size, stride):
    """a[n,c,y,x] = max over the window at (y*s, x*s); argmax = first maximum in row-major order.

    x (n, c, h, w) -> a (n, c, oh, ow), argmax (n, c, oh, ow) int32 with oh = (h - size) // s + 1.
    Ties are common on real digits (blank background); np.argmax returns the first maximum, which is
    the rule every backend follows, so exactly one input receives each delta.
    Subnormals compare, and come out, as zeros of their sign (``flush_subnormals``): a GPU compiled
    with -ftz=true sees them so, and every backend must pick the same argmax.
    """
    a, argmax = first_max(pool_taps(flush_subnormals(x), size, stride, axes=(2, 3)))
    return np.ascontiguousarray(a), argmax


def maxpool2d_backward(delta, argmax, x_shape, size, stride):
    """da_prev[n,c,y*s+i,x*s+j] += delta[n,c,y,x] where argmax[n,c,y,x] == i*size + j; zero elsewhere.

    delta, argmax (n, c, oh, ow), x_shape (h, w) -> da_prev (n, c, h, w)
    """
    n, c = delta.shape[:2]
    da_prev = np.zeros((n, c, *x_shape), dtype=delta.dtype)
    route_to_argmax(delta, argmax, pool_taps(da_prev, size, stride, axes=(2, 3)))
    return da_prev


def avgpool2d_forward(x, size, stride):
    """a[n,c,y,x] = (1/size^2) sum_{i,j < size} x[n, c, y*s + i, x*s + j]   (no padding)

    x (n, c, h, w) -> a (n, c, oh, ow) with oh = (h - size) // s + 1.
    """
    windows = _windows(x, size, size, stride)                      # (n, c, oh, ow, size, size)
    return np.ascontiguousarray(windows.mean(axis=(4, 5), dtype=x.dtype))


def avgpool2d_backward(delta, x_shape, size, stride):
    """da_prev[n,c,y*s+i,x*s+j] += delta[n,c,y,x] / size^2 for every tap (i, j); zero where no window
    reaches. Taps are added in ascending k = i*size + j (the CUDA kernel's order).

    delta (n, c, oh, ow), x_shape (h, w) -> da_prev (n, c, h, w)
    """
    n, c = delta.shape[:2]
    share = delta / delta.dtype.type(size * size)
    da_prev = np.zeros((n, c, *x_shape), dtype=delta.dtype)
    for tap in pool_taps(da_prev, size, stride):      # k = i*size + j, ascending
        tap += share
    return da_prev
