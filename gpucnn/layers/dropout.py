"""Dropout: inverted dropout in train mode, the identity in eval mode."""
import contextlib
import copy
import numbers

import numpy as np

from .base import Layer, register_layer

_fixed = {"on": False}


@contextlib.contextmanager
def fixed_masks():
    """Inside, every Dropout layer reuses its last mask when the input has its shape (no new draw).

    For gradient checks: a finite difference needs the same function on both sides of the step.
    """
    before = _fixed["on"]
    _fixed["on"] = True
    try:
        yield
    finally:
        _fixed["on"] = before


@register_layer
class Dropout(Layer):
    """Train mode: a = a_prev * keep / (1 - p), keep ~ Bernoulli(1 - p) per element; eval: a = a_prev.

    Backward: da_prev = da * keep / (1 - p) with the mask of the forward (identity in eval mode).

    The mask is drawn on the host from this layer's generator, seeded from the network's seed and the
    layer's index (``np.random.default_rng([net.seed, 2, index])``; the shuffle uses [seed, 1]), so a
    run repeats exactly, on every backend (the same masks on numpy, emulated and cupy). Its state is
    saved in training checkpoints, so a resumed run draws the same masks as an uninterrupted one.
    ``p`` is in [0, 1).
    """
    _positional = ("p",)
    _caches = Layer._caches + ("keep", "mask")

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"p (the probability of dropping an element) must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = None
        self.keep = self.mask = None
        super().__init__()

    def bind(self, owner, index, backend, dtype, rng):
        super().bind(owner, index, backend, dtype, rng)
        if self.rng is None:                  # a deep copy keeps its generator's state
            self.rng = np.random.default_rng([owner.seed, 2, index])
        self.keep = self.mask = None

    def forward(self, a_prev):
        if not self.training or self.p == 0.0:
            self.mask = None
            return a_prev
        self.mask = self.backend.asarray(self.draw(a_prev.shape), a_prev.dtype) * self.scale(a_prev.dtype)
        return a_prev * self.mask

    def draw(self, shape):
        """The keep mask (bool, on the host) for an input of ``shape``, the layer's next draw (or, inside
        fixed_masks, its last one); kept as ``self.keep``. The fused CPU plan draws through this too."""
        if not (_fixed["on"] and self.keep is not None and self.keep.shape == tuple(shape)):
            self.keep = self.rng.random(shape) >= self.p                 # host, float64 draws
        return self.keep

    def scale(self, dtype):
        """1 / (1 - p) in ``dtype``: what a kept element is multiplied by."""
        return np.dtype(dtype).type(1.0 / (1.0 - self.p))

    def backward(self, da):
        return da if self.mask is None else da * self.mask

    def __deepcopy__(self, memo):
        new = super().__deepcopy__(memo)
        new.rng = copy.deepcopy(self.rng, memo)
        new.keep = new.mask = None
        return new

    def config(self):
        return dict(p=self.p)
