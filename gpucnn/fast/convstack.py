"""ConvStackPlan: [conv(c -> f) -> act -> pool 2] x k -> flatten -> dense -> [act], e.g. the wide network.

Activations live channel-last (m, h, w, c) inside the plan, so that

  * im2col is one strided copy whose inner run is a whole kernel row, kw*c contiguous floats
    (160 for the wide net's second conv), into C (m*oh*ow, kh*kw*c); then z = C @ Wm, Wm (kh*kw*c, f):
    one well-shaped matmul per conv, z already channel-last (m, oh, ow, f);
  * the 4 taps of every 2x2 pooling window are strided views z[:, dy::2, dx::2, :] with f contiguous
    floats each, and the pooled map is directly the next conv's channel-last input;
  * backward: delta routed to the first maximum of each window (sigma' at the argmax only),
    dW = C^T @ delta, and for every conv but the first dC = delta @ Wm^T folded back (col2im: one
    add per kernel tap) into dC/d(input), which is the previous block's dC/d(pooled output).
The dense layer reads the last pooled map in (py, px, f) order with its W columns permuted to it.

NOTE: outputs and gradients equal the reference's to float32 rounding, not bit for bit (sums in
another order); ties exact in z resolve by the reference's rule (first maximum, row-major window).
"""
import numpy as np

from .. import layers as L
from .common import Plan, first_max_route, pool_max, sigma_inplace, sigma_prime


class ConvStackPlan(Plan):
    """Fused forward/backward of k conv blocks and a dense layer on NumPy, float32, channel-last."""

    def __init__(self, net, k):
        super().__init__(net)
        layers = net.layers
        self.convs = layers[0:3 * k:3]
        self.acts = [type(layer) for layer in layers[1:3 * k:3]]
        self.dense = layers[3 * k + 1]
        self.final = type(layers[3 * k + 2]) if len(layers) == 3 * k + 3 else None
        self.geo = []                                    # per block: (c, h, w, f, kh, kw, poh, pow)
        c, h, w = net.input_shape
        for conv in self.convs:
            f, _, kh, kw = conv.param_shapes()["W"]
            poh, pow_ = (h - kh + 1) // 2, (w - kw + 1) // 2
            self.geo.append((c, h, w, f, kh, kw, poh, pow_))
            c, h, w = f, poh, pow_
        f, poh, pow_ = c, h, w                           # the last pooled map
        py, px, fi = np.meshgrid(np.arange(poh), np.arange(pow_), np.arange(f), indexing="ij")
        self.perm = ((fi * poh + py) * pow_ + px).reshape(-1)
        self.unperm = np.argsort(self.perm)
        # chunk: what one image needs (C, z, delta and dC of every block) times chunk ~ 6 MB
        per_image = sum(4 * poh * pow_ * (kh * kw * c * 2 + f * 2)
                        for c, h, w, f, kh, kw, poh, pow_ in self.geo)
        self.chunk = int(np.clip((6 << 20) // (4 * per_image), 1, 32))
        self.thread_min = 2 * self.chunk                 # each chunk is worth a thread hand-off

    # -- the step ----------------------------------------------------------------------------------
    def _params(self):
        """Wm (kh*kw*c, f) per conv, rows (i, j, c) as im2col lays them out; the permuted dense W."""
        convs = []
        for conv, act in zip(self.convs, self.acts):
            W, b = conv.W, conv.b
            f = W.shape[0]
            Wm = np.ascontiguousarray(W.transpose(2, 3, 1, 0)).reshape(-1, f)
            # Sigmoid's 0.5 * z folded into the forward weights (exact: a power of 2)
            scale = 0.5 if act is L.Sigmoid else 1.0
            # for dC/d(input), tap by tap: (kh*kw, f, c)
            W_taps = np.ascontiguousarray(W.transpose(2, 3, 0, 1)).reshape(-1, f, W.shape[1])
            convs.append((Wm * scale if scale != 1.0 else Wm, b * scale, W_taps))
        W2, b2 = self.dense.W, self.dense.b
        return dict(convs=convs, W2p=W2.take(self.perm, axis=1), b2=b2)

    def _chunk(self, x, y1, out, params, s, e, n, backward):
        m = e - s
        c0, h0, w0 = self.geo[0][:3]
        a = x[s:e] if c0 == 1 else np.ascontiguousarray(x[s:e].transpose(0, 2, 3, 1))
        saved = []                                       # per block: C, taps, pooled
        for k, (c, h, w, f, kh, kw, poh, pow_) in enumerate(self.geo):
            Wm, b, _ = params["convs"][k]
            oh, ow = 2 * poh, 2 * pow_                   # only what the pool reads
            C = self.buffer(("C", k), (m * oh * ow, kh * kw * c))
            window = np.ndarray((m, oh, ow, kh, kw * c), np.float32, a, 0,
                                (h * w * c * 4, w * c * 4, c * 4, w * c * 4, 4))
            np.copyto(C.reshape(window.shape), window)  # im2col, rows (m, y, x), columns (i, j, c)
            z = self.buffer(("z", k), (m * oh * ow, f))
            np.matmul(C, Wm, out=z)
            np.add(z, b, out=z)
            sigma_inplace(self.acts[k], z, halved=True)
            z6 = z.reshape(m, poh, 2, pow_, 2, f)
            taps = [z6[:, :, dy, :, dx, :] for dy in (0, 1) for dx in (0, 1)]
            a = pool_max(taps)                           # (m, poh, pow, f): the next block's input
            saved.append((C, taps, a))
        p = a.reshape(m, -1)
        zL, aL = self._dense_forward(p, params, out, s, e)
        if not backward:
            return None
        dp, parts = self._dense_backward(p, zL, aL, params, y1, s, e, n)
        for k in reversed(range(len(self.geo))):
            c, h, w, f, kh, kw, poh, pow_ = self.geo[k]
            C, taps, pooled = saved[k]
            dz_max = dp.reshape(pooled.shape) * sigma_prime(self.acts[k], pooled, pooled)
            delta = self.buffer(("delta", k), (m * 4 * poh * pow_, f))
            d6 = delta.reshape(m, poh, 2, pow_, 2, f)
            first_max_route(taps, pooled, dz_max, [d6[:, :, dy, :, dx, :] for dy in (0, 1) for dx in (0, 1)])
            parts[f"G{k}"] = C.T @ delta
            parts[f"db{k}"] = dz_max.reshape(-1, f).sum(axis=0)
            if k > 0:
                dp = self._col2im(delta, params["convs"][k][2], m, self.geo[k])
        return parts

    def _col2im(self, delta, W_taps, m, geo):
        """delta (m*oh*ow, f) -> dC/d(input) (m, h, w, c) = sum over taps (i, j) of delta @ W[:, :, i, j]
        added at offset (i, j). One batched matmul gives each tap's product contiguous, so every add
        reads a contiguous slab and writes rows of ow*c contiguous floats."""
        c, h, w, f, kh, kw, poh, pow_ = geo
        oh, ow = 2 * poh, 2 * pow_
        dC = self.buffer("dC", (kh * kw, m * oh * ow, c))
        da = np.zeros((m, h, w, c), np.float32)
        for t in range(kh * kw):                         # (a broadcast batched matmul skips BLAS)
            i, j = divmod(t, kw)
            np.matmul(delta, W_taps[t], out=dC[t])
            da[:, i:i + oh, j:j + ow, :] += dC[t].reshape(m, oh, ow, c)
        return da

    def _store_grads(self, parts):
        for k, (conv, geo) in enumerate(zip(self.convs, self.geo)):
            c, h, w, f, kh, kw = geo[:6]
            G = parts[f"G{k}"].reshape(kh, kw, c, f)
            conv.params["W"].grad = np.ascontiguousarray(G.transpose(3, 2, 0, 1))
            conv.params["b"].grad = parts[f"db{k}"]
        self.dense.params["W"].grad = parts["dW2p"].take(self.unperm, axis=1)
        self.dense.params["b"].grad = parts["db2"]
