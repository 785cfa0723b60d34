"""The public API: construction and shape errors, forward/backward, training, save/load, determinism."""
import subprocess
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn import Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, Sigmoid


def test_seed_network_shapes(rng):
    net = gpucnn.seed_network(backend="numpy", seed=0)
    assert net.shapes == [(1, 28, 28), (3, 24, 24), (3, 24, 24), (3, 12, 12), (432,), (10,), (10,)]
    x = rng.random((5, 1, 28, 28)).astype(np.float32)
    a = net.forward(x)
    assert a.shape == (5, 10) and a.dtype == np.float32
    dx = net.backward(np.arange(5))
    assert dx.shape == x.shape
    conv, dense = net.layers[0], net.layers[4]
    assert conv.W.shape == conv.dW.shape == (3, 1, 5, 5) and conv.db.shape == (3,)
    assert dense.W.shape == dense.dW.shape == (10, 432) and dense.db.shape == (10,)


def test_seed_network_equals_explicit_construction(rng):
    explicit = Network([Conv2D(1, 3, 5), Sigmoid(), MaxPool2D(2), Flatten(), Dense(432, 10), Sigmoid()],
                       loss="quadratic", backend="numpy", seed=0)
    seed = gpucnn.seed_network(backend="numpy", seed=0)
    x = rng.random((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(explicit.forward(x), seed.forward(x))


def test_onehot_and_int_labels_give_the_same_gradient(rng):
    net = gpucnn.seed_network(backend="numpy", seed=0)
    x = rng.random((3, 1, 28, 28)).astype(np.float32)
    y = np.array([1, 0, 9])
    net.forward(x)
    dx1 = net.backward(y)
    dW1 = net.layers[0].dW.copy()
    net.forward(x)
    dx2 = net.backward(np.eye(10, dtype=np.float32)[y])
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dW1, net.layers[0].dW)


def test_output_delta_is_nielsens_bp1(rng):
    """delta^L = (a - y) * sigma'(z^L), divided by n for the batch-mean cost."""
    net = gpucnn.seed_network(backend="numpy", seed=0)
    x, y = rng.random((4, 1, 28, 28)).astype(np.float32), np.array([3, 1, 4, 1])
    trace = net.trace(x, y)
    a = trace[-1]["a"]
    expected = (a - np.eye(10)[y]) * a * (1 - a) / 4
    np.testing.assert_allclose(trace[-1]["delta"], expected, rtol=1e-5, atol=1e-8)
    # BP2 through the dense layer: (w^T delta), then reshaped to 3x12x12 by Flatten
    np.testing.assert_allclose(trace[3]["da_prev"].reshape(4, 432), trace[4]["delta"] @ net.layers[4].W,
                               rtol=1e-5, atol=1e-8)
    assert trace[3]["da_prev"].shape == (4, 3, 12, 12)
    # BP4: db is the sum of delta over the map; dW of the dense layer = delta^T a_prev
    np.testing.assert_allclose(trace[0]["db"], trace[0]["delta"].sum(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(trace[4]["dW"], trace[4]["delta"].T @ trace[4]["a_prev"], rtol=1e-5)
    # one delta per pooling window lands in the 3x24x24 mask
    assert trace[2]["mask"].shape == (4, 3, 24, 24) and trace[2]["mask"].sum() == 4 * 432


@pytest.mark.parametrize("layers, message", [
    ([Conv2D(1, 3, 5), Sigmoid(), MaxPool2D(2), Flatten(), Dense(400, 10)], "Dense(400, 10)"),
    ([Conv2D(1, 3, 5), Conv2D(2, 4, 3), Flatten()], "in_channels=2"),
    ([Conv2D(1, 3, 30), Flatten()], "smaller than the kernel"),
    ([Conv2D(1, 3, 5), Sigmoid()], "must end in a vector"),
])
def test_shape_errors_name_the_layer_and_both_shapes(layers, message):
    with pytest.raises(gpucnn.ShapeError) as info:
        Network(layers, backend="numpy")
    assert message in str(info.value)
    if message == "Dense(400, 10)":
        assert "(432,)" in str(info.value) and "(400,)" in str(info.value)


def test_assigning_numpy_parameters(rng):
    net = gpucnn.seed_network(backend="numpy", seed=0)
    W = rng.standard_normal((3, 1, 5, 5))
    net.layers[0].W = W
    assert net.layers[0].W.dtype == np.float32
    np.testing.assert_allclose(net.layers[0].W, W.astype(np.float32))
    with pytest.raises(gpucnn.ShapeError, match=r"\(3, 1, 5, 5\)"):
        net.layers[0].W = np.zeros((3, 5, 5))


def test_same_seed_same_run_bitwise(digits):
    x, y = digits[0][:300], digits[1][:300]
    params = []
    for _ in range(2):
        net = gpucnn.seed_network(backend="numpy", seed=7)
        net.fit(x, y, epochs=2, batch_size=10, lr=1.0, verbose=False)
        params.append(net.get_params())
    for name in params[0]:
        assert params[0][name].tobytes() == params[1][name].tobytes()
    other = gpucnn.seed_network(backend="numpy", seed=8).get_params()
    assert not np.array_equal(other["layers.0.W"], params[0]["layers.0.W"])


def test_training_gets_well_above_chance(digits):
    x, y = digits
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, held = order[:4000], order[4000:]
    net = gpucnn.seed_network(backend="numpy", seed=0)
    history = net.fit(x[train], y[train], epochs=4, batch_size=10, lr=1.0,
                      validation=(x[held], y[held]), verbose=False)
    assert history["val_accuracy"][-1] > 0.6        # chance is 0.1
    assert history["loss"][-1] < history["loss"][0]
    assert net.evaluate(x[held], y[held]) == history["val_accuracy"][-1]
    assert net.predict(x[held]).shape == (1000,)


def test_cross_entropy_relu_variant_trains(digits):
    pick = np.random.default_rng(0).permutation(len(digits[1]))[:1500]
    x, y = digits[0][pick], digits[1][pick]
    net = gpucnn.seed_network(backend="numpy", seed=0, loss="cross_entropy", activation="relu")
    history = net.fit(x, y, epochs=3, batch_size=16, lr=0.1, momentum=0.9, verbose=False)
    assert history["accuracy"][-1] > 0.7
    p = net.predict_proba(x[:5])
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)


def test_save_load_round_trip_in_a_fresh_process(tmp_path, rng):
    net = Network([Conv2D(1, 4, 3, stride=2, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                   Dense(4 * 7 * 7, 10)], loss="cross_entropy", backend="numpy", seed=5)
    x = rng.random((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    net.save(tmp_path / "m.npz")
    script = ("import numpy as np, gpucnn; net = gpucnn.load(r'%s', backend='numpy'); "
              "np.save(r'%s', net.predict_proba(np.load(r'%s')))"
              % (tmp_path / "m.npz", tmp_path / "p.npy", tmp_path / "x.npy"))
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), net.predict_proba(x))
    loaded = gpucnn.load(tmp_path / "m.npz", backend="numpy")
    assert repr(loaded) == repr(net)


def test_model_file_is_not_a_pickle(tmp_path):
    gpucnn.seed_network(backend="numpy").save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")     # it diverges, on purpose
def test_divergence_stops_and_keeps_the_last_good_parameters(digits):
    pick = np.random.default_rng(0).permutation(len(digits[1]))[:200]
    x, y = digits[0][pick], digits[1][pick]
    net = gpucnn.seed_network(backend="numpy", seed=0, loss="cross_entropy", activation="relu")
    seen = []                                   # (parameters going into the step, its cost)
    real_step = net.train_step

    def recording_step(xb, y1, optimizer):
        params = net.get_params()
        cost, out = real_step(xb, y1, optimizer)
        seen.append((params, cost))
        return cost, out
    net.train_step = recording_step
    with pytest.raises(gpucnn.Divergence, match="step .* smaller learning rate"):
        net.fit(x, y, epochs=3, batch_size=10, lr=1e20, verbose=False)
    assert not np.isfinite(seen[-1][1]) and len(seen) >= 2
    last_good = [params for params, cost in seen if np.isfinite(cost)][-1]
    for name, value in net.get_params().items():
        assert value.tobytes() == last_good[name].tobytes(), name


def test_assigned_parameters_are_copied(digits):
    W = np.zeros((10, 432), np.float32)
    net = gpucnn.seed_network(backend="numpy", seed=0)
    net.layers[4].W = W
    net.fit(digits[0][:50], digits[1][:50], epochs=1, batch_size=10, lr=1.0, verbose=False)
    assert not W.any()                          # training never writes into the caller's array
    other = gpucnn.seed_network(backend="numpy", seed=1)
    other.set_params(net.get_params())
    assert other.layers[4].W is not net.layers[4].W


def test_backend_selection(monkeypatch):
    assert gpucnn.seed_network(backend="numpy").backend.name == "numpy"
    monkeypatch.setenv("GPUCNN_BACKEND", "numpy")
    assert gpucnn.seed_network().backend.name == "numpy"
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        gpucnn.seed_network(backend="tpu")


def test_cupy_backend_without_a_gpu_names_the_reason():
    info = gpucnn.backend_info()
    if info.get("cupy_usable"):
        pytest.skip("a usable GPU is present")
    with pytest.raises(gpucnn.BackendUnavailable) as exc:
        gpucnn.seed_network(backend="cupy")
    assert len(str(exc.value)) > 10
    assert gpucnn.seed_network(backend="auto").backend.name == "numpy"
