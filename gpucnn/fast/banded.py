"""BandedConvPoolStage: conv(1 -> f <= 8, stride 1) -> activation -> max-pool 2, as one stage.

The seed network's block. Its conv has one input channel and a handful of kernels, so im2col's
matmul (m*oh*ow, kh*kw) @ (kh*kw, f) is thin and its copy runs in kw-float pieces; here the same
lowering (lowering.windows) cuts wider windows and the kernel becomes a banded matrix:

  1. im2row: R[(m, py, blk), (i, u)] = x[m, 2*py + i, blk*bw + u], the (kh + 1) x uw window under
     each pair of output rows 2py, 2py + 1 and output columns blk*bw .. +bw (uw = bw + kw - 1), one
     strided copy; R has one more column of ones.
  2. zt = Tt @ R^T with the banded Tt[(dy, dx, f, pv), (i, u)] = W[f, 0, i - dy, u - (2*pv + dx)]
     (zero off the band; last column b): ONE (4*f*bw/2, (kh+1)*uw + 1) @ (.., m*poh*nb) matmul. The
     band wastes flops and still wins: R holds each pixel ~(kh+1)*uw/(2*bw) times, im2col kh*kw
     times. Each of the 4 taps (dy, dx) of a 2x2 pooling window is then a contiguous row block of zt.
  3. the pool = lowering.first_max of z over the 4 blocks, then a = the activation's sigma_scaled of
     the pooled z, in place (its prescale folded into Tt: a power of 2, exact): the activations taken
     here never decrease, so sigma(max z) = max sigma(z), and a quarter of the values pass through
     sigma. Handed on channel-last (m, poh, pow, f).
  4. backward: the activation's prime only at the argmax (a function of the pooled value),
     lowering.route_to_argmax into delta_t; Gt = delta_t @ R; dW = the sums of Gt along the band's
     diagonals, db = its last column summed. dC/dx (only for Network.backward, never in training) =
     R's gradient Tt^T delta_t added back at the windows.

NOTE: outputs and gradients equal the reference's to float32 rounding, not bit for bit (the conv
sums its products in another order). Pooling ties that are exact in z (blank background: z = b)
are exact here too and resolve the same way; a near tie a rounding apart may resolve differently, and
so may a tie that only sigma makes (two z a rounding apart with one float32 sigma; for ReLU such ties
are at 0, where sigma' = 0 sends nothing either way).
"""
import numpy as np

from ..ops import lowering
from .stages import PRIME_FROM_OUTPUT, Stage


class BandedConvPoolStage(Stage):
    """Layers i..i+2 = conv(1 -> f) -> activation -> max-pool 2; parts under the conv's index. A padded
    conv is the valid conv of the zero-padded image (h, w below are the padded sizes).

    Layouts of a chunk of m images (pv: pooled column inside a block; sp = m*poh*nb):
        R   (sp, K+1)    rows (m, py, blk), columns (i, u) and a column of ones: im2row of x
        Tt  (N, K+1)     rows (dy, dx, f, pv): the banded conv matrix, transposed, and the bias
        zt  (N, sp)      = Tt @ R^T; tap t = (dy, dx) of every window = rows t*q:(t+1)*q
        pt  (q, sp)      pooled, q = f*pv rows (f, pv), columns (m, py, blk)
    """
    owns_output = False                   # its backward reads the pooled values
    BLOCK_WIDTHS = (8, 6, 4, 2)           # output columns per R row, first that divides the width

    @staticmethod
    def matches(layers, i, in_shape):
        if i + 3 > len(layers) or len(in_shape) != 3 or in_shape[2] != 1:
            return False
        conv, act, pool = layers[i:i + 3]
        return (type(conv).__name__ == "Conv2D" and conv.out_channels <= 8 and conv.stride == 1
                and type(act).__name__ in PRIME_FROM_OUTPUT
                and type(pool).__name__ == "MaxPool2D" and pool.size == 2 and pool.stride == 2)

    def __init__(self, layers, index, in_shape):
        conv, act, _ = layers
        super().__init__(conv, index, in_shape)
        self.act = type(act)
        self.in_h, self.in_w, _ = in_shape
        self.ph, self.pw = conv.padding              # padding: the valid conv of the padded image
        self.h, self.w = self.in_h + 2 * self.ph, self.in_w + 2 * self.pw
        f, _, kh, kw = conv.param_shapes()["W"]
        self.f, self.kh, self.kw = f, kh, kw
        self.poh, self.pow = (self.h - kh + 1) // 2, (self.w - kw + 1) // 2
        ow = 2 * self.pow                                        # the columns the pool reads
        self.bw = next(b for b in self.BLOCK_WIDTHS if ow % b == 0)
        self.nb, self.pv = ow // self.bw, self.bw // 2
        self.uh, self.uw = kh + 1, self.bw + kw - 1              # the window under one R row
        self.K, self.q = self.uh * self.uw, f * self.pv
        self.N = 4 * self.q
        self.out_shape = (self.poh, self.pow, f)
        self.channel_first = False        # hand on (m, f, poh, pow) instead (a Flatten follows)
        self.flops = self.gemm = self.N * (self.K + 1) * self.poh * self.nb
        self.floats = self.poh * self.nb * (self.K + 1 + 2 * self.N)
        self._band_index()

    def _band_index(self):
        """Where each W[f, 0, i, j] goes in Tt (N, K), and which Tt entries sum back to dW."""
        f_, i_, j_, dy, dx, pv = np.meshgrid(np.arange(self.f), np.arange(self.kh), np.arange(self.kw),
                                             np.arange(2), np.arange(2), np.arange(self.pv), indexing="ij")
        rows = ((2 * dy + dx) * self.f + f_) * self.pv + pv                  # (dy, dx, f, pv)
        cols = (i_ + dy) * self.uw + 2 * pv + dx + j_                        # (i + dy, u = v + j)
        self.band_flat = (rows * (self.K + 1) + cols).reshape(-1)            # (f, kh, kw, dy, dx, pv)
        self.band_w = (f_ * self.kh * self.kw + i_ * self.kw + j_).reshape(-1)   # into W.ravel()
        self.bias_rows = np.tile(np.repeat(np.arange(self.f), self.pv), 4)   # row (dy, dx, f, pv) -> f

    def params(self, p):
        """Tt with the activation's prescale folded in (exact: a power of 2), and without (for dC/dx).
        Tt's last column is the bias and R's last column is 1: the matmul adds b, and the same column
        of Gt = delta_t @ R is the bias gradient."""
        W, b = self.layer.W, self.layer.b
        Tt = np.zeros((self.N, self.K + 1), np.float32)                      # off-band stays 0
        Tt.flat[self.band_flat] = W.reshape(-1).take(self.band_w)
        Tt[:, self.K] = b.take(self.bias_rows)
        p[self.key("Tt1")] = Tt
        p[self.key("Tt")] = Tt * self.act.prescale if self.act.prescale != 1.0 else Tt

    def _taps(self, zt):
        q = self.q
        return [zt[t * q:(t + 1) * q] for t in range(4)]     # (dy, dx) in row-major window order

    def forward(self, chunk, a, p):
        m, K = a.shape[0], self.K
        sp = m * self.poh * self.nb                  # R's rows: (m, py, blk)
        x = a.reshape(m, self.in_h, self.in_w)
        if self.ph or self.pw:
            padded = chunk.keep(self.key("pad"), (m, self.h, self.w))
            padded.fill(0)
            padded[:, self.ph:self.ph + self.in_h, self.pw:self.pw + self.in_w] = x
            x = padded
        R = chunk.keep(self.key("R"), (sp, K + 1))
        R[:, K] = 1.0                                # the bias column (the buffer may be reused)
        # 1. im2row: the (kh + 1) x uw window at rows 2*py.., columns blk*bw.., one copy
        win = lowering.windows(x, self.uh, self.uw, (2, self.bw), axes=(1, 2))[:, :self.poh, :self.nb]
        np.copyto(R[:, :K].reshape(m, self.poh, self.nb, self.uh, self.uw), win)
        zt = chunk.keep(self.key("zt"), (self.N, sp))
        np.matmul(p[self.key("Tt")], R.T, out=zt)    # 2. zt = Tt @ R^T (+ b, R's column of ones)
        pt = chunk.keep(self.key("pt"), (self.q, sp))
        argmax = None               # inference, or a kept forward: the argmax waits for a backward
        if chunk.grad:                               # 3. the pool, of z
            argmax = chunk.keep(self.key("argmax"), (self.q, sp), np.int8)
            lowering.first_max(self._taps(zt), pt, argmax, signed_zeros=False)
        else:
            lowering.window_max(self._taps(zt), pt)
        self.act.sigma_scaled(np, pt, out=pt)        # then a = sigma(max z) = max sigma(z), in place
        pt5 = pt.reshape(self.f, self.pv, m, self.poh, self.nb)
        chunk.cache[self.index] = (R, zt, pt, argmax, m)
        if self.channel_first:                       # (m, f, py, blk, pv): px = blk*pv + v
            pooled = chunk.keep(self.key("p"), (m, self.f, self.poh, self.nb, self.pv))
            np.copyto(pooled, pt5.transpose(2, 0, 3, 4, 1))
            return pooled.reshape(m, self.f, self.poh, self.pow)
        pooled = chunk.keep(self.key("p"), (m, self.poh, self.nb, self.pv, self.f))
        np.copyto(pooled, pt5.transpose(2, 3, 4, 1, 0))
        return pooled.reshape(m, self.poh, self.pow, self.f)

    def backward(self, chunk, dp, p, parts, need_da):
        R, zt, pt, argmax, m = chunk.cache[self.index]
        sp = m * self.poh * self.nb
        if argmax is None:                           # after a kept forward: the same first_max, now
            argmax = chunk.buf(self.key("argmax"), (self.q, sp), np.int8)
            lowering.first_max(self._taps(zt), chunk.buf(self.key("pt"), (self.q, sp)), argmax,
                               signed_zeros=False)
        pt5 = pt.reshape(self.f, self.pv, m, self.poh, self.nb)
        if self.channel_first:
            dp5 = dp.reshape(m, self.f, self.poh, self.nb, self.pv).transpose(1, 4, 0, 2, 3)
        else:
            dp5 = dp.reshape(m, self.poh, self.nb, self.pv, self.f).transpose(4, 3, 0, 1, 2)
        dz_max = (dp5 * self.act.prime(pt5, pt5)).reshape(self.q, sp)     # sigma' at the argmax only
        delta_t = chunk.buf(self.key("delta_t"), (self.N, sp))          # the 4 taps cover it
        lowering.route_to_argmax(dz_max, argmax, self._taps(delta_t), fresh=True)
        parts[self.key("Gt")] = delta_t @ R          # (N, K + 1); its last column sums delta: db
        return self._dx(delta_t, p[self.key("Tt1")], m) if need_da else None

    def _dx(self, delta_t, Tt, m):
        """dC/dx (m, h, w, 1): dR = delta_t^T Tt, each R entry's gradient added back at its pixel."""
        dR = delta_t.T @ Tt                          # (sp, K + 1), rows (m, py, blk)
        bw, nb = self.bw, self.nb
        block = dR[:, :self.K].reshape(m, self.poh, nb, self.uh, self.uw)
        dx = np.zeros((m, self.h, nb * bw + self.uw + bw), np.float32)
        for i in range(self.uh):
            rows = dx[:, i:i + 2 * (self.poh - 1) + 1:2]                     # (m, poh, width)
            # columns blk*bw + u, bw columns u at a time: blocks overlap by kw - 1 columns
            for u in range(0, self.uw, bw):
                cols = rows[:, :, u:u + nb * bw].reshape(m, self.poh, nb, bw)
                part = block[:, :, :, i, u:u + bw]
                cols[..., :part.shape[-1]] += part
        dx = dx[:, self.ph:self.ph + self.in_h, self.pw:self.pw + self.in_w]
        return dx.reshape(m, self.in_h, self.in_w, 1)

    def store(self, total):
        """Sum the band diagonals of Gt into dW (f, 1, kh, kw), its last column into db."""
        Gt = total[self.key("Gt")]
        dW = Gt.reshape(-1).take(self.band_flat).reshape(self.f, self.kh, self.kw, -1)
        self.layer.params["W"].grad = dW.sum(axis=-1).reshape(self.f, 1, self.kh, self.kw)
        self.layer.params["b"].grad = Gt[:, self.K].reshape(4, self.f, self.pv).sum(axis=(0, 2))
