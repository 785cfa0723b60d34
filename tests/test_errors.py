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

FIT_CASES = [
    # (id, fit kwargs replacing x, y and defaults, exception, fragments)
    ("x-list", dict(x=X.tolist()), TypeError, ["x must be a NumPy or CuPy array", "list"]),
    ("x-complex", dict(x=X.astype(np.complex64)), TypeError, ["real numbers", "complex64"]),
    ("x-bool", dict(x=X > 0.5), TypeError, ["dtype bool"]),
    ("x-object", dict(x=X.astype(object)), TypeError, ["dtype object"]),
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
    ("every-0", dict(every=0), ValueError, ["every", "got 0"]),
    ("lr-0", dict(lr=0), ValueError, ["learning rate", "got 0"]),
    ("lr-negative", dict(lr=-0.5), ValueError, ["learning rate", "-0.5"]),
    ("lr-nan", dict(lr=float("nan")), ValueError, ["learning rate", "nan"]),
    ("lr-inf", dict(lr=float("inf")), ValueError, ["learning rate", "inf"]),
    ("lr-str", dict(lr="0.1"), (TypeError, ValueError), ["learning rate", "'0.1'"]),
    ("momentum-negative", dict(momentum=-0.9), ValueError, ["momentum", "-0.9"]),
    ("weight-decay-nan", dict(weight_decay=float("nan")), ValueError, ["weight_decay", "nan"]),
    ("resume-without-checkpoint", dict(resume=True), ValueError, ["resume=True needs checkpoint"]),
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
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["npy-shape", "npy-nan", "npy-range", "npy-complex", "npy-is-npz",
                                  "npy-empty", "npy-pickle", "npy-huge-header", "png-size", "png-not-png",
                                  "missing-png", "missing-npy", "jpg"])
def test_bad_images(kind, tmp_path):
    path, fragments = _bad_image(kind, tmp_path)
    expect(lambda: data.load_image(path), DataError, *fragments)


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
]


@pytest.mark.parametrize("args, status, fragments, absent", [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_one_line_no_traceback(cli_dir, args, status, fragments, absent):
    result = run_cli(*args, cwd=cli_dir)
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("gpucnn: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    for name in absent:
        assert not (cli_dir / name).exists(), f"{name} was written by a failed command"


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

