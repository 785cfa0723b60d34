"""Checking a launch's arguments like the GPU would need them, and running it (ctypes or driver)."""
import ctypes
import os
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- the C structures (runtime.cpp)
class _Arg(ctypes.Structure):
    _fields_ = [("host", ctypes.c_void_p), ("nbytes", ctypes.c_uint64),
                ("kind", ctypes.c_int32), ("alias", ctypes.c_int32)]


class _Config(ctypes.Structure):
    _fields_ = [("order", ctypes.c_int32), ("workers", ctypes.c_int32), ("seed", ctypes.c_uint64),
                ("max_shared", ctypes.c_uint64), ("timeout", ctypes.c_double)]


class _Result(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("where", ctypes.c_int32), ("arg", ctypes.c_int32),
                ("is_write", ctypes.c_int32), ("offset", ctypes.c_int64), ("addr", ctypes.c_uint64),
                ("block", ctypes.c_uint32 * 3), ("thread", ctypes.c_uint32 * 3),
                ("has_thread", ctypes.c_int32), ("pad", ctypes.c_int32), ("msg", ctypes.c_char * 4096)]


ARG_VALUE, ARG_PTR, ARG_CONST_PTR = 0, 1, 2
ERR_NAMES = {1: "fault", 2: "fpe", 3: "deadlock", 4: "divergent", 5: "warp", 6: "assert",
             7: "trap", 8: "shared", 9: "timeout", 10: "illegal", 11: "config"}
ORDERS = {"ascending": 0, "descending": 1, "random": 2}

# the compiler's parameter type codes (cuda_emu.h, __emu_tc) -> NumPy dtype and C spelling
_CODES = {"f": ("float32", "float"), "d": ("float64", "double"), "i": ("int32", "int"),
          "I": ("uint32", "unsigned int"), "l": ("int64", "long"), "q": ("int64", "long long"),
          "L": ("uint64", "unsigned long"), "Q": ("uint64", "unsigned long long"),
          "h": ("int16", "short"), "H": ("uint16", "unsigned short"), "c": ("int8", "char"),
          "b": ("int8", "signed char"), "B": ("uint8", "unsigned char"), "o": ("bool", "bool"),
          "v": (None, "void")}


class KernelError(RuntimeError):
    """A kernel misbehaved: out-of-bounds access, deadlock, divergent barrier, bad shuffle, ...

    ``kernel``, ``block`` and ``thread`` (tuples; ``thread`` None when no single thread is to
    blame) and ``kind`` (e.g. "fault", "deadlock", "divergent", "warp", "sanitizer") say what.
    """

    def __init__(self, message, kernel=None, block=None, thread=None, kind=None, report=None):
        super().__init__(message)
        self.kernel, self.block, self.thread, self.kind, self.report = kernel, block, thread, kind, report


class SanitizerError(KernelError):
    """ThreadSanitizer or AddressSanitizer reported a problem; ``report`` has its full text."""


class Param:
    """One kernel parameter: its name, how it was written, and what NumPy value it takes."""

    def __init__(self, name, decl, code):
        self.name, self.decl, self.code = name, decl, code
        self.pointer = code.startswith("*")
        base = code.lstrip("*k")
        self.const = self.pointer and code[1:2] == "k"
        dtype, cname = _CODES.get(base, (None, None))
        self.supported = cname is not None and code.count("*") <= 1 and not (not self.pointer and base == "v")
        self.dtype = np.dtype(dtype) if dtype else None
        self.cname = (("const " if self.const else "") + (cname or "?") + ("*" if self.pointer else ""))


def parse_signature(sig, names, decls):
    codes = [c for c in sig.split(",") if c]
    return [Param(names[i] if i < len(names) else f"arg{i}", decls[i] if i < len(decls) else "?", c)
            for i, c in enumerate(codes)]


def dim3(value, what):
    """An int or a tuple of 1-3 ints -> a 3-tuple (as cupy.RawKernel takes grid and block)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),)
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(v) for v in value) + (1,) * (3 - len(value))
    if min(dims) < 1:
        raise ValueError(f"{what} {dims} has a zero or negative dimension (a GPU rejects the launch)")
    return dims


def check_config(kernel, grid, block, shared_mem, max_shared):
    grid, block = dim3(grid, "grid"), dim3(block, "block")
    if block[0] * block[1] * block[2] > 1024 or block[0] > 1024 or block[1] > 1024 or block[2] > 64:
        raise ValueError(f"kernel {kernel!r}: block {block} exceeds the GPU's limits "
                         "(1024 threads, z <= 64)")
    if grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"kernel {kernel!r}: grid {grid} exceeds the GPU's limits")
    if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
        raise ValueError(f"kernel {kernel!r}: shared_mem must be a non-negative int, got {shared_mem!r}")
    if shared_mem > max_shared:
        raise ValueError(f"kernel {kernel!r}: shared_mem={shared_mem} bytes exceeds the "
                         f"{max_shared} bytes a block may use")
    return grid, block, int(shared_mem)


def marshal(kernel, params, args):
    """Check ``args`` against the kernel's parameters; returns [(kind, ndarray-or-bytes, alias)]."""
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"kernel {kernel!r}: args must be a tuple, got {type(args).__name__}")
    if len(args) != len(params):
        listed = ", ".join(f"{p.cname} {p.name}" for p in params)
        raise TypeError(f"kernel {kernel!r} takes {len(params)} arguments ({listed}), got {len(args)}")
    out = []
    for i, (p, a) in enumerate(zip(params, args)):
        where = f"kernel {kernel!r}, parameter {i} '{p.cname} {p.name}'"
        if not p.supported:
            raise TypeError(f"{where}: the emulator cannot pass this type ({p.decl})")
        if p.pointer:
            out.append(_pointer_arg(where, p, a))
        else:
            out.append(_value_arg(where, p, a))
    ranges = []
    for i, (kind, value, _) in enumerate(out):
        if kind == ARG_VALUE:
            continue
        lo, n = value.ctypes.data, value.nbytes
        for j, lo2, n2 in ranges:
            if lo == lo2 and n == n2:
                out[i] = (kind, value, j)
                break
            if n and n2 and lo < lo2 + n2 and lo2 < lo + n:
                raise ValueError(f"kernel {kernel!r}: arguments {j} and {i} overlap without being the "
                                 "same array; the emulator copies each argument into its own buffer")
        else:
            ranges.append((i, lo, n))
    return out


def _pointer_arg(where, p, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}: needs a NumPy array (device pointer), got {type(a).__name__}")
    if p.dtype is not None and a.dtype != p.dtype:
        raise TypeError(f"{where}: needs a {p.dtype} array, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{where}: the array is not C-contiguous (a raw kernel ignores strides; "
                         "pass np.ascontiguousarray(...))")
    if not p.const and not a.flags.writeable:
        raise ValueError(f"{where}: the array is read-only but the parameter is not const")
    return (ARG_CONST_PTR if p.const else ARG_PTR, a, -1)


def _value_arg(where, p, a):
    if isinstance(a, (bool, int, float)) and not isinstance(a, np.generic):
        size = {int: "a 64-bit integer", float: "a double", bool: "a bool"}[type(a)]
        raise TypeError(f"{where}: got a Python {type(a).__name__}, which CuPy passes as {size} "
                        f"and the kernel would misread; pass np.{p.dtype}({a!r})")
    if not isinstance(a, np.generic) or a.dtype != p.dtype:
        got = a.dtype if isinstance(a, np.generic) else type(a).__name__
        raise TypeError(f"{where}: needs np.{p.dtype}, got {got}")
    return (ARG_VALUE, np.array(a, dtype=p.dtype), -1)


def config_struct(cfg, max_shared):
    return _Config(ORDERS[cfg["order"]], int(cfg["workers"]), int(cfg["seed"]) & (2**64 - 1),
                   int(max_shared), float(cfg["timeout"] or 0.0))


def _c_args(marshalled):
    arr = (_Arg * max(1, len(marshalled)))()
    for i, (kind, value, alias) in enumerate(marshalled):
        arr[i].host, arr[i].nbytes = value.ctypes.data, value.nbytes
        arr[i].kind, arr[i].alias = kind, alias
    return arr


def run_in_process(lib, entry, marshalled, grid, block, shared_mem, config):
    res = _Result()
    u3 = ctypes.c_uint32 * 3
    lib.emu_launch(ctypes.c_void_p(entry), len(marshalled), _c_args(marshalled), u3(*grid),
                   u3(*block), ctypes.c_uint64(shared_mem), ctypes.byref(config), ctypes.byref(res))
    return res


_SAN_ENV = {
    "thread": ("TSAN_OPTIONS", "halt_on_error=1:exitcode=66:report_signal_unsafe=0:history_size=4:atexit_sleep_ms=0"),
    "address": ("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1:exitcode=67:abort_on_error=0:"
                                "detect_stack_use_after_return=0"),
}
_SAN_HEAD = re.compile(r"^(?:WARNING: ThreadSanitizer|==\d+==ERROR: AddressSanitizer|"
                       r"ERROR: AddressSanitizer|SUMMARY: (?:Thread|Address)Sanitizer)", re.M)


def run_in_driver(exe, mode, kernel, marshalled, grid, block, shared_mem, config, timeout):
    """One launch in the sanitizer executable; returns (result, stderr)."""
    with tempfile.TemporaryDirectory(prefix="gpucnn-emu-") as tmp:
        req, resp = Path(tmp) / "request", Path(tmp) / "response"
        name = kernel.encode()
        parts = [b"EMU1", struct.pack("<I", len(name)), name, struct.pack("<3I", *grid),
                 struct.pack("<3I", *block), struct.pack("<Q", shared_mem), bytes(config),
                 struct.pack("<I", len(marshalled))]
        for kind, value, alias in marshalled:
            parts += [struct.pack("<iiQ", kind, alias, value.nbytes), value.tobytes()]
        req.write_bytes(b"".join(parts))
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",)}
        var, opts = _SAN_ENV[mode]
        env[var] = opts + (":" + env[var] if env.get(var) else "")
        try:
            proc = subprocess.run([str(exe), str(req), str(resp)], capture_output=True, env=env,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise KernelError(f"kernel {kernel!r}: the {mode}-sanitizer run took longer than "
                              f"{timeout} s (a thread spinning on another?)", kernel=kernel,
                              kind="timeout") from None
        stderr = proc.stderr.decode(errors="replace")
        if _SAN_HEAD.search(stderr) or proc.returncode in (66, 67):
            return None, stderr
        if proc.returncode or not resp.exists():
            raise KernelError(f"kernel {kernel!r}: the {mode}-sanitizer run ended with status "
                              f"{proc.returncode} and no report:\n{stderr[-4000:]}", kernel=kernel,
                              kind="crash", report=stderr)
        data = resp.read_bytes()
        res = _Result.from_buffer_copy(data[:ctypes.sizeof(_Result)])
        pos = ctypes.sizeof(_Result)
        if res.kind == 0:
            for kind, value, _ in marshalled:
                if kind == ARG_PTR:
                    n = value.nbytes
                    value.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, n, pos)
                    pos += n
        return res, stderr


def error_message(kernel, params, res, shared_mem):
    """The text of a KernelError for a failed launch."""
    detail = res.msg.decode(errors="replace")
    if res.kind == 1:
        detail = _fault_text(params, res, shared_mem) or detail
    where = f"block ({res.block[0]},{res.block[1]},{res.block[2]})"
    if res.has_thread:
        where += f", thread ({res.thread[0]},{res.thread[1]},{res.thread[2]})"
    return f"kernel {kernel!r}, {where}: {detail}"


def _fault_text(params, res, shared_mem):
    access = {1: "write", 0: "read"}.get(res.is_write, "access")
    if res.where in (1, 2, 3) and 0 <= res.arg < len(params):
        p = params[res.arg]
        size = p.dtype.itemsize if p.dtype is not None else 1
        arg = f"argument {res.arg} '{p.cname} {p.name}'"
        if res.where == 3:
            return f"write to the const {arg}"
        side = "past the end of" if res.where == 1 else "before the start of"
        return (f"out-of-bounds {access} {side} {arg}: byte offset {res.offset}, element index "
                f"{res.offset // size} (guard page at address 0x{res.addr:x})")
    if res.where == 4:
        return (f"out-of-bounds {access} past the end of the dynamic shared memory: byte {res.offset} "
                f"of a block launched with shared_mem={shared_mem} (too small a shared_mem from the host?)")
    if res.where == 5:
        return "stack overflow (every emulated thread has a 64 KiB stack: a huge local array?)"
    if res.where == 6:
        return ("general-protection fault: a misaligned vector access (float4 on an address that is "
                "not 16-byte aligned) or a non-canonical pointer")
    return (f"invalid {access} at address 0x{res.addr:x}: not inside any argument, the shared memory "
            "or the thread's stack (a null or wild pointer?)")
