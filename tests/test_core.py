"""The core's object model: parameters owned by their layer, layers owned by one network, copies,
modes, the summary and the import-free public surface."""
import copy

import numpy as np
import pytest

import gpucnn
from gpucnn import Conv2D, Dense, Flatten, MaxPool2D, Network, Parameter, ReLU, Sigmoid
from gpucnn.layers import LayerOwnershipError


def _x(n=4, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def test_parameters_are_objects_with_value_and_grad():
    net = gpucnn.seed_network(backend="numpy")
    params = net.parameters()
    assert [p.name for p in params] == ["layers.0.W", "layers.0.b", "layers.4.W", "layers.4.b"]
    assert all(isinstance(p, Parameter) and p.grad is None for p in params)
    assert params[0].value is net.layers[0].W             # the live array, not a copy
    net.forward(_x())
    net.backward(np.arange(4))
    assert params[2].grad is net.layers[4].dW and params[2].grad.shape == (10, 432)
    assert dict(net.named_parameters())["layers.4.b"] is params[3]


def test_optimizer_sees_only_parameter_objects():
    net = gpucnn.seed_network(backend="numpy")
    x, y = _x(), np.arange(4)
    before = net.get_params()
    net.forward(x)
    net.backward(y)
    grads = {p.name: p.grad.copy() for p in net.parameters()}
    gpucnn.optim.SGD(0.5).step(net.parameters())
    for name, value in net.get_params().items():
        np.testing.assert_allclose(value, before[name] - 0.5 * grads[name], rtol=1e-6, atol=1e-7)


def test_the_same_layer_twice_in_one_network_is_refused():
    act = Sigmoid()
    with pytest.raises(LayerOwnershipError, match="layers 1 and 5 are the same"):
        Network([Conv2D(1, 3, 5), act, MaxPool2D(2), Flatten(), Dense(432, 10), act], backend="numpy")


def test_a_layer_of_another_network_is_refused_and_a_deep_copy_keeps_its_weights():
    trained = gpucnn.seed_network(backend="numpy", seed=3)
    W = trained.layers[0].W.copy()
    with pytest.raises(LayerOwnershipError, match="copy.deepcopy"):
        Network(trained.layers[:4] + [Dense(432, 5)], backend="numpy")
    np.testing.assert_array_equal(trained.layers[0].W, W)           # the trained net is untouched
    new = Network([copy.deepcopy(layer) for layer in trained.layers[:4]] + [Dense(432, 5)], backend="numpy")
    np.testing.assert_array_equal(new.layers[0].W, W)                # transfer learning keeps them
    assert new.layers[0].W is not trained.layers[0].W


def test_a_failed_construction_leaves_the_layers_free():
    layers = [Conv2D(1, 3, 5), Sigmoid(), MaxPool2D(2), Flatten(), Dense(432, 10)]
    with pytest.raises(ValueError):
        Network(layers, backend="numpy", loss="no such loss")
    Network(layers, backend="numpy")                                 # not "already belongs"


def test_deepcopy_of_a_network_is_independent():
    net = gpucnn.seed_network(backend="numpy", seed=1)
    twin = copy.deepcopy(net)
    for name, value in net.get_params().items():
        np.testing.assert_array_equal(twin.get_params()[name], value)
    twin.fit(_x(20), np.arange(20) % 10, epochs=1, batch_size=10, lr=0.5, verbose=False)
    assert not np.array_equal(twin.layers[0].W, net.layers[0].W)
    clone = copy.deepcopy(net)          # same shuffle state: the same training gives the same bits
    net.fit(_x(20), np.arange(20) % 10, epochs=1, batch_size=10, lr=0.5, verbose=False)
    clone.fit(_x(20), np.arange(20) % 10, epochs=1, batch_size=10, lr=0.5, verbose=False)
    for name, value in net.get_params().items():
        assert clone.get_params()[name].tobytes() == value.tobytes(), name


def test_seed_none_draws_fresh_entropy_and_records_it():
    a, b = gpucnn.seed_network(backend="numpy", seed=None), gpucnn.seed_network(backend="numpy", seed=None)
    assert isinstance(a.seed, int) and a.seed != b.seed
    again = gpucnn.seed_network(backend="numpy", seed=a.seed)
    np.testing.assert_array_equal(again.layers[0].W, a.layers[0].W)


def test_first_layer_skips_its_input_gradient_in_training_only():
    net = Network([Dense(6, 4), ReLU(), Dense(4, 3)], input_shape=(6,), backend="numpy", loss="cross_entropy")
    x = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    net.forward(x)
    assert net.backward(np.arange(5) % 3).shape == (5, 6)           # the public backward returns dC/dx
    calls = []
    first = net.layers[0]
    first.backward = lambda delta, **kw: calls.append(kw) or type(first).backward(first, delta, **kw)
    net.train_step(x, net.targets(np.arange(5) % 3, 5), gpucnn.optim.SGD(0.1))
    assert calls == [{"need_da_prev": False}]


def test_summary_lists_shapes_counts_and_the_execution_path():
    text = gpucnn.seed_network(backend="numpy").summary()
    assert "(3, 24, 24)" in text and "4,330" in text and "total parameters: 4,408" in text
    assert "execution: fused CPU plan" in text
    generic = Network([Dense(6, 4), Sigmoid()], input_shape=(6,), backend="numpy", dtype=np.float64)
    assert "layer by layer (" in generic.summary() and "float64" in generic.summary()


def test_modes_reach_every_layer():
    net = gpucnn.seed_network(backend="numpy")
    assert net.training and all(layer.training for layer in net.layers)
    net.eval()
    assert not net.training and not any(layer.training for layer in net.layers)
    assert net.train() is net and all(layer.training for layer in net.layers)


def test_custom_layer_registered_round_trips_and_unregistered_fails_at_save(tmp_path):
    class Scale(gpucnn.Layer):
        def __init__(self, factor=2.0):
            self.factor = float(factor)
            super().__init__()

        def forward(self, a):
            return a * self.factor

        def backward(self, da):
            return da * self.factor

        def config(self):
            return {"factor": self.factor}

    net = Network([Dense(6, 4), Scale(3.0), Dense(4, 3)], input_shape=(6,), backend="numpy")
    with pytest.raises(TypeError, match="register_layer"):
        net.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists() and not list(tmp_path.iterdir())
    gpucnn.register_layer(Scale)
    try:
        net.save(tmp_path / "m.npz")
        loaded = gpucnn.load(tmp_path / "m.npz", backend="numpy")
        assert loaded.layers[1].factor == 3.0
        x = np.random.default_rng(0).random((2, 6), dtype=np.float32)
        np.testing.assert_array_equal(loaded.predict_proba(x), net.predict_proba(x))
    finally:
        gpucnn.layers.LAYER_TYPES.pop("Scale")


@pytest.mark.parametrize("act", [Sigmoid, ReLU, gpucnn.Tanh])
def test_cuda_backends_fuse_conv_and_activation_and_match_numpy(act):
    """On the CUDA backends (here: emulated) conv -> activation is one kernel; the numbers are the
    layer-by-layer NumPy path's to float32 rounding, the backward included (sigma' from a alone)."""
    def build(backend):
        return Network([Conv2D(1, 2, 3, padding=1), act(), MaxPool2D(2), Flatten(), Dense(2 * 4 * 4, 3)],
                       input_shape=(1, 8, 8), backend=backend, loss="cross_entropy", seed=4)
    ref, emu = build("numpy"), build("emulated")
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 2, 1])
    np.testing.assert_allclose(emu.forward(x), ref.forward(x), rtol=1e-5, atol=1e-6)
    assert emu.layers[1].z is None and emu.layers[1].a is not None      # adopted from the conv kernel
    np.testing.assert_allclose(emu.backward(y), ref.backward(y), rtol=1e-4, atol=1e-6)
    for p, q in zip(emu.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6, err_msg=p.name)


def test_execution_path_follows_what_can_run_now():
    """A plan that the network's state rules out now (a layer's forward replaced on the instance) is
    not reported as running; Dropout runs in the plan in both modes."""
    net = Network([Conv2D(1, 3, 5), ReLU(), MaxPool2D(2), Flatten(), gpucnn.Dropout(0.5), Dense(432, 10)],
                  loss="cross_entropy", backend="numpy")
    assert net.execution_path().startswith("fused CPU plan")
    assert net.eval().execution_path().startswith("fused CPU plan")
    net.layers[1].forward = lambda a: np.maximum(a, 0)
    assert net.execution_path().startswith("layer by layer (layer 1 ReLU has its forward or backward replaced")
    del net.layers[1].forward
    assert net.execution_path().startswith("fused CPU plan")


def test_environment_settings_are_checked_and_named(monkeypatch):
    monkeypatch.setenv("GPUCNN_FAST", "fastest")
    with pytest.raises(ValueError, match=r"\$GPUCNN_FAST must be auto, strict or off"):
        gpucnn.seed_network(backend="numpy")
    monkeypatch.setenv("GPUCNN_FAST", "strict")
    monkeypatch.setenv("GPUCNN_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"unknown \$GPUCNN_BACKEND 'gpu'"):
        gpucnn.seed_network()


def test_a_zero_dimensional_array_is_a_real_number_for_the_optimizer():
    assert gpucnn.optim.SGD(np.array(0.25), momentum=np.float32(0.5)).lr == 0.25
    with pytest.raises(ValueError, match="lr"):
        gpucnn.optim.SGD(np.array([0.25]))
