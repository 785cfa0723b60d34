"""CPU benchmark: gpucnn (NumPy backend) against PyTorch CPU, interleaved in one run.

    python benchmarks/bench_cpu.py            # full run, a few minutes; results/cpu-<date>-<host>.*
    python benchmarks/bench_cpu.py --quick    # smoke test, seconds
    gpucnn bench [--quick]                    # the same

What is timed (images/s, median of interleaved rounds, see harness.py):
    train    forward + backward + SGD step (+ the cost as a Python float, which both return)
    infer    net.predict(x): labels (PyTorch: model(x).argmax under inference_mode)
    forward  net.forward(x), which keeps what backward needs (PyTorch: model(x) under inference_mode)
Networks: the seed network; LeNet-5 (conv 6@5 pad 2, relu, pool, conv 16@5, relu, pool, 400-120-84-10,
cross-entropy); the wide network (conv 32@5, conv 64@5, each relu + pool, dense 1024-10, cross-entropy);
LeNet-5 with a BatchNorm2D after each conv's relu (train mode: batch statistics).
Every timed configuration first validates: gpucnn's gradients or outputs (the path it times, normally
the fused plan of gpucnn/fast/) against the readable layer-by-layer path (layers/ + ops/reference.py)
on real digits when the offline sample is installed, and PyTorch's against the same, same weights.
PyTorch is timed with its default threads and held to one; a target is judged against the faster.
gpucnn is timed as a user gets it (two threads where they pay) and held to one, against PyTorch's one.
Peak RSS of a batch-256 training run is measured per competitor in a fresh process.
"""
import argparse
import itertools
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))            # a source checkout runs without installing

import numpy as np                               # noqa: E402

import harness                                   # noqa: E402
import gpucnn                                    # noqa: E402
from gpucnn import layers as L                   # noqa: E402
from gpucnn.backend import to_numpy              # noqa: E402
from gpucnn.optim import SGD                     # noqa: E402

# gpucnn / PyTorch ratios the issue asks for (issue 12), by configuration name.
TARGETS = {"train seed b1": 4.0, "train seed b64": 2.5, "train seed b256": 2.0, "infer seed b256": 1.5,
           "forward seed b256": 1.5, "train lenet b64": 1.5, "train wide b64": 1.2}
CONFIGS = [("train", "seed", 1), ("train", "seed", 16), ("train", "seed", 64), ("train", "seed", 256),
           ("infer", "seed", 256), ("forward", "seed", 256), ("infer", "seed", 1024),
           ("train", "lenet", 64), ("train", "lenet", 256), ("forward", "lenet", 256),
           ("train", "wide", 64), ("train", "lenet-bn", 64)]
GRAD_TOL = 1e-4            # max |g - g_ref| / max |g_ref|, float32 against the reference
LR = {"seed": 0.5, "lenet": 0.05, "wide": 0.05, "lenet-bn": 0.05}
PEERS = ("pytorch", "pytorch-1t")
TORCH_THREADS = None       # PyTorch's default thread count, read once at start


# -- the two networks, in gpucnn and in PyTorch --------------------------------------------------
def gpucnn_net(kind, seed=0, backend="numpy"):
    if kind == "seed":
        return gpucnn.seed_network(backend=backend, seed=seed)
    if kind == "lenet":
        layers = [L.Conv2D(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2), L.Conv2D(6, 16, 5), L.ReLU(),
                  L.MaxPool2D(2), L.Flatten(), L.Dense(400, 120), L.ReLU(), L.Dense(120, 84), L.ReLU(),
                  L.Dense(84, 10)]
    elif kind == "lenet-bn":
        # batch norm after each conv's ReLU (after the conv itself, the conv's bias gradient is 0 by
        # the math: rounding noise, which the gradient check would not pass)
        layers = [L.Conv2D(1, 6, 5, padding=2), L.ReLU(), L.BatchNorm2D(6), L.MaxPool2D(2), L.Conv2D(6, 16, 5),
                  L.ReLU(), L.BatchNorm2D(16), L.MaxPool2D(2), L.Flatten(), L.Dense(400, 120), L.ReLU(),
                  L.Dense(120, 84), L.ReLU(), L.Dense(84, 10)]
    else:
        layers = [L.Conv2D(1, 32, 5), L.ReLU(), L.MaxPool2D(2), L.Conv2D(32, 64, 5), L.ReLU(),
                  L.MaxPool2D(2), L.Flatten(), L.Dense(1024, 10)]
    return gpucnn.Network(layers, loss="cross_entropy", backend=backend, seed=seed)


def torch_net(kind, net):
    """The same architecture in PyTorch, with gpucnn's initial weights copied in."""
    import torch
    nn = torch.nn
    net_params = [(to_numpy(layer.W), to_numpy(layer.b)) for layer in net.layers if "W" in layer.param_names]
    if kind == "seed":
        model = nn.Sequential(nn.Conv2d(1, 3, 5), nn.Sigmoid(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(432, 10), nn.Sigmoid())
    elif kind == "lenet":
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                              nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    elif kind == "lenet-bn":                             # BatchNorm2d starts at gamma 1, beta 0 too
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(6), nn.MaxPool2d(2),
                              nn.Conv2d(6, 16, 5), nn.ReLU(), nn.BatchNorm2d(16), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 10))
    theirs = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for (W, b), m in zip(net_params, theirs):
            m.weight.copy_(torch.from_numpy(W))
            m.bias.copy_(torch.from_numpy(b))
    return model


def torch_loss(kind):
    import torch.nn.functional as F
    if kind == "seed":                                   # gpucnn's quadratic cost, batch mean
        return lambda out, y1, labels: 0.5 * ((out - y1) ** 2).sum() / out.shape[0]
    return lambda out, y1, labels: F.cross_entropy(out, labels)


# -- data ----------------------------------------------------------------------------------------
def load_digits(count=2048):
    """Real digits (the offline sample) when installed, else random images with blank background."""
    try:
        x, y = gpucnn.data.load_sample()[:2]
        return np.ascontiguousarray(x[:count], np.float32), np.asarray(y[:count]), "MNIST sample"
    except Exception as exc:                              # sample not installed: say so, go on
        rng = np.random.default_rng(0)
        x = rng.random((count, 1, 28, 28), dtype=np.float32)
        x[x < 0.6] = 0
        return x, rng.integers(0, 10, count), f"random (sample unavailable: {exc})"


def batches(x, y, n, count=8):
    """`count` distinct batches of n (cycled while timing), as contiguous float32 + one-hot rows."""
    out = []
    for k in range(count):
        idx = np.arange(k * n, (k + 1) * n) % x.shape[0]
        out.append((np.ascontiguousarray(x[idx]), np.eye(10, dtype=np.float32)[y[idx]], y[idx]))
    return out


# -- how gpucnn runs a step --------------------------------------------------------------------
class _NoStep:
    """An optimizer that leaves the parameters alone: a train_step that only computes gradients."""
    lr = 0.0

    def step(self, layers):
        pass


def _path(net):
    """Which path a call runs now: the fused plan when Network._plan() gives one, else the reference."""
    return "fast" if net._plan() is not None else "reference"


def gpucnn_stepper(kind, mode, data, threads=None):
    """(step, path) on a fresh network, cycling through data: what a user calls, net.train_step (SGD),
    net.predict (labels) or net.forward (output, kept for a backward); ``threads`` fixes the fused
    plan's thread count (None: its own choice)."""
    net, cycle = gpucnn_net(kind), itertools.cycle(data)
    path = _path(net)
    if threads is not None and path == "fast":
        net._plan().threads = threads
    if mode == "train":
        opt = SGD(LR[kind])
        return (lambda: net.train_step(*next(cycle)[:2], opt)), path
    call = net.predict if mode == "infer" else net.forward
    return (lambda: call(next(cycle)[0])), path


def reference_grads(net, xb, y1):
    net._forward(xb)
    net._backward(y1)
    return [np.array(p.grad) for p in net.parameters()]


def validate(kind, mode, xb, y1, labels, with_torch):
    """Check the timed path against the reference (and PyTorch against the reference) on one batch."""
    ref_net, net = gpucnn_net(kind), gpucnn_net(kind)
    report = {}
    if mode == "train":
        ref = reference_grads(ref_net, xb, y1)
        net.train_step(xb, y1, _NoStep())
        ours = [np.array(p.grad) for p in net.parameters()]
        report["gpucnn_vs_reference"] = max(map(harness.gradient_error, ours, ref))
    else:
        ref = [np.array(ref_net._forward(xb))]
        report["gpucnn_vs_reference"] = harness.gradient_error(net.forward(xb), ref[0])
    report["path"] = _path(net)
    if with_torch:
        import torch
        model = torch_net(kind, ref_net)
        xt = torch.from_numpy(xb)
        if mode == "train":
            loss = torch_loss(kind)(model(xt), torch.from_numpy(y1), torch.from_numpy(labels))
            loss.backward()
            theirs = [t.grad.numpy() for m in model if hasattr(m, "weight") for t in (m.weight, m.bias)]
            report["torch_vs_reference"] = max(map(harness.gradient_error, theirs, ref))
        else:
            with torch.inference_mode():
                report["torch_vs_reference"] = harness.gradient_error(model(xt).numpy(), ref[0])
    report["ok"] = all(v <= GRAD_TOL for k, v in report.items() if k.endswith("reference"))
    return report


# -- competitors ---------------------------------------------------------------------------------
def competitors(kind, mode, data, with_torch, with_reference):
    """{name: (step, images per step)}: gpucnn (what a user gets), the reference path, PyTorch."""
    n = data[0][0].shape[0]
    out = {}
    step, path = gpucnn_stepper(kind, mode, data)
    out["gpucnn"] = (step, n)
    if path == "fast":       # held to one thread, against PyTorch held to one: what each does with a core
        out["gpucnn-1t"] = (gpucnn_stepper(kind, mode, data, threads=1)[0], n)
    if with_reference and path == "fast":
        ref_net, ref_cycle, ref_opt = gpucnn_net(kind), itertools.cycle(data), SGD(LR[kind])
        if mode == "train":
            def ref_step():
                xb, y1 = next(ref_cycle)[:2]
                out_ = ref_net._forward(xb)
                if np.isfinite(ref_net.loss.cost(np, out_, y1)):
                    ref_net._backward(y1)
                    ref_opt.step(ref_net.parameters())
            out["reference"] = (ref_step, n)
        else:
            out["reference"] = (lambda: ref_net._forward(next(ref_cycle)[0]), n)
    if with_torch:
        # PyTorch with its default thread count (all cores), and held to one thread: on a 2-core
        # machine where something else runs, its OpenMP workers wait on a busy core and one thread
        # can be faster. NOTE: each block sets its thread count, and once set_num_threads has
        # gone 1 -> 2 PyTorch trains faster than a fresh process's default (LeNet-5 b64 on the 2-core
        # VM: 12-14k img/s fresh, no faster than 1 thread; 16-21k after): it is timed at its best.
        import torch
        threads = TORCH_THREADS or torch.get_num_threads()
        init = gpucnn_net(kind)                 # the initial weights every competitor starts from
        out["pytorch"] = (torch_stepper(kind, mode, init, data), n, lambda: torch.set_num_threads(threads))
        out["pytorch-1t"] = (torch_stepper(kind, mode, init, data), n, lambda: torch.set_num_threads(1))
    return out


def torch_stepper(kind, mode, net, data):
    import torch
    model = torch_net(kind, net)
    tdata = itertools.cycle([(torch.from_numpy(x), torch.from_numpy(y1), torch.from_numpy(lab))
                             for x, y1, lab in data])
    if mode == "infer":
        def infer():
            with torch.inference_mode():
                return model(next(tdata)[0]).argmax(dim=1).numpy()
        return infer
    if mode == "forward":
        def forward():
            with torch.inference_mode():
                return model(next(tdata)[0])
        return forward
    opt, loss_fn = torch.optim.SGD(model.parameters(), lr=LR[kind]), torch_loss(kind)

    def step():
        xb, y1, labels = next(tdata)
        opt.zero_grad()
        loss = loss_fn(model(xb), y1, labels)
        loss.backward()
        opt.step()
        return loss.item()                               # gpucnn's train_step returns a float too
    return step


# -- peak RSS (a child process per competitor) ----------------------------------------------------
def rss_child(who, kind, n, steps=30):
    """In a fresh process: build, train `steps` steps at batch n, print the peak RSS as JSON."""
    start = harness.peak_rss_mib()
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, n)
    data = [(x, np.eye(10, dtype=np.float32)[labels], labels)]
    if who == "gpucnn":
        step = competitors(kind, "train", data, False, False)["gpucnn"][0]
    else:
        step = torch_stepper(kind, "train", gpucnn_net(kind), data)
        start = max(start, harness.peak_rss_mib())      # after `import torch` too
    for _ in range(steps):
        step()
    print(json.dumps({"peak_rss_mib": harness.peak_rss_mib(), "rss_after_imports_mib": start}))


# -- the run -------------------------------------------------------------------------------------
def torch_available():
    try:
        import torch
        return torch
    except ImportError:
        return None


def run(args):
    torch = None if args.no_torch else torch_available()
    if torch is None and not args.no_torch:
        print("PyTorch is not installed: skipping the PyTorch competitor "
              "(pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)")
    extra = {"gpucnn": gpucnn.__version__}
    global TORCH_THREADS
    if torch is not None:
        TORCH_THREADS = torch.get_num_threads()
        extra.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    machine = harness.machine_info(extra)
    note = harness.blas_kernel_note(machine)
    if note:
        print(note)
        machine["note"] = note
    x, y, source = load_digits()
    machine["data"] = source
    rounds, block_s, gap_s, warm_s = ((2, 0.05, 0.02, 0.05) if args.quick
                                      else (args.rounds, args.block, 0.15, 0.3))
    results = []
    for mode, kind, n in CONFIGS:
        name = f"{mode} {kind} b{n}"
        if args.only and not any(o in name for o in args.only):
            continue
        data = batches(x, y, n, count=2 if args.quick else 8)
        check = validate(kind, mode, *data[0], with_torch=torch is not None)
        row = {"config": name, "mode": mode, "net": kind, "batch": n, "validation": check,
               "target": TARGETS.get(name)}
        if not check["ok"]:
            row["skipped"] = "validation failed: not timed"
            print(f"{name}: VALIDATION FAILED {check}", flush=True)
            results.append(row)
            continue
        rates = harness.interleaved(competitors(kind, mode, data, torch is not None, not args.no_reference),
                                    rounds, block_s, gap_s, warm_s)
        row.update(harness.summarize(rates, "gpucnn", PEERS))
        if "gpucnn-1t" in rates:
            row["ratio_1t_vs_1t"] = harness.summarize(rates, "gpucnn-1t", ["pytorch-1t"]).get("ratio_pytorch-1t")
        ratios = [row[f"ratio_{p}"] for p in PEERS if f"ratio_{p}" in row]
        row["ratio"] = min(ratios, key=lambda r: r["median"]) if ratios else None   # the stronger peer
        results.append(row)
        print(f"{name:18s} " + "  ".join(f"{k} {harness.fmt_rate(row[k]['median'])}/s" for k in rates)
              + "".join(f"  /{p} {harness.fmt_ratio(row.get('ratio_' + p))}" for p in PEERS)
              + f"  1t/1t {harness.fmt_ratio(row.get('ratio_1t_vs_1t'))}"
              + f"  [{check['path']}, max grad err {check['gpucnn_vs_reference']:.1e}]", flush=True)
    rss = {}
    if not args.quick and (not args.only or any("rss" in o for o in args.only)):
        for who in ["gpucnn"] + (["pytorch"] if torch is not None else []):
            rss[who] = harness.run_child(__file__, ["--rss-child", who, "--rss-batch", "256"])
        print(f"peak RSS, training at b256: {rss}", flush=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["two_core_speedup_at_end"] = harness.two_core_speedup()
    payload = {"machine": machine, "settings": {"rounds": rounds, "block_s": block_s, "gap_s": gap_s,
                                                "warmup_s": warm_s, "quick": args.quick},
               "results": results, "peak_rss_b256_train": rss}
    if args.quick and not args.out:
        print("quick mode: no results written (pass --out DIR to keep them)")
        return payload
    paths = harness.write_results("cpu-quick" if args.quick else "cpu", payload, markdown(payload), args.out)
    print("wrote", *paths)
    return payload


def markdown(payload):
    m = payload["machine"]
    pools = m.get("threadpools")
    pools = ", ".join(f"{p['internal_api']} {p['version']} {p['num_threads']} threads "
                      f"({p['architecture']})" for p in pools) if isinstance(pools, list) else pools
    lines = [f"# CPU benchmark, {m['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['host']}); load average "
             f"{m['load_average_at_start'][0]:.2f} at start, {m['load_average_at_end'][0]:.2f} at end; "
             f"two-thread speedup of independent matmuls {m['two_core_speedup_at_start']} at start, "
             f"{m['two_core_speedup_at_end']} at end (2.0 = both cores free).",
             f"Python {m['python']}, NumPy {m['numpy']}, PyTorch {m.get('torch', 'not installed')} "
             f"({m.get('torch_threads', '-')} threads); BLAS: {pools}; env {m['env'] or '{}'}.",
             f"Data: {m['data']}. Median of {payload['settings']['rounds']} interleaved rounds; ratio = "
             "gpucnn / PyTorch per round, median (min–max), against PyTorch with its default threads and "
             "held to 1 thread; a target counts as met only against the faster of the two. 1 thread / 1 "
             "thread: gpucnn held to one thread against PyTorch held to one (what each does with a core).",
             *([f"*{m['note']}*"] if m.get("note") else []), "",
             "| configuration | gpucnn img/s | PyTorch img/s | PyTorch 1 thread | ratio vs PyTorch | ratio vs "
             "1 thread | target | met | gpucnn 1 thread | 1 thread / 1 thread | reference path img/s "
             "| gpucnn path | grad err vs ref (gpucnn / torch) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["results"]:
        v = r["validation"]
        errs = f"{v['gpucnn_vs_reference']:.1e} / {v.get('torch_vs_reference', float('nan')):.1e}"
        if "skipped" in r:
            lines.append(f"| {r['config']} | – | – | – | – | – | {r['target'] or '–'} | not timed | – | – | – "
                         f"| {v['path']} | {errs} |")
            continue
        ratio = r.get("ratio")
        met = "–" if not r["target"] or not ratio else ("yes" if ratio["median"] >= r["target"] else "**no**")
        lines.append(f"| {r['config']} | {harness.fmt_rate(r['gpucnn']['median'])} "
                     f"| {harness.fmt_rate(r.get('pytorch', {}).get('median'))} "
                     f"| {harness.fmt_rate(r.get('pytorch-1t', {}).get('median'))} "
                     f"| {harness.fmt_ratio(r.get('ratio_pytorch'))} | {harness.fmt_ratio(r.get('ratio_pytorch-1t'))} "
                     f"| {('≥ %.1f×' % r['target']) if r['target'] else '–'} | {met} "
                     f"| {harness.fmt_rate(r.get('gpucnn-1t', {}).get('median'))} "
                     f"| {harness.fmt_ratio(r.get('ratio_1t_vs_1t'))} "
                     f"| {harness.fmt_rate(r.get('reference', {}).get('median'))} | {v['path']} | {errs} |")
    rss = payload["peak_rss_b256_train"]
    if rss:
        lines += ["", "Peak RSS, training at batch 256, each in a fresh process (whole process, "
                  "MiB; after imports in brackets):", ""]
        for who, r in rss.items():
            lines.append(f"- {who}: " + (f"{r['peak_rss_mib']:.0f} MiB ({r['rss_after_imports_mib']:.0f})"
                                         if "peak_rss_mib" in r else f"error: {r['error']}"))
        if all("peak_rss_mib" in r for r in rss.values()) and "pytorch" in rss:
            ratio = rss["gpucnn"]["peak_rss_mib"] / rss["pytorch"]["peak_rss_mib"]
            lines.append(f"- gpucnn / PyTorch = {ratio:.2f} (target < 0.5: {'met' if ratio < 0.5 else 'missed'})")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench_cpu", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny rounds, no RSS, nothing written")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block", type=float, default=0.25, help="seconds per timed block")
    p.add_argument("--only", nargs="*", help="substrings of configuration names to run ('rss' too)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-reference", action="store_true", help="skip timing the reference path")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--rss-child", choices=["gpucnn", "pytorch"], help=argparse.SUPPRESS)
    p.add_argument("--rss-batch", type=int, default=256, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.rss_child:
        rss_child(args.rss_child, "seed", args.rss_batch)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
