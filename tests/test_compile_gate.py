"""Compile gate, no GPU needed: every cuda/*.cu compiles with NVRTC for sm_80 and sm_90.

It compiles with exactly the options the CuPy backend compiles with (gpucnn.ops.cuda.NVRTC_OPTIONS plus
what cupy.RawModule adds itself: CUPY_ADDED_OPTIONS and -arch=sm_XY, i.e. a cubin), with -Xptxas -v,
and fails on a compile error, a warning, a register spill, a stack frame / local memory, or an entry
point that gpucnn.ops.cuda.KERNELS does not list (or one it lists that is missing).

NVRTC comes from cuda-bindings + an NVRTC wheel (pyproject extra ``nvrtc``). Where it cannot be loaded
the gate skips with the reason, except under CI (CI set in the environment), where it must run.
"""
import os
import re

import pytest

from gpucnn import gpu_step
from gpucnn.ops import cuda

ARCHS = ("sm_80", "sm_90")
GATE_OPTIONS = cuda.NVRTC_OPTIONS + cuda.CUPY_ADDED_OPTIONS
ALL_FILES = cuda.KERNEL_FILES + tuple(cuda.STEP_KERNELS)
ALL_KERNELS = {**cuda.KERNELS, **cuda.STEP_KERNELS}


def _step_defines():
    """seed_step.cu is compiled per network: the seed net (quadratic, sigmoid, batch 64), its modern
    variant (cross-entropy, relu, batch 256), and odd sizes (tanh, pool 3, batch 1)."""
    from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, Tanh
    from gpucnn.network import Network, seed_network
    nets = {"seed-b64": (seed_network(backend="numpy"), 64),
            "relu-ce-b256": (seed_network(backend="numpy", loss="cross_entropy", activation="relu"), 256),
            "odd-b1": (Network([Conv2D(1, 2, 4), Tanh(), MaxPool2D(3), Flatten(), Dense(84, 7)],
                               input_shape=(1, 23, 25), backend="numpy"), 1)}
    return {name: gpu_step.step_defines(gpu_step.seed_family(net)[0], batch)
            for name, (net, batch) in nets.items()}


def _gate_cases():
    cases = [(name, ()) for name in cuda.KERNEL_FILES]
    cases += [pytest.param(gpu_step.SEED_STEP_FILE, defines, id=f"{gpu_step.SEED_STEP_FILE}-{name}")
              for name, defines in _step_defines().items()]
    return cases


@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cuda.bindings import nvrtc as module
        result, major, minor = module.nvrtcVersion()
        if result != module.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"nvrtcVersion returned {result}")
    except Exception as exc:   # ImportError (no cuda-bindings) or RuntimeError (no libnvrtc found)
        reason = (f"NVRTC not loadable ({type(exc).__name__}: {exc}); "
                  "pip install 'gpucnn[nvrtc]' to run the compile gate")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    print(f"NVRTC {major}.{minor}")
    return module


def compile_cubin(nvrtc, source, file_name, options):
    """-> (ok, log): NVRTC compile of source to a cubin with options; log includes ptxas -v output."""
    result, program = nvrtc.nvrtcCreateProgram(source.encode(), file_name.encode(), 0, [], [])
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, result
    try:
        encoded = [option.encode() for option in options]
        (result,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        ok = result == nvrtc.nvrtcResult.NVRTC_SUCCESS
        if ok:
            _, cubin_size = nvrtc.nvrtcGetCUBINSize(program)
            ok = cubin_size > 0
        return ok, log.decode(errors="replace").rstrip("\x00 \n")
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def ptxas_problems(log):
    """-> (entry points, [problem, ...]) from an NVRTC + ptxas -v log."""
    entries = re.findall(r"Compiling entry function '(\w+)'", log)
    problems = [line.strip() for line in log.splitlines() if "warning" in line.lower()]
    for function, stack, stores, loads in re.findall(
            r"Function properties for (\w+)\s*\n\s*ptxas\s+\.\s+(\d+) bytes stack frame, "
            r"(\d+) bytes spill stores, (\d+) bytes spill loads", log):
        if int(stack) or int(stores) or int(loads):
            problems.append(f"{function}: {stack} bytes stack frame, {stores} bytes spill stores, "
                            f"{loads} bytes spill loads (local memory)")
    problems += [f"local memory: {line.strip()}" for line in log.splitlines()
                 if re.search(r"[1-9]\d* bytes lmem", line)]
    return entries, problems


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file_name, defines", _gate_cases())
def test_kernel_compiles_clean(nvrtc, file_name, defines, arch):
    options = GATE_OPTIONS + tuple(defines) + (f"-arch={arch}", "-Xptxas", "-v")
    ok, log = compile_cubin(nvrtc, cuda.read_kernel_source(file_name), file_name, options)
    assert ok, f"{file_name} failed to compile for {arch} with {' '.join(options)}:\n{log}"
    entries, problems = ptxas_problems(log)
    assert sorted(entries) == sorted(ALL_KERNELS[file_name]), (
        f"{file_name}: entry points {entries} differ from KERNELS {ALL_KERNELS[file_name]}\n{log}")
    assert not problems, f"{file_name} for {arch}:\n" + "\n".join(problems) + f"\n\n{log}"


def test_gate_catches_local_memory(nvrtc):
    """The gate can fail: a dynamically indexed local array must show as a stack frame."""
    source = """
    extern "C" __global__ void spills(float* out, const int* index) {
        float scratch[1024];
        for (int i = 0; i < 1024; ++i) scratch[i] = out[i * blockDim.x + threadIdx.x];
        scratch[index[threadIdx.x] & 1023] += 1.0f;
        out[threadIdx.x] = scratch[index[threadIdx.x + 1] & 1023];
    }"""
    ok, log = compile_cubin(nvrtc, source, "spills.cu", GATE_OPTIONS + ("-arch=sm_90", "-Xptxas", "-v"))
    assert ok, log
    entries, problems = ptxas_problems(log)
    assert entries == ["spills"] and problems, log


def test_gate_catches_compile_error(nvrtc):
    ok, log = compile_cubin(nvrtc, 'extern "C" __global__ void broken(float* out) { out[0] = y; }',
                            "broken.cu", GATE_OPTIONS + ("-arch=sm_90",))
    assert not ok and "identifier" in log, log


def test_gate_nvrtc_is_the_one_cupy_uses(nvrtc):
    """The gate proves what CuPy will compile only with CuPy's NVRTC major (12 for cupy-cuda12x)."""
    try:
        from cupy.cuda import nvrtc as cupy_nvrtc
        cupy_version = cupy_nvrtc.getVersion()
    except Exception as exc:           # no CuPy, or CuPy without an NVRTC: nothing to compare
        pytest.skip(f"CuPy's NVRTC not loadable here ({type(exc).__name__}: {exc})")
    _, major, minor = nvrtc.nvrtcVersion()
    assert major == cupy_version[0], (f"the gate runs NVRTC {major}.{minor}, CuPy uses "
                                      f"{cupy_version[0]}.{cupy_version[1]}: install the matching pair")


# --- source rules that need no compiler -------------------------------------------------------

def _source(file_name):
    return cuda.read_kernel_source(file_name)


@pytest.mark.parametrize("file_name", ALL_FILES)
def test_source_rules(file_name):
    """No headers (NVRTC has none), no atomics (determinism), a header block, extern "C" entries."""
    text = _source(file_name)
    code = re.sub(r"//[^\n]*", "", text)
    assert "#include" not in code, f"{file_name}: NVRTC has no CUDA headers; include nothing"
    assert "atomic" not in code, f"{file_name}: atomics make results run-dependent; use a gather"
    header = text.split("\n\n", 1)[0]
    for part in ("Math", "Layout", "Thread mapping", "Launch rule", "Versions"):
        assert part in text[:4000], f"{file_name}: the header lacks its {part!r} section"
    assert header.startswith(f"// {file_name}")
    for kernel in ALL_KERNELS[file_name]:
        assert re.search(rf'extern "C" __global__ void {kernel}\(', code), f"{kernel} not extern C"


def test_host_constants_match_kernel_defines():
    """REDUCE_THREADS and the activation codes live in both Python and .cu; they must agree."""
    reduce_source = _source("conv2d_backward_weight.cu")
    assert re.search(rf"#define REDUCE_THREADS {cuda.REDUCE_THREADS}\b", reduce_source)
    forward_source = _source("conv2d_forward.cu")
    for name, code in cuda.ACTIVATIONS.items():
        assert re.search(rf"#define ACTIVATION_{name.upper()} {code}\b", forward_source), name
