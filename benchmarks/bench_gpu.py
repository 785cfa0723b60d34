"""GPU benchmark: gpucnn's three GPU paths against PyTorch eager, PyTorch CUDA graphs and JAX jit.

    python benchmarks/bench_gpu.py                       # seed net, batches 16 64 256, 60,000-image epoch
    python benchmarks/bench_gpu.py --batches 64 --no-epoch --rounds 3
    python benchmarks/bench_gpu.py --cpu-dry-run --quick  # the harness's logic on the CPU (no GPU numbers)
    gpucnn bench --gpu [...]                             # the same

Competitors, all in one run, on the same card, interleaved round by round (rotating order):
    gpucnn auto      GPUCNN_GPU_STEP=auto: the fused step, replayed as a CUDA graph where CuPy can capture
    gpucnn eager     GPUCNN_GPU_STEP=eager: the fused kernels, launched one by one
    gpucnn generic   GPUCNN_GPU_STEP=generic: the layer-by-layer CuPy path
    torch eager      the same network in PyTorch (cuDNN), no per-step sync
    torch graph      the whole step (forward, loss, backward, SGD) captured once with torch.cuda.graph,
                     static input buffers; each step copies the next batch into them and replays
    jax jit          the same step as one jax.jit function (when JAX imports)
PyTorch runs twice: "tf32 off" (cuDNN and matmul TF32 disabled) and "tf32 default" (PyTorch's own
defaults as found: cuDNN convolutions use TF32). JAX runs with its default matmul precision.

gpucnn is timed through the public API only: Network.fit(x, y, epochs=1, batch_size=B, ...) on an
epoch that is already on the device, after a warm-up fit; per-step time = epoch time / steps (the
epoch's shuffle and per-epoch bookkeeping included). Peers run the same number of steps over the same
device-resident batches. Times: CUDA events on the stream the competitor launches on (JAX: the wall
clock around block_until_ready). Data: random, non-zero images (uniform [0, 1)) and random labels.

Validate, then time: one SGD step of every competitor from the same initial parameters, against the
float64 reference step (PyTorch on the CPU in float64), with TF32 off; max |step - ref| / max |ref| per
tensor <= 1e-4, else the row is reported and not timed. The "tf32 default" rows are validated with the
same code as "tf32 off"; their own error against float64 is reported beside them.

Without a usable GPU: one line saying why, exit status 3, nothing written.
Exit status: 0 measured; 1 a gpucnn path failed its validation or could not be timed; 3 no GPU.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # JAX must not take the card
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np                                # noqa: E402

import harness                                    # noqa: E402

EXIT_OK, EXIT_FAIL, EXIT_NO_GPU = 0, 1, 3
VALIDATION_TOL = 1e-4
VALIDATION_LR = 100.0     # one step's update then dwarfs the float32 rounding of the parameters
LR = 1.0                  # the seed recipe's learning rate, for timing
TF32 = {"tf32 off": False, "tf32 default": None}
EPOCH_IMAGES = 60000


# -- the device, or why there is none ------------------------------------------------------------------
def gpu_unavailable_reason():
    """None when gpucnn's cupy backend and a CUDA build of PyTorch can run here; else the reason."""
    try:
        import gpucnn
        gpucnn.get_backend("cupy")
    except Exception as exc:
        return f"gpucnn's cupy backend is not usable: {exc}"
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device (a CPU build of torch?)"
    return None


class Clock:
    """CUDA events on the competitor's stream (GPU), or perf_counter (CPU dry run, JAX)."""

    def __init__(self, dry_run):
        self.dry_run = dry_run
        if not dry_run:
            import cupy
            import torch
            self.cupy, self.torch = cupy, torch

    def sync(self):
        if not self.dry_run:
            self.cupy.cuda.Device().synchronize()

    def time_ms(self, run, kind):
        """Milliseconds of run(), after a full sync."""
        self.sync()
        if self.dry_run or kind == "wall":
            t = time.perf_counter()
            run()
            self.sync()
            return (time.perf_counter() - t) * 1e3
        if kind == "torch":
            ev = [self.torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
            run()
            ev[1].record()
            ev[1].synchronize()
            return ev[0].elapsed_time(ev[1])
        # gpucnn may launch on its own stream (a graph replays on a capture stream): the end event
        # goes after a device-wide sync, so it follows all of the epoch's work on every stream.
        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record()
        run()
        self.cupy.cuda.Device().synchronize()
        end.record()
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end)


# -- the network in three frameworks ---------------------------------------------------------------------
def gpucnn_net(backend, seed=0):
    import gpucnn
    return gpucnn.seed_network(backend=backend, seed=seed)


def initial_params(seed=0):
    """[W1 (3,1,5,5), b1 (3,), W2 (10,432), b2 (10,)] as gpucnn draws them: every competitor starts here."""
    return [np.asarray(v, np.float32) for v in gpucnn_net("numpy", seed).get_params().values()]


def torch_step_fn(torch, params, lr):
    """The seed net's SGD step in PyTorch on tensors `params` (leaf tensors with requires_grad)."""
    F = torch.nn.functional
    W1, b1, W2, b2 = params

    def step(xb, y1):
        a = torch.sigmoid(F.linear(torch.flatten(F.max_pool2d(torch.sigmoid(F.conv2d(xb, W1, b1)), 2), 1),
                                   W2, b2))
        cost = 0.5 * ((a - y1) ** 2).sum() / xb.shape[0]
        grads = torch.autograd.grad(cost, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    return step


def reference_step(params, xb, y1, lr):
    """The float64 reference: the new parameters after one step, PyTorch on the CPU."""
    import torch
    ps = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    torch_step_fn(torch, ps, lr)(torch.tensor(xb, dtype=torch.float64), torch.tensor(y1, dtype=torch.float64))
    return [p.detach().numpy() for p in ps]


def step_error(new, ref, params):
    """max over tensors of max |update - ref update| / max |ref update|."""
    return max(harness.gradient_error(np.asarray(n, np.float64) - p, r - p) for n, r, p in zip(new, ref, params))


def set_tf32(torch, on):
    """on None: PyTorch's defaults as found at start; False: TF32 off for cuDNN and matmul."""
    default = set_tf32.default = getattr(set_tf32, "default", None) or (
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    cudnn, matmul = default if on is None else (on, on)
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    except Exception:                                  # a torch that only takes the fp32_precision API
        torch.backends.cudnn.conv.fp32_precision = "tf32" if cudnn else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"


# -- competitors: each is (validate() -> error, prepare(batches) -> run_block, clock kind) -----------------
class GpucnnMode:
    """gpucnn through Network.fit with GPUCNN_GPU_STEP=mode; one block = one epoch of `steps` batches."""

    def __init__(self, mode, backend, xp):
        self.mode, self.backend, self.xp, self.kind, self.path, self.note = mode, backend, xp, "cupy", None, ""

    def _fit(self, net, x, y, batch, lr, shuffle=True):
        saved = os.environ.get("GPUCNN_GPU_STEP")
        os.environ["GPUCNN_GPU_STEP"] = self.mode
        try:
            net.fit(x, y, epochs=1, batch_size=batch, lr=lr, shuffle=shuffle, verbose=False)
            self.path = "; ".join(filter(None, [net.execution_path(), self.note]))
        finally:                                   # the process's setting is the caller's again
            if saved is None:
                os.environ.pop("GPUCNN_GPU_STEP", None)
            else:
                os.environ["GPUCNN_GPU_STEP"] = saved

    def validate(self, params, xb, labels, ref):
        net = gpucnn_net(self.backend)
        net.set_params(dict(zip(net.get_params(), params)))
        self._fit(net, xb, labels, len(labels), VALIDATION_LR, shuffle=False)
        return step_error(list(net.get_params().values()), ref, params)

    def prepare(self, x, labels, batch):
        net = gpucnn_net(self.backend)
        xd, yd = self.xp.asarray(x), self.xp.asarray(labels)     # the epoch, on the device once
        try:
            self._fit(net, xd[:batch * 4], yd[:batch * 4], batch, LR)
        except Exception as exc:                               # fit refuses device arrays: host ones
            self.note = f"host arrays (fit refused device arrays: {type(exc).__name__}), uploads included"
            xd, yd = x, labels
            self._fit(net, xd[:batch * 4], yd[:batch * 4], batch, LR)
        self._fit(net, xd, yd, batch, LR)                      # warm-up: a whole epoch (graph captured)
        return lambda: self._fit(net, xd, yd, batch, LR)


class TorchMode:
    def __init__(self, torch, device, graph, tf32):
        self.torch, self.device, self.graph, self.tf32, self.kind = torch, device, graph, tf32, "torch"

    def _params(self, params):
        return [self.torch.tensor(p, device=self.device, requires_grad=True) for p in params]

    def validate(self, params, xb, labels, ref):
        torch = self.torch
        set_tf32(torch, self.tf32)
        ps = self._params(params)
        y1 = np.eye(10, dtype=np.float32)[labels]
        torch_step_fn(torch, ps, VALIDATION_LR)(torch.tensor(xb, device=self.device),
                                                torch.tensor(y1, device=self.device))
        return step_error([p.detach().cpu().numpy() for p in ps], ref, params)

    def prepare(self, x, labels, batch):
        torch = self.torch
        set_tf32(torch, self.tf32)
        ps = self._params(initial_params())
        step = torch_step_fn(torch, ps, LR)
        xs = torch.tensor(x, device=self.device).split(batch)
        ys = torch.tensor(np.eye(10, dtype=np.float32)[labels], device=self.device).split(batch)
        if not self.graph:
            def block():
                set_tf32(torch, self.tf32)
                for xb, yb in zip(xs, ys):
                    step(xb, yb)
            return block
        x_static, y_static = xs[0].clone(), ys[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                          # warm-up on a side stream, as documented
            for _ in range(3):
                step(x_static, y_static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(x_static, y_static)

        def replay():
            for xb, yb in zip(xs, ys):
                x_static.copy_(xb)
                y_static.copy_(yb)
                graph.replay()
        return replay


class JaxMode:
    kind = "wall"

    def __init__(self, jax):
        self.jax = jax
        import jax.numpy as jnp
        self.jnp = jnp
        lax = jax.lax

        def forward(ps, xb):
            W1, b1, W2, b2 = ps
            z = lax.conv_general_dilated(xb, W1, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
            a = jax.nn.sigmoid(z + b1[None, :, None, None])
            a = lax.reduce_window(a, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            return jax.nn.sigmoid(a.reshape(a.shape[0], -1) @ W2.T + b2)

        def cost(ps, xb, y1):
            return 0.5 * ((forward(ps, xb) - y1) ** 2).sum() / xb.shape[0]

        def make_step(lr):
            grad = jax.grad(cost)
            return jax.jit(lambda ps, xb, y1: [p - lr * g for p, g in zip(ps, grad(ps, xb, y1))])
        self.make_step = make_step

    def validate(self, params, xb, labels, ref):
        jnp = self.jnp
        with self.jax.default_matmul_precision("highest"):
            step = self.make_step(VALIDATION_LR)
            new = step([jnp.asarray(p) for p in params], jnp.asarray(xb),
                       jnp.asarray(np.eye(10, dtype=np.float32)[labels]))
        return step_error([np.asarray(p) for p in new], ref, params)

    def prepare(self, x, labels, batch):
        jnp = self.jnp
        step = self.make_step(LR)
        y1 = np.eye(10, dtype=np.float32)[labels]
        batches = [(self.jax.device_put(x[i:i + batch]), self.jax.device_put(y1[i:i + batch]))
                   for i in range(0, len(x), batch)]
        state = {"ps": [jnp.asarray(p) for p in initial_params()]}

        def block():
            ps = state["ps"]
            for xb, yb in batches:
                ps = step(ps, xb, yb)
            self.jax.block_until_ready(ps)
            state["ps"] = ps
        block()                                                # compile
        return block


def competitors(args):
    """{name: competitor or the reason it cannot run here}."""
    out = {}
    backend = "numpy" if args.cpu_dry_run else "cupy"
    xp = np
    if not args.cpu_dry_run:
        import cupy
        xp = cupy
    from gpucnn.backend import STEP_MODES          # (gpucnn is imported only where it is needed)
    for mode in STEP_MODES:
        out[f"gpucnn {mode}"] = GpucnnMode(mode, backend, xp)
    try:
        import torch
        device = "cpu" if args.cpu_dry_run else "cuda"
        for label, tf32 in TF32.items():
            out[f"torch eager {label}"] = TorchMode(torch, device, False, tf32)
            out[f"torch graph {label}"] = (TorchMode(torch, device, True, tf32) if not args.cpu_dry_run
                                           else "n/a: CUDA graphs need a GPU (CPU dry run)")
    except ImportError as exc:
        out["torch"] = f"n/a: PyTorch is not importable ({exc})"
    if args.no_jax:
        out["jax jit"] = "n/a: --no-jax"
    else:
        try:
            import jax
            if not args.cpu_dry_run and not any(d.platform == "gpu" for d in jax.devices()):
                out["jax jit"] = f"n/a: JAX sees no GPU ({jax.devices()})"
            else:
                out["jax jit"] = JaxMode(jax)
        except Exception as exc:
            out["jax jit"] = f"n/a: JAX is not importable ({type(exc).__name__}: {exc})"
    return out


# -- the run -----------------------------------------------------------------------------------------------
def validation_data(n=64):
    """Real digits when the sample is there (pooling ties), else random non-zero images."""
    import gpucnn
    try:
        x, y = gpucnn.data.load_sample()[:2]
        idx = np.random.default_rng(1).permutation(len(y))[:n]
        return np.ascontiguousarray(x[idx]), np.asarray(y[idx]), "MNIST sample digits"
    except Exception as exc:
        rng = np.random.default_rng(1)
        return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n), f"random ({exc})"


def validate_all(comps):
    params = initial_params()
    xb, labels, source = validation_data()
    ref = reference_step(params, xb, np.eye(10, dtype=np.float32)[labels], VALIDATION_LR)
    report = {"data": source, "lr": VALIDATION_LR, "tolerance": VALIDATION_TOL, "errors": {}}
    for name, comp in comps.items():
        if isinstance(comp, str):
            continue
        try:
            err = comp.validate(params, xb, labels, ref)
            report["errors"][name] = err
        except Exception as exc:
            report["errors"][name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    tf32_off = {k.replace("tf32 default", "tf32 off"): v for k, v in report["errors"].items()}
    for name, err in report["errors"].items():
        gate = tf32_off.get(name.replace("tf32 default", "tf32 off"), err)   # tf32 rows: gated as tf32 off
        if not isinstance(gate, float) or not gate <= VALIDATION_TOL:
            comps[name] = f"not timed: validation {'error' if isinstance(gate, str) else 'failed'} ({gate})"
        print(f"  validate {name:24s} {err if isinstance(err, str) else f'{err:.1e}'}", flush=True)
    return report


def time_batch(comps, batch, args, clock, deadline):
    rng = np.random.default_rng(batch)
    steps = args.steps
    x = rng.random((steps * batch, 1, 28, 28), dtype=np.float32) + np.float32(1e-3)   # non-zero
    labels = rng.integers(0, 10, steps * batch)
    runs, rows = {}, {}
    for name, comp in comps.items():
        if isinstance(comp, str):
            rows[name] = {"unavailable": comp}
            continue
        if time.monotonic() > deadline:
            rows[name] = {"unavailable": "not timed: the time budget was spent"}
            continue
        try:
            runs[name] = (comp.prepare(x, labels, batch), comp.kind)
        except Exception as exc:
            rows[name] = {"unavailable": f"could not run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):
        if time.monotonic() > deadline and r > 0:
            break
        for name in names[r % len(names):] + names[:r % len(names)] if names else []:
            time.sleep(args.gap_s)
            run, kind = runs[name]
            try:
                times[name].append(clock.time_ms(run, kind) / steps * 1e3)          # us per step
            except Exception as exc:
                rows[name] = {"unavailable": f"failed while timing: {type(exc).__name__}: {exc}"}
                names.remove(name)
                break
    for name in runs:
        if name in rows or not times[name]:
            continue
        us = times[name]
        rows[name] = {"us_per_step": statistics.median(us), "rounds_us": us,
                      "images_per_s": batch * 1e6 / statistics.median(us)}
        path = getattr(comps[name], "path", None)
        if path:
            rows[name]["execution"] = path
    rows = {name: rows[name] for name in comps if name in rows}      # the competitors' order
    return {"batch": batch, "steps": steps, "rows": rows, "ratios": ratios(rows, times)}


def ratios(rows, times):
    """gpucnn mode / peer: the per-round ratio of step times, peer_us / ours_us (> 1: gpucnn faster)."""
    out = {}
    ours = [n for n in rows if n.startswith("gpucnn") and "us_per_step" in rows[n]]
    peers = [n for n in rows if not n.startswith("gpucnn") and "us_per_step" in rows[n]]
    for o in ours:
        for p in peers:
            per_round = [b / a for a, b in zip(times[o], times[p])]
            out[f"{o} / {p}"] = {"median": statistics.median(per_round), "min": min(per_round),
                                 "max": max(per_round)}
    return out


def epoch(comps, clock, args):
    """A 60,000-image epoch at batch 64 through Network.fit, per gpucnn mode: median of 3 (after warm-up)."""
    rng = np.random.default_rng(60000)
    x = rng.random((EPOCH_IMAGES, 1, 28, 28), dtype=np.float32) + np.float32(1e-3)
    labels = rng.integers(0, 10, EPOCH_IMAGES)
    out = {}
    for name, comp in comps.items():
        if not name.startswith("gpucnn") or isinstance(comp, str):
            continue
        try:
            run = comp.prepare(x, labels, 64)
            ms = [clock.time_ms(run, comp.kind) for _ in range(3)]
            out[name] = {"median_ms": statistics.median(ms), "all_ms": ms, "execution": comp.path}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def run(args):
    clock = Clock(args.cpu_dry_run)
    comps = competitors(args)
    machine = harness.machine_info(device_info(args.cpu_dry_run))
    started = time.monotonic()
    deadline = started + (args.time_budget or 1e9)
    print(f"bench_gpu on {machine.get('card')}: validating one step against float64 (TF32 off)", flush=True)
    report = validate_all(comps)
    results = []
    for batch in args.batches:
        res = time_batch(comps, batch, args, clock, deadline)
        results.append(res)
        print_batch(res)
    ep = None
    if not args.no_epoch and time.monotonic() < deadline:
        ep = epoch(comps, clock, args)
        for name, e in ep.items():
            print(f"60,000-image epoch, batch 64, {name}: " +
                  (f"{e['median_ms']:.1f} ms" if "median_ms" in e else e["error"]), flush=True)
    payload = {"machine": machine, "validation": report, "results": results, "epoch_b64": ep,
               "settings": {"rounds": args.rounds, "steps": args.steps, "batches": args.batches,
                            "cpu_dry_run": args.cpu_dry_run, "gap_s": args.gap_s}}
    if args.out or not (args.quick or args.cpu_dry_run):
        print("wrote", *write_results(payload, args.out))
    else:
        print("quick / dry run: no results written (pass --out DIR to keep them)")
    bad = [n for n, e in report["errors"].items() if n.startswith("gpucnn") and
           not (isinstance(e, float) and e <= VALIDATION_TOL)]
    bad += [f"{n} b{r['batch']}" for r in results for n, row in r["rows"].items()
            if n.startswith("gpucnn") and "us_per_step" not in row]
    if bad:
        print(f"gpucnn not validated or not timed: {', '.join(bad)}", flush=True)
    return EXIT_FAIL if bad else EXIT_OK


def write_results(payload, out_dir=None):
    """<out_dir or benchmarks/results>/gpu-<date>-<card>.json and .md (the card, not the host, names them)."""
    card = payload["machine"].get("card", "unknown")
    slug = "cpu-dry-run" if card.startswith("none") else "-".join(
        "".join(c if c.isalnum() else " " for c in card.lower()).split())[:40]
    return harness.write_results("gpu", payload, markdown(payload), out_dir, name=slug)


def device_info(dry_run):
    info = {}
    try:
        import torch
        info["torch"] = torch.__version__
        if not dry_run:
            set_tf32(torch, None)
            info.update(torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                        torch_tf32_defaults={"cudnn": torch.backends.cudnn.allow_tf32,
                                             "matmul": torch.backends.cuda.matmul.allow_tf32})
    except ImportError:
        pass
    try:
        import jax
        info["jax"] = jax.__version__
    except Exception:
        pass
    if dry_run:
        info["card"] = "none: CPU dry run (numbers are not GPU numbers)"
        return info
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    info.update(card=name.decode() if isinstance(name, bytes) else name, cupy=cupy.__version__,
                cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                cuda_driver=cupy.cuda.runtime.driverGetVersion())
    return info


def print_batch(res):
    b = res["batch"]
    for name, row in res["rows"].items():
        if "us_per_step" in row:
            print(f"b{b:<4} {name:24s} {row['us_per_step']:9.1f} us/step  {harness.fmt_rate(row['images_per_s'])} img/s",
                  flush=True)
        else:
            print(f"b{b:<4} {name:24s} {row['unavailable']}", flush=True)
    key = [k for k in res["ratios"] if k.startswith("gpucnn auto /") and ("graph tf32 off" in k or "eager tf32 off" in k)]
    if key:
        print(f"RATIO b{b}: " + ", ".join(f"{k.replace('gpucnn ', '')} {harness.fmt_ratio(res['ratios'][k])}"
                                        for k in key), flush=True)
    else:
        print(f"RATIO b{b}: no gpucnn auto / PyTorch ratio (see rows above)", flush=True)


def markdown(payload):
    m = payload["machine"]
    lines = [f"# GPU benchmark, {m['date']}", "",
             f"Card: {m.get('card')}; CUDA runtime {m.get('cuda_runtime')}, driver {m.get('cuda_driver')}; "
             f"CuPy {m.get('cupy')}; PyTorch {m.get('torch')} (CUDA {m.get('torch_cuda')}, cuDNN {m.get('cudnn')}, "
             f"TF32 defaults {m.get('torch_tf32_defaults')}); JAX {m.get('jax', 'absent')}; host {m['cpu']}.",
             f"Seed network, SGD lr {LR}; µs per training step, median of {payload['settings']['rounds']} "
             "interleaved rounds (CUDA events; JAX: wall clock); random non-zero data on the device. gpucnn "
             "through Network.fit (epoch time / steps). Ratio = peer time / gpucnn time per round (> 1: gpucnn "
             "faster), median (min–max).", "",
             "Validation, one step vs float64 (TF32 off), max relative error: " +
             ", ".join(f"{k} {v if isinstance(v, str) else f'{v:.1e}'}"
                       for k, v in payload["validation"]["errors"].items()), ""]
    for res in payload["results"]:
        lines += [f"## batch {res['batch']} ({res['steps']} steps per block)", "",
                  "| competitor | µs / step | images / s | note |", "|---|---|---|---|"]
        for name, row in res["rows"].items():
            if "us_per_step" in row:
                lines.append(f"| {name} | {row['us_per_step']:.1f} | {harness.fmt_rate(row['images_per_s'])} "
                             f"| {row.get('execution', '')} |")
            else:
                lines.append(f"| {name} | – | – | {row['unavailable']} |")
        lines += ["", "| ratio (peer time / gpucnn time) | median (min–max) |", "|---|---|"]
        lines += [f"| {k} | {harness.fmt_ratio(v)} |" for k, v in res["ratios"].items()]
        lines.append("")
    for name, e in (payload.get("epoch_b64") or {}).items():
        lines.append(f"- 60,000-image epoch at batch 64, {name}: " +
                     (f"{e['median_ms']:.1f} ms (median of 3; {e.get('execution')})" if "median_ms" in e
                      else f"not measured ({e['error']})"))
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench_gpu", description=__doc__.splitlines()[0],
                                epilog="exit status: 0 measured, 1 a gpucnn path failed validation or "
                                       "timing, 3 no usable GPU")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=200, help="training steps per timed block")
    p.add_argument("--gap-s", type=float, default=0.05, help="idle gap before each timed block")
    p.add_argument("--no-epoch", action="store_true", help="skip the 60,000-image epoch")
    p.add_argument("--no-jax", action="store_true")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: stop starting new timings after this (what is done is reported)")
    p.add_argument("--quick", action="store_true", help="3 rounds of 20 steps, batch 64, no epoch")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="exercise the harness on CPU (NumPy backend, torch CPU); no GPU numbers")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.no_epoch = min(args.rounds, 3), 20, True
        if args.batches == [16, 64, 256]:
            args.batches = [64]
    if args.cpu_dry_run:
        args.steps, args.gap_s = min(args.steps, 20), 0.0
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.cpu_dry_run:
        reason = gpu_unavailable_reason()
        if reason:
            print(f"No GPU benchmark: {reason}. Nothing was measured or written.")
            return EXIT_NO_GPU
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
