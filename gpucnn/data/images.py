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
from .files import open_regular
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
        with open_regular(path, "image file") as f:
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


FLOAT_SLACK = 0.05     # floats up to 1.05 (or down to -0.05) are [0, 1] images, clipped


def npy_scale(a, path):
    """The pixel value that means white in an .npy image; refuses what has no one clear reading.

    - bool: 1 (True is ink);
    - integers: 255; values must lie in 0..255, and an image of only 0 and 1 is refused (a 0/1 mask
      read as 0..255 pixels would be black: save it as bool, as 0/255, or as floats);
    - floats with max <= 1 + FLOAT_SLACK: 1 (a digit resampled to 1.02 is still a [0, 1] image);
      whole-number floats up to 255: 255 (a uint8 image saved as float); anything else is refused.
    """
    if a.dtype == np.bool_:
        return 1
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise DataError(f"{path}: array dtype {a.dtype} is not numeric")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise DataError(f"{path}: the image contains NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(a.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataError(f"{path}: integer values outside 0..255 (min {lo:g}, max {hi:g})")
        if hi == 1:
            raise DataError(f"{path}: integer values only 0 and 1: a 0/1 mask read as 0..255 pixels would "
                            "be black; save it as bool, as 0/255, or as floats in [0, 1]")
        return 255
    if lo < -FLOAT_SLACK:
        raise DataError(f"{path}: values outside 0..255 (min {lo:g}, max {hi:g}): expected floats in [0, 1] "
                        "or pixel values 0..255")
    if hi <= 1 + FLOAT_SLACK:
        return 1
    if hi <= 255 and np.all(a == np.round(a)):
        return 255
    raise DataError(f"{path}: float values up to {hi:g} are neither an image in [0, 1] (up to "
                    f"{1 + FLOAT_SLACK:g} is clipped) nor whole pixel values 0..255; rescale to [0, 1]")


def load_image(path):
    """One digit from .npy or .png -> float32 (1, 1, 28, 28) in [0, 1]; never resized.

    .npy: shape (28, 28), (1, 28, 28) or (1, 1, 28, 28), scaled by ``npy_scale``: integers are
    0..255, floats [0, 1] (a little over 1 from resampling is clipped), whole-number floats up to 255
    are 0..255, bool is 0/1; anything else is refused rather than guessed. .png: colour becomes luma,
    alpha composites onto black. The image must already look like MNIST (light digit on black,
    roughly centred): no inversion here.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        a = _read_npy_image(path)
        if a.shape not in ((28, 28), (1, 28, 28), (1, 1, 28, 28)):
            raise DataError(f"{path}: array shape {a.shape}, expected 28x28")
        scale = npy_scale(a, path)
        gray = _gray(a.reshape(28, 28, 1), scale)           # _gray clips to [0, 1]
    elif suffix == ".png":
        gray = _gray(*_png_pixels(path))
    else:
        raise DataError(f"{path}: unsupported image type {suffix!r} (use .png or .npy)")
    return gray.reshape(1, 1, 28, 28)
