"""StagePlan: a network as a sequence of fused stages (stages.py), one per layer, run chunk by chunk."""
import numpy as np

from .banded import BandedConvPoolStage
from .common import THREAD_MIN, Plan
from .stages import (STAGES, ActivationStage, ConvStage, DenseStage, DropoutStage, FlattenStage,
                     MaxPoolStage, PassStage)


CHEAP_IMAGE_FLOPS = 200_000     # below this per image, chunks grow past 32 images (see StagePlan)


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
        # chunk: what one image needs in scratch, times chunk ~ 6 MB (in cache, most of it), at most
        # 32 images; a network as cheap per image as the seed one (~0.1 MFLOP) takes up to 128: its
        # chunk's time is mostly the stages' Python-level calls, which a bigger chunk shares out
        # (measured, seed net on 2 cores: b256 training 64k -> 104-129k img/s, inference 106-144k ->
        # 161-213k; LeNet-5 and the wide net are best at <= 32).
        per_image = max(1, sum(stage.floats for stage in self.stages))
        flops = sum(stage.flops for stage in self.stages)
        most = 128 if flops < CHEAP_IMAGE_FLOPS else 32
        self.chunk = int(np.clip((6 << 20) // (4 * per_image), 1, most))
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
                if isinstance(after, MaxPoolStage) and stage.from_output:
                    after.act, stage.pooled = stage.cls, True
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
            if isinstance(stage, ConvStage):          # crop to what a max-pool after it reads
                pool = after if isinstance(after, MaxPoolStage) else None
                if isinstance(after, ActivationStage) and k + 2 < len(stages) \
                        and isinstance(stages[k + 2], MaxPoolStage):
                    pool = stages[k + 2]
                if pool is not None:
                    block = pool.size if pool.stride == pool.size else None
                    stage.crop(*pool.reads(), block=block)
                    pool.blocked = block is not None
                    for between in stages[k + 1:stages.index(pool)]:
                        between.in_shape = between.out_shape = stage.out_shape
                    pool.in_shape = stage.out_shape

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
        p = {}
        for stage in self.stages:
            stage.params(p)
            if n is not None:
                stage.draw(p, n)
        return p

    def _forward_chunk(self, chunk, x, p):
        a = x[chunk.s:chunk.e]
        if a.ndim == 4:                               # (m, c, h, w) -> (m, h, w, c)
            if a.shape[1] == 1:
                a = a.reshape(a.shape[0], *a.shape[2:], 1)
            else:
                a_cl = chunk.keep("x", (a.shape[0], *a.shape[2:], a.shape[1]))
                np.copyto(a_cl, a.transpose(0, 2, 3, 1))
                a = a_cl
        for stage in self.stages:
            a = stage.forward(chunk, a, p)
        return a

    def _backward_chunk(self, chunk, g, p, need_dx):
        parts, da = {}, g
        for stage in reversed(self.stages[1:]):
            da = stage.backward(chunk, da, p, parts, True)
        da = self.stages[0].backward(chunk, da, p, parts, need_dx)
        if need_dx and da.ndim == 4:
            da = da.transpose(0, 3, 1, 2)
        return parts, da

    def _store_grads(self, total):
        for stage in self.stages:
            stage.store(total)


def _plan_layout(shape):
    """Per-image shape in the plan's layout: (c, h, w) -> (h, w, c); vectors as they are."""
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)
