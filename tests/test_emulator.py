"""The emulated CUDA executor (gpucnn/emulator): correct kernels pass under every schedule, and
every planted bug in tests/emulator_kernels/planted_bugs.cu is caught the way issue 4 asks.

The cuda/*.cu kernels themselves are compared with the NumPy reference in their own tests; these
kernels are small and test the emulator.
"""
from pathlib import Path

import numpy as np
import pytest

from gpucnn import emulator
from gpucnn.emulator import KernelError, SanitizerError

KERNELS = Path(__file__).parent / "emulator_kernels"
SCHEDULES = [pytest.param(s, id="-".join(str(v) for v in s.values())) for s in emulator.TEST_SCHEDULES]


@pytest.fixture(scope="module")
def good():
    return emulator.RawModule(code=(KERNELS / "good.cu").read_text(), name="good.cu")


@pytest.fixture(scope="module")
def bugs():
    return emulator.RawModule(code=(KERNELS / "planted_bugs.cu").read_text(), name="planted_bugs.cu")


@pytest.fixture(params=SCHEDULES)
def schedule(request):
    with emulator.settings(**request.param):
        yield request.param


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


# ---------------------------------------------------------------- correct kernels, every order
def test_vadd(good, schedule):
    n = 1000                                          # not a multiple of the block: the tail guard
    a, b = _x(n, 1), _x(n, 2)
    out = emulator.empty(n, np.float32)
    good.get_function("vadd")((n + 127) // 128, 128, (out, a, b, np.int32(n)))
    np.testing.assert_array_equal(out, a + b)


def test_block_sum(good, schedule):
    n = 5 * 256 - 17
    x = _x(n)
    out = emulator.empty(5, np.float32)
    good.get_function("block_sum")(5, 256, (out, x, np.int32(n)))
    ref = np.pad(x, (0, 17)).reshape(5, 256).astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_warp_sum(good, schedule):
    n = 3 * 128 - 5
    x = _x(n)
    out = np.zeros(1, np.float32)
    good.get_function("warp_sum")(3, 128, (out, x, np.int32(n)), shared_mem=4 * 4)
    np.testing.assert_allclose(out[0], x.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)


def test_dynamic_shared(good, schedule):
    n = 77
    x = _x(n)
    out = emulator.empty(n, np.float32)
    good.get_function("scale_dynamic")(1, n, (out, x, np.int32(n)), shared_mem=n * 4)
    np.testing.assert_array_equal(out, 2 * x[::-1])


def test_atomics(good, schedule):
    x = np.random.default_rng(3).integers(0, 1000, 3001).astype(np.int32)
    counts = np.zeros(10, np.int32)
    good.get_function("histogram")(4, 96, (counts, x, np.int32(x.size), np.int32(10)))
    np.testing.assert_array_equal(counts, np.bincount(x % 10, minlength=10))


def test_ballot(good, schedule):
    x = _x(2 * 64)
    out = emulator.empty(4, np.int32)
    good.get_function("ballot_count")(2, 64, (out, x))
    np.testing.assert_array_equal(out, (x.reshape(4, 32) > 0).sum(axis=1))


def test_kernels_flush_subnormals_like_ftz_and_the_host_does_not(good):
    """-ftz=true on the GPU: a subnormal input counts as zero, a subnormal result is written as zero
    (of its sign). The emulator sets FTZ/DAZ while kernels run and gives the host its mode back."""
    tiny = np.float32(1e-39)                                   # subnormal (< 1.18e-38)
    a = np.array([tiny, -tiny, 1e-20, 1.0, 3.0], np.float32)
    b = np.array([1.0, 1.0, -1e-20, tiny, 0.0], np.float32)
    out = emulator.empty((2, 5), np.float32)
    good.get_function("flush_probe")(1, 32, (out, a, b, np.int32(5)))
    want_mul = np.array([0.0, -0.0, -0.0, 0.0, 0.0], np.float32)
    want_add = np.array([0.0, -0.0, 2e-20, 2.0, 6.0], np.float32)
    assert out[0].tobytes() == want_mul.tobytes() and out[1].tobytes() == want_add.tobytes(), out
    assert a[2] * b[2] != 0 and tiny * np.float32(1.0) == tiny     # NumPy still sees subnormals


@pytest.mark.parametrize("n", [3, 6, 18, 1025])
def test_arguments_are_256_byte_aligned_like_cupy(good, n):
    """A float4 body with a scalar tail is legal on a GPU (CuPy aligns to 256); so it is here."""
    x = _x(n)
    total, where = emulator.empty(1, np.float32), emulator.empty(2, np.int32)
    good.get_function("vector_tail")(1, 1, (total, where, x, np.int32(n)))
    np.testing.assert_array_equal(where, [0, 0])
    np.testing.assert_allclose(total[0], x.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)


def test_two_workers_give_the_same_answer(good):
    x = _x(20 * 256)
    out = emulator.empty(20, np.float32)
    with emulator.settings(workers=2, order="random", seed=5):
        good.get_function("block_sum")(20, 256, (out, x, np.int32(x.size)))
    np.testing.assert_allclose(out, x.reshape(20, 256).sum(axis=1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- planted bugs
def _sum_missing_sync(bugs, **schedule):
    x = _x(2 * 256, 7)
    out = emulator.empty(2, np.float32)
    with emulator.settings(**schedule):
        bugs.get_function("block_sum_missing_sync")(2, 256, (out, x))
    return np.allclose(out, x.reshape(2, 256).sum(axis=1), rtol=1e-5, atol=1e-5)


def test_missing_syncthreads_fails_in_ascending_and_random_order(bugs):
    assert not _sum_missing_sync(bugs, order="ascending")
    assert not _sum_missing_sync(bugs, order="random", seed=1)
    assert not _sum_missing_sync(bugs, order="random", seed=2)
    # Why one order is not enough: each thread reads only higher threads, done first here.
    assert _sum_missing_sync(bugs, order="descending")


def test_off_by_one_write_hits_the_guard_page(bugs):
    out = emulator.empty(100, np.float32)
    with pytest.raises(KernelError) as err:
        bugs.get_function("off_by_one")(4, 32, (out, np.int32(100)))
    e = err.value
    assert (e.kind, e.kernel, e.block, e.thread) == ("fault", "off_by_one", (3, 0, 0), (4, 0, 0))
    assert "past the end of argument 0 'float* out'" in str(e) and "element index 100" in str(e)


def test_too_small_dynamic_shared_memory_is_caught(bugs):
    x = _x(64)
    out = emulator.empty(64, np.float32)
    k = bugs.get_function("reverse_in_shared")
    k(1, 64, (out, x), shared_mem=64 * 4)             # right size: fine
    np.testing.assert_array_equal(out, x[::-1])
    with pytest.raises(KernelError, match="dynamic shared memory.*shared_mem=240") as err:
        k(1, 64, (out, x), shared_mem=60 * 4)
    assert err.value.thread == (60, 0, 0)


def test_syncthreads_in_divergent_code(bugs):
    with pytest.raises(KernelError, match="__syncthreads in divergent code") as err:
        bugs.get_function("divergent_sync")(1, 32, (emulator.empty(32, np.float32),))
    assert err.value.kind == "divergent" and err.value.thread is not None


def test_deadlock(bugs):
    with pytest.raises(KernelError, match="deadlock.*__shfl_sync.*waits at __syncthreads") as err:
        bugs.get_function("shuffle_deadlock")(1, 32, (emulator.empty(32, np.float32),))
    assert err.value.thread == (0, 0, 0)


def test_shuffle_naming_an_exited_lane(bugs):
    with pytest.raises(KernelError, match="names lane 16 .*which has exited") as err:
        bugs.get_function("shuffle_exited_lane")(1, 32, (emulator.empty(1, np.float32), _x(32)))
    assert err.value.kind == "warp"


def test_the_process_survives_and_runs_on(bugs, good):
    for _ in range(3):
        with pytest.raises(KernelError):
            bugs.get_function("off_by_one")(1, 32, (emulator.empty(31, np.float32), np.int32(31)))
    test_vadd(good, None)


# ---------------------------------------------------------------- arguments, like the GPU needs them
def test_python_int_for_an_int_parameter_is_a_type_error(good):
    a = _x(8)
    with pytest.raises(TypeError, match=r"parameter 3 'int n'.*Python int.*64-bit.*np\.int32"):
        good.get_function("vadd")(1, 8, (emulator.empty(8), a, a, 8))


@pytest.mark.parametrize("args, match", [
    (lambda a: (a, a, a, np.int64(8)), r"'int n': needs np\.int32, got int64"),
    (lambda a: (a, a, a, 8.0), "Python float"),
    (lambda a: (a, a.astype(np.float64), a, np.int32(8)), "needs a float32 array, got float64"),
    (lambda a: (a, a, a), "takes 4 arguments"),
    (lambda a: (np.zeros(16, np.float32)[::2], a, a, np.int32(8)), "not C-contiguous"),
    (lambda a: (a, list(a), a, np.int32(8)), "needs a NumPy array"),
])
def test_argument_errors(good, args, match):
    with pytest.raises((TypeError, ValueError), match=match):
        good.get_function("vadd")(1, 8, args(_x(8)))


def test_launch_configuration_errors(good):
    a = _x(8)
    k = good.get_function("vadd")
    with pytest.raises(ValueError, match="1024 threads"):
        k(1, (64, 32), (a, a, a, np.int32(8)))
    with pytest.raises(ValueError, match="zero"):
        k(0, 8, (a, a, a, np.int32(8)))
    with pytest.raises(AttributeError, match="no kernel named"):
        good.get_function("vad")


def test_same_array_twice_is_one_buffer(good):
    a = _x(50)
    expected = a + a
    good.get_function("vadd")(1, 64, (a, a, a, np.int32(50)))   # in place, like device memory
    np.testing.assert_array_equal(a, expected)


def test_empty_is_poisoned():
    assert np.isnan(emulator.empty((2, 3), np.float32)).all()
    assert (emulator.empty(4, np.int32) == emulator.INT_POISON).all()


def test_compile_error_has_the_log():
    with pytest.raises(emulator.CompileError, match="bad.cu:1"):
        emulator.RawModule(code='extern "C" __global__ void k(float* o) { o[0] = nope; }',
                           name="bad.cu").compile()


def test_compiled_objects_are_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_CACHE", str(tmp_path))
    src = 'extern "C" __global__ void fill(float* o) { o[threadIdx.x] = 3.0f; }  // cache test'
    before = emulator.stats()["compiles"]
    emulator.RawModule(code=src, name="fill.cu").compile()
    assert emulator.stats()["compiles"] == before + 1
    emulator._loaded.clear()                          # as a new process would start
    out = emulator.empty(4)
    emulator.RawModule(code=src, name="fill.cu").get_function("fill")(1, 4, (out,))
    assert emulator.stats()["compiles"] == before + 1
    assert (out == 3).all()
    assert len(list((tmp_path / "emulator").glob("*.so"))) == 1


# ---------------------------------------------------------------- sanitizer builds (slow: ~1 s each)
@pytest.mark.slow
def test_thread_sanitizer_reports_a_shared_memory_race(bugs):
    with emulator.settings(sanitizer="thread"), pytest.raises(SanitizerError) as err:
        bugs.get_function("racy_shared_sum")(1, 32, (emulator.empty(1), _x(32)))
    assert "ThreadSanitizer: data race" in err.value.report
    assert "planted_bugs.cu:24" in err.value.report        # the line of `s[0] += ...`


@pytest.mark.slow
def test_thread_sanitizer_reports_a_race_between_blocks_with_two_workers(bugs):
    with emulator.settings(sanitizer="thread", workers=2), pytest.raises(SanitizerError) as err:
        bugs.get_function("racy_between_blocks")(4, 32, (np.zeros(1, np.float32), _x(4)))
    assert "ThreadSanitizer: data race" in err.value.report


@pytest.mark.slow
def test_thread_sanitizer_is_quiet_on_correct_kernels(good):
    x = _x(4 * 128)
    out = np.zeros(1, np.float32)
    with emulator.settings(sanitizer="thread", workers=2, order="random", seed=1):
        good.get_function("warp_sum")(4, 128, (out, x, np.int32(x.size)), shared_mem=16)
        sums = emulator.empty(2, np.float32)
        good.get_function("block_sum")(2, 256, (sums, x, np.int32(x.size)))
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sums, x.reshape(2, 256).sum(axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_address_sanitizer_reports_too_small_shared_memory(bugs):
    x = _x(64)
    with emulator.settings(sanitizer="address"):
        out = emulator.empty(64, np.float32)
        bugs.get_function("reverse_in_shared")(1, 64, (out, x), shared_mem=64 * 4)   # clean
        np.testing.assert_array_equal(out, x[::-1])
        with pytest.raises(SanitizerError) as err:
            bugs.get_function("reverse_in_shared")(1, 64, (out, x), shared_mem=60 * 4)
    assert "heap-buffer-overflow" in err.value.report
    assert "emu_dynamic_shared_alloc" in err.value.report
