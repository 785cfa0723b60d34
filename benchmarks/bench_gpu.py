"""GPU benchmark: gpucnn's CuPy backend against PyTorch CUDA eager (cuDNN) and PyTorch CUDA graphs.

    python benchmarks/bench_gpu.py            # on a machine with an NVIDIA GPU, CuPy and torch CUDA
    python benchmarks/bench_gpu.py --quick    # smoke test
    python benchmarks/bench_gpu.py --cpu-dry-run --quick   # the harness logic on CPU (NumPy, torch CPU)
    gpucnn bench --gpu [...]                  # the same

Without a usable GPU it says why and exits 0 (nothing is estimated, nothing written).

Timing: every competitor runs on the same card in the same run; blocks of steps are interleaved in
rounds (rotating order, an idle gap before each) and timed with CUDA events recorded on the stream
the competitor launches on, after a warm-up that also sizes each block to about BLOCK_S seconds.
    gpucnn         Network.train_step on the cupy backend, data already on the device; its step
                   returns the cost as a Python float, i.e. it synchronises once per step.
    gpucnn-graph   the same step captured once in a CUDA graph by CuPy stream capture and replayed
                   (only if the step can be captured: it must not synchronise; reported otherwise).
    torch-eager    the same network in PyTorch, cuDNN, no per-step synchronisation (its strongest
                   eager form: loss.item() only at the end of a block).
    torch-graph    PyTorch with the whole step (forward, loss, backward, SGD) in one CUDA graph.
Validation before timing: the CuPy backend's gradients against the NumPy reference path, and
PyTorch's against the same reference, same weights, same real digits.
Targets (issue 6): seed b64 >= 5x torch eager and >= 1.5x torch graphs; a 60,000-image epoch at
batch 64 (Network.fit) under 50 ms; the wide network >= 0.5x cuDNN (torch eager).
"""
import argparse
import itertools
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np                                # noqa: E402

import bench_cpu as cpu                           # noqa: E402  (nets, data, reference gradients)
import harness                                    # noqa: E402
from gpucnn.backend import to_numpy               # noqa: E402
from gpucnn.optim import SGD                      # noqa: E402

TARGETS = {("train seed b64", "torch-eager"): 5.0, ("train seed b64", "torch-graph"): 1.5,
           ("train wide b64", "torch-eager"): 0.5}
CONFIGS = cpu.CONFIGS
EPOCH_TARGET_MS = 50.0


# -- the device, or why there is none ----------------------------------------------------------------
def gpu_unavailable_reason():
    """None when CuPy, its gpucnn backend and torch CUDA can all run here; else the reason."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as exc:
        return f"CuPy is not usable: {exc}"
    try:
        import gpucnn
        gpucnn.get_backend("cupy")
    except Exception as exc:
        return f"gpucnn's cupy backend is not usable: {exc}"
    return None


class Device:
    """What differs between the GPU run and the CPU dry run: backend, tensors, clocks."""

    def __init__(self, dry_run, capture_gpucnn=True):
        self.dry_run, self.capture_gpucnn = dry_run, capture_gpucnn
        self.backend = "numpy" if dry_run else "cupy"
        import torch
        self.torch = torch
        self.tdev = "cpu" if dry_run else "cuda"
        if not dry_run:
            import cupy
            self.cupy = cupy

    def sync(self):
        if not self.dry_run:
            self.cupy.cuda.get_current_stream().synchronize()
            self.torch.cuda.synchronize()

    def time_steps(self, step, steps, who):
        """Milliseconds for `steps` calls of step(), by CUDA events on the competitor's stream."""
        self.sync()
        if self.dry_run:
            t = time.perf_counter()
            for _ in range(steps):
                step()
            return (time.perf_counter() - t) * 1e3
        if who.startswith("torch"):
            start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        stream = getattr(step, "stream", None)        # a captured graph replays on its own stream
        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record(stream)
        for _ in range(steps):
            step()
        end.record(stream)
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end)

    def info(self):
        out = {"torch": self.torch.__version__}
        if self.dry_run:
            out["card"] = "none: CPU dry run (numbers are not GPU numbers)"
            return out
        props = self.cupy.cuda.runtime.getDeviceProperties(0)
        out.update(card=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                   cupy=self.cupy.__version__, cuda_runtime=self.cupy.cuda.runtime.runtimeGetVersion(),
                   cuda_driver=self.cupy.cuda.runtime.driverGetVersion(),
                   torch_cuda=self.torch.version.cuda, cudnn=self.torch.backends.cudnn.version())
        return out


# -- competitors -------------------------------------------------------------------------------------
def gpucnn_competitors(dev, kind, mode, data):
    """gpucnn's step on the device backend, and (if it can be captured) the same step in a CUDA graph."""
    net = cpu.gpucnn_net(kind, backend=dev.backend)
    xp = net.backend.xp
    ddata = [(net.backend.asarray(x), net.backend.asarray(y1)) for x, y1, _ in data]
    cycle = itertools.cycle(ddata)
    opt = SGD(cpu.LR[kind])
    if mode == "infer":
        out = {"gpucnn": lambda: net._forward(next(cycle)[0])}
    else:
        out = {"gpucnn": lambda: net.train_step(*next(cycle), opt)}
    if not dev.dry_run and dev.capture_gpucnn:
        graph_step, why = capture_gpucnn(dev, net, ddata[0], opt, mode)
        if graph_step is not None:
            out["gpucnn-graph"] = graph_step
        else:
            print(f"  gpucnn-graph: not captured ({why})", flush=True)
    return out, xp


def capture_gpucnn(dev, net, batch, opt, mode):
    """The whole step in one CUDA graph via CuPy stream capture; (replay, None) or (None, reason)."""
    cupy = dev.cupy
    x_static, y_static = batch
    try:
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            for _ in range(2):                         # warm-up on the capture stream (allocations)
                net._forward(x_static) if mode == "infer" else net.train_step(x_static, y_static, opt)
            stream.synchronize()
            stream.begin_capture()
            try:
                net._forward(x_static) if mode == "infer" else net.train_step(x_static, y_static, opt)
            finally:
                graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    except Exception as exc:                           # e.g. train_step synchronises to return a float
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    def replay():
        graph.launch(stream)
    replay.stream = stream
    return replay, None


def torch_competitors(dev, kind, mode, data, ref_net):
    torch = dev.torch
    model = cpu.torch_net(kind, ref_net).to(dev.tdev)
    tdata = [tuple(torch.from_numpy(a).to(dev.tdev) for a in batch) for batch in data]
    cycle = itertools.cycle(tdata)
    loss_fn = cpu.torch_loss(kind)
    if mode == "infer":
        def infer():
            with torch.inference_mode():
                return model(next(cycle)[0])
        return {"torch-eager": infer}
    opt = torch.optim.SGD(model.parameters(), lr=cpu.LR[kind])

    def eager():
        xb, y1, labels = next(cycle)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), y1, labels).backward()
        opt.step()
    out = {"torch-eager": eager}
    if not dev.dry_run:
        gmodel = cpu.torch_net(kind, ref_net).to(dev.tdev)
        out["torch-graph"] = torch_graph_step(torch, gmodel, loss_fn, tdata[0], cpu.LR[kind])
    return out


def torch_graph_step(torch, model, loss_fn, batch, lr):
    """PyTorch's whole-network capture: warm up on a side stream, capture one step, replay it."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x_static, y_static, lab_static = batch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_static), y_static, lab_static).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss_fn(model(x_static), y_static, lab_static).backward()
        opt.step()
    return graph.replay


# -- validation --------------------------------------------------------------------------------------
def validate(dev, kind, mode, xb, y1, labels):
    ref_net, net = cpu.gpucnn_net(kind), cpu.gpucnn_net(kind, backend=dev.backend)
    if mode == "train":
        ref = cpu.reference_grads(ref_net, xb, y1)
        xd, yd = net.backend.asarray(xb), net.backend.asarray(y1)
        net.train_step(xd, yd, cpu._NoStep())
        ours = [to_numpy(layer._grads[p]) for layer in net.layers for p in layer.param_names]
    else:
        ref = [np.array(ref_net._forward(xb))]
        ours = [to_numpy(net._forward(net.backend.asarray(xb)))]
    report = {"gpucnn_vs_reference": max(map(harness.gradient_error, ours, ref))}
    torch = dev.torch
    model = cpu.torch_net(kind, ref_net).to(dev.tdev)
    xt = torch.from_numpy(xb).to(dev.tdev)
    if mode == "train":
        loss = cpu.torch_loss(kind)(model(xt), torch.from_numpy(y1).to(dev.tdev),
                                    torch.from_numpy(labels).to(dev.tdev))
        loss.backward()
        theirs = [t.grad.cpu().numpy() for m in model if hasattr(m, "weight") for t in (m.weight, m.bias)]
        report["torch_vs_reference"] = max(map(harness.gradient_error, theirs, ref))
    else:
        with torch.inference_mode():
            report["torch_vs_reference"] = harness.gradient_error(model(xt).cpu().numpy(), ref[0])
    report["ok"] = all(v <= cpu.GRAD_TOL for k, v in report.items() if k.endswith("reference"))
    return report


# -- the interleaved rounds, timed on the device -----------------------------------------------------
def interleaved_device(dev, competitors, items, rounds, block_s, gap_s, warmup_s):
    """{name: step} -> {name: [items/s per round]}; block sizes from a timed warm-up."""
    steps = {}
    for name, step in competitors.items():
        ms = dev.time_steps(step, 3, name)             # first calls: compile, allocate, autotune
        n = 3
        while ms < warmup_s * 1e3 and n < 100000:
            n *= 2
            ms = dev.time_steps(step, n, name)
        steps[name] = max(3, int(n * block_s * 1e3 / max(ms, 1e-3)))
    rates = {name: [] for name in competitors}
    names = list(competitors)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(gap_s)
            ms = dev.time_steps(competitors[name], steps[name], name)
            rates[name].append(steps[name] * items / (ms / 1e3))
    return rates


def epoch_time_ms(dev, batch_size=64, n=60000):
    """One Network.fit epoch over n images at batch_size (device-resident data), CUDA-event timed."""
    x, y, source = cpu.load_digits(count=n)
    reps = -(-n // x.shape[0])
    x, y = np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]
    net = cpu.gpucnn_net("seed", backend=dev.backend)
    xd, yd = net.backend.asarray(x), net.backend.asarray(y, np.int64)   # on the device once
    dev.sync()
    fit = lambda: net.fit(xd, yd, epochs=1, batch_size=batch_size, lr=0.5, verbose=False)
    net.fit(xd[:batch_size * 20], yd[:batch_size * 20], epochs=1, batch_size=batch_size, lr=0.5,
            verbose=False)                             # warm-up: kernels compiled, pools filled
    times = [dev.time_steps(fit, 1, "gpucnn") for _ in range(3)]
    return {"median_ms": float(np.median(times)), "all_ms": times, "images": n, "data": source,
            "note": "Network.fit on images already on the device (shuffle, per-step cost and accuracy included)"}


# -- the run -----------------------------------------------------------------------------------------
def run(args):
    dev = Device(args.cpu_dry_run, not args.no_gpucnn_graph)
    machine = harness.machine_info(dev.info())
    x, y, source = cpu.load_digits()
    machine["data"] = source
    rounds, block_s, gap_s, warm_s = (2, 0.05, 0.02, 0.05) if args.quick else (args.rounds, 0.25, 0.1, 0.3)
    results = []
    for mode, kind, n in CONFIGS:
        name = f"{mode} {kind} b{n}"
        if args.only and not any(o in name for o in args.only):
            continue
        data = cpu.batches(x, y, n, count=2 if args.quick else 8)
        check = validate(dev, kind, mode, *data[0])
        row = {"config": name, "batch": n, "validation": check}
        if not check["ok"]:
            row["skipped"] = "validation failed: not timed"
            print(f"{name}: VALIDATION FAILED {check}", flush=True)
            results.append(row)
            continue
        try:
            comps, _ = gpucnn_competitors(dev, kind, mode, data)
            comps.update(torch_competitors(dev, kind, mode, data, cpu.gpucnn_net(kind)))
            rates = interleaved_device(dev, comps, n, rounds, block_s, gap_s, warm_s)
        except Exception as exc:                       # one broken configuration must not end the run
            row["skipped"] = f"error while timing: {type(exc).__name__}: {exc}"
            print(f"{name}: {row['skipped']}", flush=True)
            results.append(row)
            continue
        row.update(harness.summarize(rates, "gpucnn", [p for p in ("torch-eager", "torch-graph") if p in rates]))
        if "gpucnn-graph" in rates:
            row["graph_vs"] = harness.summarize(rates, "gpucnn-graph", ["torch-eager", "torch-graph"])
        results.append(row)
        print(f"{name:18s} " + "  ".join(f"{k} {harness.fmt_rate(row[k]['median'])}/s" for k in rates)
              + "".join(f"  /{p} {harness.fmt_ratio(row.get('ratio_' + p))}" for p in ("torch-eager", "torch-graph"))
              + f"  [grad err {check['gpucnn_vs_reference']:.1e}]", flush=True)
    epoch = None
    if not args.quick and not args.only:
        try:
            epoch = epoch_time_ms(dev)
            print(f"60,000-image epoch at batch 64: {epoch['median_ms']:.1f} ms (target < {EPOCH_TARGET_MS:.0f} ms)")
        except Exception as exc:
            epoch = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"60,000-image epoch: {epoch['error']}", flush=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    payload = {"machine": machine, "results": results, "epoch_b64": epoch,
               "settings": {"rounds": rounds, "block_s": block_s, "gap_s": gap_s, "quick": args.quick,
                            "cpu_dry_run": args.cpu_dry_run}}
    if (args.quick or args.cpu_dry_run) and not args.out:
        print("quick / dry run: no results written (pass --out DIR to keep them)")
        return payload
    print("wrote", *harness.write_results("gpu", payload, markdown(payload), args.out))
    return payload


def markdown(payload):
    m = payload["machine"]
    lines = [f"# GPU benchmark, {m['date']}", "",
             f"Card: {m.get('card')}; CUDA runtime {m.get('cuda_runtime')}, driver {m.get('cuda_driver')}; "
             f"CuPy {m.get('cupy')}, PyTorch {m.get('torch')} (CUDA {m.get('torch_cuda')}, cuDNN "
             f"{m.get('cudnn')}); host {m['cpu']} ({m['host']}).",
             f"Median of {payload['settings']['rounds']} interleaved rounds, CUDA events; ratio = gpucnn / "
             "peer per round, median (min–max).", "",
             "| configuration | gpucnn img/s | gpucnn graph | torch eager | torch graph | gpucnn / eager "
             "| gpucnn / graph | best gpucnn / eager | best gpucnn / graph | grad err (gpucnn / torch) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["results"]:
        v = r["validation"]
        errs = f"{v['gpucnn_vs_reference']:.1e} / {v['torch_vs_reference']:.1e}"
        if "skipped" in r:
            lines.append(f"| {r['config']} | not timed: {r['skipped']} | | | | | | | | {errs} |")
            continue
        g = r.get("graph_vs", {})
        rate = lambda k: harness.fmt_rate(r.get(k, {}).get("median"))
        best = lambda p: max((x for x in (r.get(f"ratio_{p}"), g.get(f"ratio_{p}")) if x),
                             key=lambda x: x["median"], default=None)
        lines.append(f"| {r['config']} | {rate('gpucnn')} | {rate('gpucnn-graph')} | {rate('torch-eager')} "
                     f"| {rate('torch-graph')} | {harness.fmt_ratio(r.get('ratio_torch-eager'))} "
                     f"| {harness.fmt_ratio(r.get('ratio_torch-graph'))} | {harness.fmt_ratio(best('torch-eager'))} "
                     f"| {harness.fmt_ratio(best('torch-graph'))} | {errs} |")
    lines += ["", "Targets (issue 6):"]
    for (config, peer), target in TARGETS.items():
        row = next((r for r in payload["results"] if r["config"] == config and "skipped" not in r), None)
        cands = [x for x in (row.get(f"ratio_{peer}"), row.get("graph_vs", {}).get(f"ratio_{peer}"))
                 if x] if row else []
        best = max((x["median"] for x in cands), default=None)
        verdict = "not measured" if best is None else ("met" if best >= target else "**missed**")
        lines.append(f"- {config} vs {peer}: ≥ {target}× — " + (f"{best:.2f}×, {verdict}" if best else verdict))
    e = payload.get("epoch_b64")
    if e and "error" in e:
        lines.append(f"- 60,000-image epoch at batch 64: not measured ({e['error']})")
    elif e:
        lines.append(f"- 60,000-image epoch at batch 64: {e['median_ms']:.1f} ms (target < {EPOCH_TARGET_MS:.0f} ms: "
                     f"{'met' if e['median_ms'] < EPOCH_TARGET_MS else '**missed**'}); {e['note']}")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench_gpu", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", nargs="*")
    p.add_argument("--out", default=None)
    p.add_argument("--no-gpucnn-graph", action="store_true", help="do not try to capture gpucnn's step")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="exercise the harness on CPU (NumPy backend, torch CPU); no GPU numbers")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.cpu_dry_run:
        reason = gpu_unavailable_reason()
        if reason is None:
            try:
                import torch
                if not torch.cuda.is_available():
                    reason = "PyTorch sees no CUDA device (install a CUDA build of torch)"
            except ImportError:
                reason = "PyTorch is not installed"
        if reason:
            print(f"No GPU benchmark: {reason}. Nothing was measured or written.")
            return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
