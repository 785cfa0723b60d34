"""The CUDA op set: host code for our own kernels in ``cuda/*.cu``, one path for two executors.

``CudaOps`` exports the ops of ``gpucnn.ops.OP_NAMES`` with the signatures of the NumPy reference
(``gpucnn/ops/reference.py``). It knows nothing about the device: it is handed the array module, a
module loader and an allocator, so the same launch code drives

    cupy      ``cupy.RawModule`` compiled by NVRTC to a cubin for the device's arch (CuPy's default;
              cached on disk by CuPy, compiled once per process), ``cupy.empty``;
    emulated  ``gpucnn.emulator.RawModule`` (the same .cu compiled by g++ against a CUDA-on-CPU header)
              and ``gpucnn.emulator.empty`` (NaN-poisoned NumPy arrays): how CI runs every kernel.

Every launch shape is decided in ``launch_config``; every scalar goes to a kernel as ``np.int32`` (a
Python int would arrive as 64-bit); every input is made a contiguous float32 (RawKernel ignores strides).

NOTE: float32 only, like the kernels; every array must have fewer than 2**31 elements (the kernels index
with int). Checked here, with the shapes, because a kernel cannot raise.
"""
import os
import time
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, ShapeError

# What the backend passes to the compiler. CuPy's RawModule (cupy/cuda/compiler.py, CuPy 13-14) appends
# CUPY_ADDED_OPTIONS and -arch=sm_XY of the current device, so NVRTC writes a cubin, not PTX that an
# older driver may reject. The compile gate (tests/test_compile_gate.py) compiles with exactly
# NVRTC_OPTIONS + CUPY_ADDED_OPTIONS + -arch=sm_80 / sm_90.
NVRTC_OPTIONS = ("--std=c++17",)
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")

# Each .cu file and its extern "C" entry points (STYLE: one name for NumPy op, wrapper and kernel).
KERNELS = {
    "conv2d_forward.cu": ("conv2d_forward",),
    "conv2d_backward_weight.cu": ("conv2d_backward_weight", "conv2d_backward_bias"),
    "conv2d_backward_input.cu": ("conv2d_backward_input",),
    "maxpool2d.cu": ("maxpool2d_forward", "maxpool2d_backward"),
    "avgpool2d.cu": ("avgpool2d_forward", "avgpool2d_backward"),
}
KERNEL_FILES = tuple(KERNELS)
# Kernels whose sizes are compile-time constants: compiled per network with -D options by the host
# code that launches them (gpucnn/gpu_step.py), through CudaOps.compile_module.
STEP_KERNELS = {
    "seed_step.cu": ("seed_step_sample", "seed_step_stats", "seed_step_update"),
}

ELEMENT_THREADS = 256   # "thread" launches: one thread per output element
REDUCE_THREADS = 256    # "block" launches: one block per output element; = #define in the .cu
ACTIVATIONS = {"none": 0, "sigmoid": 1, "relu": 2, "tanh": 3}   # = #define ACTIVATION_* in conv2d_forward.cu
_INT32_MAX = 2**31 - 1


def cuda_source_dir():
    """The folder holding the .cu files: gpucnn/_cuda in an installed wheel, else <repo>/cuda."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "_cuda", package.parent / "cuda"):
        # An installed package's parent is site-packages, whose cuda/ is NVIDIA's Python namespace:
        # only a folder that holds our kernels counts.
        if all((folder / name).is_file() for name in KERNEL_FILES):
            return folder
    raise FileNotFoundError(f"no CUDA kernels ({', '.join(KERNEL_FILES)}) in {package / '_cuda'} "
                            f"or {package.parent / 'cuda'}")


def read_kernel_source(file_name):
    return (cuda_source_dir() / file_name).read_text(encoding="utf-8")


def launch_config(mapping, count):
    """The one place launch shapes are decided: -> (grid, block), 1-D.

    mapping "thread": one thread per output element, count of them, blocks of ELEMENT_THREADS;
    mapping "block":  one block of REDUCE_THREADS per output element (a tree reduction each).
    """
    if mapping == "thread":
        return (-(-count // ELEMENT_THREADS),), (ELEMENT_THREADS,)
    if mapping == "block":
        return (count,), (REDUCE_THREADS,)
    raise ValueError(f"unknown launch mapping {mapping!r}")


def _out_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def _pair(value, what):
    try:
        first, second = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ShapeError(f"{what} must be a pair of ints, got {value!r}") from None
    return first, second


class CudaOps:
    """The ops of OP_NAMES on our CUDA kernels, for any (xp, loader, allocator) triple.

    xp           the array module of inputs and outputs (cupy, or numpy for the emulator)
    load_module  load_module(code, options, name) -> object whose .get_function(kernel) returns a
                 callable (grid, block, args, shared_mem=0), as cupy.RawModule does
    empty        empty(shape, dtype) -> an uninitialised output array
    """

    def __init__(self, xp, load_module, empty):
        self.xp, self.empty = xp, empty
        self._load_module, self._modules = load_module, {}
        self._kernels = {}
        for file_name in KERNELS:             # get_function compiles (CuPy): errors surface here
            self._kernels.update(self.compile_module(file_name))

    def compile_module(self, file_name, defines=()):
        """The kernels of cuda/<file_name> compiled with NVRTC_OPTIONS + defines (e.g. "-DK=5"):
        {kernel name: launchable}, cached per (file, defines). Not one of OP_NAMES: the fused step
        (gpucnn/gpu_step.py) compiles its kernels with the network's sizes as constants."""
        key = (file_name, tuple(defines))
        if key not in self._modules:
            names = STEP_KERNELS.get(file_name) or KERNELS.get(file_name)
            if names is None:
                raise ValueError(f"no kernel file {file_name!r} in STEP_KERNELS or KERNELS")
            module = self._load_module(read_kernel_source(file_name), NVRTC_OPTIONS + tuple(defines),
                                       file_name)
            self._modules[key] = {name: module.get_function(name) for name in names}
        return self._modules[key]

    # --- helpers ------------------------------------------------------------------------------

    def _f32(self, array):
        return self.xp.ascontiguousarray(array, dtype=self.xp.float32)

    def _launch(self, kernel, mapping, count, *args):
        """Launch kernel over count outputs with args (arrays as given, ints as np.int32)."""
        kernel_args = []
        for arg in args:
            is_int = isinstance(arg, (int, np.integer))
            size = int(arg) if is_int else arg.size
            if not -_INT32_MAX <= size <= _INT32_MAX:
                raise ValueError(f"{kernel}: {size} does not fit the kernels' int32 indexing")
            kernel_args.append(np.int32(size) if is_int else arg)
        if count == 0:
            return
        grid, block = launch_config(mapping, count)
        self._kernels[kernel](grid, block, tuple(kernel_args))

    @staticmethod
    def _check_conv(x_shape, W_shape, stride, padding):
        """-> (oh, ow) for a conv of x (n, c, h, w) with W (f, c, kh, kw); ShapeError if none."""
        if len(x_shape) != 4 or len(W_shape) != 4 or x_shape[1] != W_shape[1]:
            raise ShapeError(f"conv2d: x {tuple(x_shape)} and W {tuple(W_shape)} must be "
                             "(n, c, h, w) and (f, c, kh, kw)")
        if stride < 1 or min(padding) < 0:
            raise ShapeError(f"conv2d: stride {stride} must be >= 1, padding {padding} >= 0")
        (h, w), (kh, kw) = x_shape[2:], W_shape[2:]
        oh, ow = (_out_size(h, kh, stride, padding[0]), _out_size(w, kw, stride, padding[1]))
        if oh < 1 or ow < 1:
            raise ShapeError(f"conv2d: kernel {kh}x{kw} larger than padded input {h}x{w}")
        return oh, ow

    # --- the op set (signatures = reference.py) -------------------------------------------------

    def conv2d_forward(self, x, W, b, stride, padding):
        """z = W * x + b (cross-correlation); x (n, c, h, w), W (f, c, kh, kw), b (f,) -> (n, f, oh, ow)"""
        return self.conv2d_forward_activation(x, W, b, stride, padding, "none")

    def conv2d_forward_activation(self, x, W, b, stride, padding, activation):
        """act(conv2d_forward(...)) in one kernel; activation "none", "sigmoid", "relu" or "tanh",
        with the formulas of the activation layers (so their backward can take a from here).

        Not one of OP_NAMES (the reference has no twin): a layer may use it where the op set has it.
        """
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        x, W, b = self._f32(x), self._f32(W), self._f32(b)
        stride, padding = int(stride), _pair(padding, "padding")
        oh, ow = self._check_conv(x.shape, W.shape, stride, padding)
        n, c, h, w = x.shape
        f, _, kh, kw = W.shape
        if b.shape != (f,):
            raise ShapeError(f"conv2d: b {b.shape} must be ({f},)")
        z = self.empty((n, f, oh, ow), self.xp.float32)
        self._launch("conv2d_forward", "thread", z.size, z, x, W, b,
                     n, c, h, w, f, kh, kw, oh, ow, stride, *padding, ACTIVATIONS[activation])
        return z

    def conv2d_backward_weight(self, x, delta, kernel_size, stride, padding):
        """dW[f,c,i,j] = sum_{n,y,x} x_pad[n,c,y*s+i,x*s+j] delta[n,f,y,x]; -> (f, c, kh, kw)"""
        x, delta = self._f32(x), self._f32(delta)
        (kh, kw), stride, padding = _pair(kernel_size, "kernel_size"), int(stride), _pair(padding, "padding")
        n, c, h, w = x.shape
        f = delta.shape[1]
        oh, ow = self._check_conv(x.shape, (f, c, kh, kw), stride, padding)
        if delta.shape != (n, f, oh, ow):
            raise ShapeError(f"conv2d_backward_weight: delta {delta.shape} must be {(n, f, oh, ow)}")
        dW = self.empty((f, c, kh, kw), self.xp.float32)
        self._launch("conv2d_backward_weight", "block", dW.size, dW, x, delta,
                     n, c, h, w, f, kh, kw, oh, ow, stride, *padding)
        return dW

    def conv2d_backward_bias(self, delta):
        """db[f] = sum_{n,y,x} delta[n,f,y,x]; delta (n, f, oh, ow) -> (f,)"""
        delta = self._f32(delta)
        n, f, oh, ow = delta.shape
        db = self.empty((f,), self.xp.float32)
        self._launch("conv2d_backward_bias", "block", f, db, delta, n, f, oh, ow)
        return db

    def conv2d_backward_input(self, delta, W, x_shape, stride, padding):
        """da_prev = full convolution of delta with the flipped W (a gather); -> (n, c, h, w)"""
        delta, W = self._f32(delta), self._f32(W)
        (h, w), stride, padding = _pair(x_shape, "x_shape"), int(stride), _pair(padding, "padding")
        n, f, oh, ow = delta.shape
        _, c, kh, kw = W.shape
        if (f, oh, ow) != (W.shape[0], *self._check_conv((n, c, h, w), W.shape, stride, padding)):
            raise ShapeError(f"conv2d_backward_input: delta {delta.shape} does not match W {W.shape}, "
                             f"x_shape {(h, w)}, stride {stride}, padding {padding}")
        da_prev = self.empty((n, c, h, w), self.xp.float32)
        self._launch("conv2d_backward_input", "thread", da_prev.size, da_prev, delta, W,
                     n, c, h, w, f, kh, kw, oh, ow, stride, *padding)
        return da_prev

    @staticmethod
    def _check_pool(op, x_shape, size, stride):
        """-> (oh, ow) of size x size windows at ``stride`` over (h, w); ShapeError if none fits."""
        h, w = x_shape
        if size < 1 or stride < 1 or size > min(h, w):
            raise ShapeError(f"{op}: window {size} (stride {stride}) does not fit {h}x{w}")
        return _out_size(h, size, stride, 0), _out_size(w, size, stride, 0)

    def maxpool2d_forward(self, x, size, stride):
        """a = max over each window, argmax = first maximum (int32, i*size + j); -> (n, c, oh, ow) x2"""
        x, size, stride = self._f32(x), int(size), int(stride)
        n, c, h, w = x.shape
        oh, ow = self._check_pool("maxpool2d", (h, w), size, stride)
        a = self.empty((n, c, oh, ow), self.xp.float32)
        argmax = self.empty((n, c, oh, ow), self.xp.int32)
        self._launch("maxpool2d_forward", "thread", a.size, a, argmax, x, n, c, h, w, oh, ow, size, stride)
        return a, argmax

    def maxpool2d_backward(self, delta, argmax, x_shape, size, stride):
        """Route each delta to its window's argmax (a gather); -> da_prev (n, c, h, w)"""
        delta = self._f32(delta)
        argmax = self.xp.ascontiguousarray(argmax, dtype=self.xp.int32)
        (h, w), size, stride = _pair(x_shape, "x_shape"), int(size), int(stride)
        n, c, oh, ow = delta.shape
        if argmax.shape != delta.shape or (oh, ow) != self._check_pool("maxpool2d_backward", (h, w), size, stride):
            raise ShapeError(f"maxpool2d_backward: delta {delta.shape}, argmax {argmax.shape} do not "
                             f"match x_shape {(h, w)}, size {size}, stride {stride}")
        da_prev = self.empty((n, c, h, w), self.xp.float32)
        self._launch("maxpool2d_backward", "thread", da_prev.size, da_prev, delta, argmax,
                     n, c, h, w, oh, ow, size, stride)
        return da_prev

    def avgpool2d_forward(self, x, size, stride):
        """a = mean of each size x size window; x (n, c, h, w) -> (n, c, oh, ow)"""
        x, size, stride = self._f32(x), int(size), int(stride)
        n, c, h, w = x.shape
        oh, ow = self._check_pool("avgpool2d", (h, w), size, stride)
        a = self.empty((n, c, oh, ow), self.xp.float32)
        self._launch("avgpool2d_forward", "thread", a.size, a, x, n, c, h, w, oh, ow, size, stride)
        return a

    def avgpool2d_backward(self, delta, x_shape, size, stride):
        """Spread each delta / size^2 over its window (a gather); -> da_prev (n, c, h, w)"""
        delta = self._f32(delta)
        (h, w), size, stride = _pair(x_shape, "x_shape"), int(size), int(stride)
        n, c, oh, ow = delta.shape
        if (oh, ow) != self._check_pool("avgpool2d_backward", (h, w), size, stride):
            raise ShapeError(f"avgpool2d_backward: delta {delta.shape} does not match x_shape {(h, w)}, "
                             f"size {size}, stride {stride}")
        da_prev = self.empty((n, c, h, w), self.xp.float32)
        self._launch("avgpool2d_backward", "thread", da_prev.size, da_prev, delta,
                     n, c, h, w, oh, ow, size, stride)
        return da_prev


# --- the emulated backend ---------------------------------------------------------------------

def emulated_xp_and_ops():
    """(numpy, CudaOps) running the .cu kernels on the CPU through gpucnn.emulator."""
    from .. import emulator
    return np, CudaOps(np, emulator.RawModule, emulator.empty)


# --- the CuPy backend -------------------------------------------------------------------------

_cupy_state = {}   # filled once per process by _probe_cupy: {"info": dict, "ops": CudaOps or None}


def _cuda_version(code):
    """CUDA's int version (12090) -> "12.9"."""
    return f"{code // 1000}.{code % 1000 // 10}" if code else "none"


class _CupyModule:
    """cupy.RawModule of one .cu file, whose errors name the file.

    CuPy adds -arch=sm_XY of the current device (a cubin) and CUPY_ADDED_OPTIONS; it compiles on the
    first get_function and caches the cubin on disk (CUPY_CACHE_DIR), so a process compiles once.
    """

    def __init__(self, cupy, code, options, name):
        self.module, self.name = cupy.RawModule(code=code, options=tuple(options)), name

    def get_function(self, kernel):
        try:
            return self.module.get_function(kernel)
        except Exception as exc:           # CompileException's text is NVRTC's log
            raise RuntimeError(f"{self.name}: {type(exc).__name__}: {exc}") from exc


def _cupy_loader(cupy):
    return lambda code, options, name: _CupyModule(cupy, code, options, name)


def _nvrtc_version(cupy):
    from cupy.cuda import nvrtc            # loads libnvrtc: fails where no NVRTC is installed
    return nvrtc.getVersion()


def _device_reason(cupy, info):
    """Why cupy.is_available() is False, in words."""
    runtime = cupy.cuda.runtime
    try:
        runtime.getDeviceCount()
    except Exception as exc:               # CUDARuntimeError, whose text names the CUDA error
        text = str(exc)
        if "InsufficientDriver" in text:
            if not info.get("driver_version") or info["driver_version"] == "none":
                return "no NVIDIA driver found (libcuda could not be loaded)"
            return (f"NVIDIA driver too old: it supports CUDA {info['driver_version']}, this CuPy "
                    f"was built for CUDA {info['runtime_version']} ({text})")
        if "NoDevice" in text:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            return "no CUDA device" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
        return f"CUDA is not usable: {text}"
    return "cupy.is_available() is False"


def _probe_cupy():
    """Import CuPy, look for a device, compile the kernels; once per process. Never raises."""
    if _cupy_state:
        return _cupy_state
    info = {"cupy": None, "cupy_usable": False, "cupy_reason": "",
            "kernel_files": ", ".join(KERNEL_FILES), "nvrtc_options": " ".join(NVRTC_OPTIONS)}
    _cupy_state.update(info=info, ops=None)
    try:
        import cupy
    except Exception as exc:               # not installed, or broken (e.g. cuda12x and cuda13x both)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "cupy":
            info["cupy_reason"] = "CuPy is not installed (from a checkout: pip install -e \".[cuda12]\" or \".[cuda13]\")"
        else:
            info["cupy_reason"] = f"CuPy failed to import: {type(exc).__name__}: {exc}"
        return _cupy_state
    info["cupy"] = cupy.__version__
    info["cache_dir"] = ("in memory (CUPY_CACHE_IN_MEMORY)" if os.environ.get("CUPY_CACHE_IN_MEMORY") == "1"
                         else os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache")))
    for key, call in (("runtime_version", lambda: _cuda_version(cupy.cuda.runtime.runtimeGetVersion())),
                      ("driver_version", lambda: _cuda_version(cupy.cuda.runtime.driverGetVersion())),
                      ("nvrtc_version", lambda: "%d.%d" % _nvrtc_version(cupy))):
        try:
            info[key] = call()
        except Exception as exc:
            info[key] = f"unknown ({type(exc).__name__}: {exc})"
    info["is_available"] = bool(cupy.is_available())
    if not info["is_available"]:
        info["cupy_reason"] = _device_reason(cupy, info)
        return _cupy_state
    try:
        device = cupy.cuda.Device()
        info["device"] = cupy.cuda.runtime.getDeviceProperties(device.id)["name"].decode()
        info["compute_capability"] = device.compute_capability
    except Exception as exc:
        info["cupy_reason"] = f"the CUDA device cannot be queried: {type(exc).__name__}: {exc}"
        return _cupy_state
    try:                                   # private CuPy API: informative only
        info["compile_target"] = " ".join(cupy.cuda.compiler._get_arch_for_options_for_nvrtc())
    except Exception:
        pass
    started = time.perf_counter()
    try:
        ops = CudaOps(cupy, _cupy_loader(cupy), cupy.empty)
    except Exception as exc:               # CompileException carries NVRTC's log; or NVRTC not found
        info["cupy_reason"] = f"the CUDA kernels did not compile/load: {type(exc).__name__}: {exc}"
        return _cupy_state
    info["compile_seconds"] = round(time.perf_counter() - started, 3)
    info["cupy_usable"] = True
    info["cupy_reason"] = (f"CuPy {cupy.__version__} on {info['device']} (sm_{info['compute_capability']}), "
                           "kernels compiled")
    _cupy_state["ops"] = ops
    return _cupy_state


def cupy_xp_and_ops():
    """(cupy, CudaOps on the device); BackendUnavailable naming the reason where CuPy cannot run."""
    state = _probe_cupy()
    if state["ops"] is None:
        raise BackendUnavailable(f"cupy backend unavailable: {state['info']['cupy_reason']}")
    import cupy
    return cupy, state["ops"]


def cupy_info():
    """What backend_info() shows about CuPy: versions, device, usable or why not, compile time, cache."""
    return dict(_probe_cupy()["info"])
