"""One .npy array from untrusted bytes, with no pickle and no allocation the bytes do not justify.

``np.load`` trusts the header: a 100-byte file may promise 10^12 elements and numpy allocates them
before it finds the file short. Here the header's shape and dtype must account for exactly the bytes
that follow. Model files (gpucnn.serialization) and single images (``images.load_image``) both read
their arrays through ``read_npy``; this module sits in ``data`` because the data side is the lower layer.
"""
import math
import tokenize

import numpy as np

from ..errors import DataError


def read_npy(f, nbytes, source, error=DataError):
    """One array from the .npy bytes in file object f (nbytes of them, header included); no pickle.

    The header is not trusted: its shape and dtype must account for exactly the bytes that follow, so a
    corrupt header can neither allocate more than the file holds nor yield a short array. Every defect
    raises `error` (a model file passes ModelFileError) with `source` in the message.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    except (ValueError, EOFError, OSError, SyntaxError, tokenize.TokenError) as exc:
        # numpy parses the header dict with tokenize + ast and lets their errors through
        raise error(f"{source}: not a .npy array ({exc})") from None
    if dtype.hasobject or dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise error(f"{source}: unsupported .npy array (dtype {dtype}, shape {shape})")
    count = math.prod(shape)
    need, have = count * dtype.itemsize, nbytes - f.tell()
    if need != have:
        raise error(f"{source}: the .npy header promises {need} data bytes (shape {shape}, dtype {dtype}), "
                    f"the file holds {have}")
    data = f.read(need)
    if len(data) != need:
        raise error(f"{source}: truncated .npy data ({len(data)} of {need} bytes)")
    a = np.frombuffer(data, dtype=dtype, count=count)
    return (a.reshape(shape[::-1]).T if fortran else a.reshape(shape)).copy()
