"""The sync-free epoch engine for the CUDA backends (cupy, emulated).

``engine_for(trainer)`` returns an engine with ``run_epoch(order)``, ``sync()`` and ``reload()``, or
None, and then the host loop (training/loop.py ``HostEpoch``) runs the epoch.
"""


def engine_for(trainer):
    """No device engine yet: every backend runs the host loop."""
    return None
