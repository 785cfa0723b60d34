"""One digit from a file: ``load_image`` reads .png (Pillow when installed, else ``png.decode_png``) and
.npy (a header-checked reader, no pickle) into the network's layout, float32 (1, 1, 28, 28) in [0, 1].

NOTE: untrusted files are bounded before they are decoded: at most 1 MiB is read, and a PNG's header
must say 28x28 before Pillow decodes a pixel (Image.open reads only the header), so neither decoder
can be made to allocate more than a small image. Every failure, Pillow's included, is a DataError.
"""
import io
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import DataError
from .npy import read_npy
from .png import decode_png

_MAX_IMAGE_BYTES = 1 << 20


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


def _read_small(path):
    """The file's bytes, refusing anything over _MAX_IMAGE_BYTES before reading it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > _MAX_IMAGE_BYTES:
                raise DataError(f"{path}: {size} bytes is too large for a 28x28 image")
            return f.read(_MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _check_png_size(blob, path):
    """Refuse a PNG whose IHDR (first chunk, fixed offset) is not 28x28 before any decoder sees it."""
    if blob[:8] == b"\x89PNG\r\n\x1a\n" and blob[12:16] == b"IHDR" and len(blob) >= 24:
        w, h = struct.unpack(">II", blob[16:24])
        if (w, h) != (28, 28):
            raise DataError(f"{path}: image is {w}x{h}, expected 28x28 (resize it first)")


def _pillow_pixels(Image, blob, path):
    """(pixels (28, 28, channels), max_value) decoded by Pillow, PNG plugin only."""
    _check_png_size(blob, path)      # so Pillow never sizes a bomb (nor warns about one)
    try:
        with Image.open(io.BytesIO(blob), formats=["PNG"]) as im:
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
    # what Pillow raises for unreadable files; a bomb-sized header is refused in Image.open
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def _png_pixels(path):
    """(pixels (h, w, channels), max_value) through Pillow when installed, else decode_png.

    Both paths hand _gray the same channel layout (gray stays gray, colour stays colour), so a PNG the
    minimal decoder reads gives the identical float image either way.
    """
    blob = _read_small(path)
    try:
        from PIL import Image                       # optional (the `data` extra): not a module-level import
    except ImportError:
        return decode_png(blob, source=str(path))
    return _pillow_pixels(Image, blob, path)


def _read_npy_image(path):
    """A small .npy file -> array, through the header-checking reader (no pickle, no huge allocation)."""
    blob = _read_small(path)
    return read_npy(io.BytesIO(blob), len(blob), str(path))


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
