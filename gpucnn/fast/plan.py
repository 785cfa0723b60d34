"""StagePlan: a network as a sequence of fused stages (stages.py), one per layer, run chunk by chunk."""
import numpy as np

from .banded import BandedConvPoolStage
from .common import THREAD_MIN, Plan
from .stages import (STAGES, ActivationStage, BatchNormStage, ConvStage, DenseStage, DropoutStage,
                     FlattenStage, MaxPoolStage, PassStage)


CHEAP_IMAGE_FLOPS = 200_000     # below this per image, chunks grow past 32 images (see StagePlan)
CHUNK_BYTES = 24 << 20          # a chunk's scratch at most, per thread (see StagePlan)


class StagePlan(Plan):
    """The network's layers as stages, with the fusions of stages.py between neighbours.

    The input (n, c, h, w) is taken channel-last per chunk (a view when c = 1); dC/dx is given back
    as (n, c, h, w).
    """

    def __init__(self, net):
        super().__init__(net)
        shape = _plan_layout(net.input_shape)
        self.stages, layers, i = [], net.layers, 0
        while i < len(layers):
            if BandedConvPoolStage.matches(layers, i, shape):
                stage, i = BandedConvPoolStage(layers[i:i + 3], i, shape), i + 3
            else:
                stage, i = STAGES[type(layers[i]).__name__](layers[i], i, shape), i + 1
            self.stages.append(stage)
            shape = stage.out_shape
        self._fuse()
        # chunk: what one image needs in scratch, times chunk <= CHUNK_BYTES, at most 32 images; a
        # network as cheap per image as the seed one (~0.1 MFLOP) takes up to 128. A chunk's time is
        # partly the stages' Python-level calls, which a bigger chunk shares out, while the matmuls
        # run as fast on 32 images' arrays as on 9, even where two threads' scratch (2 x 21 MB for
        # the wide net) is more than this VM's 32 MB L3 (measured on 2 cores: seed net b256 training
        # 64k -> 104-129k img/s, inference 106-144k -> 161-213k going 32 -> 128 images; the wide net
        # b256 4.9k -> 7.5k and b64 5.0k -> 5.5k going 9 -> 32; LeNet-5 best at 32-64).
        per_image = max(1, sum(stage.floats for stage in self.stages))
        flops = sum(stage.flops for stage in self.stages)
        most = 128 if flops < CHEAP_IMAGE_FLOPS else 32
        self.chunk = int(np.clip(CHUNK_BYTES // (4 * per_image), 1, most))
        # two threads from two chunks on when an image is worth it, else from THREAD_MIN images
        self.thread_min = 2 * self.chunk if flops > 500_000 else max(THREAD_MIN, 2 * self.chunk)
        # OpenBLAS runs a gemm of m*n*k <= 4 * 65536 on the calling thread whatever its setting:
        # below that, the thread guard is skipped (it costs more than the matmuls at batch 1).
        gemm = max([stage.gemm for stage in self.stages] + [1])
        self.blas_min = max(1, 262144 // gemm + 1)

    def _fuse(self):
        stages = self.stages
        for k, stage in enumerate(stages):
            before = stages[k - 1] if k else None
            after = stages[k + 1] if k + 1 < len(stages) else None
            if isinstance(stage, BandedConvPoolStage) and isinstance(after, FlattenStage):
                # hand the pooled maps on in the reference's (f, y, x) order: the dense W as it is
                stage.channel_first, after.perm = True, None
                after.in_order = (stage.f, stage.poh, stage.pow)
            if isinstance(stage, PassStage):
                stage.owns_output = before.owns_output if before is not None else False
            if isinstance(stage, ActivationStage):
                stage.in_place = before is not None and before.owns_output
                if stage.cls.prescale != 1.0 and isinstance(before, (ConvStage, DenseStage)):
                    before.prescale, stage.scaled = stage.cls.prescale, True
                if isinstance(after, MaxPoolStage):
                    after.act, after.act_scaled, stage.pooled = stage.cls, stage.scaled, True
            if isinstance(stage, FlattenStage) and stage.perm is not None:
                dense = next((s for s in stages[k + 1:] if not isinstance(s, (ActivationStage, PassStage))),
                             None)
                if isinstance(dense, DenseStage):
                    dense.permute(stage.perm)
                    for between in stages[k + 1:stages.index(dense)]:
                        if isinstance(between, DropoutStage):     # its masks in the Flatten's order
                            between.perm = stage.perm
                else:
                    stage.reorder = True
            if isinstance(stage, ConvStage):
                self._crop_for_pool(k)

    def _crop_for_pool(self, k):
        """Conv k, then activations and batch norms, then a max-pool: the conv computes only the rows
        and columns the pool reads, and for a pool of non-overlapping windows puts them tap-major
        (ConvStage.crop), which the stages between take as they come: each works per channel on the
        channel-last values in any order. A batch norm's statistics need every position, so with one
        between, a conv whose output the pool does not read whole keeps its layout."""
        stages, j = self.stages, k + 1
        while j < len(stages) and isinstance(stages[j], (ActivationStage, BatchNormStage)):
            j += 1
        if j == len(stages) or not isinstance(stages[j], MaxPoolStage):
            return
        conv, pool, between = stages[k], stages[j], stages[k + 1:j]
        if any(isinstance(s, BatchNormStage) for s in between) and tuple(pool.reads()) != conv.full:
            return
        block = pool.size if pool.stride == pool.size else None
        conv.crop(*pool.reads(), block=block)
        pool.blocked = block is not None
        for s in between:
            s.in_shape = s.out_shape = conv.out_shape
        pool.in_shape = conv.out_shape

    def available(self):
        for i, layer in enumerate(self.net.layers):
            # the stages are built from the layer classes' code: a method replaced on one instance
            # (a test planting a bug, a user's patch) is honoured by the layer-by-layer path only
            if "forward" in vars(layer) or "backward" in vars(layer):
                return f"layer {i} {type(layer).__name__} has its forward or backward replaced on the instance"
        for stage in self.stages:
            reason = stage.available()
            if reason is not None:
                return reason
        return None

    # -- the step over one chunk ------------------------------------------------------------------
    def _params(self, n):
        p = {"n": n}                              # None: a probe, nothing drawn or updated
        for stage in self.stages:
            stage.params(p)
            if n is not None:
                stage.draw(p, n)
        # the stages that need the whole batch this step (their modes are read here, once)
        p["cuts"] = [k for k, stage in enumerate(self.stages) if stage.whole_batch(p)]
        return p

    def _forward_chunk(self, chunk, x, p):
        return self._forward_stages(chunk, x, p, 0, len(self.stages), rows=True)

    def _backward_chunk(self, chunk, g, p, need_dx):
        parts = {}
        return parts, self._backward_stages(chunk, g, p, parts, len(self.stages) - 1, 0, need_dx)

    def _forward_stages(self, chunk, a, p, lo, hi, rows=False):
        """Stages lo..hi-1 forward on one chunk; ``rows``: ``a`` is x, the chunk's rows are taken."""
        if rows:
            a = a[chunk.s:chunk.e]
            if a.ndim == 4:                           # (m, c, h, w) -> (m, h, w, c)
                if a.shape[1] == 1:
                    a = a.reshape(a.shape[0], *a.shape[2:], 1)
                else:
                    a_cl = chunk.keep("x", (a.shape[0], *a.shape[2:], a.shape[1]))
                    np.copyto(a_cl, a.transpose(0, 2, 3, 1))
                    a = a_cl
        for stage in self.stages[lo:hi]:
            a = stage.forward(chunk, a, p)
        return a

    def _backward_stages(self, chunk, da, p, parts, top, bottom, need_dx):
        """Stages top down to bottom backward on one chunk; at bottom = 0, dC/dx in (m, c, h, w)."""
        for k in range(top, bottom - 1, -1):
            da = self.stages[k].backward(chunk, da, p, parts, need_dx or k > 0)
        if bottom == 0 and need_dx and da.ndim == 4:
            da = da.transpose(0, 3, 1, 2)
        return da

    # -- every chunk, in phases when a stage needs the whole batch (BatchNorm2D in train mode) -------
    def _whole_batch(self, params):
        return bool(params["cuts"])

    def _forward_all(self, chunks, x, p, out, kind):
        """Every chunk's forward, segment by segment: every chunk up to a whole-batch stage (its input
        kept per chunk), that stage's batch reduction in chunk order, then every chunk on from it.
        Without such a stage: one segment, the whole forward of each chunk."""
        cuts = p["cuts"]
        n, last = out.shape[0], len(self.stages)
        acts = [None] * len(chunks)
        for k, (lo, hi) in enumerate(zip([0] + cuts, cuts + [last])):
            def one(chunk, lo=lo, hi=hi, first=k == 0):
                a = self._forward_stages(chunk, x if first else acts[chunk.index], p, lo, hi, rows=first)
                if hi == last:
                    out[chunk.s:chunk.e] = a
                else:
                    acts[chunk.index] = self.stages[hi].hold(chunk, a, "in")
            self._run(one, chunks, n, f"{kind}.{k}")
            if hi < last:
                self.stages[hi].reduce_forward(chunks, acts, p)
        return None

    def _backward_all(self, chunks, out, y1, p, need_dx, parts, dx):
        """Every chunk's backward (parts[chunk.index], dx's rows when need_dx), the forward's segments in
        reverse: every chunk down to a whole-batch stage's output (its delta kept per chunk), that
        stage's batch sums in chunk order, then every chunk on down."""
        cuts = p["cuts"]
        n = out.shape[0]
        deltas = [None] * len(chunks)
        for chunk in chunks:
            parts[chunk.index] = {}
        tops = [len(self.stages) - 1] + cuts[::-1]
        for k, (top, bottom) in enumerate(zip(tops, [c + 1 for c in cuts[::-1]] + [0])):
            def one(chunk, top=top, bottom=bottom, first=k == 0):
                s, e = chunk.s, chunk.e
                da = self._loss_gradient(out[s:e], y1[s:e], n) if first else deltas[chunk.index]
                da = self._backward_stages(chunk, da, p, parts[chunk.index], top, bottom, need_dx)
                if bottom == 0:
                    if need_dx:
                        dx[s:e] = da
                else:
                    deltas[chunk.index] = self.stages[bottom - 1].hold(chunk, da, "dout")
            self._run(one, chunks, n, f"backward.{k}")
            if bottom > 0:
                self.stages[bottom - 1].reduce_backward(chunks, deltas, p)
        return None

    def _store_grads(self, total):
        for stage in self.stages:
            stage.store(total)


def _plan_layout(shape):
    """Per-image shape in the plan's layout: (c, h, w) -> (h, w, c); vectors as they are."""
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)
