"""SeedPlan: conv(1 -> f) -> act -> pool 2 -> flatten -> dense -> [act], the seed network's pattern.

How one step is computed (x (n, 1, h, w); oh, ow the conv output cropped to what the 2x2 pool
reads; each output row is cut into nb blocks of bw columns; a block reads uw = bw + kw - 1 input
columns):

  1. im2row: R[(dy, n, py, blk), (i, u)] = x[n, 2*py + dy + i, blk*bw + u], one strided copy of
     kh*uw floats per block row: (2*n*poh*nb, 60) for the seed net, 4,320 floats per image
     against im2col's 14,400. R has one more column of ones (the bias).
  2. zt = Tt @ R^T with the banded Tt[(dx, f, pv), (i, u)] = W[f, 0, i, u - (2*pv + dx)] (zero off
     the band; last column b): ONE (24, 61) @ (61, 72n) matmul instead of im2col's thin
     (576n, 25) @ (25, 3). The band wastes (bw + kw - 1) / kw of the flops (2.4x for bw = 8) and
     still wins: the thin matmul runs at a few % of peak. zt is channel-major (rows (dx, f, pv),
     columns (dy, n, py, blk)), so each of the 4 taps of a 2x2 pooling window is a 2-D block of zt
     with long contiguous rows.
  3. a = sigma(z) in place (Sigmoid's 0.5 * z folded into Tt: exact), pool = max of the 4 blocks,
     copied into the reference's Flatten order for the dense layer.
  4. backward: sigma' only at the argmax (a quarter of the positions; there it is a function of
     the pooled value), routed to the FIRST maximum of each window (the reference's tie rule);
     Gt = delta_t @ R; dW = the sums of Gt along the band's diagonals, db = its last column summed.
     The conv's dC/dx is never formed: nothing below the first layer needs it.

NOTE: outputs and gradients equal the reference's to float32 rounding, not bit for bit (the conv
sums its products in another order). Pooling ties that are exact in z (blank background: z = b)
are exact here too and resolve the same way; a near tie a rounding apart may resolve differently.
"""
import numpy as np

from .. import layers as L
from .common import Plan, first_max_route, pool_max, sigma_inplace, sigma_prime


class SeedPlan(Plan):
    """Fused forward/backward of conv(1->f) -> act -> pool 2 -> dense -> [act] on NumPy, float32.

    Layouts of a chunk of m images (pv: pooled column inside a block; s = m*poh*nb):
        R   (2*s, K+1)  rows (dy, m, py, blk), columns (i, u) and a column of ones: im2row of x
        Tt  (N, K+1)    rows (dx, f, pv): the banded conv matrix, transposed, and the bias
        zt  (N, 2*s)    = Tt @ R^T; tap (dy, dx) of every pooling window = zt[dx*q:(dx+1)*q, dy*s:(dy+1)*s]
        pt  (q, s)      pooled, q = f*pv rows (f, pv), columns (m, py, blk)
        p   (m, f*poh*pow)  pooled rows in the reference's Flatten order (f, py, px = blk*pv + v)
    """
    chunk = 32          # R (32*72*61 floats = 562 KB) + zt + delta_t (221 KB each): about L2

    def __init__(self, net):
        super().__init__(net)
        self.conv, act, _, _, self.dense = net.layers[:5]
        self.act = type(act)
        self.final = type(net.layers[5]) if len(net.layers) == 6 else None
        _, self.h, self.w = net.input_shape
        f, _, kh, kw = self.conv.param_shapes()["W"]
        self.f, self.kh, self.kw = f, kh, kw
        self.poh, self.pow = (self.h - kh + 1) // 2, (self.w - kw + 1) // 2
        ow = 2 * self.pow                                        # the columns the pool reads
        self.bw = next(b for b in (8, 6, 4, 2) if ow % b == 0)
        self.nb, self.pv = ow // self.bw, self.bw // 2
        self.uw = self.bw + kw - 1
        self.K, self.N, self.q = kh * self.uw, f * self.bw, f * self.pv
        self._band_index()
        # OpenBLAS runs a gemm of m*n*k <= 4 * 65536 on the calling thread whatever its setting:
        # below that, the thread guard is skipped (it costs more than the matmuls at batch 1).
        self.blas_min = max(1, 262144 // (self.N * (self.K + 1) * 2 * self.poh * self.nb) + 1)

    # -- index tables, built once ----------------------------------------------------------------
    def _band_index(self):
        """Where each W[f, 0, i, j] goes in Tt (N, K), and which Tt entries sum back to dW."""
        f_, i_, j_, dx, pv = np.meshgrid(np.arange(self.f), np.arange(self.kh), np.arange(self.kw),
                                         np.arange(2), np.arange(self.pv), indexing="ij")
        rows = (dx * self.f + f_) * self.pv + pv                             # (dx, f, pv)
        cols = i_ * self.uw + 2 * pv + dx + j_                               # (i, u = v + j)
        self.band_flat = (rows * (self.K + 1) + cols).reshape(-1)            # (f, kh, kw, 2, pv)
        self.band_w = (f_ * self.kh * self.kw + i_ * self.kw + j_).reshape(-1)   # into W.ravel()
        self.bias_rows = np.tile(np.repeat(np.arange(self.f), self.pv), 2)   # row (dx, f, pv) -> f
        # Tt's last column is the bias, R's last column is 1: the matmul adds b (one pass less),
        # and the same column of Gt = delta_t @ R is the bias gradient.
        self.Tt = np.zeros((self.N, self.K + 1), np.float32)                 # off-band stays 0

    # -- the step ----------------------------------------------------------------------------------
    def _params(self):
        """This step's parameters in our layouts, read afresh from the layers."""
        W1, b1 = self.conv.W, self.conv.b
        W2, b2 = self.dense.W, self.dense.b
        # Sigmoid's 0.5 * z is folded into Tt and the bias: scaling by 2**-1 is exact, so this is
        # the same z * 0.5 the layer computes, one pass over z cheaper.
        scale = 0.5 if self.act is L.Sigmoid else 1.0
        self.Tt.flat[self.band_flat] = W1.reshape(-1).take(self.band_w) * scale
        self.Tt[:, self.K] = b1.take(self.bias_rows) * scale
        return dict(Tt=self.Tt, W2p=W2, b2=b2)         # p comes in the reference's Flatten order

    def _chunk(self, x, y1, out, params, s, e, n, backward):
        """Forward and backward of images s:e of a batch of n; returns this chunk's gradient parts."""
        m, h, w, q, K = e - s, self.h, self.w, self.q, self.K
        f, pv, poh, nb = self.f, self.pv, self.poh, self.nb
        sp = m * poh * nb                            # columns of one tap: (m, py, blk)
        R = self.buffer("R", (2 * sp, K + 1))
        R[:, K] = 1.0                                # the bias column (the buffer may be reused)
        zt = self.buffer("zt", (self.N, 2 * sp))
        # 1. im2row, rows (dy, m, py, blk): one strided copy into R[:, :K]
        shape, row = (2, m, poh, nb, self.kh, self.uw), (K + 1) * 4      # strides in bytes below
        window = np.ndarray(shape, np.float32, x[s:e], 0,
                            (w * 4, h * w * 4, 2 * w * 4, self.bw * 4, w * 4, 4))
        np.copyto(np.ndarray(shape, np.float32, R, 0,
                             (sp * row, poh * nb * row, nb * row, row, self.uw * 4, 4)), window)
        # 2. zt = Tt @ R^T (+ b, R's column of ones);  3. a = sigma(z) in place, the 2x2 pool
        np.matmul(params["Tt"], R.T, out=zt)
        a = sigma_inplace(self.act, zt, halved=True)   # ReLU: sigma'(z) = [a > 0], z is not kept
        taps = [a[dx * q:(dx + 1) * q, dy * sp:(dy + 1) * sp] for dy in (0, 1) for dx in (0, 1)]
        pt = pool_max(taps)                          # tap k = dy*2 + dx: row-major window order
        pt5 = pt.reshape(f, pv, m, poh, nb)
        # (m, f, py, blk, pv) = the reference's Flatten order (f, py, px): the dense W as it is
        p = np.ascontiguousarray(pt5.transpose(2, 0, 3, 4, 1)).reshape(m, -1)
        zL, aL = self._dense_forward(p, params, out, s, e)
        if not backward:
            return None
        # 4. backward: dense, then the pool route with sigma' at the max only, then the conv's dW
        dp, parts = self._dense_backward(p, zL, aL, params, y1, s, e, n)
        dp = dp.reshape(m, f, poh, nb, pv).transpose(1, 4, 0, 2, 3)      # (f, pv, m, py, blk)
        dz_max = (dp * sigma_prime(self.act, pt5, pt5)).reshape(q, sp)
        delta_t = self.buffer("delta_t", (self.N, 2 * sp))
        first_max_route(taps, pt, dz_max, [delta_t[dx * q:(dx + 1) * q, dy * sp:(dy + 1) * sp]
                                           for dy in (0, 1) for dx in (0, 1)])
        parts["Gt"] = delta_t @ R                    # (N, K + 1); its last column sums delta: db
        return parts

    def _store_grads(self, parts):
        """Sum the band diagonals of Gt into dW (f, 1, kh, kw), its last column into db."""
        Gt = parts["Gt"]
        dW1 = Gt.reshape(-1).take(self.band_flat).reshape(self.f, self.kh, self.kw, -1)
        self.conv.params["W"].grad = dW1.sum(axis=-1).reshape(self.f, 1, self.kh, self.kw)
        self.conv.params["b"].grad = Gt[:, self.K].reshape(2, self.f, self.pv).sum(axis=(0, 2))
        self.dense.params["W"].grad = parts["dW2p"]
        self.dense.params["b"].grad = parts["db2"]
