"""The fused GPU step (cuda/seed_step.cu + gpucnn/gpu_step.py) on the emulated backend.

The chain of trust: the fused step equals the NumPy layer-by-layer path (net.train_step with the fast
CPU path off) to rel. error < 1e-5 and PyTorch float64 to < 1e-4 over 20+ steps; two runs, and every
barrier-release order, give the same bytes; ThreadSanitizer and AddressSanitizer see every launch.
The emulated backend runs exactly the launches CuPy would (graph capture itself is CuPy-only).

NOTE: the emulator runs one 256-thread block per sample: batch 4-8 keeps this file near 20 s.
"""
import re

import numpy as np
import pytest

import gpucnn
from gpucnn import emulator, gpu_step
from gpucnn.errors import BackendUnavailable
from gpucnn.gpu_step import live_param, plan_gpu_step
from gpucnn.ops import cuda
from gpucnn.optim import SGD

VARIANTS = {                                   # (loss, activation, momentum, weight_decay, lr)
    "quadratic-sigmoid": ("quadratic", "sigmoid", 0.0, 0.0, 1.0),
    "quadratic-sigmoid-momentum-wd": ("quadratic", "sigmoid", 0.9, 1e-3, 0.5),
    "cross_entropy-relu": ("cross_entropy", "relu", 0.0, 0.0, 0.1),
    "cross_entropy-relu-momentum-wd": ("cross_entropy", "relu", 0.9, 5e-3, 0.05),
}


# On a GPU the kernels fuse multiply-adds and use approximate tanhf/expf: rel. 1e-4 there.
REL = {"emulated": 1e-5, "cupy": 1e-4}


@pytest.fixture(params=["emulated", pytest.param("cupy", marks=pytest.mark.gpu)])
def device(request):
    """The backends that run the CUDA host code: emulated always, cupy where a GPU is."""
    try:
        gpucnn.backend.get_backend(request.param)
    except (BackendUnavailable, ImportError) as exc:
        pytest.skip(f"backend {request.param!r} not available here: {exc}")
    return request.param


@pytest.fixture(scope="module")
def data():
    """40 real digits of every class (blank backgrounds: pooling ties) -> x, labels."""
    x, y = gpucnn.data.load_sample()
    pick = np.random.default_rng(7).choice(x.shape[0], 40, replace=False)
    return np.ascontiguousarray(x[pick]), y[pick]


def _params(net):
    return {f"{i}.{name}": np.array(gpucnn.backend.to_numpy(live_param(net.layers[i], name)))
            for i in (0, 4) for name in ("W", "b")}


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _fused_run(x, labels, loss, activation, momentum, wd, lr, batch, epochs, seed=3, backend="emulated"):
    """Train with the fused step -> (params, per-step costs, per-step correct, step)."""
    net = gpucnn.seed_network(backend=backend, seed=0, loss=loss, activation=activation)
    step, mode = plan_gpu_step(net, batch, SGD(lr, momentum, wd))
    assert step is not None, mode
    step.bind(net.backend.asarray(x), net.targets(labels, x.shape[0]))
    costs, correct = [], []
    for epoch in range(epochs):
        step.start_epoch(np.random.default_rng([seed, epoch]).permutation(x.shape[0]))
        for _ in range(step.steps):
            step.run()
        result = step.read_epoch()
        costs += list(result["cost"])
        correct += list(result["correct"])
    return _params(net), np.array(costs), np.array(correct), step


def _numpy_run(x, labels, loss, activation, momentum, wd, lr, batch, epochs, seed=3):
    """The same batches through the NumPy layer-by-layer path -> (params, costs, correct)."""
    net = gpucnn.seed_network(backend="numpy", seed=0, loss=loss, activation=activation)
    net._fast = None                           # the readable path, not the fused CPU one
    optimizer, y1 = SGD(lr, momentum, wd), net.targets(labels, x.shape[0])
    costs, correct = [], []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(x.shape[0])
        for start in range(0, x.shape[0], batch):
            idx = order[start:start + batch]
            cost, out = net.train_step(x[idx], y1[idx], optimizer)
            costs.append(cost)
            correct.append(int((out.argmax(axis=1) == labels[idx]).sum()))
    return _params(net), np.array(costs), np.array(correct)


def _torch_run(x, labels, loss, activation, momentum, wd, lr, batch, epochs, start_params, seed=3):
    """PyTorch float64, same initial parameters and batches -> params."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in start_params.items()}
    opt = torch.optim.SGD(list(p.values()), lr=lr, momentum=momentum, weight_decay=wd)
    act = {"sigmoid": torch.sigmoid, "relu": torch.relu}[activation]
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(labels)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(x.shape[0])
        for start in range(0, x.shape[0], batch):
            idx = torch.tensor(order[start:start + batch])
            a = F.max_pool2d(act(F.conv2d(xt[idx], p["0.W"], p["0.b"])), 2).flatten(1)
            z = a @ p["4.W"].T + p["4.b"]
            if loss == "quadratic":
                onehot = F.one_hot(yt[idx], 10).double()
                cost = 0.5 * ((torch.sigmoid(z) - onehot) ** 2).sum() / len(idx)
            else:
                cost = F.cross_entropy(z, yt[idx])
            opt.zero_grad()
            cost.backward()
            opt.step()
    return {k: v.detach().numpy() for k, v in p.items()}


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_fused_step_equals_numpy_and_pytorch(data, variant, device):
    x, labels = data
    config = VARIANTS[variant]
    fused, costs, correct, step = _fused_run(x, labels, *config, batch=6, epochs=3, backend=device)
    assert step.steps * 3 == 21 and len(costs) == 21                     # 21 steps, last batches of 4
    assert step.mode == ("fused step, graph replay" if device == "cupy" else
                         "fused step, eager (because graph capture is CuPy-only: the emulator runs "
                         "the same launches eagerly)")
    want, want_costs, want_correct = _numpy_run(x, labels, *config, batch=6, epochs=3)
    for name in want:
        assert _rel(fused[name], want[name]) < REL[device], (name, _rel(fused[name], want[name]))
    np.testing.assert_allclose(costs, want_costs, rtol=REL[device], atol=1e-7)
    np.testing.assert_array_equal(correct, want_correct)
    start = _params(gpucnn.seed_network(backend="numpy", seed=0, loss=config[0], activation=config[1]))
    torch_params = _torch_run(x, labels, *config, batch=6, epochs=3, start_params=start)
    for name in want:
        assert _rel(fused[name], torch_params[name]) < 1e-4, (name, _rel(fused[name], torch_params[name]))


def _odd_network(backend, loss="quadratic", out=()):
    """Odd sizes: 23x25 input, 4x4 kernels, 2 maps, tanh, pool 3 dropping rows, 7 classes."""
    L = gpucnn.layers
    return gpucnn.Network([L.Conv2D(1, 2, 4), L.Tanh(), L.MaxPool2D(3), L.Flatten(), L.Dense(84, 7),
                           *[layer() for layer in out]], input_shape=(1, 23, 25), backend=backend,
                          loss=loss, seed=5)


@pytest.mark.parametrize("loss, out", [("quadratic", ()), ("cross_entropy", (gpucnn.layers.Sigmoid,))],
                         ids=["quadratic-no-output-activation", "cross_entropy-after-a-sigmoid"])
def test_odd_sizes_equal_numpy(rng, loss, out):
    x = rng.standard_normal((10, 1, 23, 25)).astype(np.float32)
    labels = rng.integers(0, 7, 10)
    nets = {name: _odd_network(name, loss, out) for name in ("numpy", "emulated")}
    nets["numpy"]._fast = None
    step, mode = plan_gpu_step(nets["emulated"], 4, SGD(0.02, 0.5, 0.01))
    assert step is not None, mode
    step.bind(x, nets["emulated"].targets(labels, 10))
    optimizer, y1 = SGD(0.02, 0.5, 0.01), nets["numpy"].targets(labels, 10)
    for epoch in range(3):                                        # 9 steps, the last of each of 2
        order = rng.permutation(10)
        step.start_epoch(order)
        for start in range(0, 10, 4):
            step.run()
            nets["numpy"].train_step(x[order[start:start + 4]], y1[order[start:start + 4]], optimizer)
        assert len(step.read_epoch()["cost"]) == 3
    for layer_index in (0, 4):
        for name in ("W", "b"):
            got, want = (live_param(nets[k].layers[layer_index], name) for k in ("emulated", "numpy"))
            assert _rel(got, want) < 1e-5, (layer_index, name, _rel(got, want))


def test_two_runs_and_every_order_give_the_same_bytes(data):
    x, labels = data[0][:16], data[1][:16]
    config = VARIANTS["quadratic-sigmoid-momentum-wd"]
    first = _fused_run(x, labels, *config, batch=5, epochs=1)[0]          # a last batch of 1
    for schedule in ({"order": "ascending"},) + emulator.TEST_SCHEDULES[1:]:
        with emulator.settings(**schedule):
            again = _fused_run(x, labels, *config, batch=5, epochs=1)[0]
        for name in first:
            assert first[name].tobytes() == again[name].tobytes(), (schedule, name)


def _planted(source, bug):
    """seed_step.cu with one planted bug."""
    if bug == "missing sync before the dense layer":
        marker = "    __syncthreads();\n\n    int lane = t % WARP"
        assert marker in source
        return source.replace(marker, "\n    int lane = t % WARP")
    if bug == "partials summed from the wrong row":
        old = "for (int b = 0; b < nb; ++b) g += partials[(long long)b * N_PARAMS + p];"
        assert old in source
        return source.replace(old, old.replace("(long long)b *", "(long long)(b / 2) *"))
    raise ValueError(bug)


@pytest.mark.parametrize("bug", ["missing sync before the dense layer", "partials summed from the wrong row"])
def test_a_planted_bug_goes_red(data, bug, monkeypatch):
    x, labels = data[0][:12], data[1][:12]
    config = VARIANTS["quadratic-sigmoid"]
    good = _fused_run(x, labels, *config, batch=4, epochs=1)[0]
    source = _planted(cuda.read_kernel_source(gpu_step.SEED_STEP_FILE), bug)
    monkeypatch.setattr(cuda, "read_kernel_source", lambda name: source)
    monkeypatch.setattr(gpucnn.backend.get_backend("emulated").ops, "_modules", {})
    with emulator.settings(order="descending"):       # the missing sync reads lower warps' a2 early
        bad = _fused_run(x, labels, *config, batch=4, epochs=1)[0]
    assert any(not np.allclose(good[k], bad[k], rtol=1e-5, equal_nan=False) for k in good), bug


def test_the_step_runs_under_thread_and_address_sanitizers(data):
    x, labels = data[0][:6], data[1][:6]
    clean = _fused_run(x, labels, *VARIANTS["cross_entropy-relu-momentum-wd"], batch=3, epochs=1)[0]
    for sanitizer, workers in (("thread", 2), ("address", 1)):
        with emulator.settings(sanitizer=sanitizer, workers=workers):
            checked = _fused_run(x, labels, *VARIANTS["cross_entropy-relu-momentum-wd"], batch=3, epochs=1)[0]
        for name in clean:
            assert clean[name].tobytes() == checked[name].tobytes(), (sanitizer, name)


def test_divergence_freezes_updates_and_keeps_the_step(data):
    x, labels = data[0][:12].copy(), data[1][:12]
    x[6, 0, 10, 10] = np.inf                                      # step 1 (samples 4-7) overflows
    net = gpucnn.seed_network(backend="emulated", seed=0, loss="cross_entropy", activation="relu")
    step, _ = plan_gpu_step(net, 4, SGD(0.1, 0.9))
    step.bind(net.backend.asarray(x), net.targets(labels, 12))
    step.start_epoch(np.arange(12))
    snapshots = []
    for _ in range(step.steps):
        snapshots.append(_params(net))
        step.run()
    result = step.read_epoch()
    s = result["diverged"]
    assert s == 1 and not np.isfinite(result["diverged_cost"]) and len(result["cost"]) == 1
    assert np.isfinite(result["cost"]).all() and result["updates"] == 1 and result["steps_run"] == 3
    after = _params(net)
    for name in after:                           # frozen at the parameters the bad step started from
        assert after[name].tobytes() == snapshots[s][name].tobytes(), name
    step.restore_previous()                  # and the ones before: the last that gave a finite cost
    for name, value in _params(net).items():
        assert value.tobytes() == snapshots[s - 1][name].tobytes(), name


def test_plan_says_why_not():
    L = gpucnn.layers
    net = gpucnn.seed_network(backend="emulated")
    assert plan_gpu_step(gpucnn.seed_network(backend="numpy"), 10, SGD(1.0)) == (
        None, "the numpy backend has no CUDA kernels")
    odd = gpucnn.Network([L.Conv2D(1, 2, 4), L.Tanh(), L.MaxPool2D(3), L.Flatten(), L.Dense(84, 7)],
                         input_shape=(1, 23, 25), backend="emulated")   # 20x22 pooled to 6x7: rows dropped
    assert plan_gpu_step(odd, 10, SGD(1.0))[0] is not None
    deep = gpucnn.Network([L.Conv2D(1, 3, 5), L.Sigmoid(), L.Conv2D(3, 2, 3), L.Flatten(),
                           L.Dense(2 * 22 * 22, 10)], backend="emulated")
    assert plan_gpu_step(deep, 10, SGD(1.0)) == (
        None, "the network is not of the seed family: layer 2 is Conv2D, not MaxPool2D")
    padded = gpucnn.Network([L.Conv2D(1, 3, 5, padding=2), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                             L.Dense(588, 10)], loss="cross_entropy", backend="emulated")
    assert "no padding" in plan_gpu_step(padded, 10, SGD(1.0))[1]
    assert plan_gpu_step(net, 10, SGD(1.0))[1].startswith("fused step, eager (because graph capture")


@pytest.mark.parametrize("setting, expected", [
    ("generic", (None, "GPUCNN_GPU_STEP=generic")),
    ("eager", "fused step, eager (because GPUCNN_GPU_STEP=eager)"),
])
def test_the_environment_picks_the_step(monkeypatch, setting, expected):
    monkeypatch.setenv("GPUCNN_GPU_STEP", setting)
    got = plan_gpu_step(gpucnn.seed_network(backend="emulated"), 10, SGD(1.0))
    assert (got if isinstance(expected, tuple) else got[1]) == expected
    monkeypatch.setenv("GPUCNN_GPU_STEP", "fast")
    with pytest.raises(ValueError, match="GPUCNN_GPU_STEP must be one of auto, eager, generic"):
        plan_gpu_step(gpucnn.seed_network(backend="emulated"), 10, SGD(1.0))


def test_step_defines_cover_every_size_the_kernel_needs():
    """Every -D the kernel tests for is one step_defines gives (an unset one would be 0 under NVRTC)."""
    source = cuda.read_kernel_source(gpu_step.SEED_STEP_FILE)
    sizes, _ = gpu_step.seed_family(gpucnn.seed_network(backend="numpy"))
    given = {d[2:].split("=")[0] for d in gpu_step.step_defines(sizes, 8)}
    used = set(re.findall(r"\b(H_IN|W_IN|K|F|POOL|CLASSES|BATCH|THREADS|ACT|OUT_ACT|LOSS)\b", source))
    assert used == given
    assert re.search(rf"#define STATE_SIZE {gpu_step.STATE_SIZE}\b", source)


# --- the sync-free epoch (gpucnn/training/device_epoch.py) through Network.fit ---------------------

def _fit(backend, x, labels, loss, activation, momentum=0.0, wd=0.0, lr=0.5, **kwargs):
    net = gpucnn.seed_network(backend=backend, seed=0, loss=loss, activation=activation)
    history = net.fit(x, labels, momentum=momentum, weight_decay=wd, lr=lr, verbose=False, **kwargs)
    return net, history


@pytest.mark.parametrize("variant", ["quadratic-sigmoid", "cross_entropy-relu-momentum-wd"])
@pytest.mark.parametrize("setting", ["auto", "generic"])
def test_device_fit_equals_numpy_fit(data, variant, setting, monkeypatch, device):
    """21 steps (3 epochs of 7, a last batch of 4) on the device engine vs the NumPy fit."""
    monkeypatch.setenv("GPUCNN_GPU_STEP", setting)
    x, labels = data
    loss, activation, momentum, wd, lr = VARIANTS[variant]
    kwargs = dict(epochs=3, batch_size=6, momentum=momentum, wd=wd, lr=lr)
    emu, history = _fit(device, x, labels, loss, activation, **kwargs)
    ref, want = _fit("numpy", x, labels, loss, activation, **kwargs)
    engine = "fused step" if setting == "auto" else "layer by layer on the device"
    assert gpu_step.describe(emu).startswith(engine)
    for name, value in _params(ref).items():
        assert _rel(_params(emu)[name], value) < REL[device], (name, _rel(_params(emu)[name], value))
    np.testing.assert_allclose(history["loss"], want["loss"], rtol=REL[device])
    assert history["accuracy"] == want["accuracy"]
    again = _fit(device, x, labels, loss, activation, **kwargs)[0]
    assert all(_params(again)[k].tobytes() == v.tobytes() for k, v in _params(emu).items())


@pytest.mark.parametrize("setting", ["auto", "generic"])
def test_no_device_reads_inside_an_epoch_but_at_checkpoints(data, setting, monkeypatch, tmp_path):
    """Every device-to-host read of the engines goes through gpu_step.to_host: count them against the
    steps run. 40 digits in batches of 6: 7 steps an epoch. Reads happen only at the checkpoints
    (every=4: after step 4 of each epoch, i.e. steps 4 and 11 of the run) and at the epoch ends
    (7 and 14); the per-step host path (train_step, the float cost) is never called."""
    from gpucnn.training import device_epoch
    monkeypatch.setenv("GPUCNN_GPU_STEP", setting)
    x, labels = data
    net = gpucnn.seed_network(backend="emulated", seed=0)
    steps, reads = [0], []
    real_to_host = gpu_step.to_host

    def counted(array):
        reads.append(steps[0])
        return real_to_host(array)

    engine = device_epoch.FusedEpoch if setting == "auto" else device_epoch.GenericEpoch
    real_run_step = engine.run_step

    def run_step(self, *args):
        steps[0] += 1
        return real_run_step(self, *args)

    def host_read(*args):
        raise AssertionError("a per-step host read")

    monkeypatch.setattr(device_epoch, "to_host", counted)
    monkeypatch.setattr(gpu_step, "to_host", counted)
    monkeypatch.setattr(engine, "run_step", run_step)
    monkeypatch.setattr(type(net), "train_step", host_read)
    monkeypatch.setattr(type(net.loss), "cost", host_read)
    net.fit(x, labels, epochs=2, batch_size=6, lr=0.5, verbose=False,
            checkpoint=str(tmp_path / "run.npz"), every=4)
    assert steps[0] == 14 and sorted(set(reads)) == [4, 7, 11, 14], reads
    assert len(reads) == 4 * (3 if setting == "auto" else 2)          # one sync = 3 (or 2) arrays


@pytest.mark.parametrize("setting", ["auto", "generic"])
def test_checkpoint_resume_on_the_device_is_exact(data, setting, monkeypatch, tmp_path):
    monkeypatch.setenv("GPUCNN_GPU_STEP", setting)
    x, labels = data
    kwargs = dict(epochs=2, batch_size=6, lr=0.1, momentum=0.9, verbose=False)
    whole = gpucnn.seed_network(backend="emulated", seed=0, loss="cross_entropy", activation="relu")
    whole.fit(x, labels, **kwargs)
    path = str(tmp_path / "run.npz")
    first = gpucnn.seed_network(backend="emulated", seed=0, loss="cross_entropy", activation="relu")

    class Interrupt(Exception):
        pass

    from gpucnn.training import checkpoint as checkpoints
    real_save, saves = checkpoints.save, [0]

    def save_then_stop(trainer, where):
        real_save(trainer, where)
        saves[0] += 1
        if saves[0] == 3:                       # step 4 of epoch 2 (after epoch 1's two)
            raise Interrupt

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    with pytest.raises(Interrupt):
        first.fit(x, labels, checkpoint=path, every=4, **kwargs)
    monkeypatch.setattr(checkpoints, "save", real_save)
    resumed = gpucnn.seed_network(backend="emulated", seed=0, loss="cross_entropy", activation="relu")
    history = resumed.fit(x, labels, checkpoint=path, every=4, resume=True, **kwargs)
    assert len(history["loss"]) == 2
    for name, value in _params(whole).items():
        assert _params(resumed)[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("setting", ["auto", "generic"])
def test_divergence_in_fit_names_the_step_and_keeps_the_last_good_parameters(data, setting, monkeypatch,
                                                                            device):
    """A linear output under the quadratic cost with lr=1e6 overflows within a few steps: the device
    engines raise what the NumPy host loop raises, with its (last good) parameters."""
    monkeypatch.setenv("GPUCNN_GPU_STEP", setting)
    L = gpucnn.layers
    x, labels = data
    got, messages = {}, {}
    for backend in ("numpy", device):
        net = gpucnn.Network([L.Conv2D(1, 3, 5), L.Sigmoid(), L.MaxPool2D(2), L.Flatten(), L.Dense(432, 10)],
                             backend=backend)
        with np.errstate(all="ignore"), pytest.raises(gpucnn.Divergence) as err:
            net.fit(x, labels, epochs=1, batch_size=6, lr=1e6, momentum=0.5, shuffle=False, verbose=False)
        got[backend], messages[backend] = _params(net), str(err.value)
    assert "loss became inf at epoch 1, step 5 (batch of 6)" in messages["numpy"], messages
    assert messages[device] == messages["numpy"]
    for name, value in got["numpy"].items():
        assert np.isfinite(got[device][name]).all() and _rel(got[device][name], value) < REL[device], name


@pytest.mark.parametrize("setting", ["auto", "generic"])
def test_a_learning_rate_schedule_reaches_the_captured_step(data, setting, monkeypatch):
    """The loop sets optimizer.lr per epoch: the fused step must not keep the first epoch's."""
    monkeypatch.setenv("GPUCNN_GPU_STEP", setting)
    x, labels = data
    kwargs = dict(epochs=3, batch_size=8, momentum=0.9, lr_schedule="cosine")
    emu, history = _fit("emulated", x, labels, "quadratic", "sigmoid", **kwargs)
    ref, want = _fit("numpy", x, labels, "quadratic", "sigmoid", **kwargs)
    assert history["lr"] == want["lr"] and len(set(want["lr"])) == 3
    for name, value in _params(ref).items():
        assert _rel(_params(emu)[name], value) < 1e-5, name


def test_other_optimizers_run_the_generic_device_epoch(data):
    from gpucnn.training import device_epoch
    x, labels = data
    net = gpucnn.seed_network(backend="emulated", seed=0)
    trainer = gpucnn.training.Trainer(net, net.backend.asarray(x), net.targets(labels, 40), 1, 8,
                                      gpucnn.optim.Adam(1e-3))
    assert isinstance(trainer.engine, device_epoch.GenericEpoch)
    assert "the fused update is SGD's, not Adam's" in trainer.engine.mode
    net.fit(x, labels, epochs=1, batch_size=8, optimizer="adam", verbose=False)
    ref = gpucnn.seed_network(backend="numpy", seed=0)
    ref.fit(x, labels, epochs=1, batch_size=8, optimizer="adam", verbose=False)
    for name, value in _params(ref).items():
        assert _rel(_params(net)[name], value) < 1e-5, name


def test_the_graph_is_captured_again_when_what_it_holds_changes(data, monkeypatch):
    """A graph holds the parameter pointers and lr, momentum, weight decay by value: a new lr (a
    schedule) or a replaced parameter array (a resume) must make start_epoch capture again."""
    x, labels = data
    net = gpucnn.seed_network(backend="emulated", seed=0)
    optimizer = SGD(0.5, 0.9)
    step, _ = plan_gpu_step(net, 8, optimizer)
    captures = []
    real = gpu_step.GpuStep._capture
    monkeypatch.setattr(gpu_step.GpuStep, "_capture", lambda self: captures.append(1) or real(self))
    step.bind(x, net.targets(labels, 40))
    step.start_epoch(np.arange(40))
    assert len(captures) == 1
    optimizer.lr = 0.25
    step.start_epoch(np.arange(40))
    assert len(captures) == 2 and step.hyper[0] == 0.25
    net.layers[4].params["b"].assign(np.zeros(10), net.backend, np.float32)
    step.start_epoch(np.arange(40))
    assert len(captures) == 3 and step.params[3] is live_param(net.layers[4], "b")
    step.start_epoch(np.arange(40))
    assert len(captures) == 3
