"""IDX files, MNIST's own format: plain or gzipped, every defect a DataError naming the file.

Header: two zero bytes, type code 0x08 (unsigned byte; the only type MNIST uses), ndim, then ndim
big-endian uint32 sizes; the payload is exactly prod(sizes) bytes.
"""
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .files import open_regular

IDX_IMAGES_MAGIC = 0x00000803      # unsigned byte, 3 dims
IDX_LABELS_MAGIC = 0x00000801      # unsigned byte, 1 dim


def _read_bytes(path):
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name says)."""
    path = Path(path)
    try:
        with open_regular(path, "IDX file") as f:      # a FIFO named as MNIST must not hang us
            raw = f.read()
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

    A payload a byte short or a byte over is a DataError, as is any other type code.
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
