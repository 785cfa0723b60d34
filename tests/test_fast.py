"""The fused CPU plan (gpucnn/fast/) against the layer-by-layer path (layers/ + ops/reference.py).

The layer-by-layer path is checked against float64 finite differences (test_gradcheck.py); here the
plan must give its outputs, costs and gradients (and dC/dx after forward/backward) to float32 rounding
for every supported layer and stack, LeNet-5 and the wide net, on random inputs and real digits (blank
background: exact pooling ties), both losses, at odd batch sizes (one image, a partial chunk, the
two-thread split); bitwise the same run to run and thread to thread; and say why when it does not run.
"""
import sys
import threading

import numpy as np
import pytest

import gpucnn
from gpucnn import fast
from gpucnn import layers as L
from gpucnn.fast import common
from gpucnn.optim import SGD

from .conftest import TOL

# 1: one image; 7: a partial chunk; 70: several chunks on two threads (with _small_chunks)
BATCHES = [1, 7, 70]


def _small_chunks(plan):
    """Chunks of at most 32 images from 64 images on two threads, so that the 70 test digits make
    several, whatever the plan's own sizes (a cheap network's plan takes up to 128 per chunk).
    Returns the plan."""
    plan.chunk = min(plan.chunk, 32)
    plan.thread_min = min(plan.thread_min, 2 * plan.chunk)
    return plan


def _net(layers, loss="quadratic", input_shape=None, seed=0, **kw):
    return gpucnn.Network(layers, loss=loss, backend="numpy", seed=seed, input_shape=input_shape, **kw)


def lenet(seed=0, loss="cross_entropy"):
    return _net([L.Conv2D(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2), L.Conv2D(6, 16, 5), L.ReLU(),
                 L.MaxPool2D(2), L.Flatten(), L.Dense(400, 120), L.ReLU(), L.Dense(120, 84), L.ReLU(),
                 L.Dense(84, 10)], loss=loss, seed=seed)


def wide(seed=0):
    return _net([L.Conv2D(1, 32, 5), L.ReLU(), L.MaxPool2D(2), L.Conv2D(32, 64, 5), L.ReLU(),
                 L.MaxPool2D(2), L.Flatten(), L.Dense(1024, 10)], loss="cross_entropy", seed=seed)


# name -> builder(seed); every stack of the supported layers the plan must cover
NETS = {
    "seed-sigmoid": lambda seed=0: gpucnn.seed_network(backend="numpy", seed=seed),
    "seed-relu-ce": lambda seed=0: gpucnn.seed_network(backend="numpy", seed=seed, activation="relu",
                                                       loss="cross_entropy"),
    "seed-tanh": lambda seed=0: gpucnn.seed_network(backend="numpy", seed=seed, activation="tanh"),
    "lenet": lenet,
    "lenet-quadratic": lambda seed=0: lenet(seed, "quadratic"),
    "wide": wide,
    # Sigmoid and Tanh blocks, 2 input channels, odd sizes (each pool drops a row or a column)
    "two-block": lambda seed=0: _net([L.Conv2D(2, 4, 3), L.Sigmoid(), L.MaxPool2D(2), L.Conv2D(4, 5, 3),
                                      L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(5 * 5 * 4, 10),
                                      L.Sigmoid()], input_shape=(2, 27, 25), seed=seed),
    "padding-stride": lambda seed=0: _net([L.Conv2D(1, 4, 3, stride=2, padding=1), L.Tanh(), L.Flatten(),
                                           L.Dense(4 * 14 * 14, 10)], loss="cross_entropy", seed=seed),
    "same-3-blocks": lambda seed=0: _net([L.Conv2D(1, 4, 3, padding="same"), L.ReLU(), L.MaxPool2D(2),
                                          L.Conv2D(4, 6, 3, padding="same"), L.Sigmoid(), L.MaxPool2D(2),
                                          L.Conv2D(6, 8, 3), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                                          L.Dense(32, 10)], loss="cross_entropy", seed=seed),
    "conv-no-pool": lambda seed=0: _net([L.Conv2D(1, 3, 5), L.Sigmoid(), L.Conv2D(3, 4, 5, stride=2),
                                         L.ReLU(), L.Flatten(), L.Dense(4 * 10 * 10, 10)], seed=seed),
    "pool-before-act": lambda seed=0: _net([L.Conv2D(1, 3, 5), L.MaxPool2D(2), L.Sigmoid(), L.Flatten(),
                                            L.Dense(432, 10)], seed=seed),
    "pool3-overlap": lambda seed=0: _net([L.Conv2D(1, 12, 5), L.ReLU(), L.MaxPool2D(3, stride=2),
                                          L.MaxPool2D(3), L.Flatten(), L.Dense(12 * 3 * 3, 10)],
                                         loss="cross_entropy", seed=seed),
    "dense-stack": lambda seed=0: _net([L.Flatten(), L.Dense(784, 32), L.Tanh(), L.Dense(32, 16), L.Sigmoid(),
                                        L.Dense(16, 10), L.Sigmoid()], input_shape=(1, 28, 28), seed=seed),
    "act-after-flatten": lambda seed=0: _net([L.Conv2D(1, 5, 5, stride=3), L.Flatten(), L.ReLU(),
                                              L.Dense(5 * 8 * 8, 10)], loss="cross_entropy", seed=seed),
    "flatten-last": lambda seed=0: _net([L.Conv2D(1, 2, 5, stride=5), L.ReLU(), L.MaxPool2D(5), L.Flatten()],
                                        loss="cross_entropy", seed=seed),
}
if hasattr(L, "Dropout"):
    NETS["dropout-eval"] = lambda seed=0: _net([L.Conv2D(1, 3, 5), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                                                L.Dropout(0.5), L.Dense(432, 10)], seed=seed).eval()
    # train mode: the plan draws each step's masks through the layer (the same masks as the layer path);
    # after a channel-last Flatten (its order) and on maps (channel-last)
    NETS["dropout-train"] = lambda seed=0: _net([L.Conv2D(1, 3, 5), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                                                 L.Dropout(0.5), L.Dense(432, 16), L.Tanh(), L.Dropout(0.2),
                                                 L.Dense(16, 10)], seed=seed)
    NETS["dropout-maps"] = lambda seed=0: _net([L.Conv2D(1, 4, 5), L.ReLU(), L.Dropout(0.3), L.MaxPool2D(2),
                                                L.Conv2D(4, 4, 3), L.Dropout(0.5), L.Sigmoid(), L.Flatten(),
                                                L.Dense(4 * 10 * 10, 10)], loss="cross_entropy", seed=seed)
if hasattr(L, "BatchNorm2D"):
    # train mode: batch statistics over the whole batch (the plan runs in phases); two BN layers, one
    # straight after the input (2 channels), one between an activation and a pool; and eval mode. (No
    # BN straight after a conv here: the conv's bias gradient would be 0 by the math, rounding noise.)
    NETS["batchnorm-train"] = lambda seed=0: _net([L.BatchNorm2D(2), L.Tanh(), L.Conv2D(2, 4, 3), L.ReLU(),
                                                   L.BatchNorm2D(4), L.MaxPool2D(2), L.Flatten(),
                                                   L.Dense(4 * 12 * 11, 10)], loss="cross_entropy",
                                                  input_shape=(2, 27, 25), seed=seed)
    NETS["batchnorm-eval"] = lambda seed=0: _bn_eval(NETS["batchnorm-train"](seed))
    # conv -> BN -> act -> pool: the conv's output tap-major through the BN (the pool reads it whole),
    # and (27 x 27 input: a 23 x 23 conv output, the pool reads 22 x 22) kept as it is
    NETS["conv-bn-pool"] = lambda seed=0: _net([L.Conv2D(1, 4, 5), L.BatchNorm2D(4), L.Sigmoid(), L.MaxPool2D(2),
                                                L.Conv2D(4, 6, 3), L.BatchNorm2D(6), L.ReLU(), L.MaxPool2D(2),
                                                L.Flatten(), L.Dense(6 * 5 * 5, 10)], loss="cross_entropy",
                                               seed=seed)
    NETS["conv-bn-pool-odd"] = lambda seed=0: _net([L.Conv2D(1, 4, 5), L.BatchNorm2D(4), L.ReLU(),
                                                    L.MaxPool2D(2), L.Flatten(), L.Dense(4 * 11 * 11, 10)],
                                                   loss="cross_entropy", input_shape=(1, 27, 27), seed=seed)
if hasattr(L, "AvgPool2D"):
    NETS["avgpool"] = lambda seed=0: _net([L.Conv2D(1, 4, 5), L.Sigmoid(), L.AvgPool2D(2), L.Conv2D(4, 4, 3),
                                           L.ReLU(), L.AvgPool2D(3, stride=2), L.Flatten(),
                                           L.Dense(4 * 4 * 4, 10)], loss="cross_entropy", seed=seed)


def _bn_eval(net):
    """Eval mode with running statistics away from (0, 1), so the affine map is not the identity."""
    for layer in net.layers:
        if isinstance(layer, L.BatchNorm2D):
            c = layer.num_features
            layer.buffers["running_mean"] = np.linspace(-0.3, 0.4, c, dtype=np.float32)
            layer.buffers["running_var"] = np.linspace(0.5, 2.0, c, dtype=np.float32)
            layer.gamma = np.linspace(0.8, 1.3, c, dtype=np.float32)
    return net.eval()


# networks with a gradient that is 0 by the math (a conv's bias straight before a batch norm)
ZERO_BY_THE_MATH = {"conv-bn-pool", "conv-bn-pool-odd"}


class NoStep:
    """An optimizer that changes nothing: train_step then only computes the gradients."""
    lr = 0.0

    def step(self, params):
        pass


def grads(net):
    return [np.array(p.grad) for p in net.parameters()]


def reference(net, x, y1):
    """Output, cost, gradients and dC/dx of the layer-by-layer path."""
    out = np.array(net._forward(x))
    cost = net.loss.cost(np, out, y1)
    dx = np.array(net._backward(y1))
    return out, cost, grads(net), dx


def close(a, b):
    np.testing.assert_allclose(a, b, **TOL["float32"])


def close_grads(ours, ref, net_scale=False):
    """Scale-aware: an entry near 0 is compared against its tensor's scale (``net_scale``: against the
    whole network's, for a tensor that is 0 by the math, e.g. the bias of a conv a batch norm follows,
    whose gradient is rounding noise on both sides)."""
    floor = max(np.abs(r).max() for r in ref) if net_scale else 0.0
    for g, r in zip(ours, ref):
        assert g.shape == r.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=TOL["float32"]["rtol"], atol=1e-5 * max(np.abs(r).max(), floor))


@pytest.fixture(scope="module")
def batch(digits):
    x, y = digits
    return np.ascontiguousarray(x[:70]), np.eye(10, dtype=np.float32)[y[:70]]


def inputs_for(net, batch, n, kind="digits"):
    """Real digits (or uniform noise); more channels: the digit and its mirror images, cropped."""
    x, y1 = batch[0][:n], batch[1][:n, :net.classes]
    if kind == "random":
        x = np.random.default_rng(n).random(x.shape, dtype=np.float32)
    c, h, w = net.input_shape
    x = np.concatenate([x, x[:, :, :, ::-1], x[:, :, ::-1]][:c], axis=1)[:, :, :h, :w]
    return np.ascontiguousarray(x), np.ascontiguousarray(y1)


@pytest.mark.parametrize("kind", ["digits", "random"])
@pytest.mark.parametrize("name", NETS)
def test_step_matches_the_layer_by_layer_path(batch, name, kind):
    ref_net, net = NETS[name](), NETS[name]()
    plan = _small_chunks(net._fast)
    assert isinstance(plan, fast.StagePlan), net.execution_path()
    assert len(plan.chunks(70)) > 1
    for n in BATCHES:
        x, y1 = inputs_for(net, batch, n, kind)
        out_ref, cost_ref, g_ref, _ = reference(ref_net, x, y1)
        cost, out = plan.train_step(x, y1, NoStep())
        close(out, out_ref)
        assert cost == pytest.approx(cost_ref, rel=1e-5)
        close_grads(grads(net), g_ref, net_scale=name in ZERO_BY_THE_MATH)
        close(plan.forward(x), ref_net._forward(x))      # (train-mode dropout: both draw anew)


@pytest.mark.parametrize("name", ["seed-sigmoid", "lenet", "wide", "two-block", "padding-stride",
                                  "pool3-overlap", "dense-stack", "batchnorm-train", "batchnorm-eval", "conv-bn-pool"])
def test_forward_then_backward_runs_the_plan_and_gives_dx(batch, name):
    """net.forward runs the plan (keeping what backward needs); net.backward fills every grad and
    returns dC/dx; the gradients are the bits a training step gives."""
    ref_net, net, stepped = NETS[name](), NETS[name](), NETS[name]()
    _small_chunks(net._fast), _small_chunks(stepped._fast)
    x, y1 = inputs_for(net, batch, 70)
    out_ref, _, g_ref, dx_ref = reference(ref_net, x, y1)
    out = net.forward(x)
    assert net._fast.holds(out)
    close(out, out_ref)
    net.predict(x[:3])                                    # an inference in between changes nothing
    dx = net.backward(y1)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=TOL["float32"]["rtol"], atol=1e-5 * np.abs(dx_ref).max())
    close_grads(grads(net), g_ref, net_scale=name in ZERO_BY_THE_MATH)
    stepped._fast.train_step(x, y1, NoStep())
    assert [g.tobytes() for g in grads(net)] == [g.tobytes() for g in grads(stepped)]


def test_pooling_ties_route_to_the_first_maximum(batch):
    """Blank background makes exact ties (z = b); the conv bias gradient is where a wrong rule shows."""
    x, y1 = batch
    for build in (NETS["seed-sigmoid"], NETS["pool3-overlap"]):   # the banded stage and the generic one
        ref_net, net = build(), build()
        reference(ref_net, x, y1)
        pool = next(layer for layer in ref_net.layers if isinstance(layer, L.MaxPool2D))
        a_prev = ref_net.layers[ref_net.layers.index(pool) - 1].a
        size, stride = pool.size, pool.stride
        taps = np.stack([a_prev[:, :, i:i + stride * (pool.argmax.shape[2] - 1) + 1:stride,
                                j:j + stride * (pool.argmax.shape[3] - 1) + 1:stride]
                         for i in range(size) for j in range(size)], axis=-1)
        ties = (taps == taps.max(axis=-1, keepdims=True)).sum(axis=-1) > 1
        assert ties.mean() > 0.1, "the batch must contain pooling ties for this test to mean anything"
        assert (pool.argmax[ties] == taps[ties].argmax(axis=-1)).all()      # np.argmax: the first one
        net._fast.train_step(x, y1, NoStep())
        np.testing.assert_allclose(net.layers[0].db, ref_net.layers[0].db, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["seed-sigmoid", "lenet", "wide"])
def test_training_is_bitwise_reproducible_and_tracks_the_reference(batch, name):
    runs = []
    for use_fast in (True, True, False):
        net = NETS[name](seed=3)
        _small_chunks(net._fast)
        x, y1 = inputs_for(net, batch, 70)
        step = net._fast.train_step if use_fast else net.train_step
        if not use_fast:
            net._fast = None
        opt = SGD(0.05, momentum=0.9, weight_decay=1e-4)
        for n in (70, 33, 1, 70):                # two threads, one, one image, two again
            step(x[:n], y1[:n], opt)
        runs.append(net.get_params())
    for key in runs[0]:
        assert runs[0][key].tobytes() == runs[1][key].tobytes(), key
        np.testing.assert_allclose(runs[0][key], runs[2][key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["seed-sigmoid", "lenet", "wide"])
def test_threads_do_not_change_the_numbers(batch, name):
    """Which thread ran a chunk must not matter: one thread and two give the same bytes."""
    pytest.importorskip("threadpoolctl")           # without it the step never goes two-threaded
    results = []
    for threads in (2, 1):
        net = NETS[name]()
        plan = net._fast
        plan.threads = threads
        _small_chunks(plan)
        assert len(plan.chunks(70)) > 1 and plan.thread_min <= 70
        x, y1 = inputs_for(net, batch, 70)
        cost, out = plan.train_step(x, y1, NoStep())
        results.append([out.tobytes()] + [g.tobytes() for g in grads(net)])
    assert results[0] == results[1]


def test_chunks_cover_the_batch_in_as_few_equal_chunks_as_the_size_allows():
    plan = NETS["lenet"]()._fast
    for most in (1, 9, 32):
        plan.chunk = most
        for n in (0, 1, 8, 9, 10, 63, 64, 65, 70, 256):
            chunks = plan.chunks(n)
            sizes = [e - s for s, e in chunks]
            assert [s for s, _ in chunks] == [0, *(e for _, e in chunks)][:len(chunks)]   # contiguous
            assert sum(sizes) == n and len(chunks) == -(-n // most)
            assert not sizes or (max(sizes) <= most and max(sizes) - min(sizes) <= 1)
    plan.chunk = 9
    assert plan.chunks(64) == [(8 * k, 8 * k + 8) for k in range(8)]    # not 7 x 9 + 1


@pytest.mark.parametrize("name", ["seed-sigmoid", "lenet"])
def test_chunks_split_over_ranks_give_the_single_process_bits(batch, name):
    """The data-parallel contract: whole chunks per rank, parts combined in chunk order."""
    single, net = NETS[name](), NETS[name]()
    _small_chunks(single._fast), _small_chunks(net._fast)
    x, y1 = inputs_for(net, batch, 70)
    single._fast.train_step(x, y1, NoStep())
    plan = net._fast
    chunks = plan.chunks(70)
    assert chunks == plan.chunks(70) and chunks[0][0] == 0 and chunks[-1][1] == 70 and len(chunks) > 1
    params, out = plan.params(), np.empty((70, 10), np.float32)
    cut = len(chunks) // 2                              # rank 0 takes the first chunks, rank 1 the rest
    parts = (plan.chunk_parts(x, y1, out, params, range(cut), 70)
             + plan.chunk_parts(x, y1, out, params, range(cut, len(chunks)), 70))
    plan.store_grads(plan.combine(parts))
    for g, r in zip(grads(net), grads(single)):
        assert g.tobytes() == r.tobytes()


def test_reads_parameters_every_step_and_leaves_gradients(batch):
    x, y1 = batch[0][:9], batch[1][:9]
    net, ref_net = lenet(), lenet()
    net._fast.train_step(x, y1, SGD(0.1))
    net.layers[0].W = np.random.default_rng(5).normal(0, 0.2, (6, 1, 5, 5)).astype(np.float32)
    net.layers[7].b = np.full(120, 0.25, np.float32)          # assigned between steps, as a user may
    ref_net.set_params(net.get_params())
    _, _, g_ref, _ = reference(ref_net, x, y1)
    net._fast.train_step(x, y1, NoStep())
    close_grads(grads(net), g_ref)


def test_non_finite_cost_skips_the_update(batch):
    x, y1 = batch[0][:5], batch[1][:5]
    net = gpucnn.seed_network(backend="numpy")
    net.layers[4].W[0, 0] = np.nan            # in place: assigning a NaN is refused
    before = net.get_params()
    cost, out = net._fast.train_step(x, y1, SGD(0.1))
    assert not np.isfinite(cost)
    for key, value in net.get_params().items():
        np.testing.assert_array_equal(value, before[key])


class Scale(L.Layer):
    """A custom layer (not one of gpucnn's): the plan steps aside for it, naming it."""

    def forward(self, a_prev):
        return a_prev * 2.0

    def backward(self, da):
        return da * 2.0


class Unstaged(Scale):
    """Stands for a library layer type added without its fused stage."""


Unstaged.__module__ = "gpucnn.layers.unstaged"


def test_the_plan_says_why_it_does_not_run_and_strict_raises(monkeypatch):
    monkeypatch.setenv("GPUCNN_FAST", "strict")
    custom = _net([L.Flatten(), Scale(), L.Dense(784, 10)], input_shape=(1, 28, 28))
    assert custom._fast is None and "layer 1 Scale has no fused stage (a custom layer)" in custom.execution_path()
    with pytest.raises(fast.NoPlan, match="layer 1 Unstaged has no fused stage"):
        _net([L.Flatten(), Unstaged(), L.Dense(784, 10)], input_shape=(1, 28, 28))
    monkeypatch.setenv("GPUCNN_FAST", "auto")
    net = _net([L.Flatten(), Unstaged(), L.Dense(784, 10)], input_shape=(1, 28, 28))
    assert net._fast is None and "layer 1 Unstaged has no fused stage" in net.summary()
    monkeypatch.setenv("GPUCNN_FAST", "strict")
    seed = gpucnn.seed_network(backend="numpy")
    assert seed._fast is not None and "fused CPU plan StagePlan" in seed.summary()
    assert _net([L.Flatten(), L.Dense(784, 10)], input_shape=(1, 28, 28), dtype=np.float64)._fast is None
    monkeypatch.setenv("GPUCNN_FAST", "off")
    assert gpucnn.seed_network(backend="numpy")._fast is None


@pytest.mark.skipif(not hasattr(L, "Dropout"), reason="no Dropout layer in this tree")
def test_train_mode_dropout_runs_in_the_plan_with_the_layers_masks(batch):
    x, y1 = batch[0][:20], batch[1][:20]
    net, ref = NETS["dropout-train"](), NETS["dropout-train"]()
    assert net._plan() is net._fast
    for _ in range(2):                                 # two steps: the generators move on alike
        out = net.forward(x)
        assert net._fast.holds(out) and net.layers[4].mask is None      # the plan ran, not the layer
        close(out, ref._forward(x))
        assert np.array_equal(net.layers[4].keep, ref.layers[4].keep)   # the same draws, kept alike
        net.backward(y1)
        ref._backward(y1)
        close_grads(grads(net), grads(ref))
    net.eval()
    close(net.forward(x), ref.eval()._forward(x))      # eval: the identity, nothing drawn
    assert net.layers[4].keep.shape == (20, 432)


def test_falls_back_on_other_backends():
    try:
        net = gpucnn.seed_network(backend="emulated")
    except gpucnn.errors.BackendUnavailable as exc:   # the emulated backend needs a compiler
        pytest.skip(f"emulated backend unavailable: {exc}")
    assert net._fast is None and "numpy backend" in net._fast_reason


def test_process_settings_are_restored_after_concurrent_calls(batch):
    """Two threads in predict_proba at once, each going two-threaded: the switch interval and the
    OpenBLAS thread count are the process's own again once both have returned (refcounted scope)."""
    pytest.importorskip("threadpoolctl")
    net = lenet()
    x = np.ascontiguousarray(np.concatenate([batch[0]] * 2)[:128])
    assert x.shape[0] >= net._fast.thread_min
    net._fast.threads = 2                     # (by default the plan's timings choose)
    interval = sys.getswitchinterval()
    blas = common.ONE_BLAS_THREAD.get()
    seen, errors = [], []

    def call():
        try:
            for _ in range(6):
                net.predict_proba(x, batch_size=128)
                seen.append(sys.getswitchinterval())
        except BaseException as exc:          # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sys.getswitchinterval() == interval
    assert common.ONE_BLAS_THREAD.get() == blas
    assert common.SHORT_SWITCH.depth == 0 and common.ONE_BLAS_THREAD.depth == 0


def test_a_scope_restores_what_the_first_one_in_saved():
    values = [5.0]
    setting = common.ProcessSetting(lambda: values[0], lambda v: values.__setitem__(0, v), lambda s: 1.0)
    with setting:
        with setting:                         # a second caller inside the first
            assert values[0] == 1.0
        assert values[0] == 1.0               # the first one still needs it
    assert values[0] == 5.0


def test_a_layer_patched_on_the_instance_runs_layer_by_layer(batch):
    """A planted bug (or a user's patch) on one layer instance is what the network then runs."""
    net = gpucnn.seed_network(backend="numpy")
    net.layers[2].backward = lambda da: da.repeat(2, axis=2).repeat(2, axis=3)
    assert net._plan() is None and "layer 2 MaxPool2D has its forward or backward replaced" in net._fast.available()
    net.forward(batch[0][:2])
    assert net.backward(batch[1][:2]).shape == (2, 1, 28, 28)


def test_two_threads_run_when_they_pay():
    """ThreadChoice times both modes, then runs the faster, retrying the other now and then."""
    choice = common.ThreadChoice()
    picks = []
    for _ in range(40):
        two = choice.pick(64)
        picks.append(two)
        choice.record(64, two, 1.0 if two else 2.0)          # two threads twice as fast here
    assert picks[:4] == [True, True, False, False]
    assert picks[4:].count(False) == 36 // choice.explore     # the slower mode, once per round
    picks = []
    for _ in range(40):
        two = choice.pick(64)
        picks.append(two)
        choice.record(64, two, 3.0 if two else 2.0)          # now the machine is busy: one wins
    assert picks[-16:].count(True) <= 2


def test_a_failing_chunk_raises_its_own_error_and_stops_the_worker(batch, monkeypatch):
    """An error in a two-thread step reaches the caller as itself, and the worker stops taking chunks."""
    pytest.importorskip("threadpoolctl")
    net = NETS["seed-sigmoid"]()
    plan = net._fast
    plan.threads = 2
    _small_chunks(plan)
    x, y1 = inputs_for(net, batch, 70)
    calls = []

    def failing(chunk, *args):
        calls.append(chunk.index)
        raise ArithmeticError("planted")
    monkeypatch.setattr(plan, "_forward_chunk", failing)
    with pytest.raises(ArithmeticError, match="planted"):
        plan.train_step(x, y1, NoStep())
    assert len(calls) <= 2                   # each thread failed on its first chunk, none went on


@pytest.mark.skipif(not hasattr(L, "BatchNorm2D"), reason="no BatchNorm2D layer in this tree")
def test_batchnorm_in_train_mode_trains_in_phases_like_the_layers(batch):
    """Three SGD steps at 70 images (two threads, a partial chunk): parameters and running statistics
    as the layer-by-layer path leaves them; the phases need every chunk; one value per channel is
    refused in the layer's words."""
    net, ref = NETS["batchnorm-train"](), NETS["batchnorm-train"]()
    assert net._plan() is net._fast and "fused CPU plan" in net.summary()
    assert len(_small_chunks(net._fast).chunks(70)) > 1
    x, y1 = inputs_for(net, batch, 70)
    opt, ref_opt = SGD(0.1, momentum=0.9), SGD(0.1, momentum=0.9)
    for _ in range(3):
        net.train_step(x, y1, opt)
        ref._forward(x)
        ref._backward(y1)
        ref_opt.step(ref.parameters())
    for ours, theirs in zip(net.parameters(), ref.parameters()):
        np.testing.assert_allclose(ours.value, theirs.value, rtol=1e-4, atol=1e-6)
    for layer, twin in zip(net.layers, ref.layers):
        for key, value in layer.buffers.items():
            np.testing.assert_allclose(value, twin.buffers[key], rtol=1e-5, atol=1e-7)
    # a forward nobody takes a backward of (train mode, so in phases too) leaves the kept one alone
    twin = NETS["batchnorm-train"]()
    twin.set_params(net.get_arrays())                  # parameters and running statistics
    net.forward(x[:20])
    net._infer(x[20:])
    net.backward(y1[:20])
    twin.forward(x[:20])
    twin.backward(y1[:20])
    assert [g.tobytes() for g in grads(net)] == [g.tobytes() for g in grads(twin)]
    plan, n = net._fast, 70
    before = net.get_arrays()                          # params() without n: a probe, nothing moves
    plan.chunk_parts(x[:1], y1[:1], np.empty((1, 10), np.float32), plan.params(), [0], 1)
    assert all(v.tobytes() == net.get_arrays()[k].tobytes() for k, v in before.items())
    with pytest.raises(ValueError, match="need every chunk"):
        plan.chunk_parts(x, y1, np.empty((n, 10), np.float32), plan.params(n), [0], n)
    one = _net([L.BatchNorm2D(2), L.Flatten()], input_shape=(2, 1, 1))
    assert one._plan() is one._fast
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        one.forward(x[:1, :, :1, :1])
