"""The GPU check: everything that needs a GPU, in one call, within a fixed time budget.

    python scripts/gpu_check.py [RESULTS_DIR] [--quick] [--out DIR] [--only STEP ...]
    bash scripts/gpu_check.sh [...]                     # the same
    python scripts/gpu_check.py --dry-run --out DIR     # act as if no GPU were here (what CI runs)
    python scripts/gpu_check.py --rehearse --out DIR    # every step's own code on the CPU (emulated), tiny sizes

Results go to --out, else $OUT, else RESULTS_DIR, else ./gpu_check_results. Each step runs in its own
process under its own timeout and appends its line to results.txt and its record to results.json
(rewritten atomically) the moment it finishes, so a run killed at its time limit keeps what was done.
The table prints last. Per-step timeouts add up to the budget (full 400 s, --quick 175 s; a step that
ends early hands its unused seconds to the next), so the whole run stays under 7 minutes (3 quick)
on an H100/H200, CuPy's first compile included.

Steps (full; --quick: memcheck only among the sanitizers, bench at batch 64 only, no eager path):
    versions     the card (nvidia-smi), driver, CuPy, PyTorch, JAX, nvcc, compute-sanitizer
    probe        gpucnn.backend_info(): our kernels compile AND CuPy's own elementwise, reduction,
                 matmul run (CuPy's first compile happens here; later steps read CuPy's disk cache)
    gpu_tests    pytest -m gpu tests/ (every op on CuPy against the NumPy reference, ...)
    train        the seed recipe on the GPU: 20 epochs, batch 10, lr 1.0 on the 5,000-digit sample,
                 accuracy on the official test set when present (else 1,000 held-out digits), wall time
    repeat       the same training twice per GPU path (GPUCNN_GPU_STEP=auto, eager, generic):
                 bitwise-identical parameters
    memcheck, racecheck, synccheck, initcheck
                 compute-sanitizer on one training step of each path plus the ops a seed step does not
                 use, with CuPy's memory pool off, checking only our kernels (cuda/*.cu names)
    bench        benchmarks/bench_gpu.py at batch 64 and 256 against PyTorch eager, CUDA graphs, JAX

Statuses: PASS, FAIL, TIMEOUT, NOT AVAILABLE (with the reason: no GPU, no compute-sanitizer, a
runtime that refuses it, no data), NOT RUN (the budget was spent).
Exit status: 0 every step passed (NOT AVAILABLE allowed where a GPU ran); 1 a step failed, timed
out or did not run; 2 bad arguments; 3 no usable GPU here (every GPU step NOT AVAILABLE).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASS, FAIL, TIMEOUT, NA, NOT_RUN = "PASS", "FAIL", "TIMEOUT", "NOT AVAILABLE", "NOT RUN"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
GPU_PATHS = ("auto", "eager", "generic")   # gpucnn.backend.STEP_MODES, written out: gpucnn is imported late
DONE_MARK = "GPU_CHECK_ONE_STEP_DONE"

# name: (seconds full, seconds quick); a step missing from the quick column does not run with --quick.
BUDGET = {"versions": (20, 15), "probe": (60, 40), "gpu_tests": (70, 35), "train": (45, 20),
          "repeat": (45, 20), "memcheck": (25, 25), "racecheck": (25, None), "synccheck": (25, None),
          "initcheck": (25, None), "bench": (60, 20)}
STEPS = tuple(BUDGET)


# -- results: one line and one record per step, written as each step ends ---------------------------
class Results:
    def __init__(self, folder, meta):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.txt, self.json = self.folder / "results.txt", self.folder / "results.json"
        self.meta, self.steps = meta, []
        self.txt.write_text("")
        self._write_json()

    def add(self, name, status, seconds, detail, data=None):
        row = {"step": name, "status": status, "seconds": round(seconds, 1), "detail": detail}
        if data:
            row["data"] = data
        self.steps.append(row)
        with open(self.txt, "a", encoding="utf-8") as f:
            f.write(format_row(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._write_json()
        say(format_row(row))

    def finish(self, total):
        self.meta["total"] = total
        self._write_json()

    def _write_json(self):
        tmp = self.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "steps": self.steps}, indent=1, default=str) + "\n")
        os.replace(tmp, self.json)


def say(text):
    """Print, but never let a closed stdout (a pipe into head, a dropped log) stop the check."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, OSError):
        pass


def format_row(row):
    detail = " ".join(str(row["detail"]).split())
    return f"{row['step']:<10} {row['status']:<13} {row['seconds']:>6.1f}s  {detail[:300]}"


def table(results, total):
    lines = [f"{'step':<10} {'status':<13} {'time':>7}  detail", *map(format_row, results.steps),
             f"{'total':<10} {total['status']:<13} {total['seconds']:>6.1f}s  {total['detail']}"]
    return "\n".join(lines)


# -- compute-sanitizer: where it is, and what its output means -------------------------------------
def find_sanitizer(env=None, local="/usr/local", site_dirs=None):
    """Path of compute-sanitizer, or None: PATH, $CUDA_HOME/$CUDA_PATH, nvcc's folder,
    /usr/local/cuda*, then the nvidia pip wheels (nvidia-cuda-sanitizer-api-cu12, ...)."""
    env = os.environ if env is None else env
    site_dirs = sys.path if site_dirs is None else site_dirs
    found = shutil.which("compute-sanitizer", path=env.get("PATH", ""))
    if found:
        return found
    roots = [env[k] for k in ("CUDA_HOME", "CUDA_PATH") if env.get(k)]
    nvcc = shutil.which("nvcc", path=env.get("PATH", ""))
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    roots += sorted(str(p) for p in Path(local).glob("cuda*"))
    candidates = []
    for root in roots:
        candidates += [Path(root) / "bin" / "compute-sanitizer",
                       Path(root) / "compute-sanitizer" / "compute-sanitizer"]
    for site in site_dirs:
        nvidia = Path(site or ".") / "nvidia"
        if nvidia.is_dir():
            candidates += sorted(nvidia.glob("*/compute-sanitizer/compute-sanitizer"))
            candidates += sorted(nvidia.glob("*/bin/compute-sanitizer"))
            candidates += sorted(nvidia.glob("*/*/bin/compute-sanitizer"))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def our_kernel_names(folders=None):
    """The extern "C" entry points of our .cu files (cuda/, or gpucnn/_cuda in a wheel)."""
    folders = folders or [REPO / "cuda", REPO / "gpucnn" / "_cuda"]
    names = set()
    pattern = re.compile(r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(\w+)")
    for folder in folders:
        for cu in sorted(Path(folder).glob("*.cu")) if Path(folder).is_dir() else []:
            names.update(pattern.findall(cu.read_text(encoding="utf-8", errors="replace")))
    return sorted(names)


REFUSALS = ("device not supported", "error 999", "cuda_error_unknown", "cudaerrorunknown",
            "unable to find injection library", "is not supported on this platform",
            "failed to initialize the sanitizer", "sanitizer is not supported")
_SUMMARY = re.compile(r"^=+ (ERROR SUMMARY|RACECHECK SUMMARY|COMPUTE-SANITIZER|Target application"
                      r"|LEAK SUMMARY|Saved host backtrace|This warning)")


def sanitizer_records(text):
    """compute-sanitizer output -> its error/hazard records, each a list of lines (the first one the
    headline '========= Invalid __global__ write ...', then the indented '=========     at ...')."""
    records, current = [], None
    for line in text.splitlines():
        if not line.startswith("========="):
            continue
        body = line[len("========="):]
        if body.startswith(" ") and not body.startswith("  ") and body.strip():
            current = None
            if not _SUMMARY.match(line):
                current = [line]
                records.append(current)
        elif current is not None and body.strip():
            current.append(line)
    return records


def classify_sanitizer(text, rc, kernels, finished_mark=DONE_MARK):
    """-> (status, detail). A runtime that refuses the device: NOT AVAILABLE. A record naming one of
    our kernels: FAIL. Records only elsewhere (cuBLAS, CUB, CuPy's kernels, API errors): PASS, counted."""
    low = text.lower()
    for phrase in REFUSALS:
        if phrase in low:
            line = next((ln.strip() for ln in text.splitlines() if phrase in ln.lower()), phrase)
            return NA, f"compute-sanitizer refused this device/runtime: {line[:200]}"
    word = re.compile(r"\b(" + "|".join(map(re.escape, kernels)) + r")\b") if kernels else None
    records = sanitizer_records(text)
    ours = [r for r in records if word and any(word.search(ln) for ln in r)]
    summary = next((ln.strip("= ").strip() for ln in text.splitlines()
                    if "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln), "no summary line")
    if ours:
        first = " | ".join(ln.strip("= ").strip() for ln in ours[0][:3])
        return FAIL, f"{len(ours)} report(s) in our kernels, first: {first}; {summary}"
    if finished_mark not in text:
        tail = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no output")
        return FAIL, f"the step did not finish under the sanitizer (rc {rc}): {tail[:200]}"
    elsewhere = f"; {len(records)} elsewhere (cuBLAS/CUB/CuPy/API, not ours)" if records else ""
    return PASS, f"0 in our kernels{elsewhere}; {summary}"


# -- the driver --------------------------------------------------------------------------------------
class Check:
    def __init__(self, args):
        self.args, self.py = args, sys.executable
        self.out = Path(args.out_dir).resolve()
        self.quick, self.dry, self.rehearse = args.quick, args.dry_run, args.rehearse
        self.gpu_seen, self.gpu_ok, self.no_gpu_reason, self.child = None, False, None, None
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # JAX must not take the card
        self.env["PYTHONUNBUFFERED"] = "1"
        if self.dry:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
            self.env["GPUCNN_GPU_CHECK_DRY"] = "1"

    def steps(self):
        column = 1 if self.quick else 0
        names = [s for s in STEPS if BUDGET[s][column] is not None]
        if self.args.only:                                # the GPU steps need what the probe found
            keep = set(self.args.only)
            if keep - {"versions"} and not self.rehearse:
                keep |= {"versions", "probe"}
            names = [s for s in names if s in keep]
        return [(s, BUDGET[s][column]) for s in names]

    def run(self):
        started = time.monotonic()
        plan = self.steps()
        budget = sum(seconds for _, seconds in plan)
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": _commit(),
                "mode": "dry run" if self.dry else ("rehearsal on the CPU" if self.rehearse else
                                                    ("quick" if self.quick else "full")),
                "budget_s": budget, "steps_planned": [s for s, _ in plan], "python": sys.version.split()[0]}
        results = Results(self.out, meta)
        say(f"gpu_check: {meta['mode']}, {len(plan)} steps, budget {budget} s, results in {self.out}")
        deadline, carry = started + budget, 0.0
        for index, (name, seconds) in enumerate(plan):
            allowed = min(seconds + carry, deadline - time.monotonic())
            t0 = time.monotonic()
            if allowed < 2:
                status, detail, data = NOT_RUN, "the time budget was spent before this step", None
            else:
                status, detail, data = self.step(name, allowed)
            used = time.monotonic() - t0
            carry = max(0.0, allowed - used) if allowed >= 2 else 0.0
            results.add(name, status, used, detail, data)
            if self.args.hold_after is not None and index + 1 == self.args.hold_after:
                time.sleep(120)                           # a test kills the run here
        total = self.total(results.steps, time.monotonic() - started)
        results.finish(total)
        say("\n" + table(results, total))
        (self.out / "table.txt").write_text(table(results, total) + "\n")
        self.write_summary(results, total)
        return total["exit"]

    def write_summary(self, results, total):
        """gpu-check-<date>-<card>.md: what to commit under benchmarks/results/ after a GPU run."""
        versions = next((s.get("data") or {} for s in results.steps if s["step"] == "versions"), {})
        card = (versions.get("gpus") or ["no GPU"])[0].split(",")[0].strip()
        slug = "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())[:40]
        meta = results.meta
        lines = [f"# GPU check, {meta['date']} ({meta['mode']})", "",
                 f"Card: {', '.join(versions.get('gpus') or ['none'])}; commit {meta['commit']}; "
                 f"CUDA driver {versions.get('cuda_driver')}, runtime {versions.get('cuda_runtime')}; "
                 f"CuPy {versions.get('cupy')}; PyTorch {versions.get('torch')} (CUDA "
                 f"{versions.get('torch_cuda')}); JAX {versions.get('jax')}; Python {meta['python']}.", "",
                 "```", table(results, total), "```", ""]
        (self.out / f"gpu-check-{meta['date'][:10]}-{slug}.md").write_text("\n".join(lines))

    def total(self, steps, seconds):
        bad = [s["step"] for s in steps if s["status"] in (FAIL, TIMEOUT, NOT_RUN)]
        if bad:
            return dict(status=FAIL, seconds=seconds, exit=EXIT_FAIL, detail=f"not passed: {', '.join(bad)}")
        if not self.gpu_ok and not self.rehearse:
            return dict(status="NO GPU", seconds=seconds, exit=EXIT_NO_GPU,
                        detail=f"exit {EXIT_NO_GPU}: {self.no_gpu_reason or 'no usable GPU'}")
        na = [s["step"] for s in steps if s["status"] == NA]
        return dict(status=PASS, seconds=seconds, exit=EXIT_OK,
                    detail="every step passed" + (f" (not available: {', '.join(na)})" if na else ""))

    # -- one step ----------------------------------------------------------------------------------
    def step(self, name, seconds):
        gated = name not in ("versions", "probe")
        if gated and not self.rehearse and not self.gpu_ok:
            return NA, f"no usable GPU: {self.no_gpu_reason or 'the probe did not run'}", None
        if name in SANITIZER_TOOLS:
            return self.sanitizer_step(name, seconds)
        if name == "gpu_tests" and not self.rehearse:
            return self.pytest_step(seconds)
        if name == "bench":
            return self.bench_step(seconds)
        return self.worker_step(name, seconds)

    def spawn(self, argv, seconds, log_name):
        """Run argv in its own process group, output to log_name; -> (rc or None on timeout, text)."""
        log = self.out / log_name
        with open(log, "w", encoding="utf-8") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=self.env,
                                    start_new_session=True)
            self.child = proc
            try:
                rc = proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)       # the step and whatever it started
                proc.wait()
                rc = None
            finally:
                self.child = None
        return rc, log.read_text(encoding="utf-8", errors="replace")

    def on_signal(self, signum, frame):
        """Terminated from outside (a lease's limit): take the running step's process group along."""
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGKILL)
        sys.exit(128 + signum)

    def worker_argv(self, name, *extra):
        argv = [self.py, str(Path(__file__).resolve()), "--worker", name, "--out", str(self.out)]
        return argv + (["--quick"] if self.quick else []) + (["--rehearse"] if self.rehearse else []) + list(extra)

    def worker_step(self, name, seconds):
        record = self.out / f"{name}.json"
        record.unlink(missing_ok=True)
        rc, text = self.spawn(self.worker_argv(name), seconds, f"{name}.log")
        if rc is None:
            return TIMEOUT, f"killed after {seconds:.0f} s; last line: {_last_line(text)}", None
        try:
            result = json.loads(record.read_text())
        except (OSError, ValueError):
            return FAIL, f"the step crashed (rc {rc}): {_last_line(text)}", None
        status, detail, data = result["status"], result["detail"], result.get("data")
        if name == "versions":
            self.gpu_seen = bool(data and data.get("gpus"))
            if self.dry:
                self.gpu_seen = False
        if name == "probe":
            self.gpu_ok = status == PASS and not self.dry
            if not self.gpu_ok:
                self.no_gpu_reason = ("dry run (CUDA_VISIBLE_DEVICES='')" if self.dry else detail)
                if self.gpu_seen and not self.rehearse:
                    status = FAIL                         # a card is there and gpucnn cannot use it
        return status, detail, data

    def pytest_step(self, seconds):
        files = gpu_test_files()
        if not files:
            return FAIL, "no test file under tests/ uses the gpu marker or the backend_name fixture", None
        argv = [self.py, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *files]
        rc, text = self.spawn(argv, seconds, "gpu_tests.log")
        if rc is None:
            return TIMEOUT, f"killed after {seconds:.0f} s; last line: {_last_line(text)}", None
        summary = _pytest_summary(text)
        passed = int(re.search(r"(\d+) passed", summary).group(1)) if "passed" in summary else 0
        ok = rc == 0 and passed > 0
        return (PASS if ok else FAIL), f"rc {rc}: {summary}", {"rc": rc, "summary": summary}

    def sanitizer_step(self, tool, seconds):
        if self.rehearse:                                 # the step script, without the sanitizer
            rc, text = self.spawn(self.worker_argv("one_step"), seconds, f"sanitizer_{tool}.log")
            if rc is None:
                return TIMEOUT, f"killed after {seconds:.0f} s", None
            ok = rc == 0 and DONE_MARK in text
            return (PASS if ok else FAIL), f"rehearsal: the one-step script ran on the CPU without " \
                f"compute-sanitizer (rc {rc}); {_last_line(text)}", None
        sanitizer = find_sanitizer(self.env)
        if sanitizer is None:
            return NA, ("compute-sanitizer not found (PATH, $CUDA_HOME, $CUDA_PATH, nvcc's folder, "
                        "/usr/local/cuda*, nvidia pip wheels)"), None
        kernels = our_kernel_names()
        extra = {"memcheck": ["--leak-check", "no"], "racecheck": ["--racecheck-report", "hazard"]}
        base = [sanitizer, "--tool", tool, "--error-exitcode", "9", *extra.get(tool, [])]
        filt = ["--kernel-regex", "kns=" + "|".join(kernels)] if kernels else []
        rc, text = self.spawn(base + filt + self.worker_argv("one_step"), seconds, f"sanitizer_{tool}.log")
        if rc is not None and filt and re.search(r"(unrecognized|unknown|invalid).{0,40}(option|kernel-regex)",
                                                 text, re.I):
            note = "this compute-sanitizer has no --kernel-regex: unfiltered, classified by kernel name"
            rc, text = self.spawn(base + self.worker_argv("one_step"), seconds / 2, f"sanitizer_{tool}.log")
        else:
            note = ""
        if rc is None:
            return TIMEOUT, f"killed after {seconds:.0f} s; last line: {_last_line(text)}", None
        status, detail = classify_sanitizer(text, rc, kernels)
        return status, detail + (f"; {note}" if note else ""), {"sanitizer": sanitizer, "rc": rc}

    def bench_step(self, seconds):
        argv = [self.py, str(REPO / "benchmarks" / "bench_gpu.py"), "--out", str(self.out / "bench"),
                "--batches", *(["64"] if self.quick or self.rehearse else ["64", "256"]), "--rounds", "3", "--steps", "100",
                "--time-budget", str(max(5, int(seconds - 10)))]
        if self.quick or self.rehearse:
            argv.append("--no-epoch")
        if self.rehearse:
            argv.append("--cpu-dry-run")
        rc, text = self.spawn(argv, seconds, "bench.log")
        if rc is None:
            return TIMEOUT, f"killed after {seconds:.0f} s; last line: {_last_line(text)}", None
        lines = [ln for ln in text.splitlines() if ln.startswith("RATIO ")]
        detail = ("rehearsal, CPU numbers: " if self.rehearse else "") + (
            "; ".join(ln[6:] for ln in lines) or _last_line(text))
        if rc == 3:
            return NA, detail, None
        return (PASS if rc == 0 else FAIL), detail, {"rc": rc}


def gpu_test_files():
    """The test files that hold gpu-marked tests (the marker, or the backend fixture whose cupy
    parameter carries it): collecting only them keeps a missing optional module elsewhere in tests/
    from failing the step."""
    files = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "mark.gpu" in text or re.search(r"def test_\w+\([^)]*\bbackend_name\b", text):
            files.append(str(path.relative_to(REPO)))
    return files


def _last_line(text):
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no output")[:240]


def _pytest_summary(text):
    for line in reversed(text.splitlines()):
        if re.search(r"\d+ (passed|failed|skipped|error|deselected)|no tests ran", line):
            return line.strip("= ").strip()
    return _last_line(text)


def _commit():
    """The checkout's commit; $GPU_CHECK_COMMIT where the copy has no .git (a lent machine's copy)."""
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- the steps' own code: each runs as `gpu_check.py --worker NAME` in a fresh process ------------------
def run_worker(args):
    """Run one step, write <out>/<name>.json = {status, detail, data}; exit 0 unless it crashed."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    worker = WORKERS[args.worker]
    if args.worker == "one_step":                         # under compute-sanitizer: no record file
        return worker(args)
    try:
        status, detail, data = worker(args)
    except Unavailable as exc:
        status, detail, data = NA, str(exc), None
    record = out / f"{args.worker}.json"
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "detail": detail, "data": data}, indent=1, default=str))
    os.replace(tmp, record)
    return 0


class Unavailable(Exception):
    """The step cannot run here (no data, no device): NOT AVAILABLE with this reason."""


def _backend(args):
    """cupy; a rehearsal runs the same code on the emulated backend: the same host code and .cu
    kernels (fused step included) on the CPU, launched eagerly."""
    return "emulated" if args.rehearse else "cupy"


def _sync():
    try:
        import cupy
        cupy.cuda.get_current_stream().synchronize()
    except Exception:
        pass


def _run(argv, timeout=15):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"not run: {type(exc).__name__}: {exc}"


def parse_gpus(query):
    """nvidia-smi --query-gpu=...,--format=csv,noheader -> one 'name, driver, memory[, cc]' per GPU."""
    return [ln.strip() for ln in query.splitlines()
            if ln.count(",") >= 2 and not any(w in ln.lower() for w in ("failed", "not a valid", "error"))]


def worker_versions(args):
    """The card and the software; PASS when nvidia-smi lists a GPU."""
    data = {"python": sys.version.split()[0], "executable": sys.executable}
    smi = shutil.which("nvidia-smi")
    gpus = []
    if smi and not os.environ.get("GPUCNN_GPU_CHECK_DRY"):
        for fields in ("name,driver_version,memory.total,compute_cap", "name,driver_version,memory.total"):
            query = _run([smi, f"--query-gpu={fields}", "--format=csv,noheader"])   # old drivers: no compute_cap
            gpus = parse_gpus(query)
            if gpus:
                break
        (Path(args.out_dir) / "nvidia-smi.txt").write_text(_run([smi]) + "\n")
    data["gpus"] = gpus
    import importlib.metadata as metadata
    for module, dists in (("numpy", ["numpy"]), ("cupy", ["cupy-cuda13x", "cupy-cuda12x", "cupy"]),
                          ("torch", ["torch"]), ("jax", ["jax"])):
        if gpus:                                          # import: the version a run will use
            try:
                data[module] = getattr(__import__(module), "__version__", "?")
            except Exception as exc:
                data[module] = f"not importable: {type(exc).__name__}: {str(exc)[:120]}"
            continue
        found = []                                        # no GPU: metadata only, no slow imports
        for dist in dists:
            try:
                found.append(f"{dist} {metadata.version(dist)}" if dist != module else metadata.version(dist))
            except metadata.PackageNotFoundError:
                pass
        data[module] = ", ".join(found) or "not installed"
    if gpus:
        try:
            import cupy
            data["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            data["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        except Exception as exc:
            data["cuda_driver"] = f"unknown: {type(exc).__name__}"
        try:
            import torch
            data["torch_cuda"] = torch.version.cuda
            data["torch_sees_gpu"] = bool(torch.cuda.is_available())
            data["cudnn"] = torch.backends.cudnn.version() if data["torch_sees_gpu"] else None
        except Exception:
            pass
    nvcc = shutil.which("nvcc")
    data["nvcc"] = _run([nvcc, "--version"]).splitlines()[-1] if nvcc else "not found"
    data["compute_sanitizer"] = find_sanitizer() or "not found"
    card = "; ".join(gpus) or "none"
    detail = (f"card {card}; cupy {data['cupy']}; torch {data['torch']}; jax {data['jax']}; "
              f"CUDA driver {data.get('cuda_driver')}; nvcc {data['nvcc']}")
    if not gpus:
        reason = "dry run" if os.environ.get("GPUCNN_GPU_CHECK_DRY") else (
            "nvidia-smi not found" if not smi else "nvidia-smi lists no GPU")
        return NA, f"no GPU ({reason}); {detail}", data
    return PASS, detail, data


def worker_probe(args):
    import gpucnn
    info = gpucnn.backend_info()
    (Path(args.out_dir) / "backend_info.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    if args.rehearse:
        return PASS, f"rehearsal: backend_info() ran; auto = {info['auto']}; {info['cupy_reason']}", info
    if info.get("cupy_usable"):
        return PASS, f"{info['cupy_reason']}; {info.get('cupy_own_kernels', '')}; gpu_step: " \
                     f"{info.get('gpu_step')}; compile {info.get('compile_seconds')} s", info
    return NA, info.get("cupy_reason") or "cupy backend not usable", info


def worker_gpu_tests(args):
    """Rehearsal only (on a GPU the driver runs pytest itself): the gpu selection collects."""
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider",
            "tests/test_ops_backends.py"]
    text = _run(argv, timeout=120)
    summary = _pytest_summary(text)
    ok = re.search(r"(\d+)(/\d+)? tests? collected", summary) is not None
    return (PASS if ok else FAIL), f"rehearsal: pytest -m gpu collects: {summary}", None


def _digits():
    import gpucnn
    try:
        x, y = gpucnn.data.load_sample()[:2]
    except Exception as exc:                              # the sample is not shipped / unreadable
        raise Unavailable(f"the 5,000-digit sample is not available: {type(exc).__name__}: {exc}")
    return x, y


def _set_path(path):
    os.environ["GPUCNN_GPU_STEP"] = path


def worker_train(args):
    """The seed recipe (20 epochs, batch 10, lr 1.0) on the default GPU path; accuracy, wall time."""
    import gpucnn
    epochs, held = 20, None
    try:
        x, y, xh, yh, desc = gpucnn.data.load_training_data(prefer_full=False)
    except Exception as exc:
        raise Unavailable(f"gpucnn.data.load_training_data failed: {type(exc).__name__}: {exc}")
    official = len(yh) == 10000 and "not the official" not in desc
    if args.rehearse:                                     # the code path, not the result
        epochs, x, y, xh, yh = 1, x[::25], y[::25], xh[:200], yh[:200]
    _set_path("auto")
    net = gpucnn.seed_network(backend=_backend(args), seed=0)
    started = time.perf_counter()
    hist = net.fit(x, y, epochs=epochs, batch_size=10, lr=1.0, verbose=False)
    _sync()
    seconds = time.perf_counter() - started
    held = float(net.evaluate(xh, yh))
    bar = 0.94 if official else 0.90
    data = {"epochs": epochs, "images": len(y), "held_out": len(yh), "data": desc, "seconds": seconds,
            "images_per_s": epochs * len(y) / seconds, "accuracy": held, "bar": bar,
            "history": _history(hist),
            "summary": _summary(net), "execution": net.execution_path()}
    detail = (f"{net.execution_path()}: {epochs} epochs x {len(y):,} digits in {seconds:.2f} s ({data['images_per_s']:,.0f} img/s); "
              f"accuracy {held:.4f} on {len(yh):,} {'official test' if official else 'held-out'} digits "
              f"(bar {bar})")
    if args.rehearse:
        return PASS, "rehearsal: " + detail, data
    return (PASS if held >= bar else FAIL), detail, data


def _history(hist):
    try:
        return {k: [float(v) for v in vals if v is not None] for k, vals in dict(hist).items()}
    except Exception:
        return repr(hist)[:2000]


def _summary(net):
    try:
        return str(net.summary())
    except Exception as exc:
        return f"summary unavailable: {type(exc).__name__}"


def worker_repeat(args):
    """The same training twice per GPU path: the parameters must be bitwise identical."""
    import numpy as np
    import gpucnn
    x, y = _digits()
    n = 100 if args.rehearse else len(y)
    x, y = x[::len(y) // n], y[::len(y) // n]           # every class (the sample is sorted by label)
    paths = ("auto", "generic") if args.quick else GPU_PATHS
    rows, ok, data = [], True, {}
    for path in paths:
        _set_path(path)
        runs = []
        for _ in range(2):
            net = gpucnn.seed_network(backend=_backend(args), seed=0)
            net.fit(x, y, epochs=1, batch_size=10, lr=1.0, verbose=False)
            runs.append(net.get_params())
        same = all(np.asarray(runs[0][k]).tobytes() == np.asarray(runs[1][k]).tobytes() for k in runs[0])
        diff = max(float(np.abs(np.asarray(runs[0][k], np.float64) - runs[1][k]).max()) for k in runs[0])
        data[path] = {"bitwise_identical": same, "max_abs_diff": diff, "execution": net.execution_path()}
        data[path]["params"] = runs[0]
        ok &= same
        rows.append(f"{path} ({net.execution_path()}): {'identical' if same else f'DIFFER (max |diff| {diff:.2e})'}")
    base = data[paths[0]]["params"]
    for path in paths[1:]:                                # the paths agree to float32 rounding
        other = data[path]["params"]
        data[path]["max_rel_diff_vs_" + paths[0]] = max(
            float(np.abs(np.asarray(other[k], np.float64) - base[k]).max() / max(np.abs(base[k]).max(), 1e-30))
            for k in base)
    for path in paths:
        del data[path]["params"]
    note = ""
    apart = [data[p][k] for p in paths[1:] for k in data[p] if k.startswith("max_rel_diff_vs_")]
    note += f"; paths differ by <= {max(apart):.1e} (relative; float32 rounding, not gated)" if apart else ""
    detail = f"1 epoch x {n:,} digits twice per path: " + "; ".join(rows) + note
    return (PASS if ok else FAIL), ("rehearsal: " if args.rehearse else "") + detail, data


def worker_one_step(args):
    """One training step per GPU path, plus every op a seed step does not use; run under the sanitizer.

    CuPy's memory pool is off: inside a pooled chunk memcheck cannot see an overrun, and initcheck
    takes recycled memory for initialised memory.
    """
    import numpy as np
    import gpucnn
    if not args.rehearse:
        import cupy
        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)
    rng = np.random.default_rng(0)
    try:
        x, y = _digits()
        x, y = x[::50][:32], y[::50][:32]                 # real digits: pooling ties
    except Unavailable:
        x, y = rng.random((32, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 32)
    for path in (("auto", "generic") if args.quick else GPU_PATHS):
        _set_path(path)
        net = gpucnn.seed_network(backend=_backend(args), seed=0)
        net.fit(x, y, epochs=1, batch_size=len(y), lr=1.0, verbose=False)
        _sync()
        print(f"one step, GPUCNN_GPU_STEP={path}: done; {net.execution_path()}", flush=True)
    backend = gpucnn.get_backend(_backend(args))
    ops, xp = backend.ops, backend.xp
    xd = xp.asarray(rng.standard_normal((3, 2, 13, 11)), dtype=xp.float32)
    W = xp.asarray(rng.standard_normal((4, 2, 3, 2)), dtype=xp.float32)
    b = xp.asarray(rng.standard_normal(4), dtype=xp.float32)
    if hasattr(ops, "conv2d_forward_activation"):
        z = ops.conv2d_forward_activation(xd, W, b, 2, (1, 0), "sigmoid")
    else:
        z = ops.conv2d_forward(xd, W, b, 2, (1, 0))
    delta = xp.ones_like(z)
    ops.conv2d_backward_input(delta, W, (13, 11), 2, (1, 0))
    ops.conv2d_backward_weight(xd, delta, (3, 2), 2, (1, 0))
    ops.conv2d_backward_bias(delta)
    a, argmax = ops.maxpool2d_forward(xd, 3, 2)
    ops.maxpool2d_backward(a, argmax, (13, 11), 3, 2)
    _sync()
    print(DONE_MARK, flush=True)
    return 0


WORKERS = {"versions": worker_versions, "probe": worker_probe, "gpu_tests": worker_gpu_tests,
           "train": worker_train, "repeat": worker_repeat, "one_step": worker_one_step}


# -- entry point ---------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0],
                                epilog="exit status: 0 all passed, 1 a step failed, 2 usage, 3 no usable GPU")
    p.add_argument("results_dir", nargs="?", default=None, help="where results go (after --out and $OUT)")
    p.add_argument("--out", default=None, help="results folder (default: $OUT, else RESULTS_DIR, else "
                                               "./gpu_check_results)")
    p.add_argument("--quick", action="store_true", help="under 3 minutes: fewer sanitizers, bench b64 only")
    p.add_argument("--dry-run", action="store_true", help="act as if no GPU were here (CI)")
    p.add_argument("--rehearse", action="store_true",
                   help="run every step's own code on the CPU (emulated backend, tiny sizes): not a GPU result")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    p.add_argument("--hold-after", type=int, default=None, help=argparse.SUPPRESS)   # tests: kill here
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)                 # one step, in-process
    args = p.parse_args(argv)
    args.out_dir = args.out or os.environ.get("OUT") or args.results_dir or "gpu_check_results"
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        return run_worker(args)
    check = Check(args)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, check.on_signal)
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
