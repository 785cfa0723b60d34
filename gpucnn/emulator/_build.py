"""Compiling a .cu source for the emulator, and the cache of what was compiled.

One build per (source, options, emulator files, compiler, mode):
  mode None       a shared library loaded with ctypes (kernels run in this process);
  mode "thread"   a standalone executable built with -fsanitize=thread;
  mode "address"  a standalone executable built with -fsanitize=address.
Everything lands in the cache directory under a hash of all of the above, written to a temporary
name first and renamed, so concurrent test processes never see half a file.
"""
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import _source

HERE = Path(__file__).parent
HEADER = HERE / "cuda_emu.h"
RUNTIME_FILES = ("emu_core.h", "runtime.cpp", "driver.inc")
ABI = "gpucnn-emulator-1"

# -ffp-contract=off: no fused multiply-adds behind our back (the GPU fuses, so compare with a
# tolerance); -fwrapv/-fno-strict-aliasing: integer overflow and type punning behave as nvcc's do;
# -ftrivial-auto-var-init=pattern: an uninitialised local reads as garbage, not as a lucky zero.
COMMON = ["-std=c++17", "-fPIC", "-ffp-contract=off", "-fwrapv", "-fno-strict-aliasing",
          "-fvisibility=hidden", "-pthread"]
KERNEL_EXTRA = ["-ftrivial-auto-var-init=pattern", "-w"]
MODE_FLAGS = {
    None: ["-O2"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
    "address": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"],
}
RUNTIME_DEFINES = {None: [], "thread": ["-DEMU_TSAN", "-DEMU_DRIVER"],
                   "address": ["-DEMU_ASAN", "-DEMU_DRIVER"]}
# NVRTC options that mean nothing to g++ (or that g++ spells differently) are dropped.
_PASS_PREFIXES = ("-D", "-U", "-I", "-include")

stats = {"compiles": 0, "cache_hits": 0}


class CompileError(RuntimeError):
    """g++ rejected a kernel source (or the emulator could not translate it); has the log."""


def cache_dir():
    root = os.environ.get("GPUCNN_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "gpucnn"
    d = base / "emulator"
    d.mkdir(parents=True, exist_ok=True)
    return d


def compiler():
    return os.environ.get("GPUCNN_EMU_CXX") or "g++"


@functools.lru_cache(maxsize=None)
def compiler_id(cxx):
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise CompileError(f"the emulator needs a C++ compiler ({cxx!r}): {exc}") from exc
    return out.stdout.splitlines()[0] if out.stdout else cxx


def _runtime_hash():
    h = hashlib.sha256()
    for name in ("cuda_emu.h",) + RUNTIME_FILES:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()


def gpp_options(options):
    """The NVRTC options g++ understands: -D, -U, -I, -include (joined or separate forms)."""
    kept, it = [], iter(options)
    for opt in it:
        opt = str(opt)
        if opt.startswith(_PASS_PREFIXES):
            kept.append(opt)
            if opt in _PASS_PREFIXES:
                kept.append(str(next(it, "")))
        elif opt.startswith(("-std=", "--std=")):
            continue                               # we compile as C++17 always
    return kept


def _run(cmd, what, cwd=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode:
        raise CompileError(f"{what} failed:\n$ {' '.join(cmd)}\n{proc.stderr[-8000:]}")
    return proc.stdout


def _atomic_write(path, data):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _runtime_object(mode, cxx):
    """runtime.cpp compiled once per mode (and cached like the kernels)."""
    flags = COMMON + MODE_FLAGS[mode] + RUNTIME_DEFINES[mode]
    if mode == "thread":   # the scheduler itself is not instrumented; only its annotations count
        flags = [f for f in flags if f != "-fsanitize=thread"]
    key = hashlib.sha256(json.dumps([ABI, _runtime_hash(), flags, compiler_id(cxx)]).encode())
    path = cache_dir() / f"runtime-{mode or 'plain'}-{key.hexdigest()[:24]}.o"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            obj = Path(tmp) / "runtime.o"
            _run([cxx, *flags, "-I", str(HERE), "-c", str(HERE / "runtime.cpp"), "-o", str(obj)],
                 "compiling the emulator runtime")
            os.replace(obj, path)
    return path


def build(code, options, name, mode):
    """Compile ``code`` for ``mode``; returns (path of the .so or executable, metadata dict)."""
    cxx = compiler()
    opts = gpp_options(options)
    parts = [ABI, code, opts, name, mode, _runtime_hash(), compiler_id(cxx), COMMON, KERNEL_EXTRA,
             MODE_FLAGS[mode]]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    d = cache_dir()
    suffix = {None: ".so", "thread": "-tsan", "address": "-asan"}[mode]
    out, meta_path = d / f"{key}{suffix}", d / f"{key}{suffix}.json"
    if out.exists() and meta_path.exists():
        stats["cache_hits"] += 1
        return out, json.loads(meta_path.read_text())
    stats["compiles"] += 1
    runtime = _runtime_object(mode, cxx)
    with tempfile.TemporaryDirectory(dir=d, prefix=".build-") as tmp:
        tmp = Path(tmp)
        src = tmp / (Path(name).name or "kernel.cu")
        src.write_text(code)
        pre = _run([cxx, "-E", "-x", "c++", "-std=c++17", "-I", str(HERE), "-include", str(HEADER),
                    "-D__CUDACC__", "-D__CUDACC_RTC__", "-D__CUDA_ARCH__=800", *opts, src.name],
                   f"preprocessing {name}", cwd=tmp)
        try:
            tr = _source.translate(pre)
        except _source.SourceError as exc:
            raise CompileError(str(exc)) from None
        unit = tmp / "unit.cpp"
        unit.write_text(tr.text + "\n" + _source.entry_points(tr.kernels))
        target = tmp / ("out" + suffix)
        link = ["-shared"] if mode is None else []
        _run([cxx, *COMMON, *KERNEL_EXTRA, *MODE_FLAGS[mode], *link, "-x", "c++", str(unit),
              "-x", "none", str(runtime), "-o", str(target), "-lm"],
             f"compiling {name} for the emulator")
        meta = {"name": name, "kernels": {k.name: {"params": k.param_names, "decls": k.param_decls,
                                                   "extern_c": k.extern_c, "template": k.template}
                                          for k in tr.kernels.values()}}
        _atomic_write(meta_path, json.dumps(meta).encode())
        os.replace(target, out)
    return out, meta


def clear_cache():
    """Remove every compiled object (tests use a private GPUCNN_CACHE instead)."""
    shutil.rmtree(cache_dir(), ignore_errors=True)
