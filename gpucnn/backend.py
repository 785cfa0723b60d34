"""Backend selection: which array module (``xp``) and which op set a network runs on.

    numpy     NumPy arrays, the reference op set (gpucnn/ops/reference.py).
    cupy      CuPy arrays on an NVIDIA GPU, our raw CUDA kernels (cuda/*.cu via gpucnn/ops/cuda.py).
    emulated  NumPy arrays, the *same* CUDA host code and the same .cu kernels compiled by g++ against
              a CUDA-on-CPU header (gpucnn/emulator/): how CI executes every kernel without a GPU.
    auto      cupy when it imports, sees a device, our kernels compile and CuPy's own kernels
              (elementwise, reduction, matmul) run; otherwise numpy.

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
        if self.xp is np and not isinstance(array, np.ndarray) and hasattr(array, "__cuda_array_interface__"):
            kind = f"{type(array).__module__}.{type(array).__qualname__}"
            raise TypeError(f"a {kind} (a GPU array) was given to a network on the {self.name} backend, "
                            "which computes on the host: copy it to NumPy first (cupy.asnumpy(x)), or "
                            "build the network with backend='cupy'")
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
_cache = {}   # "cupy": (Backend, info) once it worked; "cupy_failed": info of the last failed probe;
              # "emulated": Backend. A failure is never reused by an explicit request (see _probe_cupy).

# What a user without a working CuPy should run. gpucnn is not on a package index: the extras install
# from a checkout. CuPy 14's own kernels (elementwise, reductions) need CUDA headers and NVRTC at run
# time: the "[ctk]" extra of the CuPy wheel brings them, or a local CUDA toolkit (CUDA_PATH).
INSTALL_HINT = ('from a checkout: pip install -e ".[cuda12]" (or ".[cuda13]"); or pip install '
                '"cupy-cuda12x[ctk]" (or "cupy-cuda13x[ctk]")')
HEADERS_HINT = ('CuPy compiles its own kernels with NVRTC and the CUDA headers: pip install '
                '"{wheel}[ctk]", or install a CUDA toolkit and set CUDA_PATH')


def requested_name(name=None):
    """The backend name asked for, lowercase and checked: ``name``, else $GPUCNN_BACKEND, else 'auto'."""
    source = "backend"
    if name is None:
        name, source = os.environ.get("GPUCNN_BACKEND", "auto") or "auto", "$GPUCNN_BACKEND"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"unknown {source} {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
    return name.lower()


def get_backend(name=None, refresh=False):
    """Resolve a backend name (or a Backend) to a Backend; raises BackendUnavailable with the reason.

    ``"cupy"`` asks again each time until it works (a driver loaded or a toolkit installed since the
    last try is seen); ``"auto"`` reuses a failed probe unless ``refresh=True``; a CuPy backend that
    worked is kept for the process (``refresh=True`` probes again).
    """
    if isinstance(name, Backend):
        return name
    name = requested_name(name)
    if name == "numpy":
        return _numpy_backend
    if name == "auto":
        if "cupy_failed" in _cache and not refresh:
            return _numpy_backend
        backend, _ = _probe_cupy(refresh)
        return backend or _numpy_backend
    if name == "cupy":
        backend, info = _probe_cupy(refresh)
        if backend is None:
            raise BackendUnavailable(f"cupy backend unavailable: {info['cupy_reason']}")
        return backend
    return _emulated_backend()


def _probe_cupy(refresh=False):
    """-> (Backend or None, info). Our kernels compiled (ops/cuda.py) AND CuPy's own kernels ran.

    A success is cached; a failure is recorded for ``auto`` only, and the next explicit request
    probes again from scratch.
    """
    if "cupy" in _cache and not refresh:
        return _cache["cupy"]
    _cache.pop("cupy", None)
    _cache.pop("cupy_failed", None)
    try:
        from .ops import cuda
    except ImportError as exc:                           # the CUDA op set itself is missing
        info = {"cupy_usable": False, "cupy_reason": f"gpucnn.ops.cuda failed to import: {exc}"}
        _cache["cupy_failed"] = info
        return None, info
    # ops/cuda.py keeps its probe for the process; drop a failed one so this request tries again.
    if refresh or not getattr(cuda, "_cupy_state", {}).get("ops"):
        getattr(cuda, "_cupy_state", {}).clear()
    info = cuda.cupy_info()
    if info.get("cupy_reason", "").startswith("CuPy is not installed"):
        info["cupy_reason"] = f"CuPy is not installed ({INSTALL_HINT})"
    backend = None
    if info.get("cupy_usable"):
        import cupy
        failed = cupy_own_kernels(cupy)
        info["cupy_own_kernels"] = "; ".join(f"{k}: {v}" for k, v in failed.items()) or \
            "elementwise, reduction, matmul ran"
        if failed:
            info["cupy_usable"] = False
            info["cupy_reason"] = (f"our kernels compiled, but CuPy's own kernels failed: "
                                   f"{info['cupy_own_kernels']}" + _headers_hint(failed))
        else:
            backend = Backend("cupy", *cuda.cupy_xp_and_ops())
    if backend is None:
        _cache["cupy_failed"] = info
        return None, info
    _cache["cupy"] = (backend, info)
    return backend, info


def cupy_own_kernels(cupy):
    """Run one CuPy elementwise op, one reduction and one matmul; -> {what: why} for each that failed.

    Most launches of a CuPy training step are CuPy's, not ours: elementwise and reduction kernels that
    CuPy compiles at first use with NVRTC against the CUDA headers, and cuBLAS for matmul. Each result
    is checked against the value it must have (the arithmetic below is exact in float32).
    """
    checks = {
        "elementwise (x * 2 + 1)": (lambda x: x * 2 + 1, lambda r: float(r[3]), 7.0),
        "reduction (sum over axis 0, argmax over axis 1)":
            (lambda x: x.reshape(16, 16).sum(axis=0) + x.reshape(16, 16).argmax(axis=1),
             lambda r: float(r[1]), 1936.0 + 15.0),
        "matmul (cuBLAS)": (lambda x: x.reshape(16, 16) @ x.reshape(16, 16)[:, :1],
                            lambda r: float(r[1, 0]), 50560.0),
    }
    failed = {}
    for what, (run, read, want) in checks.items():
        try:
            x = cupy.arange(256, dtype=cupy.float32)
            got = read(run(x))
            if got != want:
                failed[what] = f"wrong result {got} (want {want})"
        except Exception as exc:                         # CompileException, CUDARuntimeError, ...
            text = str(exc).strip().splitlines()
            failed[what] = f"{type(exc).__name__}: {text[0][:200] if text else ''}"
    return failed


def _headers_hint(failed):
    text = " ".join(failed.values()).lower()
    if not any(word in text for word in ("compile", "nvrtc", ".h", "header", "include")):
        return ""
    wheel = "cupy-cuda12x"
    try:
        import importlib.metadata as metadata
        names = [d.metadata["Name"] for d in metadata.distributions()]
        wheel = next((n for n in names if n and n.lower().startswith("cupy-cuda")), wheel)
    except Exception:
        pass
    return f" ({HEADERS_HINT.format(wheel=wheel)})"


def _emulated_backend():
    if "emulated" not in _cache:
        from .ops import cuda
        _cache["emulated"] = Backend("emulated", *cuda.emulated_xp_and_ops())
    return _cache["emulated"]


STEP_MODES = ("auto", "eager", "generic")


def step_setting():
    """GPUCNN_GPU_STEP, checked: auto (default), eager or generic (read by gpu_step and backend_info)."""
    value = (os.environ.get("GPUCNN_GPU_STEP") or "auto").lower()
    if value not in STEP_MODES:
        raise ValueError(f"GPUCNN_GPU_STEP must be one of {', '.join(STEP_MODES)}, got {value!r}")
    return value


def _gpu_step_note(info):
    """Which GPU training step a network would get, as far as it is known without a network."""
    if not info.get("cupy_usable"):
        return "n/a: the cupy backend is not usable here"
    try:
        mode = step_setting()
    except ValueError as exc:
        return f"none: {exc}"
    if mode == "generic":
        return "generic layer-by-layer step (GPUCNN_GPU_STEP=generic)"
    if mode == "eager":
        return "fused step, eager launches, where the network allows it (GPUCNN_GPU_STEP=eager)"
    return (f"per network (GPUCNN_GPU_STEP={mode}): fused step with graph replay where the network "
            "allows it; the network's summary says which")


def auto_reason():
    """Why ``auto`` did not pick CuPy, from the probe ``auto`` already ran (no second probe: a
    failed one is reused by ``auto``, so its reason is the one that decided)."""
    failed = _cache.get("cupy_failed")
    if failed is not None:
        return failed.get("cupy_reason") or "CuPy is not usable"
    return backend_info().get("cupy_reason") or "CuPy is not usable"


def backend_info(refresh=False):
    """What ``auto`` picks and why: a dict fit for printing (``gpucnn info``).

    Asks again when the last CuPy probe failed (or ``refresh=True``); a working one is reused.
    """
    info = {"numpy": np.__version__, "auto": "numpy"}
    _, cupy_info = _probe_cupy(refresh or "cupy_failed" in _cache)
    info.update(cupy_info)
    if info.get("cupy_usable"):
        info["auto"] = "cupy"
    info["gpu_step"] = _gpu_step_note(info)
    return info
