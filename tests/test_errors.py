"""Bad input, through the API and the CLI: each gets a clear error naming the problem, and nothing is
left half-done (parameters, files and generators are as they were before the call).

The battery is one table per entry point; each row is (id, the call, the exception type, fragments the
message must contain). The CLI rows run ``python -m gpucnn`` in a subprocess and check for exactly one
line on stderr, a non-zero status and no traceback.
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

import gpucnn
from gpucnn import Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, Sigmoid, data, serialization
from gpucnn.errors import DataError, GpucnnError, ModelFileError, ShapeError


def expect(call, exc_type, *fragments):
    """call() raises exc_type and its message names every fragment."""
    with pytest.raises(exc_type) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return info.value


# ---------------------------------------------------------------- fixtures

N = 6


def make_xy(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)).astype(np.float32), np.arange(n, dtype=np.int64) % 10


@pytest.fixture(scope="module")
def net():
    return gpucnn.seed_network(backend="numpy", seed=0)


def idx_bytes(a):
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_mnist(directory, n_train=12, n_test=5, **override):
    rng = np.random.default_rng(0)
    raw = {"x_train": rng.integers(0, 256, (n_train, 28, 28)), "y_train": rng.integers(0, 10, n_train),
           "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": rng.integers(0, 10, n_test)}
    for key, stem in data.MNIST_FILES.items():
        payload = override.get(key, idx_bytes(raw[key]))
        (directory / stem).write_bytes(payload)
    return directory


def png_bytes(w=28, h=28, ctype=0, depth=8, plte=None):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    rows = b"".join(b"\x00" + bytes(w * channels * depth // 8) for _ in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    return out + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_npz(path, description=None, **arrays):
    """A model-like .npz written with plain numpy; description None leaves the record out."""
    if description is not None:
        arrays["architecture"] = np.array(description if isinstance(description, str)
                                          else json.dumps(description))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def dense_description(in_features=4, out_features=3):
    return {"format": serialization.FORMAT, "loss": "quadratic", "input_shape": [in_features],
            "layers": [{"type": "Dense", "in_features": in_features, "out_features": out_features}]}


# ---------------------------------------------------------------- fit: inputs, labels, hyper-parameters

X, Y = make_xy()
NAN_X = X.copy()
NAN_X[0, 0, 3, 4] = np.nan
INF_X = X.copy()
INF_X[2, 0, 0, 0] = np.inf
ONEHOT = np.eye(10, dtype=np.float32)[Y]
NAN_ONEHOT = ONEHOT.copy()
NAN_ONEHOT[1, 2] = np.nan
X_UINT8 = np.round(X * 255).astype(np.uint8)        # the same digits as 0..255 pixels


class ForeignDeviceArray:
    """Another library's GPU array (Numba, PyTorch, JAX...): all gpucnn sees is the interface."""

    def __init__(self, a):
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (0, False),
                                         "version": 3}

FIT_CASES = [
    # (id, fit kwargs replacing x, y and defaults, exception, fragments)
    ("x-list", dict(x=X.tolist()), TypeError, ["x must be a NumPy or CuPy array", "list"]),
    ("x-complex", dict(x=X.astype(np.complex64)), TypeError, ["real numbers", "complex64"]),
    ("x-bool", dict(x=X > 0.5), TypeError, ["dtype bool"]),
    ("x-object", dict(x=X.astype(object)), TypeError, ["dtype object"]),
    # uint8 0..255 fed as they are train to chance (11%): refused, with the conversion to use
    ("x-uint8", dict(x=X_UINT8), TypeError, ["integer dtype uint8", "x.astype(np.float32) / 255"]),
    ("x-int64", dict(x=X_UINT8.astype(np.int64)), TypeError, ["integer dtype int64", "astype(np.float32)"]),
    ("x-int8", dict(x=X_UINT8.astype(np.int8)), TypeError, ["integer dtype int8"]),
    ("x-uint16", dict(x=X_UINT8.astype(np.uint16) * 257), TypeError, ["integer dtype uint16"]),
    ("validation-x-uint8", dict(validation=(X_UINT8, Y)), TypeError, ["validation x", "uint8", "/ 255"]),
    ("x-foreign-gpu-array", dict(x=ForeignDeviceArray(X)), TypeError,
     ["ForeignDeviceArray", "__cuda_array_interface__", "NumPy arrays"]),
    ("x-rank3", dict(x=X[:, 0]), ShapeError, ["(n, 1, 28, 28)", "(6, 28, 28)"]),
    ("x-rank5", dict(x=X[:, None]), ShapeError, ["(n, 1, 28, 28)", "(6, 1, 1, 28, 28)"]),
    ("x-channels", dict(x=np.repeat(X, 3, axis=1)), ShapeError, ["(6, 3, 28, 28)"]),
    ("x-size", dict(x=np.zeros((N, 1, 32, 32), np.float32)), ShapeError, ["(6, 1, 32, 32)"]),
    ("x-empty", dict(x=X[:0], y=Y[:0]), DataError, ["x is empty", "0 samples"]),
    ("x-nan", dict(x=NAN_X), DataError, ["NaN or inf", "1 NaN", "x[0, 0, 3, 4]"]),
    ("x-inf", dict(x=INF_X), DataError, ["1 inf", "x[2, 0, 0, 0]"]),
    ("y-too-big", dict(y=np.array([0, 1, 2, 10, 4, 5])), DataError, ["0..9", "y[3] = 10", "max 10"]),
    ("y-negative", dict(y=np.array([0, -1, 2, 3, 4, 5])), DataError, ["0..9", "y[1] = -1", "min -1"]),
    ("y-short", dict(y=Y[:5]), ShapeError, ["5 entries", "6 samples"]),
    ("y-long", dict(y=np.arange(7) % 10), ShapeError, ["7 entries", "6 samples"]),
    ("y-empty", dict(y=Y[:0]), ShapeError, ["0 entries", "6 samples"]),
    ("y-float-labels", dict(y=Y.astype(np.float64)), TypeError, ["integers", "float64"]),
    ("y-list", dict(y=Y.tolist()), TypeError, ["y must be a NumPy or CuPy array", "list"]),
    ("y-onehot-width", dict(y=ONEHOT[:, :9]), ShapeError, ["(n, 10)", "(6, 9)"]),
    ("y-onehot-nan", dict(y=NAN_ONEHOT), DataError, ["NaN", "y[1, 2]"]),
    ("y-onehot-bool", dict(y=ONEHOT > 0), TypeError, ["numbers", "bool"]),
    ("y-rank3", dict(y=ONEHOT[:, :, None]), ShapeError, ["(6, 10, 1)"]),
    ("batch-size-0", dict(batch_size=0), ValueError, ["batch_size", "got 0"]),
    ("batch-size-negative", dict(batch_size=-3), ValueError, ["batch_size", "-3"]),
    ("batch-size-too-big", dict(batch_size=7), ValueError, ["batch_size (7)", "6 samples"]),
    ("batch-size-float", dict(batch_size=2.5), TypeError, ["batch_size", "float", "2.5"]),
    ("batch-size-bool", dict(batch_size=True), TypeError, ["batch_size", "True"]),
    ("batch-size-str", dict(batch_size="2"), TypeError, ["batch_size", "'2'"]),
    ("epochs-0", dict(epochs=0), ValueError, ["epochs", "got 0"]),
    ("epochs-float", dict(epochs=2.0), TypeError, ["epochs", "float", "2.0"]),
    ("epochs-numpy-float", dict(epochs=np.float64(2)), TypeError, ["epochs", "2.0"]),
    ("epochs-none", dict(epochs=None), TypeError, ["epochs", "None"]),
    ("every-0", dict(every=0), ValueError, ["every", "got 0"]),
    ("lr-0", dict(lr=0), ValueError, ["learning rate", "got 0"]),
    ("lr-negative", dict(lr=-0.5), ValueError, ["learning rate", "-0.5"]),
    ("lr-nan", dict(lr=float("nan")), ValueError, ["learning rate", "nan"]),
    ("lr-inf", dict(lr=float("inf")), ValueError, ["learning rate", "inf"]),
    ("lr-str", dict(lr="0.1"), (TypeError, ValueError), ["learning rate", "'0.1'"]),
    ("lr-complex", dict(lr=0.1j), ValueError, ["learning rate", "0.1j"]),
    ("lr-bool", dict(lr=True), ValueError, ["learning rate", "True"]),
    ("lr-array", dict(lr=np.array([0.1, 0.2])), ValueError, ["learning rate", "array"]),
    ("momentum-negative", dict(momentum=-0.9), ValueError, ["momentum", "-0.9"]),
    ("momentum-str", dict(momentum="0.9"), ValueError, ["momentum", "'0.9'"]),
    ("momentum-numpy-nan", dict(momentum=np.float32("nan")), ValueError, ["momentum", "nan"]),
    ("weight-decay-negative", dict(weight_decay=-1e-3), ValueError, ["weight_decay", "-0.001"]),
    ("validation-not-a-pair", dict(validation=X), TypeError, ["validation must be a pair", "ndarray"]),
    ("validation-three", dict(validation=(X, Y, Y)), TypeError, ["validation must be a pair"]),
    ("checkpoint-not-a-path", dict(checkpoint=3), TypeError, ["checkpoint path", "int 3"]),
    ("weight-decay-nan", dict(weight_decay=float("nan")), ValueError, ["weight_decay", "nan"]),
    ("resume-without-checkpoint", dict(resume=True), ValueError, ["resume=True needs checkpoint"]),
    ("resume-string", dict(resume="False"), TypeError, ["resume must be True or False", "'False'"]),
    ("shuffle-string", dict(shuffle="no"), TypeError, ["shuffle must be True or False", "'no'"]),
    ("shuffle-2", dict(shuffle=2), TypeError, ["shuffle", "2"]),
    ("validation-x-shape", dict(validation=(X[:, 0], Y)), ShapeError, ["validation x", "(6, 28, 28)"]),
    ("validation-y-range", dict(validation=(X, Y + 5)), DataError, ["validation y", "0..9", "max 10"]),
    ("validation-y-length", dict(validation=(X, Y[:4])), ShapeError, ["validation y", "4 entries"]),
    ("validation-x-nan", dict(validation=(NAN_X, Y)), DataError, ["validation x", "NaN"]),
]


@pytest.mark.parametrize("kwargs, exc_type, fragments", [c[1:] for c in FIT_CASES],
                         ids=[c[0] for c in FIT_CASES])
def test_fit_rejects_bad_input_before_touching_anything(net, tmp_path, kwargs, exc_type, fragments):
    call = dict(x=X, y=Y, epochs=1, batch_size=2, lr=0.1, verbose=False)
    call.update(kwargs)
    before = net.get_params()
    rng_state = json.dumps(net.shuffle_rng.bit_generator.state)
    expect(lambda: net.fit(**call), exc_type, *fragments)
    for name, value in net.get_params().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert json.dumps(net.shuffle_rng.bit_generator.state) == rng_state
    assert list(tmp_path.iterdir()) == []


def test_fit_with_a_checkpoint_writes_nothing_when_the_labels_are_bad(net, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    expect(lambda: net.fit(X, Y + 10, checkpoint=ckpt, verbose=False), DataError, "0..9")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- cross-entropy targets: distributions only

@pytest.fixture(scope="module")
def ce_net():
    return gpucnn.seed_network(backend="numpy", seed=0, loss="cross_entropy", activation="relu")


HALF_ROWS = ONEHOT * 0.5                                   # rows summing to 0.5: gradient != cost's
NEGATIVE_ROWS = ONEHOT.copy()
NEGATIVE_ROWS[0, :2] = [1.2, -0.2]                        # sums to 1, one entry negative
SCORES = np.random.default_rng(1).random((N, 10)).astype(np.float32)   # unnormalised scores

CE_CASES = [
    # (id, call on the cross-entropy net, exception, fragments)
    ("fit-rows-sum-half", lambda n: n.fit(X, HALF_ROWS, batch_size=2, verbose=False), DataError,
     ["must each sum to 1", "row 0 sums to 0.5", "6 of 6 rows"]),
    ("fit-negative-entry", lambda n: n.fit(X, NEGATIVE_ROWS, batch_size=2, verbose=False), DataError,
     [">= 0", "y[0, 1] = -0.2"]),
    ("fit-scores", lambda n: n.fit(X, SCORES, batch_size=2, verbose=False), DataError, ["sum to 1"]),
    ("fit-validation-rows", lambda n: n.fit(X, Y, batch_size=2, verbose=False, validation=(X, HALF_ROWS)),
     DataError, ["validation y", "sum to 1"]),
    ("cost-rows", lambda n: n.cost(X, HALF_ROWS), DataError, ["sum to 1"]),
    ("evaluate-rows", lambda n: n.evaluate(X, SCORES), DataError, ["sum to 1"]),
    ("backward-rows", lambda n: (n.forward(X), n.backward(NEGATIVE_ROWS)), DataError, [">= 0"]),
    ("gradcheck-rows", lambda n: gpucnn.gradcheck(n, X[:2], HALF_ROWS[:2]), DataError, ["sum to 1"]),
]


@pytest.mark.parametrize("call, exc_type, fragments", [c[1:] for c in CE_CASES], ids=[c[0] for c in CE_CASES])
def test_cross_entropy_targets_must_be_distributions(ce_net, call, exc_type, fragments):
    before = ce_net.get_params()
    expect(lambda: call(ce_net), exc_type, *fragments)
    for name, value in ce_net.get_params().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_soft_targets_that_are_distributions_are_accepted_and_their_gradient_matches():
    """Label smoothing (0.9 on the class, 0.1 spread) is a distribution: accepted, and the
    backward pass is the gradient of the cost; the quadratic cost takes any target rows."""
    net = Network([Flatten(), Dense(12, 4)], loss="cross_entropy", input_shape=(3, 2, 2), backend="numpy", seed=3)
    x = np.random.default_rng(0).standard_normal((3, 3, 2, 2)).astype(np.float32)
    soft = (np.eye(4)[[0, 3, 1]] * 0.9 + 0.025).astype(np.float32)
    for name, r in gpucnn.gradcheck(net, x, soft, max_per_param=None).items():
        assert r["rel_error"] < 1e-6, (name, r)
    quadratic = Network([Dense(5, 3)], backend="numpy")
    quadratic.fit(np.ones((4, 5), np.float32), np.full((4, 3), 2.5, np.float32), batch_size=2, verbose=False)


# ---------------------------------------------------------------- forward, predict, evaluate, backward

def test_forward_wrong_shape(net):
    expect(lambda: net.forward(np.zeros((2, 784), np.float32)), ShapeError, "(n, 1, 28, 28)", "(2, 784)")


def test_predict_nan(net):
    expect(lambda: net.predict(NAN_X), DataError, "NaN")


def test_predict_empty(net):
    expect(lambda: net.predict_proba(X[:0]), DataError, "empty")


def test_evaluate_label_length(net):
    expect(lambda: net.evaluate(X, Y[:3]), ShapeError, "3 entries", "6 samples")


def test_evaluate_label_range(net):
    expect(lambda: net.evaluate(X, Y * 3), DataError, "0..9", "max 15")


def test_cost_onehot_width(net):
    expect(lambda: net.cost(X, ONEHOT[:, :5]), ShapeError, "(n, 10)", "(6, 5)")


def test_backward_before_forward():
    fresh = gpucnn.seed_network(backend="numpy")
    expect(lambda: fresh.backward(Y), RuntimeError, "forward() first")


def test_backward_label_length(net):
    net.forward(X)
    expect(lambda: net.backward(Y[:2]), ShapeError, "2 entries", "6 samples")


# ---------------------------------------------------------------- building networks and layers

BUILD_CASES = [
    ("dense-not-chaining", lambda: Network([Dense(784, 20), Sigmoid(), Dense(10, 5)], backend="numpy"),
     ShapeError, ["layer 2", "Dense(10, 5)", "(20,)", "(10,)"]),
    ("conv-channels", lambda: Network([Conv2D(3, 4, 3), Flatten(), Dense(4 * 26 * 26, 10)],
                                      input_shape=(1, 28, 28), backend="numpy"),
     ShapeError, ["in_channels=3", "(1, 28, 28)"]),
    ("conv-kernel-too-big", lambda: Network([Conv2D(1, 2, 29), Flatten()], backend="numpy"),
     ShapeError, ["smaller than the kernel", "(29, 29)"]),
    ("pool-too-big", lambda: Network([MaxPool2D(30), Flatten()], input_shape=(1, 28, 28), backend="numpy"),
     ShapeError, ["MaxPool2D(30", "(1, 28, 28)"]),
    ("no-vector-at-the-end", lambda: Network([Conv2D(1, 3, 5), ReLU()], backend="numpy"),
     ShapeError, ["must end in a vector", "(3, 24, 24)"]),
    ("unknown-loss", lambda: Network([Dense(4, 2)], loss="hinge", backend="numpy"),
     ValueError, ["unknown loss 'hinge'", "cross_entropy"]),
    ("unknown-backend", lambda: Network([Dense(4, 2)], backend="tpu"),
     ValueError, ["unknown backend 'tpu'", "numpy"]),
    ("backend-not-a-name", lambda: Network([Dense(4, 2)], backend=3), ValueError, ["unknown backend 3"]),
    ("no-layers", lambda: Network([], backend="numpy"), TypeError, ["non-empty list"]),
    ("not-layers", lambda: Network(["dense"], backend="numpy"), TypeError, ["gpucnn layers"]),
    ("int-dtype", lambda: Network([Dense(4, 2)], backend="numpy", dtype=np.int32), TypeError, ["int32"]),
    ("dense-zero", lambda: Dense(0, 10), ValueError, ["in_features", "got 0"]),
    ("dense-float", lambda: Dense(4.5, 10), ValueError, ["in_features", "4.5"]),
    ("conv-kernel-str", lambda: Conv2D(1, 3, "5"), TypeError, ["kernel_size", "'5'"]),
    ("conv-padding-negative", lambda: Conv2D(1, 3, 5, padding=-1), ValueError, ["padding", "-1"]),
    ("conv-same-even-kernel", lambda: Conv2D(1, 3, 4, padding="same"), ValueError, ["odd kernel_size"]),
    ("pool-zero", lambda: MaxPool2D(0), ValueError, ["size", "got 0"]),
]


@pytest.mark.parametrize("call, exc_type, fragments", [c[1:] for c in BUILD_CASES],
                         ids=[c[0] for c in BUILD_CASES])
def test_bad_network_definitions(call, exc_type, fragments):
    expect(call, exc_type, *fragments)


@pytest.mark.parametrize("param, bad_shape", [("W", (3, 5, 5)), ("b", (4,))])
def test_wrong_shape_parameter_keeps_the_old_one(param, bad_shape):
    net = gpucnn.seed_network(backend="numpy", seed=3)
    old = net.get_params()[f"layers.0.{param}"]
    expected = (3, 1, 5, 5) if param == "W" else (3,)
    expect(lambda: setattr(net.layers[0], param, np.zeros(bad_shape)), ShapeError,
           str(expected), str(bad_shape))
    np.testing.assert_array_equal(net.get_params()[f"layers.0.{param}"], old)


# ---------------------------------------------------------------- model files

@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "good.npz"
    gpucnn.seed_network(backend="numpy", seed=1).save(path)
    return path


def _bad_model(kind, tmp_path, model_file):
    """Write one kind of bad model file; return (path, exception, fragments)."""
    path = tmp_path / f"{kind}.npz"
    good = model_file.read_bytes()
    params = {f"layers.0.{p}": np.zeros(s, np.float32) for p, s in (("W", (3, 4)), ("b", (3,)))}
    if kind == "missing":
        return path, ModelFileError, ["not found", str(path)]
    if kind == "directory":
        return tmp_path, ModelFileError, ["is a directory"]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif kind == "one-byte-short":
        path.write_bytes(good[:-1])
    elif kind == "npy-not-npz":
        np.save(open(path, "wb"), np.zeros(3))
    elif kind == "no-architecture":
        write_npz(path, None, **params)
        return path, ModelFileError, ["no architecture record"]
    elif kind == "bad-json":
        write_npz(path, "{not json", **params)
        return path, ModelFileError, ["not valid JSON"]
    elif kind == "deep-json":
        write_npz(path, "[" * 50000 + "]" * 50000, **params)
        return path, ModelFileError, ["not valid JSON"]
    elif kind == "numeric-architecture":
        write_npz(path, None, architecture=np.arange(3), **params)
        return path, ModelFileError, ["architecture record", "not a JSON string"]
    elif kind == "other-format":
        write_npz(path, {**dense_description(), "format": "keras-h5"}, **params)
        return path, ModelFileError, ["unknown model format 'keras-h5'"]
    elif kind == "unknown-layer":
        desc = dense_description()
        desc["layers"][0]["type"] = "Transformer"
        write_npz(path, desc, **params)
        return path, ModelFileError, ["layer 0", "unknown type 'Transformer'"]
    elif kind == "bad-layer-argument":
        desc = dense_description()
        desc["layers"][0]["in_features"] = -4
        write_npz(path, desc, **params)
        return path, ModelFileError, ["layer 0", "in_features", "-4"]
    elif kind == "layers-do-not-chain":
        desc = dense_description()
        desc["input_shape"] = [5]
        write_npz(path, desc, **params)
        return path, ModelFileError, ["cannot be built", "(5,)"]
    elif kind == "bad-input-shape":
        write_npz(path, {**dense_description(), "input_shape": "four"}, **params)
        return path, ModelFileError, ["input_shape", "'four'"]
    elif kind == "other-architecture":     # the description of one net, the parameters of another
        write_npz(path, dense_description(4, 3), **{"layers.0.W": np.zeros((10, 784), np.float32),
                                                     "layers.0.b": np.zeros(10, np.float32)})
        return path, ModelFileError, ["layers.0.W", "(10, 784)", "(3, 4)"]
    elif kind == "missing-parameter":
        write_npz(path, dense_description(), **{"layers.0.W": params["layers.0.W"]})
        return path, ModelFileError, ["layers.0.b is missing"]
    elif kind == "nan-parameter":
        bad = dict(params)
        bad["layers.0.b"] = np.array([0, np.nan, 0], np.float32)
        write_npz(path, dense_description(), **bad)
        return path, ModelFileError, ["layers.0.b", "NaN"]
    elif kind == "int-parameter":
        write_npz(path, dense_description(), **{**params, "layers.0.b": np.zeros(3, np.int32)})
        return path, ModelFileError, ["layers.0.b", "int32"]
    elif kind == "pickled-member":
        write_npz(path, dense_description(), **{**params, "layers.0.b": np.array([{"evil": 1}] * 3)})
        return path, ModelFileError, ["layers.0.b.npy", "unsupported .npy array", "object"]
    elif kind == "foreign-member":
        write_npz(path, dense_description(), **params)
        import zipfile
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("readme.txt", "hello")
        return path, ModelFileError, ["'readme.txt'"]
    elif kind == "huge-architecture":      # must fail on the missing arrays, not allocate 75 GiB first
        write_npz(path, dense_description(100_000, 100_000))
        return path, ModelFileError, ["layers.0.W is missing"]
    else:
        raise AssertionError(kind)
    return path, ModelFileError, [str(path)]


MODEL_CASES = ["missing", "directory", "empty", "text", "truncated", "one-byte-short", "npy-not-npz",
               "no-architecture", "bad-json", "deep-json", "numeric-architecture", "other-format",
               "unknown-layer", "bad-layer-argument", "layers-do-not-chain", "bad-input-shape",
               "other-architecture", "missing-parameter", "nan-parameter", "int-parameter",
               "pickled-member", "foreign-member", "huge-architecture"]


@pytest.mark.parametrize("kind", MODEL_CASES)
def test_bad_model_files(kind, tmp_path, model_file):
    path, exc_type, fragments = _bad_model(kind, tmp_path, model_file)
    listing = sorted(tmp_path.iterdir())
    start = time.monotonic()
    err = expect(lambda: gpucnn.load(path, backend="numpy"), exc_type, *fragments)
    assert isinstance(err, ValueError) and isinstance(err, GpucnnError)
    assert time.monotonic() - start < 5
    assert sorted(tmp_path.iterdir()) == listing        # nothing created, nothing removed


def test_load_with_an_unknown_backend_blames_the_backend_not_the_file(model_file):
    err = expect(lambda: gpucnn.load(model_file, backend="tpu"), ValueError, "unknown backend 'tpu'")
    assert not isinstance(err, ModelFileError)


def test_assign_params_is_all_or_nothing(model_file):
    net = gpucnn.seed_network(backend="numpy", seed=7)
    before = net.get_params()
    _, arrays = serialization.read_model_file(model_file)
    arrays["layers.4.W"] = arrays["layers.4.W"][:, :100]        # the first conv params are fine
    expect(lambda: serialization.assign_arrays(net, arrays, "ckpt"), ModelFileError,
           "layers.4.W", "(10, 100)", "(10, 432)")
    for name, value in net.get_params().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_a_good_model_file_still_loads(model_file):
    loaded = gpucnn.load(model_file, backend="numpy")
    original = gpucnn.seed_network(backend="numpy", seed=1)
    for name, value in original.get_params().items():
        np.testing.assert_array_equal(loaded.get_params()[name], value)


# ---------------------------------------------------------------- IDX and MNIST directories

def _bad_idx(kind, tmp_path):
    path = tmp_path / "f-idx1-ubyte"
    good = idx_bytes(np.arange(10))
    payload = {
        "short-file": b"\x00\x00",
        "float-type": bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0\0\0\0",
        "zero-dims": bytes([0, 0, 8, 0]),
        "header-cut": good[:6],
        "payload-short": good[:-1],
        "payload-long": good + b"\x00",
        "dims-overflow": bytes([0, 0, 8, 3]) + struct.pack(">3I", 2 ** 31, 2 ** 31, 4),
        "corrupt-gzip": gzip.compress(good)[:-6],
        "gzip-bad-crc": gzip.compress(good)[:-8] + b"\x00\x00\x00\x00" + gzip.compress(good)[-4:],
    }.get(kind)
    if kind == "missing":
        return path, ["cannot read", str(path)]
    path.write_bytes(payload)
    return path, {"short-file": ["too short"], "float-type": ["bad IDX magic 0x00000d01"],
                  "zero-dims": ["truncated IDX header", "0 dims"], "header-cut": ["truncated IDX header"],
                  "payload-short": ["truncated", "need 10 bytes, found 9"],
                  "payload-long": ["trailing bytes", "found 11"],
                  "dims-overflow": ["need 18446744073709551616 bytes, found 0"],
                  "corrupt-gzip": ["gzip"], "gzip-bad-crc": ["gzip"]}[kind]


@pytest.mark.parametrize("kind", ["missing", "short-file", "float-type", "zero-dims", "header-cut",
                                  "payload-short", "payload-long", "dims-overflow", "corrupt-gzip",
                                  "gzip-bad-crc"])
def test_bad_idx_files(kind, tmp_path):
    path, fragments = _bad_idx(kind, tmp_path)
    expect(lambda: data.read_idx(path), DataError, *fragments)


def test_parse_idx_needs_bytes():
    expect(lambda: data.parse_idx("\x00\x00\x08\x01"), TypeError, "bytes", "str")


@pytest.mark.parametrize("kind, fragments", [
    ("not-a-directory", ["is not a directory"]),
    ("no-such-directory", ["does not exist"]),
    ("count-mismatch", ["12 train images but 11 train labels"]),
    ("label-out-of-range", ["test label 12 is outside 0..9"]),
    ("images-are-labels", ["train images have shape (12,)"]),
])
def test_bad_mnist_directories(kind, fragments, tmp_path):
    if kind == "not-a-directory":
        target = tmp_path / "file"
        target.write_bytes(b"x")
    elif kind == "no-such-directory":
        target = tmp_path / "nowhere"
    elif kind == "count-mismatch":
        target = write_mnist(tmp_path, y_train=idx_bytes(np.zeros(11)))
    elif kind == "label-out-of-range":
        target = write_mnist(tmp_path, y_test=idx_bytes(np.array([1, 2, 12, 3, 4])))
    else:
        target = write_mnist(tmp_path, x_train=idx_bytes(np.zeros(12)))
    expect(lambda: data.load_mnist(target), DataError, *fragments)


# ---------------------------------------------------------------- images

DIGIT = np.zeros((28, 28))
DIGIT[5:22, 12:16] = 1.0                                    # a "1": ink 1.0 on a black background


def _bad_image(kind, tmp_path):
    suffix = ".png" if kind.startswith("png") else ".jpg" if kind == "jpg" else ".npy"
    path = tmp_path / f"digit{suffix}"
    if kind == "npy-shape":
        np.save(path, np.zeros((27, 28)))
        return path, ["(27, 28)", "28x28"]
    if kind == "npy-nan":
        a = np.zeros((28, 28))
        a[3, 3] = np.nan
        np.save(path, a)
        return path, ["NaN or inf"]
    if kind == "npy-range":
        np.save(path, np.full((28, 28), 300))
        return path, ["outside 0..255", "max 300"]
    if kind == "npy-complex":
        np.save(path, np.zeros((28, 28), np.complex64))
        return path, ["complex64", "not numeric"]
    if kind == "npy-is-npz":
        with open(path, "wb") as f:
            np.savez(f, a=np.zeros((28, 28)))
        return path, ["not a .npy array"]
    if kind == "npy-empty":
        path.write_bytes(b"")
        return path, ["not a .npy array"]
    if kind == "npy-pickle":
        np.save(path, np.array([None] * 784, dtype=object).reshape(28, 28), allow_pickle=True)
        return path, ["unsupported .npy array", "object"]
    if kind == "npy-huge-header":     # a header promising 10^12 floats: refused before any allocation
        header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }"
        path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117).encode() + b"\n")
        return path, ["promises 8000000000000 data bytes"]
    if kind == "png-size":
        path.write_bytes(png_bytes(w=29))
        return path, ["29x28", "28x28"]
    if kind == "png-not-png":
        path.write_bytes(b"GIF89a" + bytes(40))
        return path, [str(path)]
    if kind == "missing-png":
        return tmp_path / "nothere.png", ["nothere.png"]
    if kind == "missing-npy":
        return tmp_path / "nothere.npy", ["nothere.npy"]
    if kind == "jpg":
        path.write_bytes(b"\xff\xd8\xff")
        return path, ["unsupported image type '.jpg'"]
    if kind == "npy-float-3.7":              # neither [0, 1] nor 0..255 pixels: refused, not guessed
        np.save(path, DIGIT * 3.7)
        return path, ["float values up to 3.7", "neither", "rescale to [0, 1]"]
    if kind == "npy-float-fractional-255":
        np.save(path, DIGIT * 254.5)
        return path, ["up to 254.5", "whole pixel values 0..255"]
    if kind == "npy-float-negative":
        np.save(path, DIGIT - 0.5)
        return path, ["min -0.5"]
    if kind == "npy-int-mask":               # 0/1 read as 0..255 would be a black image
        np.save(path, DIGIT.astype(np.int64))
        return path, ["only 0 and 1", "save it as bool"]
    if kind in ("fifo-npy", "fifo-png"):
        path = tmp_path / f"pipe.{kind[-3:]}"
        os.mkfifo(path)
        return path, ["is a FIFO", "not an image file"]
    if kind == "dev-zero-png":
        path = tmp_path / "zero.png"
        os.symlink("/dev/zero", path)
        return path, ["a symlink to /dev/zero", "character device"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["npy-shape", "npy-nan", "npy-range", "npy-complex", "npy-is-npz",
                                  "npy-empty", "npy-pickle", "npy-huge-header", "png-size", "png-not-png",
                                  "missing-png", "missing-npy", "jpg", "npy-float-3.7", "npy-float-fractional-255",
                                  "npy-float-negative", "npy-int-mask", "fifo-npy", "fifo-png", "dev-zero-png"])
def test_bad_images(kind, tmp_path):
    path, fragments = _bad_image(kind, tmp_path)
    start = time.monotonic()
    expect(lambda: data.load_image(path), DataError, *fragments)
    assert time.monotonic() - start < 5                  # a FIFO is never waited on


# One rule per dtype, each with a clear reading (gpucnn/data/images.py npy_scale): the same digit in
# every encoding below loads as the same [0, 1] image.
IMAGE_ENCODINGS = {
    "float-0-1": lambda d: d,
    "float-resampled-1.02": lambda d: d * 1.02,            # clipped to 1, not taken as 0..255
    "float-slightly-negative": lambda d: d * 1.02 - 0.01,
    "float16": lambda d: d.astype(np.float16),
    "float-whole-0-255": lambda d: d * 255,
    "uint8": lambda d: (d * 255).astype(np.uint8),
    "int64": lambda d: (d * 255).astype(np.int64),
    "bool": lambda d: d > 0.5,
}


@pytest.mark.parametrize("encoding", IMAGE_ENCODINGS)
def test_image_encodings_load_as_the_same_digit(encoding, tmp_path):
    np.save(tmp_path / "d.npy", IMAGE_ENCODINGS[encoding](DIGIT))
    image = data.load_image(tmp_path / "d.npy")
    assert image.dtype == np.float32 and image.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(image[0, 0], DIGIT, atol=0.011)


@pytest.mark.parametrize("png, fragments", [
    (png_bytes(ctype=3, plte=b"\x00\x00"), ["PLTE", "2 bytes"]),
    (png_bytes(ctype=3), ["palette index outside"]),
    (png_bytes(depth=4), ["bit depth 4"]),
    (png_bytes()[:-20], ["truncated"]),
    (b"\x89PNG\r\n\x1a\n", ["no IEND"]),
], ids=["short-palette", "no-palette", "4-bit", "truncated", "no-iend"])
def test_bad_pngs_without_pillow(png, fragments):
    expect(lambda: data.decode_png(png, "d.png"), DataError, "d.png", *fragments)


# ---------------------------------------------------------------- the CLI

def run_cli(*args, cwd, env=None):
    environment = {**os.environ, "GPUCNN_DATA": str(cwd / "no-cache"), "GPUCNN_BACKEND": "numpy",
                   **(env or {})}
    environment.pop("GPUCNN_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "gpucnn", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """A synthetic MNIST folder, a good model, and models that are bad in different ways."""
    d = tmp_path_factory.mktemp("cli")
    (d / "mnist").mkdir()
    write_mnist(d / "mnist")
    bad = d / "badmnist"
    bad.mkdir()
    write_mnist(bad, x_test=idx_bytes(np.zeros((5, 28, 28)))[:-3])
    gpucnn.seed_network(backend="numpy").save(d / "good.npz")
    Network([Dense(784, 10)], backend="numpy").save(d / "flat.npz")
    Network([Flatten(), Dense(784, 5)], input_shape=(1, 28, 28), backend="numpy").save(d / "five.npz")
    (d / "random.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    good = (d / "good.npz").read_bytes()
    (d / "cut.npz").write_bytes(good[:len(good) // 3])
    write_npz(d / "mismatch.npz", dense_description(784, 10),
              **{"layers.0.W": np.zeros((10, 100), np.float32), "layers.0.b": np.zeros(10, np.float32)})
    (d / "wide.png").write_bytes(png_bytes(w=32, h=32))
    (d / "digit.png").write_bytes(png_bytes())
    a = np.zeros((28, 28))
    a[5, 5] = np.inf
    np.save(d / "inf.npy", a)
    os.mkfifo(d / "pipe.npz")
    os.symlink("/dev/zero", d / "zero.npz")
    (d / "notes.txt").write_text("keep me\n")
    return d


CLI_CASES = [
    # (id, arguments, exit status, fragments, files that must not exist afterwards)
    ("no-arguments", [], 2, ["required"], []),
    ("unknown-command", ["fly"], 2, ["invalid choice: 'fly'"], []),
    ("epochs-not-int", ["train", "--epochs", "abc"], 2, ["--epochs", "'abc'"], []),
    ("batch-size-0", ["train", "--batch-size", "0", "--model", "m.npz"], 1, ["--batch-size", "got 0"],
     ["m.npz"]),
    ("lr-0", ["train", "--lr", "0"], 1, ["learning rate", "got 0.0"], []),
    ("lr-negative", ["train", "--lr", "-1"], 1, ["learning rate", "-1.0"], []),
    ("lr-nan", ["train", "--lr", "nan"], 1, ["learning rate", "nan"], []),
    ("lr-inf", ["train", "--lr", "inf"], 1, ["learning rate", "inf"], []),
    ("momentum-negative", ["train", "--momentum", "-0.5"], 1, ["momentum", "-0.5"], []),
    ("every-0", ["train", "--every", "0"], 1, ["--every", "got 0"], []),
    ("resume-without-checkpoint", ["train", "--resume"], 2, ["--resume needs --checkpoint"], []),
    ("unknown-backend", ["train", "--backend", "tpu"], 1, ["unknown backend 'tpu'"], []),
    ("unknown-loss", ["train", "--loss", "hinge"], 2, ["invalid choice: 'hinge'"], []),
    ("data-and-sample", ["train", "--data", "mnist", "--sample"], 2, ["exclude each other"], []),
    ("data-missing", ["train", "--data", "nowhere", "--model", "m.npz"], 1, ["nowhere", "does not exist"],
     ["m.npz"]),
    ("data-corrupt", ["train", "--data", "badmnist", "--epochs", "1", "--model", "m.npz"], 1,
     ["t10k-images-idx3-ubyte", "truncated"], ["m.npz"]),
    ("batch-larger-than-data", ["train", "--data", "mnist", "--batch-size", "100", "--model", "m.npz",
                                "--checkpoint", "c.npz", "--quiet"], 1,
     ["batch_size (100)", "12 samples"], ["m.npz", "c.npz"]),
    ("evaluate-missing-model", ["evaluate", "nothere.npz", "--data", "mnist"], 1, ["not found"], []),
    ("evaluate-random-bytes", ["evaluate", "random.npz", "--data", "mnist"], 1,
     ["random.npz", "not a readable gpucnn model file"], []),
    ("evaluate-truncated", ["evaluate", "cut.npz", "--data", "mnist"], 1, ["cut.npz"], []),
    ("evaluate-directory", ["evaluate", "mnist", "--data", "mnist"], 1, ["is a directory"], []),
    ("evaluate-params-mismatch", ["evaluate", "mismatch.npz", "--data", "mnist"], 1,
     ["layers.0.W", "(10, 100)", "(10, 784)"], []),
    ("evaluate-other-input-shape", ["evaluate", "flat.npz", "--data", "mnist"], 1,
     ["(n, 784)", "(5, 1, 28, 28)"], []),
    ("evaluate-fewer-classes", ["evaluate", "five.npz", "--data", "mnist"], 1, ["0..4"], []),
    ("evaluate-bad-backend", ["evaluate", "good.npz", "--data", "mnist", "--backend", "tpu"], 1,
     ["unknown backend 'tpu'"], []),
    ("predict-missing-image", ["predict", "good.npz", "nothere.png"], 1, ["nothere.png"], []),
    ("predict-wrong-size", ["predict", "good.npz", "wide.png"], 1, ["32x32", "28x28"], []),
    ("predict-inf", ["predict", "good.npz", "inf.npy"], 1, ["NaN or inf"], []),
    ("predict-jpg", ["predict", "good.npz", "x.jpg"], 1, ["unsupported image type '.jpg'"], []),
    ("predict-bad-model", ["predict", "random.npz", "digit.png"], 1, ["random.npz"], []),
    # output paths are checked before the data is loaded or a step is taken, naming the flag and path
    ("seed-negative", ["train", "--seed", "-1", "--model", "m.npz"], 1, ["--seed", "got -1"], ["m.npz"]),
    ("model-missing-directory", ["train", "--data", "mnist", "--model", "nodir/m.npz"], 1,
     ["--model", "nodir/m.npz", "does not exist"], []),
    ("checkpoint-missing-directory", ["train", "--data", "mnist", "--checkpoint", "nodir/c.npz",
                                      "--model", "m.npz"], 1, ["--checkpoint", "nodir/c.npz"], ["m.npz"]),
    ("checkpoint-is-a-fifo", ["train", "--data", "mnist", "--checkpoint", "pipe.npz", "--model", "m.npz"], 1,
     ["--checkpoint", "pipe.npz", "a FIFO"], ["m.npz"]),
    ("checkpoint-not-a-model-file", ["train", "--data", "mnist", "--checkpoint", "notes.txt", "--model", "m.npz"],
     1, ["notes.txt", "not a gpucnn model file"], ["m.npz"]),
    ("checkpoint-is-the-model", ["train", "--checkpoint", "same.npz", "--model", "./same.npz"], 2,
     ["--checkpoint and --model are the same file"], ["same.npz"]),
    ("evaluate-a-fifo", ["evaluate", "pipe.npz", "--data", "mnist"], 1, ["pipe.npz is a FIFO"], []),
    ("predict-dev-zero", ["predict", "zero.npz", "digit.png"], 1, ["a symlink to /dev/zero", "character device"],
     []),
]


def run_cli_in_process(args, cwd, monkeypatch, capsys):
    """cli.main in this process, as ``python -m gpucnn`` runs it: (status, stdout, stderr). An exception
    escaping main (what would be a traceback) fails the test by itself."""
    from gpucnn import cli
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("GPUCNN_DATA", str(cwd / "no-cache"))
    monkeypatch.setenv("GPUCNN_BACKEND", "numpy")
    monkeypatch.delenv("GPUCNN_TRACEBACK", raising=False)
    capsys.readouterr()
    status = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def _check_cli_failure(status, stdout, stderr, expected_status, fragments, absent, cwd):
    lines = stderr.splitlines()
    assert status == expected_status, stderr
    assert len(lines) == 1 and lines[0].startswith("gpucnn: error: "), stderr
    assert "Traceback" not in stderr + stdout
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    for name in absent:
        assert not (cwd / name).exists(), f"{name} was written by a failed command"


@pytest.mark.parametrize("args, status, fragments, absent", [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_one_line_no_traceback(cli_dir, monkeypatch, capsys, args, status, fragments, absent):
    _check_cli_failure(*run_cli_in_process(args, cli_dir, monkeypatch, capsys), status, fragments, absent, cli_dir)


# A few rows end to end, as a user's shell sees them: a real process, its exit status and stderr.
END_TO_END = ["no-arguments", "lr-0", "data-corrupt", "evaluate-random-bytes", "model-missing-directory",
              "evaluate-a-fifo"]


@pytest.mark.parametrize("case", [c for c in CLI_CASES if c[0] in END_TO_END],
                         ids=[c[0] for c in CLI_CASES if c[0] in END_TO_END])
def test_cli_bad_input_in_a_real_process(cli_dir, case):
    _, args, status, fragments, absent = case
    result = run_cli(*args, cwd=cli_dir)
    _check_cli_failure(result.returncode, result.stdout, result.stderr, status, fragments, absent, cli_dir)


def test_cli_resume_from_a_missing_checkpoint_says_so(tmp_path):
    """A typo in --checkpoint with --resume trains from scratch, but not silently."""
    (tmp_path / "mnist").mkdir()
    write_mnist(tmp_path / "mnist")
    result = run_cli("train", "--data", "mnist", "--epochs", "1", "--batch-size", "4", "--checkpoint", "typo.npz",
                     "--resume", "--model", "m.npz", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"no checkpoint at {tmp_path / 'typo.npz'} yet: training from scratch" in result.stderr
    assert (tmp_path / "typo.npz").exists() and (tmp_path / "m.npz").exists()
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_cli_good_model_still_predicts(cli_dir):
    result = run_cli("predict", "good.npz", "digit.png", cwd=cli_dir)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.split()[0].isdigit()


def test_cli_unexpected_error_is_one_line(monkeypatch, capsys):
    """A bug inside a command still gives one line (and the traceback only on request)."""
    from gpucnn import cli

    def broken(args):
        raise KeyError("a bug\nwith two lines")
    monkeypatch.setitem(cli.COMMANDS, "info", broken)
    monkeypatch.delenv("GPUCNN_TRACEBACK", raising=False)
    assert cli.main(["info"]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "GPUCNN_TRACEBACK" in err
    monkeypatch.setenv("GPUCNN_TRACEBACK", "1")
    with pytest.raises(KeyError):
        cli.main(["info"])


# ---------------------------------------------------------------- the error types themselves

def test_error_types_are_consistent():
    for cls in (ShapeError, DataError, ModelFileError):
        assert issubclass(cls, GpucnnError) and issubclass(cls, ValueError)
    assert issubclass(gpucnn.BackendUnavailable, RuntimeError)



# ---------------------------------------------------------------- valid input is accepted

def _fit(net, **kwargs):
    call = dict(epochs=1, batch_size=2, lr=0.1, verbose=False)
    call.update(kwargs)
    x, y = call.pop("x", X), call.pop("y", Y)
    return net.fit(x, y, **call)


VALID_CASES = [
    # (id, call given a fresh seed network and tmp_path): must run; each returns something to check
    ("lr-float32", lambda n, d: _fit(n, lr=np.float32(0.1))),
    ("lr-int64", lambda n, d: _fit(n, lr=np.int64(1))),
    ("lr-float16", lambda n, d: _fit(n, lr=np.float16(0.5))),
    ("momentum-float32", lambda n, d: _fit(n, momentum=np.float32(0.9))),
    ("weight-decay-float64", lambda n, d: _fit(n, weight_decay=np.float64(1e-3))),
    ("epochs-int64", lambda n, d: _fit(n, epochs=np.int64(2))),
    ("batch-size-int32", lambda n, d: _fit(n, batch_size=np.int32(3))),
    ("every-uint8", lambda n, d: _fit(n, every=np.uint8(1), checkpoint=d / "c.npz")),
    ("checkpoint-pathlib", lambda n, d: _fit(n, checkpoint=d / "c.npz")),
    ("checkpoint-str", lambda n, d: _fit(n, checkpoint=str(d / "c.npz"))),
    ("x-float16", lambda n, d: _fit(n, x=X.astype(np.float16))),
    ("x-float64", lambda n, d: _fit(n, x=X.astype(np.float64))),
    ("x-standardised-negative", lambda n, d: _fit(n, x=(X - X.mean()) / X.std())),
    ("x-fortran-order", lambda n, d: _fit(n, x=np.asfortranarray(X))),
    ("y-uint8-labels", lambda n, d: _fit(n, y=Y.astype(np.uint8))),
    ("y-int32-labels", lambda n, d: _fit(n, y=Y.astype(np.int32))),
    ("y-float16-onehot", lambda n, d: _fit(n, y=ONEHOT.astype(np.float16))),
    ("predict-batch-int64", lambda n, d: n.predict(X, batch_size=np.int64(4))),
    ("gradcheck-numpy-args", lambda n, d: gpucnn.gradcheck(n, X[:1], Y[:1], eps=np.float32(1e-5),
                                                           max_per_param=np.int64(3), seed=np.int64(1))),
    ("network-seed-int64", lambda n, d: gpucnn.seed_network(backend="numpy", seed=np.int64(7)).seed == 7),
    ("network-seed-none", lambda n, d: isinstance(gpucnn.seed_network(backend="numpy", seed=None).seed, int)),
    ("layer-sizes-int64", lambda n, d: Network([Conv2D(np.int64(1), np.int32(2), np.int64(5)), Flatten(),
                                                Dense(np.int64(2 * 24 * 24), np.uint8(10))], backend="numpy")),
    ("input-shape-int64", lambda n, d: Network([Dense(4, 2)], input_shape=(np.int64(4),), backend="numpy")),
]


@pytest.mark.parametrize("call", [c[1] for c in VALID_CASES], ids=[c[0] for c in VALID_CASES])
def test_valid_input_is_accepted(call, tmp_path):
    result = call(gpucnn.seed_network(backend="numpy", seed=0), tmp_path)
    assert result is not False and result is not None


def test_numpy_seed_equals_the_python_int_seed():
    a, b = gpucnn.seed_network(backend="numpy", seed=np.int64(3)), gpucnn.seed_network(backend="numpy", seed=3)
    for name, value in a.get_params().items():
        np.testing.assert_array_equal(value, b.get_params()[name])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_network_copies_and_pickles_with_its_weights_mode_and_shuffle_state(how):
    import copy
    import pickle
    net = gpucnn.seed_network(backend="numpy", seed=2, loss="cross_entropy", activation="relu")
    _fit(net)
    net.eval()
    twin = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    for name, value in net.get_params().items():
        np.testing.assert_array_equal(twin.get_params()[name], value)
    assert (twin.seed, twin.loss.name, twin.training, twin.backend.name) == (2, "cross_entropy", False, "numpy")
    assert twin.shuffle_rng.random() == net.shuffle_rng.random()
    _fit(twin.train())                                   # independent: training one leaves the other
    assert not np.array_equal(twin.get_params()["layers.0.W"], net.get_params()["layers.0.W"])


def test_a_pickled_layer_of_a_network_comes_back_free_with_its_weights():
    import pickle
    trained = gpucnn.seed_network(backend="numpy", seed=6)
    layer = pickle.loads(pickle.dumps(trained.layers[0]))
    np.testing.assert_array_equal(layer.W, trained.layers[0].W)
    reused = Network([layer, Sigmoid(), MaxPool2D(2), Flatten(), Dense(432, 10)], backend="numpy", seed=1)
    np.testing.assert_array_equal(reused.get_params()["layers.0.W"], trained.get_params()["layers.0.W"])


def test_pickling_a_network_with_an_unregistered_layer_is_refused_at_once():
    import pickle

    class Doubler(gpucnn.layers.Layer):
        def forward(self, a):
            return 2 * a

    net = Network([Dense(4, 3), Doubler()], backend="numpy")
    expect(lambda: pickle.dumps(net), TypeError, "cannot pickle layer 1", "register_layer")


# ---------------------------------------------------------------- layer ownership

def _shared_sigmoid():
    s = Sigmoid()
    return Network([Flatten(), Dense(784, 10), s, Dense(10, 10), s], input_shape=(1, 28, 28), backend="numpy")


def _layer_of_a_living_network():
    trained = gpucnn.seed_network(backend="numpy", seed=0)
    return trained, Network(trained.layers[:4] + [Dense(432, 5)], backend="numpy")


OWNERSHIP_CASES = [
    ("same-activation-twice", _shared_sigmoid, ["layers 2 and 4", "same Sigmoid() instance"]),
    ("same-dense-twice", lambda: (lambda d: Network([d, Sigmoid(), d], backend="numpy"))(Dense(10, 10)),
     ["layers 0 and 2"]),
    ("layer-of-another-network", lambda: _layer_of_a_living_network()[1],
     ["already belongs to another network", "copy.deepcopy(layer)"]),
]


@pytest.mark.parametrize("call, fragments", [c[1:] for c in OWNERSHIP_CASES], ids=[c[0] for c in OWNERSHIP_CASES])
def test_a_layer_belongs_to_one_place_in_one_network(call, fragments):
    expect(call, gpucnn.layers.LayerOwnershipError, *fragments)


def test_transfer_learning_through_deepcopy_keeps_the_trained_weights_in_both_networks():
    import copy
    trained = gpucnn.seed_network(backend="numpy", seed=0)
    before = trained.get_params()
    new = Network([copy.deepcopy(layer) for layer in trained.layers[:4]] + [Dense(432, 5)], backend="numpy", seed=9)
    np.testing.assert_array_equal(new.get_params()["layers.0.W"], before["layers.0.W"])
    for name, value in trained.get_params().items():
        np.testing.assert_array_equal(value, before[name])


PARAM_CASES = [
    ("nan-W", lambda n: setattr(n.layers[0], "W", np.full((3, 1, 5, 5), np.nan)), ValueError, ["NaN or inf"]),
    ("inf-b", lambda n: setattr(n.layers[4], "b", np.array([np.inf] + [0.0] * 9)), ValueError, ["NaN or inf"]),
    ("str-W", lambda n: setattr(n.layers[4], "W", np.full((10, 432), "a")), TypeError, ["real numbers", "<U1"]),
    ("set-params-list", lambda n: n.set_params([1, 2]), TypeError, ["dict", "list"]),
    ("set-params-unknown", lambda n: n.set_params({**n.get_params(), "layers.9.b": np.zeros(3)}),
     ModelFileError, ["unknown arrays layers.9.b"]),
    ("set-params-nan", lambda n: n.set_params({**n.get_params(), "layers.4.b": np.full(10, np.nan)}),
     ModelFileError, ["layers.4.b", "NaN"]),
]


@pytest.mark.parametrize("call, exc_type, fragments", [c[1:] for c in PARAM_CASES], ids=[c[0] for c in PARAM_CASES])
def test_bad_parameters_are_refused_and_the_old_ones_kept(call, exc_type, fragments):
    net = gpucnn.seed_network(backend="numpy", seed=4)
    before = net.get_params()
    expect(lambda: call(net), exc_type, *fragments)
    for name, value in net.get_params().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


# ---------------------------------------------------------------- output paths: checked before any work

def _output_path(kind, tmp_path):
    """-> (path, exception, fragments) for a path a model or checkpoint cannot (or must not) go to."""
    if kind == "missing-directory":
        return tmp_path / "nodir" / "out.npz", FileNotFoundError, ["nodir", "does not exist"]
    if kind == "file-as-directory":
        (tmp_path / "notes").write_text("x")
        return tmp_path / "notes" / "out.npz", NotADirectoryError, ["notes", "is not a directory"]
    if kind == "a-directory":
        (tmp_path / "sub").mkdir()
        return tmp_path / "sub", IsADirectoryError, ["sub", "is a directory"]
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe")
        return tmp_path / "pipe", OSError, ["pipe", "a FIFO"]
    if kind == "symlink-to-device":
        os.symlink("/dev/null", tmp_path / "null.npz")
        return tmp_path / "null.npz", OSError, ["a symlink to /dev/null", "character device"]
    if kind == "trailing-slash":
        return f"{tmp_path}/nodir/", IsADirectoryError, ["nodir/", "a directory's name"]
    if kind == "empty":
        return "", ValueError, ["path is empty"]
    if kind == "not-a-model-file":
        (tmp_path / "results.csv").write_text("epoch,loss\n1,0.5\n")
        return tmp_path / "results.csv", FileExistsError, ["results.csv", "not a gpucnn model file",
                                                           "not overwriting"]
    raise AssertionError(kind)


OUTPUT_KINDS = ["missing-directory", "file-as-directory", "a-directory", "fifo", "symlink-to-device",
                "not-a-model-file", "trailing-slash", "empty"]


def _listing(directory):
    return sorted((p.name, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
                  for p in directory.iterdir())


@pytest.mark.parametrize("kind", [k for k in OUTPUT_KINDS if k != "empty"])   # checkpoint="": none
def test_fit_refuses_a_bad_checkpoint_path_before_the_first_step(kind, tmp_path):
    path, exc_type, fragments = _output_path(kind, tmp_path)
    net = gpucnn.seed_network(backend="numpy", seed=0)
    steps, real = [], net.train_step
    net.train_step = lambda *a: steps.append(1) or real(*a)
    before, listing = net.get_params(), _listing(tmp_path)
    expect(lambda: net.fit(X, Y, batch_size=2, checkpoint=path, verbose=False), exc_type, *fragments)
    assert steps == [], "training started before the checkpoint path was checked"
    assert _listing(tmp_path) == listing                   # no probe file, no temporary file left
    for name, value in net.get_params().items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
def test_save_names_the_users_path_not_a_temporary_file(kind, tmp_path):
    path, exc_type, fragments = _output_path(kind, tmp_path)
    listing = _listing(tmp_path)
    err = expect(lambda: gpucnn.seed_network(backend="numpy").save(path), exc_type, *fragments)
    assert ".tmp-" not in str(err)
    assert _listing(tmp_path) == listing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_directory_is_refused_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        expect(lambda: gpucnn.seed_network(backend="numpy").fit(X, Y, batch_size=2, verbose=False,
                                                                  checkpoint=locked / "c.npz"),
               PermissionError, str(locked / "c.npz"))
    finally:
        locked.chmod(0o700)


def test_an_existing_model_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "m.npz"
    gpucnn.seed_network(backend="numpy", seed=1).save(path)
    gpucnn.seed_network(backend="numpy", seed=2).save(path)
    np.testing.assert_array_equal(gpucnn.load(path).get_params()["layers.0.W"],
                                  gpucnn.seed_network(backend="numpy", seed=2).get_params()["layers.0.W"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


# ---------------------------------------------------------------- model files: what a path really is

def _zip(members):
    """A zip archive by hand: members (name, data as stored, method 0/8, crc, uncompressed size)."""
    local, central = b"", b""
    for name, data, method, crc, size in members:
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size,
                             len(name), 0) + name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data),
                               size, len(name), 0, 0, 0, 0, 0, len(local)) + name.encode()
        local += header + data
    return local + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                                         len(central), len(local), 0)


def _npy(a):
    import io
    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


def _stored(name, a):
    data = _npy(a)
    return (name, data, 0, zlib.crc32(data), len(data))


def _deflate_bomb(name, size_mib):
    """A deflated member of size_mib MiB of zeros, about 1 KiB per MiB (built without a GiB in memory)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    chunk = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)     # the same bytes for every MiB
    crc = 0
    for _ in range(size_mib):
        crc = zlib.crc32(block, crc)
    return (name, chunk * size_mib + c.flush(), 8, crc, size_mib << 20)


def test_a_member_that_inflates_to_a_gibibyte_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "bomb.npz"
    arch = np.array(json.dumps(dense_description()))
    path.write_bytes(_zip([_deflate_bomb("layers.0.W.npy", 1100), _stored("layers.0.b.npy", np.zeros(3, np.float32)),
                           _stored("architecture.npy", arch)]))
    assert path.stat().st_size < 2 << 20
    import tracemalloc
    tracemalloc.start()
    start = time.monotonic()
    expect(lambda: gpucnn.load(path), ModelFileError, "layers.0.W.npy", "declares 1153433600 bytes",
           str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 << 20 and time.monotonic() - start < 5


SPECIAL_PATHS = [
    # (id, make(tmp_path) -> path, fragments)
    ("fifo", lambda d: (os.mkfifo(d / "m.npz"), d / "m.npz")[1], ["is a FIFO", "not a model file"]),
    ("symlink-to-dev-zero", lambda d: (os.symlink("/dev/zero", d / "z.npz"), d / "z.npz")[1],
     ["a symlink to /dev/zero", "is a character device"]),
    ("character-device", lambda d: "/dev/null", ["/dev/null is a character device"]),
    ("broken-symlink", lambda d: (os.symlink(d / "gone.npz", d / "m.npz"), d / "m.npz")[1],
     ["a broken symlink"]),
    ("unknown-member-unread", lambda d: write_npz(d / "m.npz", dense_description(),
                                                  **{"layers.0.W": np.zeros((3, 4), np.float32),
                                                     "layers.0.b": np.zeros(3, np.float32),
                                                     "layers.9.b": np.zeros(3, np.float32)}),
     ["unknown array 'layers.9.b'", "not part of this architecture"]),
    ("optimizer-slot-of-no-parameter", lambda d: write_npz(d / "m.npz", dense_description(),
                                                           **{"layers.0.W": np.zeros((3, 4), np.float32),
                                                              "layers.0.b": np.zeros(3, np.float32),
                                                              "optim.layers.7.W.velocity": np.zeros(3)}),
     ["unknown array 'optim.layers.7.W.velocity'"]),
    ("oversized-parameter-member", lambda d: write_npz(d / "m.npz", dense_description(),
                                                       **{"layers.0.W": np.zeros((300, 400)),
                                                          "layers.0.b": np.zeros(3, np.float32)}),
     ["layers.0.W.npy", "declares", "allows"]),
]


@pytest.mark.parametrize("make, fragments", [c[1:] for c in SPECIAL_PATHS], ids=[c[0] for c in SPECIAL_PATHS])
def test_a_model_path_is_named_for_what_it_really_is_and_never_blocks(make, fragments, tmp_path):
    path = make(tmp_path)
    start = time.monotonic()
    expect(lambda: gpucnn.load(path), ModelFileError, *fragments)
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------- gradcheck arguments

GRADCHECK_CASES = [
    ("eps-0", dict(eps=0), ValueError, ["eps", "got 0"]),
    ("eps-negative", dict(eps=-1e-6), ValueError, ["eps", "-1e-06"]),
    ("eps-nan", dict(eps=float("nan")), ValueError, ["eps", "nan"]),
    ("eps-str", dict(eps="1e-6"), ValueError, ["eps", "'1e-6'"]),
    ("max-per-param-0", dict(max_per_param=0), ValueError, ["max_per_param", "or None", "got 0"]),
    ("max-per-param-negative", dict(max_per_param=-5), ValueError, ["max_per_param", "-5"]),
    ("max-per-param-float", dict(max_per_param=2.5), TypeError, ["max_per_param", "2.5"]),
    ("max-per-param-bool", dict(max_per_param=True), TypeError, ["max_per_param", "True"]),
]


@pytest.mark.parametrize("kwargs, exc_type, fragments", [c[1:] for c in GRADCHECK_CASES],
                         ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck_arguments(net, kwargs, exc_type, fragments):
    expect(lambda: gpucnn.gradcheck(net, X[:1], Y[:1], **kwargs), exc_type, *fragments)


def test_gradcheck_samples_a_bounded_number_of_entries_by_default(net, capsys):
    report = gpucnn.gradcheck(net, X[:1], Y[:1])
    assert {k: (r["checked"], r["size"]) for k, r in report.items()} == {
        "layers.0.W": (64, 75), "layers.0.b": (3, 3), "layers.4.W": (64, 4320), "layers.4.b": (10, 10)}
    full = gpucnn.gradcheck(net, X[:1], Y[:1], max_per_param=None, progress=True)
    assert full["layers.0.W"]["checked"] == 75 and full["layers.4.W"]["checked"] == 4320
    assert "gradcheck" in capsys.readouterr().err               # the progress bar on request


# ---------------------------------------------------------------- emulator settings and environment

EMULATOR_CASES = [
    ("timeout-str", dict(timeout="x"), ValueError, ["timeout", "'x'", "seconds"]),
    ("timeout-negative", dict(timeout=-1), ValueError, ["timeout", "-1"]),
    ("timeout-nan", dict(timeout=float("nan")), ValueError, ["timeout", "nan"]),
    ("workers-0", dict(workers=0), ValueError, ["workers", "1 to 256", "0"]),
    ("workers-float", dict(workers=1.5), ValueError, ["workers", "1.5"]),
    ("seed-str", dict(seed="a"), ValueError, ["seed", "'a'"]),
    ("order-unknown", dict(order="sideways"), ValueError, ["order", "'sideways'", "random"]),
    ("sanitizer-unknown", dict(sanitizer="memory"), ValueError, ["sanitizer", "'memory'"]),
    ("unknown-setting", dict(colour="red"), TypeError, ["unknown emulator settings", "colour"]),
]


@pytest.mark.parametrize("kwargs, exc_type, fragments", [c[1:] for c in EMULATOR_CASES],
                         ids=[c[0] for c in EMULATOR_CASES])
def test_emulator_settings_are_refused_at_once(kwargs, exc_type, fragments):
    from gpucnn import emulator
    before = emulator.current_settings()
    expect(lambda: emulator.settings(**kwargs), exc_type, *fragments)
    assert emulator.current_settings() == before


def test_emulator_settings_apply_inside_the_block_only():
    import threading
    from gpucnn import emulator
    before = emulator.current_settings()
    pending = emulator.settings(order="random", seed=np.int64(4), workers=np.int64(2), timeout=np.float32(3))
    assert emulator.current_settings() == before                # built, not entered: nothing changed
    seen = {}
    with pytest.raises(KeyError):
        with pending as inside:
            assert inside == emulator.current_settings() == {**before, "order": "random", "seed": 4,
                                                               "workers": 2, "timeout": 3.0}
            thread = threading.Thread(target=lambda: seen.update(emulator.current_settings()))
            thread.start()
            thread.join()
            raise KeyError("inside the block")
    assert emulator.current_settings() == before                # restored although the block raised
    assert seen == before                                       # another thread never saw the block's


@pytest.mark.parametrize("variable, value, fragment", [
    ("GPUCNN_EMU_SEED", "abc", "expected an int"), ("GPUCNN_EMU_WORKERS", "two", "expected an int"),
    ("GPUCNN_EMU_TIMEOUT", "soon", "seconds"), ("GPUCNN_EMU_ORDER", "sideways", "one of"),
    ("GPUCNN_EMU_SANITIZER", "memory", "'memory'"), ("GPUCNN_EMU_WORKERS", "0", "1 to 256"),
])
def test_emulator_environment_variables_are_named_when_they_do_not_parse(monkeypatch, variable, value, fragment):
    from gpucnn import emulator
    monkeypatch.setenv(variable, value)
    expect(emulator._env_defaults, ValueError, f"environment variable {variable}", fragment)


# ---------------------------------------------------------------- foreign arrays

def test_a_foreign_gpu_array_on_the_numpy_backend_is_named():
    backend = gpucnn.backend.get_backend("numpy")
    expect(lambda: backend.asarray(ForeignDeviceArray(X)), TypeError, "ForeignDeviceArray", "GPU array",
           "numpy backend", "cupy.asnumpy")


# ---------------------------------------------------------------- unscaled pixels in a float array

@pytest.mark.parametrize("call", [lambda n, x: _fit(n, x=x), lambda n, x: n.predict(x), lambda n, x: n.forward(x)],
                         ids=["fit", "predict", "forward"])
def test_float_images_of_whole_numbers_up_to_255_are_warned_about(call):
    """x.astype(np.float32) without the / 255 trains to chance as silently as uint8 did: a warning
    names the fix; values that can be meant (standardised, [0, 1]) pass quietly."""
    net = gpucnn.seed_network(backend="numpy", seed=0)
    with pytest.warns(gpucnn.errors.PixelRangeWarning, match=r"whole numbers 0\.\.255.*x / 255"):
        call(net, X_UINT8.astype(np.float32))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", gpucnn.errors.PixelRangeWarning)
        for quiet in (X, (X - X.mean()) / X.std(), X * 3):
            call(net, quiet.astype(np.float32))
