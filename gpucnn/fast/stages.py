"""One fused stage per layer type, each built from that layer's own primitives.

A stage works on a chunk of m images in the plan's layout: channel-last (m, h, w, c) for maps, (m, d)
for vectors. ``forward(chunk, a, params) -> a`` keeps in ``chunk.cache[index]`` what its backward needs;
``backward(chunk, da, params, parts, need_da) -> da_prev`` adds its gradient parts to ``parts`` under
``"<index>.<key>"``; ``params(p)`` adds this step's parameters in the stage's layouts; ``store(total)``
writes the summed parts back to the layer's Parameter.grad in the layer's own shapes.

Where each piece of math comes from (one definition each):
    conv lowering, pooling route   gpucnn/ops/lowering.py (windows, pool_taps, first_max, route_to_argmax)
    sigma, sigma'                  the layer class's sigma / sigma_scaled / prime (layers/activations.py)
    dense                          layers/dense.py dense_forward / dense_backward
    average pooling                ops/reference.py avgpool2d_forward / _backward (on channel-last views)
    loss gradient                  the network's loss object, ``gradient(xp, out, y1, n=)`` (common.py)

Fusions the plan makes between neighbours (StagePlan._fuse in plan.py):
    * an activation's prescale (Sigmoid: 0.5 z) folded into the conv or dense weights before it
      (a power of 2: exact), so the activation runs sigma_scaled in place;
    * conv -> activation -> max-pool: the conv computes only the rows and columns the pool reads;
      activation -> max-pool: the pool takes z, sigma runs on the pooled values only (the activations
      here never decrease) and sigma' only at each window's argmax (from the pooled value, which is
      the output there) - a quarter of the positions for a 2x2 pool;
    * Flatten's channel-last order absorbed into the next dense layer's columns (a permutation).
"""
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import layers as L
from ..layers.dense import dense_backward, dense_forward
from ..ops import lowering, reference
from .common import ordered_sum

# Activations whose sigma'(z) is a function of the output a alone (ReLU: [z > 0] = [a > 0]) and that
# never decrease: the only ones with a stage (STAGES), so a stage passes a for z and keeps no copy of
# z, and a max-pool may take z and apply sigma after it.
PRIME_FROM_OUTPUT = ("Sigmoid", "Tanh", "ReLU")


def column_sums(a, dtype=np.float32):
    """The sums down the columns of a 2-D array, in dtype: a matrix-vector product with ones. (NumPy's
    a.sum(axis=0) adds row after row, ~10x slower for a few columns, e.g. a conv's (m*oh*ow, f).)"""
    return np.ones(a.shape[0], dtype) @ a.astype(dtype, copy=False)


class Stage:
    """Base: identity shape, no parameters, output owned by the plan (the next stage may overwrite it)."""
    owns_output = True
    flops = 0                    # multiply-adds per image (a forward), for the plan's thread rule
    floats = 0                   # scratch floats per image, for the chunk size
    gemm = 0                     # the largest matmul's m*n*k per image (the OpenBLAS guard rule)

    def __init__(self, layer, index, in_shape):
        self.layer, self.index, self.in_shape = layer, index, in_shape
        self.out_shape = in_shape
        self._keys = {}                   # name -> "<index>.<name>" (key())

    def available(self):
        return None

    def params(self, p):
        pass

    def draw(self, p, n):
        """Add this step's random draws for a batch of n (dropout masks) to ``p``."""

    def whole_batch(self, p):
        """Whether this step's forward needs the whole batch here (then the plan runs in phases)."""
        return False

    def hold(self, chunk, a, name):
        """``a`` copied into this chunk's own array (kept between the phases of a step)."""
        held = chunk.keep(self.key(name), a.shape)
        np.copyto(held, a)
        return held

    def store(self, total):
        pass

    def key(self, name):
        """"<index>.<name>", the key of this stage's parameters, parts and buffers (cached: a step
        asks for a couple of dozen)."""
        try:
            return self._keys[name]
        except KeyError:                  # first ask (two threads may both store the same string)
            return self._keys.setdefault(name, f"{self.index}.{name}")


class ConvStage(Stage):
    """Conv2D as im2col (lowering.windows, channel-last) and one matmul: z = C Wm + b.

    C (m*oh*ow, kh*kw*c) rows (m, y, x), columns (i, j, c); Wm (kh*kw*c, f). Backward: dW = C^T delta,
    db = delta summed, da_prev = sum over taps (i, j) of delta W[:, :, i, j] added at offset (i, j).
    """

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        h, w, c = in_shape
        (self.kh, self.kw), (self.ph, self.pw), self.stride = layer.kernel_size, layer.padding, layer.stride
        self.f = layer.out_channels
        self.full = (L.conv_outsize(h, self.kh, self.ph, self.stride),
                     L.conv_outsize(w, self.kw, self.pw, self.stride))
        self.crop(*self.full)
        self.prescale = 1.0

    def crop(self, oh, ow, block=None):
        """Compute only output rows < oh and columns < ow (what a max-pool after it reads).

        ``block`` = s: a non-overlapping s x s max-pool follows, so C's rows (and z's) are put in
        tap-major order (dy, dx, m, py, px): each tap of every pooling window is then one contiguous
        (m*poh*pow, f) block of z, and z comes out as (s*s, m*poh*pow, f).
        """
        h, w, c = self.in_shape
        self.oh, self.ow, self.block = oh, ow, block
        self.out_shape = (oh, ow, self.f)
        K = self.kh * self.kw * c
        self.flops = oh * ow * K * self.f
        self.gemm = self.flops
        self.floats = oh * ow * (K + 2 * self.f) + (h + 2 * self.ph) * (w + 2 * self.pw) * c
        # the im2col copy runs fastest along its longest contiguous run: kw*c floats in C's rows, or
        # (for a thin input, c = 1) along the output columns in C^T's rows
        self.transposed = self.kw * c < 8
        self.row_bands = self.stride == 1 and c <= self.ROW_BANDS_MAX_C

    def params(self, p):
        W, b = self.layer.W, self.layer.b
        f, c = W.shape[:2]
        Wm = np.ascontiguousarray(W.transpose(2, 3, 1, 0)).reshape(-1, f)
        p[self.key("Wm")] = Wm * self.prescale if self.prescale != 1.0 else Wm
        p[self.key("b")] = b * self.prescale if self.prescale != 1.0 else b

    def _rows(self, view, m):
        """(m, oh, ow, ...) -> the same array with C's row order: (m, oh, ow, ...) or, blocked,
        (dy, dx, m, py, px, ...). A view."""
        if self.block is None:
            return view
        s = self.block
        rest = view.shape[3:]
        split = view.reshape(m, self.oh // s, s, self.ow // s, s, *rest)
        return split.transpose(2, 4, 0, 1, 3, *range(5, 5 + len(rest)))

    def _im2col(self, chunk, a):
        """a (m, h, w, c) -> C (m*oh*ow, kh*kw*c) in scratch (a transposed view when the copy runs
        along C^T): one strided copy of lowering.windows."""
        m = a.shape[0]
        h, w, c = self.in_shape
        if self.ph or self.pw:
            padded = chunk.buf(self.key("pad"), (m, h + 2 * self.ph, w + 2 * self.pw, c))
            padded.fill(0)
            padded[:, self.ph:self.ph + h, self.pw:self.pw + w] = a
            a = padded
        win = lowering.windows(a, self.kh, self.kw, self.stride, axes=(1, 2))  # (m, oh, ow, c, kh, kw)
        rows = self._rows(win[:, :self.oh, :self.ow], m)                        # (rows..., c, kh, kw)
        r = rows.ndim - 3
        M, K = m * self.oh * self.ow, self.kh * self.kw * c
        store = chunk.keep if chunk.grad else chunk.buf      # scratch but in a phased step
        if self.transposed:
            CT = store(self.key("C"), (K, M))
            np.copyto(CT.reshape(self.kh, self.kw, c, *rows.shape[:r]),
                      rows.transpose(r + 1, r + 2, r, *range(r)))
            return CT.T
        C = store(self.key("C"), (M, K))
        np.copyto(C.reshape(*rows.shape[:r], self.kh, self.kw, c), rows.transpose(*range(r), r + 1, r + 2, r))
        return C

    def forward(self, chunk, a, p):
        C = self._im2col(chunk, a)
        z = chunk.keep(self.key("z"), (C.shape[0], self.f))
        np.matmul(C, p[self.key("Wm")], out=z)
        np.add(z, p[self.key("b")], out=z)
        # a step keeps C for its backward (per chunk when it runs in phases); the kept forward of
        # Network.forward keeps the input, not C: its backward lowers it again
        chunk.cache[self.index] = (a, C if chunk.grad else None)
        if self.block is not None:
            return z.reshape(self.block * self.block, -1, self.f)
        return z.reshape(a.shape[0], self.oh, self.ow, self.f)

    def backward(self, chunk, delta, p, parts, need_da):
        a, C = chunk.cache[self.index]
        if C is None:
            C = self._im2col(chunk, a)
        d2 = delta.reshape(-1, self.f)
        parts[self.key("W")] = C.T @ d2
        parts[self.key("b")] = column_sums(d2)
        if not need_da:
            return None
        m = a.shape[0]
        if self.block is not None:            # back to (m, oh, ow, f) rows: the adds then run along rows
            natural = chunk.buf(self.key("dn"), (m, self.oh, self.ow, self.f))
            np.copyto(self._rows(natural, m), d2.reshape(self._rows(natural, m).shape))
            d2 = natural.reshape(-1, self.f)
        if self.row_bands:
            return self._rows_back(chunk, d2, self._dx_weights(p), m)
        return self._col2im(chunk, d2, self._dx_weights(p), m)

    def _dx_weights(self, p):
        """W in the layout dC/dx needs (row bands B, or per tap), made on the step's first ask (a first
        layer in training never asks; inference never does); two threads asking at once make the
        same array, keep one."""
        key = self.key("W_dx")
        if key not in p:
            W = self.layer.W
            made = self._row_bands(W) if self.row_bands else \
                np.ascontiguousarray(W.transpose(2, 3, 0, 1)).reshape(self.kh * self.kw, *W.shape[:2])
            p.setdefault(key, made)
        return p[key]

    # dC/d(input) for a thin input (few channels): per kernel row i, ONE matmul of the delta's rows
    # (m*oh, ow*f) with a banded B_i (ow*f, wp*c), B_i[(x, f), (x + j, c)] = W[f, c, i, j], gives that
    # row's contribution to whole input rows y + i, added at once. w/kw times the flops of the per-tap
    # matmuls, whose (M, f) @ (f, c) products are too thin for BLAS when c is small (LeNet's second conv,
    # c = 6: 0.75 -> 0.33 ms per 32 images).
    ROW_BANDS_MAX_C = 8

    def _row_bands(self, W):
        """B (kh, ow*f, wp*c), zero off the bands: for each kernel column j, the entries (x, x + j) of
        every output column x are one strided view of B (a diagonal), filled with W[:, :, :, j] at
        once (a per-entry scatter of LeNet's 24k entries took ~0.1 ms a step)."""
        kh, wp, c, f = self.kh, self.in_shape[1] + 2 * self.pw, self.in_shape[2], self.f
        B = np.zeros((kh, self.ow, f, wp, c), np.float32)
        si, sx, sf, sw, sc = B.strides
        for j in range(self.kw):
            diagonal = as_strided(B[:, :, :, j:], (kh, self.ow, f, c), (si, sx + sw, sf, sc))
            diagonal[...] = W[:, :, :, j].transpose(2, 0, 1)[:, None]       # (kh, 1, f, c)
        return B.reshape(kh, self.ow * f, wp * c)

    def _rows_back(self, chunk, d2, B, m):
        h, w, c = self.in_shape
        hp, wp = h + 2 * self.ph, w + 2 * self.pw
        rows = d2.reshape(m * self.oh, self.ow * self.f)
        part = chunk.buf(self.key("dB"), (m * self.oh, wp * c))
        da = np.zeros((m, hp, wp * c), np.float32)
        for i in range(self.kh):
            np.matmul(rows, B[i], out=part)
            da[:, i:i + self.oh] += part.reshape(m, self.oh, wp * c)
        return da.reshape(m, hp, wp, c)[:, self.ph:self.ph + h, self.pw:self.pw + w]

    def _col2im(self, chunk, d2, W_taps, m):
        """dC/d(input) (m, h, w, c) from delta rows (m, oh, ow): one matmul per tap gives that tap's
        product contiguous, then one add of it at the tap's offset, along rows of ow*c floats."""
        h, w, c = self.in_shape
        oh, ow, s = self.oh, self.ow, self.stride
        dC = chunk.buf(self.key("dC"), (self.kh * self.kw, d2.shape[0], c))
        da = np.zeros((m, h + 2 * self.ph, w + 2 * self.pw, c), np.float32)
        for t in range(self.kh * self.kw):
            i, j = divmod(t, self.kw)
            np.matmul(d2, W_taps[t], out=dC[t])
            da[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :] += dC[t].reshape(m, oh, ow, c)
        return da[:, self.ph:self.ph + h, self.pw:self.pw + w]

    def store(self, total):
        h, w, c = self.in_shape
        G = total[self.key("W")].reshape(self.kh, self.kw, c, self.f)
        self.layer.params["W"].grad = np.ascontiguousarray(G.transpose(3, 2, 0, 1))
        self.layer.params["b"].grad = total[self.key("b")]


class ActivationStage(Stage):
    """a = sigma(z) in place (the layer class's sigma, or sigma_scaled when the prescale is folded
    into the layer before); backward da * prime(a, a) (PRIME_FROM_OUTPUT). ``pooled``: the max-pool
    after it pools z and applies sigma to the pooled values, sigma' at its argmax (sigma never
    decreases: sigma(max z) = max sigma(z)); this stage then passes z and da through."""
    owns_output = False                   # its backward reads its output

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        self.cls = type(layer)
        self.scaled = False               # the prescale is folded into the stage before
        self.in_place = False             # the input is the plan's own array (set by the plan)
        self.pooled = False

    def forward(self, chunk, a, p):
        if self.pooled:
            return a
        out = a if self.in_place else chunk.keep(self.key("a"), a.shape)
        if self.scaled:
            self.cls.sigma_scaled(np, a, out=out)
        else:
            self.cls.sigma(np, a, out=out)
        chunk.cache[self.index] = out
        return out

    def backward(self, chunk, da, p, parts, need_da):
        if self.pooled:
            return da
        a = chunk.cache[self.index]
        return da * self.cls.prime(a, a)


class PoolStage(Stage):
    """What a pooling stage shares: the layer's window and stride, the pooled (oh, ow, c) shape."""

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        h, w, c = in_shape
        self.size, self.stride = layer.size, layer.stride
        self.out_shape = (L.conv_outsize(h, self.size, 0, self.stride),
                          L.conv_outsize(w, self.size, 0, self.stride), c)


class MaxPoolStage(PoolStage):
    """Max-pool: lowering.first_max over the pool_taps views; backward lowering.route_to_argmax.

    ``act``: the activation before it, when sigma' is applied here at the argmax only.
    """

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        h, w, c = in_shape
        self.act = None                   # the activation before it, applied here (ActivationStage.pooled)
        self.act_scaled = False           # ... as sigma_scaled (its prescale folded into the conv)
        self.blocked = False              # the input comes tap-major, (s*s, m*poh*pow, c) (ConvStage.crop)
        self.argmax_dtype = np.int8 if self.size * self.size < 128 else np.int32
        self.floats = 2 * h * w * c

    def reads(self):
        """The input rows and columns the windows read."""
        poh, pow_, _ = self.out_shape
        return (poh - 1) * self.stride + self.size, (pow_ - 1) * self.stride + self.size

    def _taps(self, a):
        if self.blocked:
            return list(a)
        return lowering.pool_taps(a, self.size, self.stride, axes=(1, 2))

    def forward(self, chunk, a, p):
        m = a.shape[0] if not self.blocked else a.shape[1] // (self.out_shape[0] * self.out_shape[1])
        shape = (m, *self.out_shape)
        pooled = chunk.keep(self.key("a"), shape)
        taps = self._taps(a)
        argmax = None               # inference, or a kept forward: the argmax waits for a backward
        if chunk.grad:
            argmax = chunk.keep(self.key("argmax"), shape, self.argmax_dtype)
            self._first_max(taps, pooled, argmax)
        else:
            lowering.window_max(taps, pooled.reshape(taps[0].shape))
        if self.act is not None:          # sigma of the pooled z
            (self.act.sigma_scaled if self.act_scaled else self.act.sigma)(np, pooled, out=pooled)
        chunk.cache[self.index] = (pooled, argmax, a)
        return pooled

    def _first_max(self, taps, pooled, argmax):
        lowering.first_max(taps, pooled.reshape(taps[0].shape), argmax.reshape(taps[0].shape),
                           signed_zeros=False)

    @property
    def owns_output(self):
        return self.act is None           # the fused sigma' reads the pooled values

    def backward(self, chunk, da, p, parts, need_da):
        pooled, argmax, a = chunk.cache[self.index]
        if argmax is None:                # after a kept forward: the same first_max, now
            argmax = chunk.buf(self.key("argmax"), pooled.shape, self.argmax_dtype)
            self._first_max(self._taps(a), chunk.buf(self.key("a"), pooled.shape), argmax)
        if self.act is not None:          # sigma' at the argmax: a function of the output there
            da = da * self.act.prime(pooled, pooled)
        m = da.shape[0]
        if self.blocked:
            da_prev = chunk.buf(self.key("d"), (self.size * self.size, m * self.out_shape[0] * self.out_shape[1],
                                                self.out_shape[2]))
            da, argmax = da.reshape(da_prev.shape[1:]), argmax.reshape(da_prev.shape[1:])
        else:
            da_prev = chunk.buf(self.key("d"), (m, *self.in_shape))
            da_prev.fill(0)
        # blocked: the taps are the whole of da_prev, each entry written once
        lowering.route_to_argmax(da, argmax, self._taps(da_prev), fresh=self.blocked)
        return da_prev


class AvgPoolStage(PoolStage):
    """Average pooling: the reference op itself, on (m, c, h, w) views of the channel-last arrays."""

    def forward(self, chunk, a, p):
        return reference.avgpool2d_forward(a.transpose(0, 3, 1, 2), self.size, self.stride).transpose(0, 2, 3, 1)

    def backward(self, chunk, da, p, parts, need_da):
        h, w, _ = self.in_shape
        return reference.avgpool2d_backward(da.transpose(0, 3, 1, 2), (h, w), self.size,
                                            self.stride).transpose(0, 2, 3, 1)


class PassStage(Stage):
    """A stage that hands its input on: its output is the plan's only if its input was."""

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        self.owns_output = True           # set by the plan from the stage before


class FlattenStage(PassStage):
    """(m, h, w, c) -> (m, h*w*c) channel-last; the next dense layer's columns are permuted to match
    (``perm``: channel-last position -> the reference's (c, h, w) position). ``reorder``: no dense
    layer takes the permutation, so the rows are put in the reference's order here."""

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        self.out_shape = (math.prod(in_shape),)
        self.reorder = False
        self.perm = None
        self.in_order = in_shape          # the per-image shape of the input as it comes
        if len(in_shape) == 3 and in_shape[2] > 1 and in_shape[0] * in_shape[1] > 1:
            h, w, c = in_shape
            y, x, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
            self.perm = ((ch * h + y) * w + x).reshape(-1)

    def forward(self, chunk, a, p):
        m = a.shape[0]
        if self.reorder:
            return np.ascontiguousarray(a.transpose(0, 3, 1, 2)).reshape(m, -1)
        return a.reshape(m, -1)

    def backward(self, chunk, da, p, parts, need_da):
        m = da.shape[0]
        if self.reorder:
            h, w, c = self.in_shape
            return da.reshape(m, c, h, w).transpose(0, 2, 3, 1)
        return da.reshape(m, *self.in_order)


class DenseStage(Stage):
    """Dense through layers/dense.py's dense_forward / dense_backward; ``perm`` reorders its columns to a
    channel-last Flatten before it; ``prescale`` folds the activation after it into W and b."""

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        self.out_shape = (layer.out_features,)
        self.perm = self.unperm = None
        self.prescale = 1.0
        self.flops = self.gemm = layer.in_features * layer.out_features
        self.floats = 2 * layer.out_features

    def permute(self, perm):
        self.perm, self.unperm = perm, np.argsort(perm)

    def params(self, p):
        W, b = self.layer.W, self.layer.b
        Wp = W if self.perm is None else W.take(self.perm, axis=1)
        p[self.key("W")] = Wp
        p[self.key("Wf")] = Wp * self.prescale if self.prescale != 1.0 else Wp
        p[self.key("bf")] = b * self.prescale if self.prescale != 1.0 else b

    def forward(self, chunk, a, p):
        chunk.cache[self.index] = a
        return dense_forward(a, p[self.key("Wf")], p[self.key("bf")])

    def backward(self, chunk, delta, p, parts, need_da):
        dW, db, da = dense_backward(delta, chunk.cache[self.index], p[self.key("W")], need_da)
        parts[self.key("W")], parts[self.key("b")] = dW, db
        return da

    def store(self, total):
        dW = total[self.key("W")]
        self.layer.params["W"].grad = dW if self.unperm is None else dW.take(self.unperm, axis=1)
        self.layer.params["b"].grad = total[self.key("b")]


class DropoutStage(PassStage):
    """Dropout: the identity in eval mode (or p = 0); in train mode a * mask, backward da * mask.

    The mask of a step is drawn once for the whole batch by the layer's own ``draw``, in the
    reference's layout (n, c, h, w) or (n, d), exactly as Dropout.forward would draw it (so the plan and
    the layer path see the same masks), then put in the plan's layout: channel-last for maps, and for a
    vector after a channel-last Flatten in that Flatten's order (``perm``, set by the plan).
    """

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        self.perm = None                  # plan position -> the reference's position, for a vector

    def draw(self, p, n):
        layer = self.layer
        if not layer.training or layer.p == 0.0:
            return
        if len(self.in_shape) == 3:
            h, w, c = self.in_shape
            keep = layer.draw((n, c, h, w)).transpose(0, 2, 3, 1)
        else:
            keep = layer.draw((n, *self.in_shape))
            if self.perm is not None:
                keep = keep[:, self.perm]
        mask = np.empty(keep.shape, np.float32)
        np.multiply(keep, layer.scale(np.float32), out=mask)
        p[self.key("mask")] = mask

    def forward(self, chunk, a, p):
        mask = p.get(self.key("mask"))
        if mask is None:                  # eval mode, p = 0, or params() drew nothing (a shape probe)
            chunk.cache[self.index] = None
            return a
        rows = mask[chunk.s:chunk.e]
        chunk.cache[self.index] = rows
        out = chunk.keep(self.key("a"), a.shape)
        np.multiply(a, rows.reshape(a.shape), out=out)
        return out

    def backward(self, chunk, da, p, parts, need_da):
        rows = chunk.cache[self.index]
        return da if rows is None else da * rows.reshape(da.shape)


class BatchNormStage(Stage):
    """BatchNorm2D on channel-last maps, the layer's formulas.

    The maps are worked on as rows (m*h, w*c), with each per-channel vector tiled along a row (w
    copies): every pass then runs along rows of w*c floats, not c; a per-channel sum is one
    matrix-vector product with a vector of ones, then the sum of its w column groups.

    Eval mode (the running statistics): one pass per chunk, like any stage. Train mode needs the whole
    batch's mean and variance before any chunk can go on, and the whole batch's sums of the delta in
    the backward (``whole_batch``): the plan then runs in phases and calls
      reduce_forward   mu = sum a / m, then var = sum (a - mu)^2 / m (two passes, as the layer, each
                       summed in float64), in chunk order; the running statistics move as the layer's;
      reduce_backward  dbeta = sum da, dgamma = sum da xhat (each chunk's sums are its parts), so
                       da_prev = gamma inv_std (da - dbeta / m - xhat dgamma / m)   (= the layer's
                       (dxhat - mean dxhat - xhat mean(dxhat xhat)) inv_std with dxhat = gamma da).
    """
    owns_output = True                    # its backward reads xhat, not its output

    def __init__(self, layer, index, in_shape):
        super().__init__(layer, index, in_shape)
        h, w, c = in_shape
        self.floats = 3 * h * w * c

    def whole_batch(self, p):
        return p[self.key("train")]

    def _rows(self, a):
        return a.reshape(-1, self.in_shape[1] * self.in_shape[2])

    def _tiled(self, p, **vectors):
        """p["<index>.<name>"] = the per-channel vector tiled along a row of w*c floats."""
        for name, v in vectors.items():
            p[self.key(name)] = np.tile(np.asarray(v, np.float32), self.in_shape[1])

    def _channel_sums(self, rows, dtype=np.float32):
        """Per-channel sums of rows (m*h, w*c), accumulated in dtype (float32 in the parts)."""
        return column_sums(rows, dtype).reshape(-1, self.in_shape[2]).sum(axis=0)

    def params(self, p):
        layer = self.layer
        p[self.key("train")] = layer.training
        self._tiled(p, gamma=layer.gamma, beta=layer.beta)
        if not layer.training:
            inv_std = 1.0 / np.sqrt(layer.buffers["running_var"] + layer.eps)
            self._tiled(p, mu=layer.buffers["running_mean"], inv_std=inv_std,
                        scale=layer.gamma * inv_std)

    def reduce_forward(self, chunks, acts, p):
        layer = self.layer
        h, w, c = self.in_shape
        n = sum(chunk.m for chunk in chunks)   # (not a.shape[0]: a tap-major conv output is (s*s, ., c))
        m = n * h * w
        layer.check_batch((n, c, h, w))
        # float64 sums, as the layer's means (each chunk's, then in chunk order), then float32
        mu = (ordered_sum(self._channel_sums(self._rows(a), np.float64) for a in acts) / m).astype(np.float32)
        mu_row = np.tile(mu, w)
        var = (ordered_sum(self._channel_sums(np.square(self._rows(a) - mu_row), np.float64) for a in acts)
               / m).astype(np.float32)
        if p["n"] is not None:                # a step, not a probe of shapes (Plan.params())
            layer.update_running(mu, var, m)
        inv_std = 1.0 / np.sqrt(var + layer.eps)
        self._tiled(p, mu=mu, inv_std=inv_std, scale=layer.gamma * inv_std)
        p[self.key("m")] = m

    def forward(self, chunk, a, p):
        rows = self._rows(a)
        xhat = chunk.keep(self.key("xhat"), rows.shape)
        np.subtract(rows, p[self.key("mu")], out=xhat)
        np.multiply(xhat, p[self.key("inv_std")], out=xhat)
        out = chunk.keep(self.key("a"), rows.shape)
        np.multiply(xhat, p[self.key("gamma")], out=out)
        np.add(out, p[self.key("beta")], out=out)
        chunk.cache[self.index] = xhat
        return out.reshape(a.shape)

    def _sums(self, chunk, da_rows):
        xhat = chunk.cache[self.index]
        return self._channel_sums(da_rows), self._channel_sums(da_rows * xhat)

    def reduce_backward(self, chunks, deltas, p):
        sums = [self._sums(chunk, self._rows(da)) for chunk, da in zip(chunks, deltas)]
        for chunk, chunk_sums in zip(chunks, sums):
            chunk.cache[self.index, "sums"] = chunk_sums
        # in chunk order: the sums combine() makes of the parts, bit for bit
        m = p[self.key("m")]
        self._tiled(p, dbeta_m=ordered_sum(db for db, _ in sums) / m,
                    dgamma_m=ordered_sum(dg for _, dg in sums) / m)

    def backward(self, chunk, da, p, parts, need_da):
        xhat, rows = chunk.cache[self.index], self._rows(da)
        train = p[self.key("train")]
        dbeta, dgamma = chunk.cache.pop((self.index, "sums")) if train else self._sums(chunk, rows)
        parts[self.key("beta")], parts[self.key("gamma")] = dbeta, dgamma
        if not need_da:
            return None
        if not train:
            return (rows * p[self.key("scale")]).reshape(da.shape)
        da_prev = rows - p[self.key("dbeta_m")]
        da_prev -= xhat * p[self.key("dgamma_m")]
        da_prev *= p[self.key("scale")]
        return da_prev.reshape(da.shape)

    def store(self, total):
        self.layer.params["gamma"].grad = total[self.key("gamma")]
        self.layer.params["beta"].grad = total[self.key("beta")]


# layer class name -> stage class (library layers only; see plan_for). Adding a layer type = one entry.
STAGES = {"Conv2D": ConvStage, "MaxPool2D": MaxPoolStage, "AvgPool2D": AvgPoolStage,
          "Flatten": FlattenStage, "Dense": DenseStage, "Dropout": DropoutStage, "BatchNorm2D": BatchNormStage,
          "Sigmoid": ActivationStage, "ReLU": ActivationStage, "Tanh": ActivationStage}

assert all(name in PRIME_FROM_OUTPUT for name, cls in STAGES.items() if cls is ActivationStage), \
    "an activation stage assumes sigma' from the output (PRIME_FROM_OUTPUT)"

# Library layers with no stage, and why (GPUCNN_FAST=strict accepts these and only these).
NO_STAGE = {}
