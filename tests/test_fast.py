"""The CPU fast path (gpucnn/fast.py) against the readable reference path (layers.py + ops/reference.py).

The reference is checked by float64 finite differences elsewhere (test_gradcheck.py); here the fast
path must give the reference's outputs, costs and gradients to float32 tolerance, on real digits
(blank background: exact pooling ties), at odd batch sizes (partial chunks, one image, the two-thread
split), bitwise the same run to run, and fall back (plan None) for what it does not handle.
"""
import numpy as np
import pytest

import gpucnn
from gpucnn import fast
from gpucnn import layers as L
from gpucnn.optim import SGD

from .conftest import TOL

# 1: one image; 7: a partial chunk; 70: two threads, each with full chunks and a partial one
BATCHES = [1, 7, 70]


def wide_network(seed=0):
    layers = [L.Conv2D(1, 32, 5), L.ReLU(), L.MaxPool2D(2), L.Conv2D(32, 64, 5), L.ReLU(),
              L.MaxPool2D(2), L.Flatten(), L.Dense(1024, 10)]
    return gpucnn.Network(layers, loss="cross_entropy", backend="numpy", seed=seed)


def two_block_network(seed=0):
    """Sigmoid and Tanh blocks, 2 input channels, odd sizes (each pool drops a row or a column)."""
    layers = [L.Conv2D(2, 4, 3), L.Sigmoid(), L.MaxPool2D(2), L.Conv2D(4, 5, 3), L.Tanh(),
              L.MaxPool2D(2), L.Flatten(), L.Dense(5 * 5 * 4, 10), L.Sigmoid()]
    return gpucnn.Network(layers, backend="numpy", seed=seed, input_shape=(2, 27, 25))


# name -> (builder, the plan class it must get)
NETS = {
    "seed-sigmoid": (lambda seed=0: gpucnn.seed_network(backend="numpy", seed=seed), fast.SeedPlan),
    "seed-relu-ce": (lambda seed=0: gpucnn.seed_network(backend="numpy", seed=seed, activation="relu",
                                                        loss="cross_entropy"), fast.SeedPlan),
    "seed-tanh": (lambda seed=0: gpucnn.seed_network(backend="numpy", seed=seed, activation="tanh"),
                  fast.SeedPlan),
    "wide": (wide_network, fast.ConvStackPlan),
    "two-block": (two_block_network, fast.ConvStackPlan),
}


class NoStep:
    """An optimizer that changes nothing: train_step then only computes the gradients."""
    lr = 0.0

    def step(self, layers):
        pass


def onehot(labels):
    return np.eye(10, dtype=np.float32)[labels]


def grads(net):
    return [np.array(p.grad) for p in net.parameters()]


def reference(net, x, y1):
    """Output, cost and gradients of the generic layer-by-layer path."""
    out = np.array(net._forward(x))
    cost = net.loss.cost(np, out, y1)
    net._backward(y1)
    return out, cost, grads(net)


def close(a, b):
    np.testing.assert_allclose(a, b, **TOL["float32"])


@pytest.fixture(scope="module")
def batch(digits):
    x, y = digits
    return np.ascontiguousarray(x[:70]), onehot(y[:70])


def inputs_for(net, batch, n):
    """Real digits; for two input channels, the digit and its mirror image, cropped to the shape."""
    x, y1 = batch[0][:n], batch[1][:n]
    c, h, w = net.input_shape
    if c == 2:
        x = np.ascontiguousarray(np.concatenate([x, x[:, :, :, ::-1]], axis=1)[:, :, :h, :w])
    return x, y1


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("n", BATCHES)
def test_step_matches_reference(batch, name, n):
    build, plan_class = NETS[name]
    ref_net, net = build(), build()
    plan = fast.plan_for(net)[0]
    assert type(plan) is plan_class
    x, y1 = inputs_for(net, batch, n)
    out_ref, cost_ref, g_ref = reference(ref_net, x, y1)
    cost, out = plan.train_step(x, y1, NoStep())
    close(out, out_ref)
    assert cost == pytest.approx(cost_ref, rel=1e-5)
    for g, r in zip(grads(net), g_ref):
        assert g.shape == r.shape and g.dtype == np.float32
        # scale-aware: a gradient entry near 0 is compared against the tensor's scale
        np.testing.assert_allclose(g, r, rtol=TOL["float32"]["rtol"], atol=1e-5 * np.abs(r).max())
    close(plan.forward(x), out_ref)


def test_pooling_ties_route_to_the_first_maximum(batch):
    """Blank background makes exact ties (z = b); the conv bias gradient is where a wrong rule shows."""
    x, y1 = batch
    ref_net, net = gpucnn.seed_network(backend="numpy"), gpucnn.seed_network(backend="numpy")
    reference(ref_net, x, y1)
    pool = ref_net.layers[2]
    a_prev = ref_net.layers[1].a
    windows = a_prev.reshape(70, 3, 12, 2, 12, 2).transpose(0, 1, 2, 4, 3, 5).reshape(70, 3, 12, 12, 4)
    ties = (windows == windows.max(axis=-1, keepdims=True)).sum(axis=-1) > 1
    assert ties.mean() > 0.1, "the batch must contain pooling ties for this test to mean anything"
    assert (pool.argmax[ties] == windows[ties].argmax(axis=-1)).all()
    fast.plan_for(net)[0].train_step(x, y1, NoStep())
    np.testing.assert_allclose(net.layers[0].db, ref_net.layers[0].db, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["seed-sigmoid", "wide"])
def test_training_is_bitwise_reproducible_and_tracks_the_reference(batch, name):
    runs = []
    for use_fast in (True, True, False):
        net = NETS[name][0](seed=3)
        x, y1 = inputs_for(net, batch, 70)
        step = fast.plan_for(net)[0].train_step if use_fast else net.train_step
        opt = SGD(0.5, momentum=0.9, weight_decay=1e-4)
        for k in range(4):                       # 70 (two threads), then 33, 1 and 70 again
            n = (70, 33, 1, 70)[k]
            cost, out = step(x[:n], y1[:n], opt)
        runs.append(net.get_params())
    for name in runs[0]:
        assert runs[0][name].tobytes() == runs[1][name].tobytes(), name
        np.testing.assert_allclose(runs[0][name], runs[2][name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["seed-sigmoid", "wide"])
def test_threads_do_not_change_the_numbers(batch, name):
    """Which thread ran a chunk must not matter: one thread and two give the same bytes."""
    pytest.importorskip("threadpoolctl")           # without it the step never goes two-threaded
    results = []
    for thread_min in (None, 10**9):
        net = NETS[name][0]()
        plan = fast.plan_for(net)[0]
        plan.thread_min = thread_min if thread_min else plan.thread_min
        assert plan.blas.active and len(plan.chunks(70)) > 1
        x, y1 = inputs_for(net, batch, 70)
        cost, out = plan.train_step(x, y1, NoStep())
        results.append([out.tobytes()] + [g.tobytes() for g in grads(net)])
    assert results[0] == results[1]


def test_reads_parameters_every_step_and_leaves_gradients(batch):
    x, y1 = batch[0][:9], batch[1][:9]
    net, ref_net = gpucnn.seed_network(backend="numpy"), gpucnn.seed_network(backend="numpy")
    plan = fast.plan_for(net)[0]
    plan.train_step(x, y1, SGD(0.1))
    new_W = np.random.default_rng(5).normal(0, 0.2, (3, 1, 5, 5)).astype(np.float32)
    net.layers[0].W = new_W                      # assigned between steps, as a user may
    net.layers[4].b = np.full(10, 0.25, np.float32)
    ref_net.set_params(net.get_params())
    _, _, g_ref = reference(ref_net, x, y1)
    plan.train_step(x, y1, NoStep())
    for g, r in zip(grads(net), g_ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())
    assert net.layers[0].dW.shape == (3, 1, 5, 5) and net.layers[4].dW.shape == (10, 432)


def test_non_finite_cost_skips_the_update(batch):
    x, y1 = batch[0][:5], batch[1][:5]
    net = gpucnn.seed_network(backend="numpy")
    plan = fast.plan_for(net)[0]
    net.layers[4].W[0, 0] = np.nan            # in place: assigning a NaN is refused
    before = net.get_params()
    cost, out = plan.train_step(x, y1, SGD(0.1))
    assert not np.isfinite(cost)
    after = net.get_params()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def _net(layers, **kw):
    return gpucnn.Network(layers, backend=kw.pop("backend", "numpy"), **kw)


@pytest.mark.parametrize("build", [
    lambda: _net([L.Conv2D(1, 3, 5), L.Sigmoid(), L.MaxPool2D(2), L.Flatten(), L.Dense(432, 10)],
                 dtype=np.float64),
    lambda: _net([L.Conv2D(1, 3, 5, padding=2), L.Sigmoid(), L.MaxPool2D(2), L.Flatten(), L.Dense(588, 10)]),
    lambda: _net([L.Conv2D(1, 3, 5, stride=2), L.Sigmoid(), L.MaxPool2D(2), L.Flatten(), L.Dense(108, 10)]),
    lambda: _net([L.Conv2D(1, 3, 5), L.Sigmoid(), L.MaxPool2D(3), L.Flatten(), L.Dense(192, 10)]),
    lambda: _net([L.Flatten(), L.Dense(784, 10)], input_shape=(1, 28, 28)),
    lambda: _net([L.Conv2D(1, 3, 5), L.Sigmoid(), L.Flatten(), L.Dense(1728, 10)]),
    lambda: _net([L.Conv2D(1, 3, 5), L.MaxPool2D(2), L.Sigmoid(), L.Flatten(), L.Dense(432, 10)]),
    lambda: _net([L.Conv2D(1, 3, 5), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(432, 20),
                  L.Sigmoid(), L.Dense(20, 10)]),
], ids=["float64", "padding", "stride", "pool3", "dense-only", "no-pool", "pool-before-act",
        "two-dense"])
def test_falls_back_for_what_it_does_not_handle(build):
    assert fast.plan_for(build())[0] is None


def test_falls_back_on_other_backends():
    try:
        net = gpucnn.seed_network(backend="emulated")
    except Exception as exc:                      # the emulated backend needs a compiler
        pytest.skip(f"emulated backend unavailable: {exc}")
    assert fast.plan_for(net)[0] is None


def test_odd_geometry_still_matches(rng):
    """A 3x3 kernel on 15x17 input: odd conv output (pool drops a row), block width 6 or 4."""
    layers = [L.Conv2D(1, 4, 3), L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(4 * 6 * 7, 5), L.Sigmoid()]
    net = _net(layers, input_shape=(1, 15, 17))
    ref = _net([L.Conv2D(1, 4, 3), L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(4 * 6 * 7, 5),
                L.Sigmoid()], input_shape=(1, 15, 17))
    plan = fast.plan_for(net)[0]
    assert plan is not None
    x = rng.random((6, 1, 15, 17), dtype=np.float32)
    y1 = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 6)]
    out_ref, _, g_ref = reference(ref, x, y1)
    _, out = plan.train_step(x, y1, NoStep())
    close(out, out_ref)
    for g, r in zip(grads(net), g_ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_network_uses_the_plan(batch):
    net = gpucnn.seed_network(backend="numpy")
    assert isinstance(net._fast, fast.SeedPlan)
    x, y1 = batch[0][:4], batch[1][:4]
    cost, out = net.train_step(x, y1, NoStep())
    ref = gpucnn.seed_network(backend="numpy")
    out_ref, cost_ref, _ = reference(ref, x, y1)
    close(out, out_ref)
    assert gpucnn.seed_network(backend="numpy", seed=1)._fast is not None


@pytest.mark.parametrize("name", ["seed-sigmoid", "wide"])
def test_chunks_split_over_ranks_give_the_single_process_bits(batch, name):
    """The data-parallel contract: whole chunks per rank, parts combined in chunk order."""
    x, y1 = inputs_for(NETS[name][0](), batch, 70)
    single = NETS[name][0]()
    fast.plan_for(single)[0].train_step(x, y1, NoStep())
    net = NETS[name][0]()
    plan = fast.plan_for(net)[0]
    chunks = plan.chunks(70)
    assert chunks == plan.chunks(70) and chunks[0][0] == 0 and chunks[-1][1] == 70 and len(chunks) > 1
    params, out = plan.params(), np.empty((70, 10), np.float32)
    cut = len(chunks) // 2                              # rank 0 takes the first chunks, rank 1 the rest
    parts = (plan.chunk_parts(x, y1, out, params, range(cut), 70)
             + plan.chunk_parts(x, y1, out, params, range(cut, len(chunks)), 70))
    plan.store_grads(plan.combine(parts))
    for g, r in zip(grads(net), grads(single)):
        assert g.tobytes() == r.tobytes()
