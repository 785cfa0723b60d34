"""A checksummed downloader: files land only by rename, after their md5/sha256 matched.

Nothing here knows about MNIST; ``mnist.download_mnist`` passes it the file names, checksums and mirrors.
"""
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError

_MAX_DOWNLOAD_BYTES = 64 << 20     # the largest MNIST file is 9.9 MB gzipped
_ALGORITHMS = {32: "md5", 64: "sha256"}     # hex digits -> hash


def _algorithm(hexdigest):
    algo = _ALGORITHMS.get(len(hexdigest))
    if algo is None:
        raise ValueError(f"checksum {hexdigest!r} is neither md5 nor sha256")
    return algo


def _digest(path_or_bytes, hexdigest):
    """True when the data's md5 (32 hex digits) or sha256 (64) equals `hexdigest`."""
    algo = _algorithm(hexdigest)
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.new(algo, data).hexdigest() == hexdigest.lower()


def _fetch(url, dest, checksum, timeout, deadline_s):
    """Download `url` to `dest` atomically: temp file in dest's folder, verify, then os.replace.

    Raises OSError / DataError on any failure; the temp file never survives one.
    """
    start = time.monotonic()
    h = hashlib.new(_algorithm(checksum))
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
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


def download_files(directory, checksums, mirrors, *, timeout=10.0, deadline_s=300.0):
    """Fetch each {name: checksum} into `directory`, trying `mirrors` (URL prefixes) in order.

    A file already there with the right checksum is kept. Each socket operation times out after
    `timeout` seconds and each file after `deadline_s`, so an offline machine gets a DataError listing
    every mirror's failure within seconds, not a hang. Returns the directory.
    """
    directory = Path(directory)
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
