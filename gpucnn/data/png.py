"""A small PNG decoder (zlib only), for installs without Pillow: 8/16-bit gray, RGB and their alpha
forms, 8-bit palette, no interlace, 28x28 only. Pillow, when installed, is what ``load_image`` uses.

Why keep it (about 120 lines): the core install (numpy, tqdm) then reads the PNG digits people draw
and export from any editor, so ``gpucnn predict digit.png`` needs no extra package; it is fuzzed in
tests/test_fuzz.py and checked against Pillow pixel for pixel in tests/test_data.py.

NOTE: every length is checked before it is used: chunk lengths and CRCs, the IHDR size (28x28) before
inflating, and inflation stops one byte past what the header allows, so no input allocates more
than a 28x28 16-bit RGBA image.
"""
import struct
import zlib

import numpy as np

from ..errors import DataError

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
