"""Shared benchmark machinery: interleaved timed rounds, ratio statistics, machine facts, results files.

How a comparison is timed (see ../../shared/design/measured-anchors.md for why):
  * every competitor is warmed up first (allocations, OpenBLAS/oneDNN thread start, caches);
  * then ROUNDS rounds; in each round every competitor runs one timed block of about BLOCK_S seconds,
    the order rotating from round to round so no one always runs right after a given other;
  * an idle gap of GAP_S seconds before every block: OpenBLAS worker threads spin ~0.1 s after a
    matmul and would steal a core from whatever runs next;
  * the result per competitor is the median over rounds; a ratio is computed per round (both numbers
    from the same round, so a machine that slows down for a while slows both) and reported as the
    median with its min-max over rounds.

NOTE: ratios are only meaningful between competitors measured in the same run; absolute images/s on
a shared machine move with whatever else runs (the load average is recorded with every result).
"""
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- timing ------------------------------------------------------------------------------------------
def time_block(step, seconds, min_steps=3):
    """Run step() repeatedly for about `seconds` (at least min_steps times); returns (steps, elapsed)."""
    steps, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        step()
        steps += 1
        now = time.perf_counter()
        if steps >= min_steps and now >= deadline:
            return steps, now - start


def interleaved(competitors, rounds, block_s, gap_s, warmup_s):
    """competitors: {name: (step, items_per_step[, enter])} -> {name: [items/s of each round]}.

    The rounds interleave the competitors (rotating order) with an idle gap before each block;
    enter(), when given, runs before the competitor's gap (e.g. to set a thread count).
    """
    names = list(competitors)
    enter = {name: (c[2] if len(c) > 2 else (lambda: None)) for name, c in competitors.items()}
    for name in names:                                   # warm-up, untimed
        enter[name]()
        time_block(competitors[name][0], warmup_s)
    rates = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            step, items = competitors[name][:2]
            enter[name]()
            time.sleep(gap_s)
            steps, elapsed = time_block(step, block_s)
            rates[name].append(steps * items / elapsed)
    return rates


def summarize(rates, ours, peers):
    """Medians per competitor and, per peer, the per-round ratio ours/peer: median, min, max."""
    out = {name: {"median": statistics.median(v), "rounds": v} for name, v in rates.items()}
    for peer in peers:
        if peer in rates and ours in rates:
            ratios = [a / b for a, b in zip(rates[ours], rates[peer])]
            out[f"ratio_{peer}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                    "max": max(ratios), "rounds": ratios}
    return out


# -- machine facts -----------------------------------------------------------------------------------
def two_core_speedup(seconds=0.3):
    """How much of a second core this process gets now: two threads doing independent matmuls
    (OpenBLAS held to one thread) against one doing both, ~2.0 on an idle 2-core machine. On a
    shared or virtual machine it moves from minute to minute; recorded with every result."""
    import threading
    import numpy as np
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    reps = max(1, int(seconds / 2 / 2e-4))

    def work():
        for _ in range(reps):
            a @ a
    with threadpool_limits(1, user_api="blas"):
        work()
        t = time.perf_counter()
        work()
        work()
        serial = time.perf_counter() - t
        other = threading.Thread(target=work)
        t = time.perf_counter()
        other.start()
        work()
        other.join()
        parallel = time.perf_counter() - t
    return round(serial / parallel, 2)



def _lscpu_model():
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def machine_info(extra=None):
    """Date, CPU, cores, load, library versions and the BLAS thread pools (threadpoolctl)."""
    import numpy as np
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _lscpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "two_core_speedup_at_start": two_core_speedup(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                            "OMP_NUM_THREADS", "GPUCNN_BACKEND") if k in os.environ},
    }
    try:
        import threadpoolctl
        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads",
                                                       "threading_layer", "architecture")}
                               for p in threadpoolctl.threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    info.update(extra or {})
    return info


def blas_kernel_note(info):
    """A line when OPENBLAS_CORETYPE holds OpenBLAS to a kernel of its choosing, else None.

    Some machines set it for older OpenBLAS builds; a current NumPy's OpenBLAS then runs that kernel
    (e.g. Haswell's AVX2 on an AVX-512 CPU: half the matmul peak) while PyTorch's oneDNN picks its
    own, so such a run compares gpucnn on a held-back BLAS. Unset it for that command alone:
    ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cpu.py``.
    """
    held = info.get("env", {}).get("OPENBLAS_CORETYPE")
    if held is None:
        return None
    kernels = [p.get("architecture") for p in info.get("threadpools", []) if isinstance(p, dict)
               and p.get("internal_api") == "openblas"]
    return (f"note: OPENBLAS_CORETYPE={held} holds OpenBLAS to the {'/'.join(map(str, kernels)) or held} "
            "kernel while PyTorch picks its own; for a like-for-like run: "
            "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cpu.py")


# -- peak memory, one competitor per fresh process ---------------------------------------------------
def peak_rss_mib():
    """Peak resident set size of this process so far, MiB.

    VmHWM from /proc (Linux): ru_maxrss would include the parent's size at fork time, which Linux
    carries over exec into a child's ru_maxrss.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script, args, timeout=300):
    """Run `python script args...` that prints one JSON line last; returns that dict (or an error)."""
    try:
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                              timeout=timeout)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        return json.loads(lines[-1])
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
        return {"error": str(exc)}


# -- results -----------------------------------------------------------------------------------------
def write_results(kind, payload, markdown, out_dir=None, name=None):
    """benchmarks/results/<kind>-<date>-<name>.json and .md (name: the host, unless given); returns the
    two paths."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    date = payload["machine"]["date"][:10]
    if name is None:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in payload["machine"]["host"])[:40]
    stem = out_dir / f"{kind}-{date}-{name}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def fmt_rate(x):
    if x is None:
        return "–"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def fmt_ratio(r):
    if not r:
        return "–"
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def gradient_error(ours, ref):
    """max |ours - ref| / max |ref| over one tensor (the scale-aware check of llm.c's validate)."""
    import numpy as np
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
