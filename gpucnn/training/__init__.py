"""Training: the epoch loop and its engines, checkpoints, progress.

    loop          Trainer (epochs, validation, history), HostEpoch, Divergence
    checkpoint    save / resume of the loop's state, bit-exact
    device_epoch  the sync-free epoch on the CUDA backends
    progress      the progress display
"""
from .loop import Divergence, HostEpoch, Trainer

__all__ = ["Trainer", "HostEpoch", "Divergence"]
