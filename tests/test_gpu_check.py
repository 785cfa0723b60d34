"""The GPU check cannot rot: its driver runs here without a GPU (dry run, and a CPU rehearsal of every
step's own code), its results are written step by step, its sanitizer verdicts are right on canned
output, and the backend probe it relies on names what failed and never reuses a failure.

Nothing here needs a GPU; scripts/gpu_check.py and benchmarks/bench_gpu.py run as subprocesses.
"""
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import backend as B
from gpucnn.ops import cuda

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402

NO_GPU = not gpucnn.backend_info().get("cupy_usable")


@pytest.fixture(autouse=True)
def _gpu_step_setting_restored(monkeypatch):
    """The driver's steps choose a GPU path through GPUCNN_GPU_STEP; run in-process here, they must
    not leave it set for the tests that follow. ("auto" is the default; setenv, unlike delenv of an
    absent variable, records it so that monkeypatch removes it again afterwards.)"""
    monkeypatch.setenv("GPUCNN_GPU_STEP", "auto")


def run_check(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("OUT", None)
    return subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def read_results(folder):
    lines = (folder / "results.txt").read_text().splitlines()
    record = json.loads((folder / "results.json").read_text())
    return lines, record


# -- the driver, without a GPU -------------------------------------------------------------------------
def test_dry_run_reports_every_gpu_step_not_available_and_exits_3(tmp_path):
    proc = run_check("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == gpu_check.EXIT_NO_GPU, proc.stdout + proc.stderr
    lines, record = read_results(tmp_path)
    assert [s["step"] for s in record["steps"]] == list(gpu_check.STEPS) and len(lines) == len(gpu_check.STEPS)
    for step, line in zip(record["steps"], lines):
        assert step["status"] == gpu_check.NA and len(step["detail"]) > 10, step
        assert line.startswith(step["step"]) and gpu_check.NA in line
    assert record["meta"]["total"]["status"] == "NO GPU" and record["meta"]["mode"] == "dry run"
    table = proc.stdout[proc.stdout.index("step       status"):]        # the table prints last
    assert table.splitlines()[-1].startswith("total") and "exit 3" in table.splitlines()[-1]


@pytest.mark.skipif(not NO_GPU, reason="a usable GPU is here")
def test_without_a_gpu_the_steps_say_why_from_the_probe(tmp_path):
    proc = run_check("--only", "probe", "train", "memcheck", "--out", str(tmp_path))
    assert proc.returncode == gpu_check.EXIT_NO_GPU, proc.stdout + proc.stderr
    _, record = read_results(tmp_path)
    assert [s["step"] for s in record["steps"]] == ["versions", "probe", "train", "memcheck"]
    _, probe, train, memcheck = record["steps"]
    assert probe["status"] == gpu_check.NA and "cupy" in probe["detail"].lower()
    assert train["status"] == memcheck["status"] == gpu_check.NA
    assert probe["detail"][:40] in train["detail"]                    # the probe's reason, passed on


@pytest.mark.skipif(not NO_GPU, reason="a usable GPU is here")
def test_a_card_that_gpucnn_cannot_use_fails_the_probe(tmp_path):
    """nvidia-smi lists a GPU but the cupy backend is unusable: a setup failure, not 'no GPU'."""
    check = gpu_check.Check(gpu_check.parse_args(["--out", str(tmp_path)]))
    check.gpu_seen = True
    status, detail, _ = check.worker_step("probe", 60)
    assert status == gpu_check.FAIL and "cupy" in detail.lower() and not check.gpu_ok
    assert check.step("train", 60)[0] == gpu_check.NA
    assert check.total([{"step": "probe", "status": status}], 1.0)["exit"] == gpu_check.EXIT_FAIL


def test_nvidia_smi_query_parsing():
    assert gpu_check.parse_gpus("NVIDIA H200, 580.159.03, 143771 MiB, 9.0\n") == \
        ["NVIDIA H200, 580.159.03, 143771 MiB, 9.0"]
    assert gpu_check.parse_gpus('Field "compute_cap" is not a valid field to query.') == []
    assert gpu_check.parse_gpus("NVIDIA-SMI has failed because it couldn't communicate with the driver, "
                                "make sure that the latest NVIDIA driver is installed, and running.") == []


def test_results_are_written_as_each_step_ends(tmp_path):
    """Killed after step k (here 3), the run leaves k lines and a valid results.json of k steps."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry-run",
                             "--hold-after", "3", "--out", str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = (tmp_path / "results.txt").read_text() if (tmp_path / "results.txt").exists() else ""
            if len(text.splitlines()) >= 3:
                break
            time.sleep(0.1)
        time.sleep(0.3)                                  # anything written after step 3 would show now
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines, record = read_results(tmp_path)
    assert len(lines) == 3 and [s["step"] for s in record["steps"]] == list(gpu_check.STEPS[:3])
    assert "total" not in record["meta"]


def test_cpu_rehearsal_runs_every_steps_own_code(tmp_path):
    """The workers' code (data, fit per GPU path, params twice, the one-step script) on the emulated backend
    (the same host code and .cu kernels as on a GPU, the fused step included)."""
    proc = run_check("--rehearse", "--only", "probe", "train", "repeat", "memcheck", "--out", str(tmp_path))
    _, record = read_results(tmp_path)
    statuses = {s["step"]: (s["status"], s["detail"]) for s in record["steps"]}
    assert proc.returncode == 0, statuses
    assert all(status == gpu_check.PASS and detail.startswith("rehearsal")
               for status, detail in statuses.values()), statuses
    repeat = json.loads((tmp_path / "repeat.json").read_text())["data"]
    assert all(repeat[path]["bitwise_identical"] for path in gpu_check.GPU_PATHS)


def test_gpu_tests_step_selects_the_files_with_gpu_tests():
    files = gpu_check.gpu_test_files()
    assert "tests/test_ops_backends.py" in files and "tests/test_gpu_check.py" not in files


def test_results_folder_order(monkeypatch):
    monkeypatch.setenv("OUT", "/from/env")
    assert gpu_check.parse_args(["--out", "x"]).out_dir == "x"
    assert gpu_check.parse_args(["arg"]).out_dir == "/from/env"
    monkeypatch.delenv("OUT")
    assert gpu_check.parse_args(["arg"]).out_dir == "arg"
    assert gpu_check.parse_args([]).out_dir == "gpu_check_results"


def test_step_budgets_fit_the_time_limits():
    full = sum(f for f, _ in gpu_check.BUDGET.values())
    quick = sum(q for _, q in gpu_check.BUDGET.values() if q is not None)
    assert full <= 7 * 60 - 20 and quick <= 3 * 60 - 5


# -- compute-sanitizer: finding it, reading it -----------------------------------------------------------
GVISOR = """========= COMPUTE-SANITIZER
========= Error: Device not supported. Please refer to the "Supported Devices" section of the sanitizer documentation
========= Error: Target application returned an error
========= Program hit cudaErrorUnknown (error 999) due to "unknown error" on CUDA API call to cudaMalloc.
"""
OUR_WRITE = """========= COMPUTE-SANITIZER
========= Invalid __global__ write of size 4 bytes
=========     at conv2d_backward_weight+0x2f0
=========     by thread (31,0,0) in block (74,0,0)
=========     Address 0x7f0000001200 is out of bounds
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: cuLaunchKernel [0x2b4c15] in libcuda.so.1
=========
GPU_CHECK_ONE_STEP_DONE
========= ERROR SUMMARY: 1 error
"""
OUR_RACE = """========= COMPUTE-SANITIZER
========= Error: Potential RAW hazard detected at __shared__ 0x40 in block (3,0,0) :
=========     Write Thread (0,0,0) at seed_step_forward_backward+0x1a40
=========     Read Thread (33,0,0) at seed_step_forward_backward+0x1b00
=========     Current Value : 0, Incoming Value : 1
=========
GPU_CHECK_ONE_STEP_DONE
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""
LIBRARY_ONLY = """========= COMPUTE-SANITIZER
========= Uninitialized __global__ memory read of size 4 bytes
=========     at void cub::CUB_200200_900_NS::DeviceReduceSingleTileKernel<float>(float *)+0x90
=========     by thread (0,0,0) in block (0,0,0)
=========
========= Error: Potential WAR hazard detected at __shared__ 0x0 in block (0,0,0) :
=========     Read Thread (0,0,0) at sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32_conv2d_like+0x10
=========     Write Thread (32,0,0) at sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32_conv2d_like+0x20
=========
one step, GPUCNN_GPU_STEP=auto: done
GPU_CHECK_ONE_STEP_DONE
========= ERROR SUMMARY: 2 errors
"""
CLEAN = "========= COMPUTE-SANITIZER\nGPU_CHECK_ONE_STEP_DONE\n========= ERROR SUMMARY: 0 errors\n"
CRASHED = "========= COMPUTE-SANITIZER\nTraceback (most recent call last):\nRuntimeError: boom\n" \
          "========= ERROR SUMMARY: 0 errors\n"
KERNELS = ["conv2d_backward_weight", "conv2d_forward", "seed_step_forward_backward"]


@pytest.mark.parametrize("text, rc, status, words", [
    (GVISOR, 255, gpu_check.NA, "Device not supported"),
    (OUR_WRITE, 9, gpu_check.FAIL, "conv2d_backward_weight"),
    (OUR_RACE, 9, gpu_check.FAIL, "RAW hazard"),
    (LIBRARY_ONLY, 9, gpu_check.PASS, "2 elsewhere"),
    (CLEAN, 0, gpu_check.PASS, "0 errors"),
    (CRASHED, 1, gpu_check.FAIL, "did not finish"),
], ids=["refused", "our-write", "our-race", "cublas-cub-only", "clean", "crashed"])
def test_sanitizer_verdicts(text, rc, status, words):
    got, detail = gpu_check.classify_sanitizer(text, rc, KERNELS)
    assert got == status and words in detail, detail


def test_our_kernel_names_come_from_the_cu_files():
    names = gpu_check.our_kernel_names()
    assert set(name for names_ in cuda.KERNELS.values() for name in names_) <= set(names)


def _fake_tool(folder):
    folder.mkdir(parents=True)
    tool = folder / "compute-sanitizer"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    return str(tool)


def test_find_sanitizer_looks_beyond_path(tmp_path):
    def find(**env):
        return gpu_check.find_sanitizer(env, local=tmp_path / "local", site_dirs=[str(tmp_path / "site")])
    assert find(PATH="") is None
    wheel = _fake_tool(tmp_path / "site" / "nvidia" / "cuda_sanitizer_api" / "compute-sanitizer")
    assert find(PATH="") == wheel
    local = _fake_tool(tmp_path / "local" / "cuda-13.0" / "bin")
    assert find(PATH="") == local
    kit = _fake_tool(tmp_path / "kit" / "compute-sanitizer")      # a toolkit's layout, nvcc on PATH
    (tmp_path / "kit" / "bin").mkdir()
    (tmp_path / "kit" / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (tmp_path / "kit" / "bin" / "nvcc").chmod(0o755)
    assert find(PATH=str(tmp_path / "kit" / "bin")) == kit
    home = _fake_tool(tmp_path / "toolkit" / "bin")
    assert find(PATH="", CUDA_HOME=str(tmp_path / "toolkit")) == home
    on_path = _fake_tool(tmp_path / "path")
    assert find(PATH=str(tmp_path / "path"), CUDA_HOME="x") == on_path


FAKE_SANITIZER = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/argv.txt"
case "$*" in *--kernel-regex*) [ -n "$NO_REGEX" ] && { echo "Unrecognized option: --kernel-regex"; exit 1; } ;; esac
[ -n "$REFUSE" ] && { echo "========= Error: Device not supported"; exit 255; }
cat "$(dirname "$0")/canned.txt"
exit 9
"""


@pytest.mark.parametrize("env, canned, status", [
    ({}, LIBRARY_ONLY, gpu_check.PASS),
    ({"NO_REGEX": "1"}, LIBRARY_ONLY, gpu_check.PASS),
    ({}, OUR_WRITE, gpu_check.FAIL),
    ({"REFUSE": "1"}, CLEAN, gpu_check.NA),
], ids=["filtered", "no-kernel-regex", "our-kernel", "refused"])
def test_sanitizer_step_runs_the_tool_it_finds(tmp_path, env, canned, status):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "compute-sanitizer").write_text(FAKE_SANITIZER)
    (bin_dir / "compute-sanitizer").chmod(0o755)
    (bin_dir / "canned.txt").write_text(canned)
    check = gpu_check.Check(gpu_check.parse_args(["--out", str(tmp_path / "out")]))
    check.out.mkdir()
    check.env.update(env, PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    got, detail, data = check.sanitizer_step("racecheck", 20)
    assert got == status, detail
    argv = (bin_dir / "argv.txt").read_text().splitlines()
    assert argv[0].startswith("--tool racecheck") and "kns=" in argv[0] and "conv2d_forward" in argv[0]
    assert "--worker one_step" in argv[0]
    if "NO_REGEX" in env:
        assert len(argv) == 2 and "kns=" not in argv[1] and "unfiltered" in detail


# -- bench_gpu without a GPU -------------------------------------------------------------------------------
def run_bench(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_bench_gpu_help_and_no_gpu_exit():
    assert run_bench("--help").returncode == 0
    if NO_GPU:
        proc = run_bench("--batches", "64")
        assert proc.returncode == 3 and proc.stdout.startswith("No GPU benchmark:"), proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


def test_bench_gpu_validation_catches_a_wrong_step():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_gpu
    params = bench_gpu.initial_params()
    xb, labels, _ = bench_gpu.validation_data(16)
    y1 = np.eye(10, dtype=np.float32)[labels]
    ref = bench_gpu.reference_step(params, xb, y1, bench_gpu.VALIDATION_LR)
    ours = bench_gpu.GpucnnMode("generic", "numpy", np).validate(params, xb, labels, ref)
    assert ours <= bench_gpu.VALIDATION_TOL
    wrong = bench_gpu.reference_step(params, xb, y1, bench_gpu.VALIDATION_LR * (1 + 1e-3))
    assert bench_gpu.step_error(wrong, ref, params) > bench_gpu.VALIDATION_TOL


# -- the backend probe: CuPy's own kernels, and no cached failure ---------------------------------------
class _Failing(np.ndarray):
    """An array whose elementwise multiply fails the way CuPy 14 does without the CUDA headers."""

    def __mul__(self, other):
        raise RuntimeError("CompileException: catastrophic error: cannot open source file \"cuda_fp16.h\"")


def _fake_cupy(state):
    """A stand-in `cupy` for the probe: a device, kernels that 'compile', arithmetic done by NumPy."""
    class Runtime:
        runtimeGetVersion = driverGetVersion = staticmethod(lambda: 12090)
        getDeviceCount = staticmethod(lambda: 1)
        getDeviceProperties = staticmethod(lambda index: {"name": b"Fake GPU"})

    class Module:
        def __init__(self, code, options):
            pass

        def get_function(self, name):
            return lambda grid, block, args, shared_mem=0: None

    def arange(n, dtype):
        x = np.arange(n, dtype=dtype)
        return x.view(_Failing) if state["broken"] else x

    fake = types.ModuleType("cupy")
    fake.__version__ = "0.0-fake"
    fake.is_available = lambda: True
    fake.cuda = types.SimpleNamespace(runtime=Runtime, Device=type("Device", (), {"id": 0, "compute_capability": "90"}),
                                      compiler=None)
    fake.RawModule, fake.empty, fake.float32, fake.arange = Module, np.empty, np.float32, arange
    return fake


@pytest.fixture
def fake_cupy(monkeypatch):
    state = {"broken": True}
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(state))
    monkeypatch.setattr(cuda, "_cupy_state", {})
    monkeypatch.setattr(B, "_cache", {})
    return state


def test_probe_names_cupys_own_kernel_that_failed(fake_cupy):
    info = gpucnn.backend_info()
    assert info["cupy_usable"] is False and info["auto"] == "numpy"
    assert "elementwise" in info["cupy_reason"] and "cuda_fp16.h" in info["cupy_reason"]
    assert "[ctk]" in info["cupy_reason"] and "gpucnn[cuda12]" not in info["cupy_reason"]
    assert info["gpu_step"].startswith("n/a")


def test_a_failed_probe_is_not_kept(fake_cupy):
    with pytest.raises(gpucnn.BackendUnavailable, match="elementwise"):
        gpucnn.get_backend("cupy")
    assert gpucnn.get_backend("auto").name == "numpy"
    fake_cupy["broken"] = False                       # e.g. the CUDA headers were installed meanwhile
    assert gpucnn.get_backend("auto").name == "numpy"             # auto reuses the failure ...
    assert gpucnn.get_backend("auto", refresh=True).name == "cupy"   # ... unless asked to refresh
    fake_cupy["broken"] = True
    assert gpucnn.get_backend("cupy").name == "cupy"  # a success is kept
    info = gpucnn.backend_info()
    assert info["cupy_usable"] and info["cupy_own_kernels"] == "elementwise, reduction, matmul ran"
    assert info["auto"] == "cupy" and "GPUCNN_GPU_STEP" in info["gpu_step"]


def test_an_explicit_request_probes_again(fake_cupy):
    with pytest.raises(gpucnn.BackendUnavailable):
        gpucnn.get_backend("cupy")
    fake_cupy["broken"] = False
    assert gpucnn.get_backend("cupy").name == "cupy"


def test_cupy_not_installed_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(cuda, "_cupy_state", {})
    monkeypatch.setattr(B, "_cache", {})
    reason = gpucnn.backend_info()["cupy_reason"]
    assert 'pip install -e ".[cuda12]"' in reason and "cupy-cuda12x[ctk]" in reason


def test_the_gpu_paths_are_the_backend_s_step_modes():
    """gpu_check writes the GPUCNN_GPU_STEP values out (it imports gpucnn late): they must not drift."""
    from gpucnn.backend import STEP_MODES
    assert gpu_check.GPU_PATHS == STEP_MODES
