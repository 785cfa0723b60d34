"""Every op of every backend against the NumPy reference (gpucnn/ops/reference.py).

The `backend_name` fixture runs each test on numpy, emulated (the .cu kernels on the CPU) and cupy (a GPU;
skipped without one). Conv ops are compared with the float64 reference within TOL; pooling exactly,
argmax included, on inputs full of ties (blank backgrounds, quantised values, real digits).
The emulated backend additionally runs under every barrier-release order, with identical bytes.

NOTE: the emulator's cost grows with threads x barriers (a 256-thread reduction block per dW element):
keep cases small; this file runs in ~5 s on 2 cores. The seed shapes are the network's: n=4, 28x28,
5x5 conv with f=3, pool 2.
"""
import inspect
import re
import sys
import time
import types

import numpy as np
import pytest

from gpucnn.backend import get_backend, to_numpy
from gpucnn.errors import BackendUnavailable
from gpucnn.ops import OP_NAMES, cuda, reference
from gpucnn.ops.cuda import CudaOps
from tests.conftest import TOL

# (n, c, h, w, f, kh, kw, stride, padding)
CONV_CASES = {
    "seed": (4, 1, 28, 28, 3, 5, 5, 1, (0, 0)),
    "odd-n1-stride2-pad": (1, 2, 13, 11, 3, 3, 2, 2, (1, 0)),
    "channels-pad": (3, 3, 7, 9, 2, 3, 3, 1, (1, 1)),
    "stride3-gaps": (2, 2, 10, 8, 2, 2, 3, 3, (0, 1)),
    "m330-not-pow2": (3, 1, 13, 11, 1, 3, 2, 1, (0, 0)),
    "1x1-output": (2, 2, 5, 4, 3, 5, 4, 1, (0, 0)),
}
# (n, c, h, w, size, stride)
POOL_CASES = {
    "seed": (4, 3, 24, 24, 2, 2),
    "odd-n1": (1, 2, 13, 11, 2, 2),
    "overlap": (2, 1, 9, 7, 3, 2),
    "gaps": (1, 2, 8, 9, 2, 3),
    "stride1": (2, 2, 5, 6, 2, 1),
    "whole": (1, 1, 4, 4, 4, 4),
}
# The release orders of emulator.TEST_SCHEDULES (order, seed).
ORDERS = [("ascending", None), ("descending", None), ("random", 1), ("random", 2)]


def assert_close(actual, expected, what=""):
    """float32 result vs float64 reference: TOL["float32"], atol scaled to the array's magnitude
    (a float32 sum's rounding grows with its terms, not with the sum, which may be near 0)."""
    expected = np.asarray(expected, dtype=np.float64)
    tol = TOL["float32"]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    actual = to_numpy(actual)
    assert actual.dtype == np.float32 and actual.shape == expected.shape, (what, actual.dtype, actual.shape)
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=what)


def assert_same_bytes(first, second, what=""):
    first, second = to_numpy(first), to_numpy(second)
    assert first.dtype == second.dtype and first.shape == second.shape, what
    assert first.tobytes() == second.tobytes(), f"{what}: not bitwise identical"


def _conv_inputs(rng, n, c, h, w, f, kh, kw, stride, padding):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    W = rng.standard_normal((f, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    oh, ow = (h + 2 * padding[0] - kh) // stride + 1, (w + 2 * padding[1] - kw) // stride + 1
    delta = rng.standard_normal((n, f, oh, ow)).astype(np.float32)
    return x, W, b, delta


def _tied(rng, shape):
    """Values in {0, 0.5, 1} with a mostly blank background: windows full of equal maxima."""
    return (rng.integers(0, 3, size=shape) * (rng.random(shape) < 0.3) / 2).astype(np.float32)


def _run_conv_ops(backend, x, W, b, delta, stride, padding):
    """All four conv ops on one backend -> dict of results (backend arrays)."""
    ops, arr = backend.ops, backend.asarray
    kernel_size, x_shape = W.shape[2:], x.shape[2:]
    return {
        "z": ops.conv2d_forward(arr(x), arr(W), arr(b), stride, padding),
        "dW": ops.conv2d_backward_weight(arr(x), arr(delta), kernel_size, stride, padding),
        "db": ops.conv2d_backward_bias(arr(delta)),
        "da_prev": ops.conv2d_backward_input(arr(delta), arr(W), x_shape, stride, padding),
    }


def _reference_conv(x, W, b, delta, stride, padding):
    x, W, b, delta = (a.astype(np.float64) for a in (x, W, b, delta))
    return {
        "z": reference.conv2d_forward(x, W, b, stride, padding),
        "dW": reference.conv2d_backward_weight(x, delta, W.shape[2:], stride, padding),
        "db": reference.conv2d_backward_bias(delta),
        "da_prev": reference.conv2d_backward_input(delta, W, x.shape[2:], stride, padding),
    }


def _run_pool_ops(backend, x, delta, size, stride):
    a, argmax = backend.ops.maxpool2d_forward(backend.asarray(x), size, stride)
    da_prev = backend.ops.maxpool2d_backward(backend.asarray(delta), argmax, x.shape[2:], size, stride)
    return {"a": a, "argmax": argmax, "da_prev": da_prev}


def _check_pool(results, x, delta, size, stride, what):
    """Pooling is exact: same maxima, same argmax (first maximum wins), same routed gradient."""
    a, argmax = reference.maxpool2d_forward(x, size, stride)
    da_prev = reference.maxpool2d_backward(delta, argmax, x.shape[2:], size, stride)
    got_argmax = to_numpy(results["argmax"])
    assert got_argmax.dtype == np.int32, what
    np.testing.assert_array_equal(got_argmax, argmax, err_msg=f"{what}: argmax")
    assert_same_bytes(results["a"], a, f"{what}: a")
    assert_same_bytes(results["da_prev"], da_prev, f"{what}: da_prev")


# --- the op set's surface ------------------------------------------------------------------------

def test_cuda_op_set_has_the_reference_signatures():
    public = {name for name, _ in inspect.getmembers(CudaOps, inspect.isfunction) if not name.startswith("_")}
    assert public == set(OP_NAMES) | {"conv2d_forward_activation", "compile_module"}
    for name in OP_NAMES:
        method = inspect.signature(getattr(CudaOps, name))
        params = list(method.parameters.values())[1:]          # drop self
        assert method.replace(parameters=params) == inspect.signature(getattr(reference, name)), name


def test_backend_ops_have_the_reference_signatures(backend_name):
    ops = get_backend(backend_name).ops
    for name in OP_NAMES:
        assert inspect.signature(getattr(ops, name)) == inspect.signature(getattr(reference, name)), name


# --- every op vs the reference -------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_conv_ops_match_reference(backend_name, case, rng):
    n, c, h, w, f, kh, kw, stride, padding = case
    x, W, b, delta = _conv_inputs(rng, *case)
    got = _run_conv_ops(get_backend(backend_name), x, W, b, delta, stride, padding)
    want = _reference_conv(x, W, b, delta, stride, padding)
    for name in want:
        assert_close(got[name], want[name], f"{backend_name} {name}")


@pytest.mark.parametrize("case", list(POOL_CASES.values()), ids=list(POOL_CASES))
@pytest.mark.parametrize("inputs", ["random", "tied"])
def test_pool_ops_match_reference_exactly(backend_name, case, inputs, rng):
    n, c, h, w, size, stride = case
    shape = (n, c, h, w)
    x = rng.standard_normal(shape).astype(np.float32) if inputs == "random" else _tied(rng, shape)
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    delta = rng.standard_normal((n, c, oh, ow)).astype(np.float32)
    results = _run_pool_ops(get_backend(backend_name), x, delta, size, stride)
    _check_pool(results, x, delta, size, stride, f"{backend_name} {inputs}")


def test_pool_nan_is_the_maximum_like_numpy(backend_name):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 0, 3] = 5.0
    x[0, 0, 3, 2], x[0, 0, 3, 3] = np.nan, np.nan
    delta = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    results = _run_pool_ops(get_backend(backend_name), x, delta, 2, 2)
    a, argmax = reference.maxpool2d_forward(x, 2, 2)
    np.testing.assert_array_equal(to_numpy(results["argmax"]), argmax)
    np.testing.assert_array_equal(to_numpy(results["a"]), a)       # NaN == NaN for this assert


def test_pool_subnormals_count_as_signed_zeros(backend_name):
    """The -ftz=true rule (CuPy compiles so): a window of subnormals ties at zero, so the first
    element wins and the output is a zero of its sign, on every backend alike."""
    tiny = np.float32(1e-39)
    x = np.zeros((1, 1, 2, 6), np.float32)
    x[0, 0] = [[tiny, 3 * tiny, -tiny, 2 * tiny, -tiny, 0.0],
               [2 * tiny, -0.0, -2 * tiny, -tiny, 1e-30, tiny]]
    delta = np.array([[[[1.0, 2.0, 3.0]]]], np.float32)
    results = _run_pool_ops(get_backend(backend_name), x, delta, 2, 2)
    np.testing.assert_array_equal(to_numpy(results["argmax"]), [[[[0, 0, 2]]]])
    assert to_numpy(results["a"]).tobytes() == np.array([0.0, -0.0, 1e-30], np.float32).tobytes()
    _check_pool(results, x, delta, 2, 2, "subnormals")


# --- real digits: blank backgrounds make ties -----------------------------------------------------

def test_real_digits_pool_ties_and_seed_conv(backend_name, digits, rng):
    x = np.ascontiguousarray(digits[0][::625][:8])                   # (8, 1, 28, 28), one per class-ish
    backend = get_backend(backend_name)
    delta_pool = rng.standard_normal((8, 1, 14, 14)).astype(np.float32)
    _check_pool(_run_pool_ops(backend, x, delta_pool, 2, 2), x, delta_pool, 2, 2, "digits")

    W = (0.1 * rng.standard_normal((3, 1, 5, 5))).astype(np.float32)
    b = (0.1 * rng.standard_normal(3)).astype(np.float32)
    z = backend.ops.conv2d_forward(backend.asarray(x), backend.asarray(W), backend.asarray(b), 1, (0, 0))
    assert_close(z, reference.conv2d_forward(x.astype(np.float64), W, b, 1, (0, 0)), "digits conv")
    a1 = reference.conv2d_forward(x, W, b, 1, (0, 0))                # the same float32 input to both pools
    a1 = (1 / (1 + np.exp(-a1))).astype(np.float32)
    delta = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    _check_pool(_run_pool_ops(backend, a1, delta, 2, 2), a1, delta, 2, 2, "digits conv+sigmoid pool")


def _train_step(backend, params, x, y, lr):
    """One SGD step of the seed network (conv 5x5 f=3, sigmoid, pool 2, dense, sigmoid, quadratic
    cost) written with the backend's xp and ops only; -> new params (backend arrays)."""
    xp, ops = backend.xp, backend.ops
    W1, b1, W2, b2 = (backend.asarray(p) for p in params)
    x, y = backend.asarray(x), backend.asarray(y)
    n = x.shape[0]
    a1 = 1 / (1 + xp.exp(-ops.conv2d_forward(x, W1, b1, 1, (0, 0))))        # (n, 3, 24, 24)
    a2, argmax = ops.maxpool2d_forward(a1, 2, 2)                           # (n, 3, 12, 12)
    flat = a2.reshape(n, -1)
    a3 = 1 / (1 + xp.exp(-(flat @ W2.T + b2)))                             # (n, 10)
    delta3 = (a3 - y) * a3 * (1 - a3)
    delta2 = (delta3 @ W2).reshape(a2.shape)
    da1 = ops.maxpool2d_backward(delta2, argmax, a1.shape[2:], 2, 2)
    delta1 = da1 * a1 * (1 - a1)
    dW1 = ops.conv2d_backward_weight(x, delta1, W1.shape[2:], 1, (0, 0))
    db1 = ops.conv2d_backward_bias(delta1)
    da0 = ops.conv2d_backward_input(delta1, W1, x.shape[2:], 1, (0, 0))     # unused by SGD; must run
    assert da0.shape == x.shape
    grads = (dW1, db1, delta3.T @ flat, delta3.sum(axis=0))
    return [p - (lr / n) * g for p, g in zip((W1, b1, W2, b2), grads)]


def test_training_steps_give_the_numpy_parameters(backend_name, digits, rng):
    x, labels = digits[0][::500][:4], digits[1][::500][:4]                 # seed batch: n = 4
    y = np.eye(10, dtype=np.float32)[labels]
    params = [(0.1 * rng.standard_normal(shape)).astype(np.float32)
              for shape in ((3, 1, 5, 5), (3,), (10, 432), (10,))]
    backend, numpy_backend = get_backend(backend_name), get_backend("numpy")
    got, want = params, params
    for _ in range(3):
        got = _train_step(backend, got, x, y, lr=0.5)
        want = _train_step(numpy_backend, want, x, y, lr=0.5)
    for name, g, w in zip(("W1", "b1", "W2", "b2"), got, want):
        assert_close(g, w, f"{backend_name} {name} after 3 steps")


# --- determinism ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [CONV_CASES["seed"], CONV_CASES["m330-not-pow2"]], ids=["seed", "m330"])
def test_gradients_are_bitwise_repeatable(backend_name, case, rng):
    x, W, b, delta = _conv_inputs(rng, *case)
    stride, padding = case[7], case[8]
    backend = get_backend(backend_name)
    first = _run_conv_ops(backend, x, W, b, delta, stride, padding)
    second = _run_conv_ops(backend, x, W, b, delta, stride, padding)
    for name in first:
        assert_same_bytes(first[name], second[name], f"{backend_name} {name} run twice")


def _emulator_order(order, seed):
    from gpucnn import emulator
    return emulator.settings(order=order, seed=seed or 0)


@pytest.mark.parametrize("order, seed", ORDERS, ids=[f"{o}-{s}" if s else o for o, s in ORDERS])
def test_emulated_kernels_under_every_thread_order(order, seed, rng):
    """A missing __syncthreads or a read-before-write shows under some release order only: run each
    kernel under each order; results must match the reference and be the same bytes in every order."""
    try:
        backend = get_backend("emulated")
    except ImportError as exc:
        pytest.skip(f"emulator not available: {exc}")
    conv_case, pool_case = CONV_CASES["odd-n1-stride2-pad"], POOL_CASES["overlap"]
    x, W, b, delta = _conv_inputs(rng, *conv_case)
    px = _tied(rng, pool_case[:4])
    pdelta = rng.standard_normal((2, 1, 4, 3)).astype(np.float32)
    baseline = {**_run_conv_ops(backend, x, W, b, delta, *conv_case[7:]),
                **{f"pool {k}": v for k, v in _run_pool_ops(backend, px, pdelta, 3, 2).items()}}
    with _emulator_order(order, seed):
        conv = _run_conv_ops(backend, x, W, b, delta, *conv_case[7:])
        pool = _run_pool_ops(backend, px, pdelta, 3, 2)
    want = _reference_conv(x, W, b, delta, *conv_case[7:])
    for name in want:
        assert_close(conv[name], want[name], f"{order} {seed} {name}")
        assert_same_bytes(conv[name], baseline[name], f"{order} {seed} {name} vs default order")
    _check_pool(pool, px, pdelta, 3, 2, f"{order} {seed}")
    for name in pool:
        assert_same_bytes(pool[name], baseline[f"pool {name}"], f"{order} {seed} pool {name}")


# ASan: out-of-bounds reads a guard page misses (inside another array). TSan: races between the
# threads of a block and, with two OS workers, between blocks, in a random release order.
SANITIZER_RUNS = {
    "address": (dict(sanitizer="address"), "stride3-gaps", "stride1", (2, 2, 4, 5), 2, 1),
    "thread": (dict(sanitizer="thread", workers=2, order="random", seed=3),
               "odd-n1-stride2-pad", "overlap", (2, 1, 4, 3), 3, 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("sanitizer", SANITIZER_RUNS)
def test_emulated_kernels_are_clean_under_the_sanitizers(sanitizer, rng):
    """Every kernel runs under AddressSanitizer and ThreadSanitizer without a report, and right."""
    try:
        from gpucnn import emulator
        backend = get_backend("emulated")
    except ImportError as exc:
        pytest.skip(f"emulator not available: {exc}")
    settings, conv_name, pool_name, pool_out, size, stride = SANITIZER_RUNS[sanitizer]
    conv_case = CONV_CASES[conv_name]
    x, W, b, delta = _conv_inputs(rng, *conv_case)
    px = _tied(rng, POOL_CASES[pool_name][:4])
    pdelta = rng.standard_normal(pool_out).astype(np.float32)
    with emulator.settings(**settings):
        conv = _run_conv_ops(backend, x, W, b, delta, *conv_case[7:])
        pool = _run_pool_ops(backend, px, pdelta, size, stride)
    want = _reference_conv(x, W, b, delta, *conv_case[7:])
    for name in want:
        assert_close(conv[name], want[name], f"{sanitizer} {name}")
    _check_pool(pool, px, pdelta, size, stride, sanitizer)


# --- host-side rules --------------------------------------------------------------------------------

def test_fused_activation_matches_separate_ops(backend_name, rng):
    backend = get_backend(backend_name)
    if not hasattr(backend.ops, "conv2d_forward_activation"):
        pytest.skip("this op set has no fused activation")
    x, W, b, _ = _conv_inputs(rng, *CONV_CASES["odd-n1-stride2-pad"])
    z = reference.conv2d_forward(x.astype(np.float64), W, b, 2, (1, 0))
    for activation, f in (("sigmoid", lambda v: 1 / (1 + np.exp(-v))), ("relu", lambda v: np.maximum(v, 0)),
                          ("tanh", np.tanh)):
        got = backend.ops.conv2d_forward_activation(backend.asarray(x), backend.asarray(W),
                                                    backend.asarray(b), 2, (1, 0), activation)
        assert_close(got, f(z), activation)


def test_cuda_ops_take_strided_and_float64_inputs(backend_name, rng):
    """RawKernel ignores strides: the host must make inputs contiguous float32 first."""
    backend = get_backend(backend_name)
    x64 = rng.standard_normal((2, 2, 9, 13))                       # float64
    x_view = backend.xp.asarray(x64)[:, :, :, ::2]                  # (2, 2, 9, 7), not contiguous
    W = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    z = backend.ops.conv2d_forward(x_view, backend.xp.asarray(W), backend.xp.asarray(b), 1, (1, 1))
    want = reference.conv2d_forward(x64[:, :, :, ::2], W, b, 1, (1, 1))
    np.testing.assert_allclose(to_numpy(z).astype(np.float64), want, **TOL["float32"])
    # pooling backward with a strided float64 delta and an int64 argmax
    a, argmax = reference.maxpool2d_forward(x64, 2, 2)                  # (2, 2, 4, 6)
    delta64 = rng.standard_normal((2, 2, 4, 12))[:, :, :, ::2]
    da = backend.ops.maxpool2d_backward(backend.xp.asarray(delta64), backend.xp.asarray(argmax.astype(np.int64)),
                                        (9, 13), 2, 2)
    want = reference.maxpool2d_backward(delta64, argmax, (9, 13), 2, 2)
    np.testing.assert_allclose(to_numpy(da).astype(np.float64), want, **TOL["float32"])


# --- the CuPy probe: why auto picks what it picks (runs without a GPU) ------------------------------

def _fake_cupy(available=False, driver=0, device_error="cudaErrorInsufficientDriver", compile_error=None):
    """A stand-in `cupy` module for the probe's decisions; nothing in it touches CUDA."""
    class Runtime:
        @staticmethod
        def runtimeGetVersion():
            return 12090

        @staticmethod
        def driverGetVersion():
            return driver

        @staticmethod
        def getDeviceCount():
            if device_error:
                raise RuntimeError(f"{device_error}: fake")
            return 1

        @staticmethod
        def getDeviceProperties(index):
            return {"name": b"Fake GPU"}

    class Device:
        id, compute_capability = 0, "90"

    class Module:
        def __init__(self, code, options):
            self.code = code

        def get_function(self, name):
            if compile_error and compile_error in self.code:
                raise RuntimeError(f"{compile_error}: error: identifier 'y' is undefined")
            return lambda grid, block, args, shared_mem=0: None

    fake = types.ModuleType("cupy")
    fake.__version__ = "0.0-fake"
    fake.is_available = lambda: available
    fake.cuda = types.SimpleNamespace(runtime=Runtime, Device=Device, compiler=None)
    fake.RawModule, fake.empty = Module, np.empty
    return fake


@pytest.mark.parametrize("fake, reason", [
    (None, "CuPy is not installed"),
    (dict(driver=0), "no NVIDIA driver found"),
    (dict(driver=11080), "NVIDIA driver too old: it supports CUDA 11.8"),
    (dict(device_error="cudaErrorNoDevice"), "no CUDA device"),
    (dict(available=True, device_error=None, compile_error="conv2d_backward_input"),
     "did not compile/load: RuntimeError: conv2d_backward_input.cu: RuntimeError: conv2d_backward_input: "
     "error: identifier"),
    (dict(available=True, device_error=None), "kernels compiled"),
], ids=["no-cupy", "no-driver", "old-driver", "no-device", "compile-error", "usable"])
def test_cupy_probe_says_why(monkeypatch, fake, reason):
    monkeypatch.setitem(sys.modules, "cupy", None if fake is None else _fake_cupy(**fake))
    monkeypatch.setattr(cuda, "_cupy_state", {})
    info = cuda.cupy_info()
    assert reason in info["cupy_reason"]
    assert info["cupy_usable"] == (reason == "kernels compiled")
    if info["cupy_usable"]:
        assert info["device"] == "Fake GPU" and info["compile_seconds"] >= 0 and info["cache_dir"]
        assert cuda.cupy_xp_and_ops()[1] is not None
    else:
        with pytest.raises(BackendUnavailable, match=re.escape(info["cupy_reason"])):
            cuda.cupy_xp_and_ops()


def test_cupy_probe_here_is_cheap_and_never_raises():
    started = time.perf_counter()
    info = cuda.cupy_info()
    assert isinstance(info["cupy_usable"], bool) and info["cupy_reason"]
    assert time.perf_counter() - started < 5


def test_launch_config_and_sources():
    assert cuda.launch_config("thread", 257) == ((2,), (cuda.ELEMENT_THREADS,))
    assert cuda.launch_config("block", 75) == ((75,), (cuda.REDUCE_THREADS,))
    assert all((cuda.cuda_source_dir() / name).is_file() for name in cuda.KERNEL_FILES)
