"""The emulated CUDA executor: our unmodified cuda/*.cu kernels, compiled by g++, run on the CPU.

It stands in for the few pieces of CuPy that the CUDA host code uses, with NumPy arrays as device
memory::

    mod = emulator.RawModule(code=src, options=("-DTILE=16",), name="conv2d.cu")
    k = mod.get_function("conv2d_forward")
    k(grid, block, (out, x, W, np.int32(n)), shared_mem=0)     # exactly cupy.RawKernel's call
    out = emulator.empty(shape, np.float32)                      # NaN-poisoned, for every output

Each block's threads are fibers with real barriers; a thread runs until it reaches
``__syncthreads`` or a warp operation, and the order in which threads resume is a setting::

    with emulator.settings(order="random", seed=1):  ...       # or "ascending", "descending"
    with emulator.settings(sanitizer="thread", workers=2): ...  # ThreadSanitizer run
    with emulator.settings(sanitizer="address"): ...            # AddressSanitizer run

Defaults come from the environment: GPUCNN_EMU_ORDER, GPUCNN_EMU_SEED, GPUCNN_EMU_WORKERS,
GPUCNN_EMU_SANITIZER (none/thread/address), GPUCNN_EMU_TIMEOUT (seconds). Compiled objects are
cached under $GPUCNN_CACHE/emulator (default ~/.cache/gpucnn/emulator).

A misbehaving kernel raises KernelError naming the kernel, block and thread: out-of-bounds
accesses (guard pages), deadlocks, ``__syncthreads`` in divergent code, shuffles naming an exited
lane, a static + dynamic shared memory over the limit. Sanitizer reports raise SanitizerError.
"""
import contextvars
import ctypes
import math
import numbers
import os
import threading

import numpy as np

from . import _build, _launch
from ._build import CompileError
from ._launch import KernelError, SanitizerError

__all__ = ["RawModule", "RawKernel", "Function", "empty", "empty_like", "settings", "configure",
           "current_settings", "KernelError", "SanitizerError", "CompileError", "TEST_SCHEDULES",
           "stats", "INT_POISON"]

# The schedules every kernel test should pass (tests parametrise over these).
TEST_SCHEDULES = (
    {"order": "ascending"},
    {"order": "descending"},
    {"order": "random", "seed": 1},
    {"order": "random", "seed": 2},
)
MAX_SHARED = 48 * 1024      # static + dynamic shared memory per block without an opt-in
INT_POISON = 0x7F7F7F7F     # what emulator.empty puts in an int32 array

_SANITIZERS = (None, "thread", "address")
_lock = threading.RLock()


# setting -> its environment variable (the process-wide defaults)
ENV_VARS = {"order": "GPUCNN_EMU_ORDER", "seed": "GPUCNN_EMU_SEED", "workers": "GPUCNN_EMU_WORKERS",
            "sanitizer": "GPUCNN_EMU_SANITIZER", "timeout": "GPUCNN_EMU_TIMEOUT"}
_FALLBACK = {"order": "ascending", "seed": 0, "workers": 1, "sanitizer": None, "timeout": 0.0}


def _env_defaults():
    """The defaults from GPUCNN_EMU_*; a value that does not parse is refused naming its variable."""
    cfg = dict(_FALLBACK)
    for key, var in ENV_VARS.items():
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        try:
            if key in ("seed", "workers"):
                cfg[key] = int(raw)
            elif key == "timeout":
                cfg[key] = float(raw)
            elif key == "sanitizer":
                cfg[key] = None if raw.lower() in ("none", "off", "0") else raw.lower()
            else:
                cfg[key] = raw.lower()
        except ValueError:
            kind = "an int" if key in ("seed", "workers") else "a number of seconds"
            raise ValueError(f"environment variable {var}={raw!r}: expected {kind}") from None
    return _validated(cfg, names=ENV_VARS)


def _validated(cfg, names=None):
    """cfg with every value checked (and normalised); an error names the setting (or its variable)."""
    def fail(key, expected):
        label = f"environment variable {names[key]}" if names else f"emulator setting {key}"
        raise ValueError(f"{label} must be {expected}, got {cfg[key]!r}")
    cfg = dict(cfg)
    if isinstance(cfg["order"], str):
        cfg["order"] = cfg["order"].lower()
    if cfg["order"] not in _launch.ORDERS:
        fail("order", f"one of {sorted(_launch.ORDERS)}")
    if cfg["sanitizer"] not in _SANITIZERS:
        fail("sanitizer", "None, 'thread' or 'address'")
    if isinstance(cfg["workers"], bool) or not isinstance(cfg["workers"], numbers.Integral) \
            or not 1 <= cfg["workers"] <= 256:
        fail("workers", "an int from 1 to 256")
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], numbers.Integral):
        fail("seed", "an int")
    timeout = cfg["timeout"]
    if timeout is None:
        timeout = 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not math.isfinite(timeout) \
            or timeout < 0:
        fail("timeout", "a number of seconds >= 0 (0 or None: no limit)")
    cfg.update(workers=int(cfg["workers"]), seed=int(cfg["seed"]), timeout=float(timeout))
    return cfg


# The process-wide settings (from the environment, read at first use, changed by ``configure``) and
# the scoped ones a ``with settings(...)`` block sets for its own context only (contextvars): nothing
# a block changed is left changed in the process after it exits, whatever it raised.
_base = [None]
_scoped = contextvars.ContextVar("gpucnn_emulator_settings", default=None)


def _base_settings():
    with _lock:
        if _base[0] is None:
            _base[0] = _env_defaults()
        return _base[0]


def current_settings():
    """A copy of the settings launches use now (in this context)."""
    scoped = _scoped.get()
    return dict(scoped if scoped is not None else _base_settings())


def _merged(changes):
    unknown = set(changes) - set(_FALLBACK)
    if unknown:
        raise TypeError(f"unknown emulator settings {sorted(unknown)}; known: {sorted(_FALLBACK)}")
    return _validated(dict(current_settings(), **changes))


def configure(**changes):
    """Change the process-wide settings for good (order, seed, workers, sanitizer, timeout); returns
    the old ones. Inside a ``with settings(...)`` block the block's settings still win there."""
    new = _merged(changes)
    with _lock:
        old = dict(_base_settings())
        _base[0] = dict(old, **{k: new[k] for k in changes})
    return old


class settings:
    """``with emulator.settings(order="random", seed=2): ...`` — in force inside the block only.

    The values are checked here, at once (``settings(timeout='x')`` raises before any launch); they
    apply on ``__enter__`` to the current context and are restored on exit.
    """

    def __init__(self, **changes):
        _merged(changes)                 # refuse bad values now, not at the first launch
        self._changes, self._tokens = changes, []

    def __enter__(self):
        new = _merged(self._changes)
        self._tokens.append(_scoped.set(new))
        return dict(new)

    def __exit__(self, *exc):
        _scoped.reset(self._tokens.pop())
        return False


def empty(shape, dtype=np.float32):
    """A NumPy array poisoned so that an element the kernel never writes shows: NaN for floats,
    INT_POISON-like bytes (0x7f...) for integers, True for bool. Allocate every output with it."""
    dtype = np.dtype(dtype)
    a = np.empty(shape, dtype)
    if dtype.kind in "fc":
        a.fill(np.nan)
    elif dtype.kind in "iu":
        a.view(np.uint8).fill(0x7F)
    elif dtype.kind == "b":
        a.fill(True)
    else:
        a.view(np.uint8).fill(0xFF)
    return a


def empty_like(a, dtype=None):
    return empty(np.shape(a), dtype or a.dtype)


def stats():
    """Counters: compiles (g++ runs), cache_hits (found on disk), launches."""
    return dict(_build.stats, launches=_launches[0])


_launches = [0]
_loaded = {}        # (code, options, name, mode) -> (path, meta, CDLL or None)


def _load(code, options, name, mode):
    key = (code, tuple(options), name, mode)
    with _lock:
        if key not in _loaded:
            path, meta = _build.build(code, options, name, mode)
            lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL) if mode is None else None
            _loaded[key] = (path, meta, lib)
        return _loaded[key]


class RawModule:
    """Like ``cupy.RawModule(code=..., options=...)``: a .cu source whose kernels we can launch.

    Compiled on first use (``get_function``) or by ``compile()``; a syntax error raises
    CompileError with g++'s log.
    """

    def __init__(self, code=None, options=(), name="kernel.cu", path=None, backend="nvrtc",
                 name_expressions=None, jitify=False, **unused):
        if (code is None) == (path is None):
            raise TypeError("RawModule needs exactly one of code= or path=")
        if name_expressions:
            raise NotImplementedError("the emulator runs extern \"C\" kernels only (no name_expressions)")
        if path is not None:
            with open(path) as f:
                code = f.read()
            name = os.path.basename(str(path))
        self.code, self.options, self.name = code, tuple(str(o) for o in options), name

    def compile(self, sanitizer=None):
        """Build now (for ``sanitizer``: None, "thread", "address"); returns the kernel names."""
        _, meta, _ = _load(self.code, self.options, self.name, sanitizer)
        return sorted(meta["kernels"])

    def get_function(self, name):
        _, meta, _ = _load(self.code, self.options, self.name, None)
        info = meta["kernels"].get(name)
        if info is None:
            raise AttributeError(f"{self.name}: no kernel named {name!r}; it has "
                                 f"{sorted(meta['kernels']) or 'none'}")
        if info["template"]:
            raise AttributeError(f"{self.name}: {name!r} is a template kernel; give it an extern \"C\" "
                                 "instantiation")
        if not info["extern_c"]:
            raise AttributeError(f"{self.name}: kernel {name!r} is not extern \"C\": CuPy's "
                                 "get_function would not find it under this name")
        return Function(self, name, info)


class Function:
    """A launchable kernel: ``f(grid, block, args, shared_mem=0)`` as cupy.RawKernel."""

    def __init__(self, module, name, info):
        self.module, self.name = module, name
        _, _, lib = _load(module.code, module.options, module.name, None)
        sig = getattr(lib, f"__emu_sig_{name}")
        sig.restype = ctypes.c_char_p
        self.params = _launch.parse_signature(sig().decode(), info["params"], info["decls"])
        self._entry = ctypes.cast(getattr(lib, f"__emu_entry_{name}"), ctypes.c_void_p).value
        self._lib = lib

    def __repr__(self):
        params = ", ".join(f"{p.cname} {p.name}" for p in self.params)
        return f"<emulated kernel {self.name}({params}) from {self.module.name}>"

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        cfg = current_settings()
        grid, block, shared_mem = _launch.check_config(self.name, grid, block, shared_mem, MAX_SHARED)
        marshalled = _launch.marshal(self.name, self.params, args)
        config = _launch.config_struct(cfg, MAX_SHARED)
        _launches[0] += 1
        mode = cfg["sanitizer"]
        if mode is None:
            with _lock:
                res = _launch.run_in_process(self._lib, self._entry, marshalled, grid, block,
                                             shared_mem, config)
            stderr = ""
        else:
            path, _, _ = _load(self.module.code, self.module.options, self.module.name, mode)
            res, stderr = _launch.run_in_driver(path, mode, self.name, marshalled, grid, block,
                                                shared_mem, config, timeout=cfg["timeout"] or None)
            if res is None:
                tool = "ThreadSanitizer" if mode == "thread" else "AddressSanitizer"
                raise SanitizerError(f"kernel {self.name!r}: {tool} reported a problem:\n{stderr}",
                                     kernel=self.name, kind="sanitizer", report=stderr)
        if res.kind:
            raise KernelError(_launch.error_message(self.name, self.params, res, shared_mem),
                              kernel=self.name, block=tuple(res.block),
                              thread=tuple(res.thread) if res.has_thread else None,
                              kind=_launch.ERR_NAMES.get(res.kind, "error"), report=stderr or None)


def RawKernel(code, name, options=(), **kwargs):
    """Like ``cupy.RawKernel(code, name, options)``."""
    return RawModule(code=code, options=options, **kwargs).get_function(name)
