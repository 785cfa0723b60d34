"""BatchNorm2D, AvgPool2D and Dropout: finite differences (alone and inside networks, random inputs and
real digits), PyTorch autograd in float32, the avgpool kernels against the reference on every backend and
emulator order, modes, save/load, trace, and the fast path declining them cleanly."""
import numpy as np
import pytest

import gpucnn
from gpucnn import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Network, ReLU,
                    Sigmoid)
from gpucnn.backend import get_backend, to_numpy
from gpucnn.layers.dropout import fixed_masks
from gpucnn.ops import reference
from tests.conftest import TOL

torch = pytest.importorskip("torch")
F = torch.nn.functional
from tests.torch_twin import copy_params, train_side_by_side    # noqa: E402  (needs torch)

# (n, c, h, w, size, stride): windows that tile, overlap, leave gaps, and cover the whole map
AVGPOOL_CASES = {"seed": (4, 3, 24, 24, 2, 2), "overlap": (2, 1, 9, 7, 3, 2), "gaps": (1, 2, 8, 9, 2, 3),
                 "stride1": (2, 2, 5, 6, 2, 1), "whole": (1, 1, 4, 4, 4, 4)}
ORDERS = [("ascending", None), ("descending", None), ("random", 1)]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _assert_gradcheck(report, exact_zero=()):
    """Every parameter (and x) within TOL; ``exact_zero`` names gradients that are 0 by the math (a
    conv bias before BatchNorm: the normalisation removes any per-channel constant)."""
    for name, r in report.items():
        if name in exact_zero:
            assert r["max_abs_error"] < 1e-8, (name, r)
        else:
            assert r["rel_error"] < TOL["gradcheck"] and r["rel_error_backend"] < TOL["gradcheck"], (name, r)


# --- float64 finite differences -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_alone_gradcheck(mode, rng):
    net = Network([BatchNorm2D(3), Flatten()], input_shape=(3, 2, 3), backend="numpy", dtype=np.float64)
    net.layers[0].gamma = rng.uniform(0.5, 2.0, 3)
    net.layers[0].beta = rng.standard_normal(3)
    net.layers[0].buffers["running_mean"] = rng.standard_normal(3)
    net.layers[0].buffers["running_var"] = rng.uniform(0.5, 2.0, 3)
    x = rng.standard_normal((4, 3, 2, 3)) * 3 + 1
    getattr(net, mode)()
    _assert_gradcheck(gpucnn.gradcheck(net, x, rng.integers(0, 18, 4), inputs=True))


@pytest.mark.parametrize("size, stride", [(2, 2), (3, 2), (2, 3)])
def test_avgpool_alone_gradcheck(size, stride, rng):
    net = Network([AvgPool2D(size, stride), Flatten()], input_shape=(2, 7, 8), backend="numpy",
                  dtype=np.float64)
    x = rng.standard_normal((3, 2, 7, 8))
    _assert_gradcheck(gpucnn.gradcheck(net, x, rng.integers(0, net.classes, 3), inputs=True))


def test_dropout_alone_gradcheck_with_its_mask_fixed(rng):
    net = Network([Dropout(0.4), Flatten()], input_shape=(2, 3, 3), backend="numpy", dtype=np.float64)
    x = rng.standard_normal((5, 2, 3, 3))
    with fixed_masks():            # both sides of each finite difference see the same mask
        _assert_gradcheck(gpucnn.gradcheck(net, x, rng.integers(0, 18, 5), inputs=True))
    dropped = net.layers[0].keep
    assert 0 < dropped.mean() < 1                        # the mask did drop something


def _modern(dtype=np.float64, backend="numpy", seed=0, pool=AvgPool2D):
    return Network([Conv2D(1, 4, 5), BatchNorm2D(4), ReLU(), pool(2), Flatten(), Dropout(0.25),
                    Dense(576, 10)], loss="cross_entropy", backend=backend, seed=seed, dtype=dtype)


@pytest.mark.parametrize("inputs", ["random", "digits"])
def test_new_layers_inside_a_network_gradcheck(inputs, rng, digits):
    if inputs == "random":
        x, y = rng.random((4, 1, 28, 28)), rng.integers(0, 10, 4)
    else:
        pick = np.random.default_rng(7).permutation(len(digits[1]))[:4]
        x, y = digits[0][pick].astype(np.float64), digits[1][pick]
    net = _modern()
    with fixed_masks():
        report = gpucnn.gradcheck(net, x, y, max_per_param=25, inputs=True)
    _assert_gradcheck(report, exact_zero=("layers.0.b",))



@pytest.mark.parametrize("seed", [0, 5])
def test_gradcheck_holds_dropout_masks_itself_for_any_seed(seed, rng):
    """gradcheck draws the network's masks once and holds them for every difference (no fixed_masks
    needed by the caller), whatever the network's seed: the float64 copy takes the same masks."""
    net = _modern(seed=seed)
    x, y = rng.random((3, 1, 28, 28)), rng.integers(0, 10, 3)
    report = gpucnn.gradcheck(net, x, y, max_per_param=15)
    _assert_gradcheck(report, exact_zero=("layers.0.b",))
    assert 0 < net.layers[5].keep.mean() < 1

# --- float32 against PyTorch autograd -------------------------------------------------------------

def _torch_forward(net, xt, params, pool, start=False):
    """The same Conv-BatchNorm-ReLU-Pool-Dense in PyTorch (train mode: batch statistics); its running
    statistics start at (0, 1) when ``start``, else at ours."""
    W1, b1, gamma, beta, W2, b2 = params
    bn = net.layers[1]
    rm, rv = (torch.zeros(4), torch.ones(4)) if start else \
        (torch.tensor(to_numpy(bn.buffers[k]).copy()) for k in ("running_mean", "running_var"))
    z = F.batch_norm(F.conv2d(xt, W1, b1), rm, rv, gamma, beta, training=net.training,
                     momentum=bn.momentum, eps=bn.eps)
    a = pool(F.relu(z), 2)
    return F.linear(torch.flatten(a, 1), W2, b2), (rm, rv)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_conv_batchnorm_relu_pool_dense_matches_pytorch_in_train_mode(pool, digits):
    pick = np.random.default_rng(3).permutation(len(digits[1]))[:8]
    x, y = digits[0][pick], digits[1][pick]
    layer = MaxPool2D if pool == "max" else AvgPool2D
    net = Network([Conv2D(1, 4, 5), BatchNorm2D(4), ReLU(), layer(2), Flatten(), Dense(576, 10)],
                  loss="cross_entropy", backend="numpy", seed=2)
    net.layers[1].gamma = np.linspace(0.5, 1.5, 4)
    net.layers[1].beta = np.linspace(-0.2, 0.3, 4)
    cost = net.cost(x, y)
    dx = net.backward(y)
    params = [torch.tensor(v, requires_grad=True) for v in net.get_params().values()]
    xt = torch.tensor(x, requires_grad=True)
    out, (rm, rv) = _torch_forward(net, xt, params, F.max_pool2d if pool == "max" else F.avg_pool2d,
                                   start=True)
    torch_cost = F.cross_entropy(out, torch.tensor(y))
    torch_cost.backward()
    assert abs(cost - torch_cost.item()) <= 1e-5 * abs(torch_cost.item())
    ours = [p.grad for p in net.parameters()] + [dx]
    for name, a, t in zip([p.name for p in net.parameters()] + ["x"], ours, params + [xt]):
        if name == "layers.0.b":            # 0 by the math (BatchNorm follows): both sides ~1e-9
            assert np.abs(to_numpy(a)).max() < 1e-5 and t.grad.abs().max() < 1e-5
            continue
        assert _rel(a, t.grad.numpy()) < 1e-4, (name, _rel(a, t.grad.numpy()))
    # both moved their running statistics from (0, 1) with the batch's (unbiased variance)
    bn = net.layers[1]
    for key, theirs in (("running_mean", rm), ("running_var", rv)):
        assert _rel(bn.buffers[key], theirs.numpy()) < 1e-5, key


def test_conv_relu_avgpool_dense_matches_pytorch(rng):
    x, y = rng.random((6, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 6)
    net = Network([Conv2D(1, 3, 5), ReLU(), AvgPool2D(2), Flatten(), Dense(432, 10), Sigmoid()],
                  backend="numpy", seed=5)
    cost = net.cost(x, y)
    dx = net.backward(y)
    W1, b1, W2, b2 = (torch.tensor(v, requires_grad=True) for v in net.get_params().values())
    xt = torch.tensor(x, requires_grad=True)
    a = torch.sigmoid(F.linear(torch.flatten(F.avg_pool2d(F.relu(F.conv2d(xt, W1, b1)), 2), 1), W2, b2))
    torch_cost = 0.5 * ((a - F.one_hot(torch.tensor(y), 10).float()) ** 2).sum() / len(y)
    torch_cost.backward()
    assert abs(cost - torch_cost.item()) <= 1e-5 * abs(torch_cost.item())
    for a_, t in zip([net.layers[0].dW, net.layers[0].db, net.layers[4].dW, net.layers[4].db, dx],
                     [W1, b1, W2, b2, xt]):
        assert _rel(a_, t.grad.numpy()) < 1e-4


def test_eval_outputs_after_training_steps_match_pytorch(digits):
    """Five SGD steps in train mode (batch statistics, running averages), then eval-mode outputs."""
    x, y = digits[0][:40], digits[1][:40]
    net = _modern(np.float32, seed=1, pool=MaxPool2D)
    tnet = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Identity(),
                               torch.nn.Linear(576, 10))
    copy_params(tnet, net)
    net.layers[5].p = 0.0                   # no dropout in the steps (PyTorch's net has none); eval: identity
    train_side_by_side(net, tnet, gpucnn.optim.SGD(0.1), torch.optim.SGD(tnet.parameters(), lr=0.1), x, y, 5)
    tnet.eval()
    with torch.no_grad():
        theirs = torch.softmax(tnet(torch.tensor(digits[0][100:150])), 1).numpy()
    got = net.predict_proba(digits[0][100:150])
    assert _rel(got, theirs) < 1e-4
    assert net.training                                   # predict_proba restored the mode
    assert _rel(net.layers[1].buffers["running_var"], tnet[1].running_var.numpy()) < 1e-4


# --- the avgpool kernels on every backend ---------------------------------------------------------

def _run_avgpool(backend, x, delta, size, stride):
    a = backend.ops.avgpool2d_forward(backend.asarray(x), size, stride)
    da_prev = backend.ops.avgpool2d_backward(backend.asarray(delta), x.shape[2:], size, stride)
    return a, da_prev


def _check_avgpool(a, da_prev, x, delta, size, stride, what):
    want = reference.avgpool2d_forward(x.astype(np.float64), size, stride)
    a = to_numpy(a)
    assert a.dtype == np.float32 and a.shape == want.shape, what
    np.testing.assert_allclose(a, want, rtol=TOL["float32"]["rtol"], atol=TOL["float32"]["atol"], err_msg=what)
    # the backward adds delta / size^2 in the reference's order: bitwise equal
    assert to_numpy(da_prev).tobytes() == reference.avgpool2d_backward(delta, x.shape[2:], size, stride).tobytes(), what


@pytest.mark.parametrize("case", list(AVGPOOL_CASES.values()), ids=list(AVGPOOL_CASES))
def test_avgpool_ops_match_reference(backend_name, case, rng):
    n, c, h, w, size, stride = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    delta = rng.standard_normal((n, c, oh, ow)).astype(np.float32)
    a, da_prev = _run_avgpool(get_backend(backend_name), x, delta, size, stride)
    _check_avgpool(a, da_prev, x, delta, size, stride, f"{backend_name} {case}")


@pytest.mark.parametrize("order, seed", ORDERS)
def test_avgpool_kernels_in_every_emulator_order(order, seed, digits):
    from gpucnn import emulator
    backend = get_backend("emulated")
    x = digits[0][:3]                                    # real digits: blank background, ink
    delta = np.random.default_rng(4).standard_normal((3, 1, 13, 13)).astype(np.float32)
    with emulator.settings(order=order, **({} if seed is None else {"seed": seed})):
        a, da_prev = _run_avgpool(backend, x, delta, 3, 2)
    _check_avgpool(a, da_prev, x, delta, 3, 2, order)


def test_avgpool_op_refuses_a_window_larger_than_the_input():
    with pytest.raises(gpucnn.ShapeError, match="avgpool2d"):
        get_backend("emulated").ops.avgpool2d_forward(np.zeros((1, 1, 3, 3), np.float32), 4, 4)


# --- the layers on every backend, in trace, in files ----------------------------------------------

def test_new_layers_agree_across_backends(backend_name, digits):
    """The same network (same seed: same weights and dropout masks) on every backend, train mode."""
    x, y = digits[0][:6], digits[1][:6]
    ref, net = _modern(np.float32), _modern(np.float32, backend=backend_name)
    for n in (ref, net):
        n.cost(x, y)
        n.backward(y)
    for p, q in zip(ref.parameters(), net.parameters()):
        scale = max(1.0, float(np.abs(to_numpy(p.grad)).max()))
        np.testing.assert_allclose(to_numpy(q.grad), to_numpy(p.grad), rtol=1e-4, atol=1e-5 * scale, err_msg=p.name)
    np.testing.assert_array_equal(to_numpy(net.layers[5].keep), ref.layers[5].keep)
    np.testing.assert_allclose(net.predict_proba(x), ref.predict_proba(x), rtol=1e-4, atol=1e-6)


def test_batchnorm_statistics_and_modes(rng):
    net = Network([BatchNorm2D(2, momentum=0.3), Flatten()], input_shape=(2, 3, 3), backend="numpy",
                  dtype=np.float64)
    x = rng.standard_normal((5, 2, 3, 3)) * 2 + 3
    out = to_numpy(net.forward(x)).reshape(5, 2, 3, 3)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)          # gamma 1, beta 0
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)) / (x.var(axis=(0, 2, 3)) + 1e-5))
    bn = net.layers[0]
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.3 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(bn.buffers["running_var"], 0.7 + 0.3 * x.var(axis=(0, 2, 3), ddof=1))
    before = {k: v.copy() for k, v in bn.buffers.items()}
    net.predict(x)                                       # eval mode: statistics untouched
    assert all(np.array_equal(before[k], bn.buffers[k]) for k in before)
    assert net.training
    net.eval()
    want = (x - before["running_mean"][None, :, None, None]) / np.sqrt(before["running_var"] + 1e-5)[None, :, None, None]
    np.testing.assert_allclose(to_numpy(net.forward(x)), want.reshape(5, -1))
    one = Network([BatchNorm2D(2), Flatten()], input_shape=(2, 1, 1), backend="numpy")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        one.forward(x[:1, :, :1, :1])                    # train mode, one value per channel
    assert one.predict(x[:1, :, :1, :1]).shape == (1,)   # eval mode needs no batch statistics


def test_dropout_is_inverted_and_the_identity_in_eval_mode(rng):
    net = Network([Dropout(0.3), Flatten()], input_shape=(1, 50, 40), backend="numpy", seed=9)
    x = np.ones((10, 1, 50, 40), np.float32)
    out = to_numpy(net.forward(x))
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)                    # inverted scaling
    np.testing.assert_array_equal(net.layers[0].keep.reshape(10, -1), kept)     # the draw is kept
    dx = to_numpy(net.backward(np.zeros_like(out)))                             # quadratic: out / n
    np.testing.assert_allclose(dx.reshape(10, -1), out * out / 10, rtol=1e-6)   # da * mask
    alone = to_numpy(net._forward(x))                                           # layer by layer
    np.testing.assert_array_equal(to_numpy(net.layers[0].backward(x)), alone.reshape(x.shape))   # da * mask
    second = to_numpy(net.forward(x))
    assert not np.array_equal(second, out)                                      # a new mask per step
    again = Network([Dropout(0.3), Flatten()], input_shape=(1, 50, 40), backend="numpy", seed=9)
    np.testing.assert_array_equal(to_numpy(again.forward(x)), out)              # the seed repeats it
    np.testing.assert_array_equal(net.predict_proba(x), x.reshape(10, -1))      # eval: identity
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_trace_shows_the_new_layers(digits):
    net = _modern(np.float32)
    steps = net.trace(digits[0][:2], digits[1][:2])
    bn, pool, drop = steps[1], steps[3], steps[5]
    assert set(bn) >= {"z", "delta", "xhat", "inv_std", "dgamma", "dbeta"}
    np.testing.assert_array_equal(bn["dgamma"], to_numpy(net.layers[1].dgamma))
    np.testing.assert_allclose(pool["da_prev"].sum(), pool["dout"].sum(), rtol=1e-4)   # avg pool spreads
    np.testing.assert_array_equal(drop["da_prev"], drop["dout"] * drop["mask"])
    assert "xhat (2, 4, 24, 24)" in str(steps)


def test_new_layers_round_trip_through_a_model_file(tmp_path, digits):
    x, y = digits[0][:64], digits[1][:64]
    net = _modern(np.float32)
    net.fit(x, y, epochs=1, batch_size=16, optimizer="adam", verbose=False)
    path = tmp_path / "m.npz"
    net.save(path)
    for backend in ("numpy", "emulated"):
        loaded = gpucnn.load(path, backend=backend)
        assert loaded.architecture() == net.architecture()
        for key in ("running_mean", "running_var"):
            np.testing.assert_array_equal(to_numpy(loaded.layers[1].buffers[key]),
                                          to_numpy(net.layers[1].buffers[key]))
        np.testing.assert_allclose(loaded.predict_proba(x), net.predict_proba(x), rtol=1e-4, atol=1e-6)
    assert not np.array_equal(to_numpy(net.layers[1].buffers["running_mean"]), 0)


def test_summary_counts_batchnorm_parameters():
    text = _modern(np.float32).summary()
    # conv 4*25 + 4, batch norm gamma 4 + beta 4 (running statistics are buffers), dense 576*10 + 10
    line = next(row for row in text.splitlines() if "BatchNorm2D(4, momentum=0.1, eps=1e-05)" in row)
    assert line.split()[-1] == "8" and "total parameters: 5,882" in text


@pytest.mark.parametrize("middle", ["avgpool", "batchnorm", "dropout"])
def test_the_execution_path_trains_the_new_layers_as_the_layers_do(middle, monkeypatch, digits):
    """Whatever path runs them (layer by layer today; fused stages when gpucnn/fast/ has them), one
    training step gives the layer-by-layer parameters."""
    def build():
        pool = AvgPool2D(2) if middle == "avgpool" else MaxPool2D(2)
        layers = [Conv2D(1, 3, 5)] + ([BatchNorm2D(3)] if middle == "batchnorm" else []) + [Sigmoid(), pool,
                  Flatten()] + ([Dropout(0.5)] if middle == "dropout" else []) + [Dense(432, 10)]
        return Network(layers, loss="cross_entropy", backend="numpy", seed=4)
    monkeypatch.setenv("GPUCNN_FAST", "auto")
    net = build()
    monkeypatch.setenv("GPUCNN_FAST", "off")
    generic = build()
    x, y = digits[0][:20], digits[1][:20]
    for n in (net, generic):
        n.train_step(n.backend.asarray(x), n.targets(y, 20), gpucnn.optim.SGD(0.5))
    for name, value in generic.get_arrays().items():
        np.testing.assert_allclose(net.get_arrays()[name], value, rtol=1e-5, atol=1e-6, err_msg=name)



class FeatureScale(gpucnn.Layer):
    """a = a_prev * W per feature; dW = sum over the batch of da * a_prev, da_prev = da * W."""

    def __init__(self, features):
        self.features = features
        super().__init__()

    def param_shapes(self):
        return {"W": (self.features,)}

    def initial_value(self, key, shape, rng):
        return rng.uniform(0.5, 1.5, shape)

    def forward(self, a_prev):
        self.a_prev = a_prev
        return a_prev * self.params["W"].value

    def backward(self, da):
        self.params["W"].grad = (da * self.a_prev).sum(axis=0)
        return da * self.params["W"].value

    def config(self):
        return {"features": self.features}


def test_a_registered_custom_layer_with_parameters_trains_saves_and_loads(tmp_path, rng):
    """The recipe in gpucnn/layers/__init__.py, with a parameter: gradcheck, Adam, save, load."""
    from gpucnn.layers import LAYER_TYPES
    net = Network([Dense(5, 4), FeatureScale(4), ReLU(), Dense(4, 3)], input_shape=(5,), backend="numpy",
                  loss="cross_entropy", dtype=np.float64)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    _assert_gradcheck(gpucnn.gradcheck(net, x, y, inputs=True))
    with pytest.raises(TypeError, match="register_layer"):
        net.save(tmp_path / "m.npz")                              # unregistered: refused at save
    gpucnn.register_layer(FeatureScale)
    try:
        net.fit(x, y, epochs=2, batch_size=3, optimizer="adam", lr=0.01, verbose=False)
        net.save(tmp_path / "m.npz")
        loaded = gpucnn.load(tmp_path / "m.npz", backend="numpy")
        np.testing.assert_array_equal(loaded.layers[1].params["W"].value,
                                      net.layers[1].params["W"].value.astype(np.float32))
    finally:
        LAYER_TYPES.pop("FeatureScale")


def test_deepcopy_keeps_running_statistics_and_the_dropout_generator(digits):
    import copy
    net = _modern(np.float32)
    net.cost(digits[0][:8], digits[1][:8])                       # moves the statistics, draws a mask
    twin = copy.deepcopy(net)
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(twin.layers[1].buffers[key], net.layers[1].buffers[key])
    assert twin.layers[1].buffers["running_mean"] is not net.layers[1].buffers["running_mean"]
    np.testing.assert_array_equal(to_numpy(twin.forward(digits[0][8:12])), to_numpy(net.forward(digits[0][8:12])))


@pytest.mark.slow
@pytest.mark.parametrize("settings", [dict(sanitizer="address"),
                                      dict(sanitizer="thread", workers=2, order="random", seed=3)],
                         ids=["address", "thread"])
def test_avgpool_kernels_are_clean_under_the_sanitizers(settings, rng):
    """AddressSanitizer (reads past a window) and ThreadSanitizer (races between blocks), overlapping
    windows: no report, and the reference's result."""
    from gpucnn import emulator
    x = rng.standard_normal((2, 1, 9, 7)).astype(np.float32)
    delta = rng.standard_normal((2, 1, 4, 3)).astype(np.float32)
    with emulator.settings(**settings):
        a, da_prev = _run_avgpool(get_backend("emulated"), x, delta, 3, 2)
    _check_avgpool(a, da_prev, x, delta, 3, 2, settings["sanitizer"])


def test_divergence_brings_back_the_running_statistics_with_the_parameters(digits):
    """A step whose forward holds NaN (inf pixels) fills BatchNorm's statistics with NaN; Divergence
    restores the buffers of the same moment as the parameters it keeps (before the last step with a
    finite loss)."""
    net = _modern(np.float32)
    seen, real_step = [], net.train_step

    def step(xb, y1, optimizer):
        seen.append(net.get_arrays())
        if len(seen) == 4:
            xb = xb * np.float32(np.inf)                              # 0 * inf: NaN statistics
        return real_step(xb, y1, optimizer)
    net.train_step = step
    with pytest.raises(gpucnn.Divergence), np.errstate(all="ignore"):
        net.fit(digits[0][:80], digits[1][:80], batch_size=10, optimizer="adam", verbose=False)
    assert len(seen) == 4
    for name, value in net.get_arrays().items():
        assert value.tobytes() == seen[2][name].tobytes(), name


def test_divergence_on_the_device_epoch_brings_back_the_running_statistics_too(digits):
    """The same guard in the sync-free device epoch (GenericEpoch, emulated backend): its masked
    copies restore the buffers with the parameters, of the moment the host loop restores."""
    try:
        net = _modern(np.float32, backend="emulated")
    except gpucnn.errors.BackendUnavailable as exc:      # the emulated backend needs a compiler
        pytest.skip(f"emulated backend unavailable: {exc}")
    seen, real_forward = [], net._forward

    def forward(a):
        if net.training:                                  # the steps (evaluation runs in eval mode)
            seen.append(net.get_arrays())
            if len(seen) == 4:
                a = a * np.float32(np.inf)                # 0 * inf: NaN statistics
        return real_forward(a)
    net._forward = forward
    with pytest.raises(gpucnn.Divergence), np.errstate(all="ignore"):
        net.fit(digits[0][:80], digits[1][:80], batch_size=10, optimizer="adam", verbose=False)
    assert len(seen) == 8            # the device epoch ran on to the epoch's end (its one read)
    for name, value in net.get_arrays().items():
        assert value.tobytes() == seen[2][name].tobytes(), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(momentum=1.5), r"momentum must be a finite real number in \[0, 1\], got 1.5"),
    (dict(momentum=-0.1), r"momentum must be a finite real number in \[0, 1\]"),
    (dict(momentum=float("nan")), r"momentum must be"),
    (dict(momentum=True), r"momentum must be"),
    (dict(eps=0.0), r"eps must be a finite real number > 0, got 0.0"),
    (dict(eps=float("inf")), r"eps must be"),
])
def test_batchnorm_refuses_a_momentum_outside_0_1_and_an_eps_not_above_0(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchNorm2D(3, **kwargs)
    assert BatchNorm2D(3, momentum=np.float32(1.0), eps=np.array(1e-3)).momentum == 1.0   # NumPy reals
