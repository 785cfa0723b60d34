"""Backend selection: which array module (``xp``) and which op set a network runs on.

    numpy     NumPy arrays, the reference op set (gpucnn/ops/reference.py).
    cupy      CuPy arrays on an NVIDIA GPU, our raw CUDA kernels (cuda/*.cu via gpucnn/ops/cuda.py).
    emulated  NumPy arrays, the *same* CUDA host code and the same .cu kernels compiled by g++ against
              a CUDA-on-CPU header (gpucnn/emulator/): how CI executes every kernel without a GPU.
    auto      cupy when it imports, sees a device and its kernels compile; otherwise numpy.

The name comes from the ``backend=`` argument, else the environment variable ``GPUCNN_BACKEND``,
else ``auto``. ``backend_info()`` says which backend ``auto`` picks and why.
"""
import os

import numpy as np

from .errors import BackendUnavailable
from .ops import OP_NAMES, reference

BACKEND_NAMES = ("auto", "numpy", "cupy", "emulated")


class Backend:
    """An array module plus an op set exporting ``OP_NAMES``."""

    def __init__(self, name, xp, ops):
        missing = [op for op in OP_NAMES if not hasattr(ops, op)]
        if missing:
            raise TypeError(f"op set for backend {name!r} lacks {missing}")
        self.name, self.xp, self.ops = name, xp, ops

    def asarray(self, array, dtype=np.float32):
        """Host or device array -> a contiguous array of this backend (a no-op when it already is)."""
        if self.xp is not np and isinstance(array, np.ndarray):
            return self.xp.ascontiguousarray(self.xp.asarray(array, dtype=dtype))
        return self.xp.ascontiguousarray(array, dtype=dtype)

    def __repr__(self):
        return f"Backend({self.name!r})"


def to_numpy(array):
    """Any backend array (NumPy, CuPy) or scalar -> a NumPy array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):          # cupy.ndarray; avoids importing cupy here
        return array.get()
    return np.asarray(array)


_numpy_backend = Backend("numpy", np, reference)
_cache = {}


def get_backend(name=None):
    """Resolve a backend name (or a Backend) to a Backend; raises BackendUnavailable with the reason."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get("GPUCNN_BACKEND", "auto") or "auto"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
    name = name.lower()
    if name == "numpy":
        return _numpy_backend
    if name == "auto":
        try:
            return _cupy_backend()
        except BackendUnavailable:
            return _numpy_backend
    if name == "cupy":
        return _cupy_backend()
    return _emulated_backend()


def _cupy_backend():
    if "cupy" not in _cache:
        try:
            from .ops import cuda
            _cache["cupy"] = Backend("cupy", *cuda.cupy_xp_and_ops())
        except BackendUnavailable as exc:
            _cache["cupy"] = exc
    if isinstance(_cache["cupy"], Exception):
        raise _cache["cupy"]
    return _cache["cupy"]


def _emulated_backend():
    if "emulated" not in _cache:
        from .ops import cuda
        _cache["emulated"] = Backend("emulated", *cuda.emulated_xp_and_ops())
    return _cache["emulated"]


def backend_info():
    """What ``auto`` picks and why: a dict fit for printing (``gpucnn info``)."""
    info = {"numpy": np.__version__, "auto": "numpy"}
    try:
        from .ops import cuda
        info.update(cuda.cupy_info())
    except ImportError as exc:                           # the CUDA op set itself is missing
        info["cupy_usable"], info["cupy_reason"] = False, str(exc)
    if info.get("cupy_usable"):
        info["auto"] = "cupy"
    return info
