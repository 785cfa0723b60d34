"""Naive-loop definitions of every op: slow, obvious, and independent of the vectorised reference.

Each loop is the formula in gpucnn/ops/reference.py written one index at a time.
"""
import numpy as np


def conv2d_forward(x, W, b, stride, padding):
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    ph, pw = padding
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    z = np.zeros((n, f, oh, ow))
    for s in range(n):
        for k in range(f):
            for y in range(oh):
                for x_ in range(ow):
                    acc = b[k]
                    for ch in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                acc += xp[s, ch, y * stride + i, x_ * stride + j] * W[k, ch, i, j]
                    z[s, k, y, x_] = acc
    return z


def conv2d_backward_weight(x, delta, kernel_size, stride, padding):
    n, c, h, w = x.shape
    _, f, oh, ow = delta.shape
    kh, kw = kernel_size
    ph, pw = padding
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + w] = x
    dW = np.zeros((f, c, kh, kw))
    for k in range(f):
        for ch in range(c):
            for i in range(kh):
                for j in range(kw):
                    dW[k, ch, i, j] = sum(xp[s, ch, y * stride + i, x_ * stride + j] * delta[s, k, y, x_]
                                          for s in range(n) for y in range(oh) for x_ in range(ow))
    return dW


def conv2d_backward_bias(delta):
    n, f, oh, ow = delta.shape
    return np.array([sum(delta[s, k, y, x_] for s in range(n) for y in range(oh) for x_ in range(ow))
                     for k in range(f)])


def conv2d_backward_input(delta, W, x_shape, stride, padding):
    """Gather form: each input pixel sums the deltas of every output whose window covers it."""
    n, f, oh, ow = delta.shape
    _, c, kh, kw = W.shape
    h, w = x_shape
    ph, pw = padding
    da = np.zeros((n, c, h, w))
    for s in range(n):
        for ch in range(c):
            for r in range(h):
                for q in range(w):
                    acc = 0.0
                    for k in range(f):
                        for i in range(kh):
                            for j in range(kw):
                                y, rem_y = divmod(r + ph - i, stride)
                                x_, rem_x = divmod(q + pw - j, stride)
                                if rem_y == 0 and rem_x == 0 and 0 <= y < oh and 0 <= x_ < ow:
                                    acc += delta[s, k, y, x_] * W[k, ch, i, j]
                    da[s, ch, r, q] = acc
    return da


def maxpool2d_forward(x, size, stride):
    n, c, h, w = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    a = np.zeros((n, c, oh, ow), dtype=x.dtype)
    argmax = np.zeros((n, c, oh, ow), dtype=np.int32)
    for s in range(n):
        for ch in range(c):
            for y in range(oh):
                for x_ in range(ow):
                    best, best_k = -np.inf, 0
                    for i in range(size):
                        for j in range(size):
                            v = x[s, ch, y * stride + i, x_ * stride + j]
                            if v > best:                 # strict: the first maximum wins
                                best, best_k = v, i * size + j
                    a[s, ch, y, x_], argmax[s, ch, y, x_] = best, best_k
    return a, argmax


def maxpool2d_backward(delta, argmax, x_shape, size, stride):
    n, c, oh, ow = delta.shape
    da = np.zeros((n, c) + tuple(x_shape))
    for s in range(n):
        for ch in range(c):
            for y in range(oh):
                for x_ in range(ow):
                    i, j = divmod(int(argmax[s, ch, y, x_]), size)
                    da[s, ch, y * stride + i, x_ * stride + j] += delta[s, ch, y, x_]
    return da
