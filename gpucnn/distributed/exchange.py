"""Who computes which rows of a global batch, and how the pieces come back together, in a fixed order.

Pure bookkeeping, the same for MPI and NCCL (and tested without either):

    chunk_owners(k, size)   whole chunks to ranks, in order: rank r gets chunks [r*k//size, (r+1)*k//size)
                            (with fewer chunks than ranks, some ranks get none in that step)
    row_ranges(n, size)     the same rule over rows, for the layer-by-layer path
    PartLayout              a plan's gradient parts (dict of arrays per chunk) <-> one flat vector

The exact scheme: every rank draws the same shuffle; the global batch is cut at the fused plan's chunk
boundaries; each rank computes the parts of its chunks (each already divided by the GLOBAL batch
size), then every rank all-gathers all parts and the output rows, and adds the parts in chunk order
with the plan's own ``combine``. Each chunk's numbers depend on the chunk only, so the sum, the
update and the cost (computed from all output rows, as one process does) are bitwise those of one
process, for any number of ranks.
"""
import math

import numpy as np


def chunk_owners(k, size):
    """[(first, stop)] chunk ids of each rank: contiguous, in rank order, sizes differing by at most 1."""
    return [(r * k // size, (r + 1) * k // size) for r in range(size)]


def row_ranges(n, size):
    """[(start, stop)] rows of each rank for a batch of n (the same rule as chunk_owners)."""
    return chunk_owners(n, size)


def chunk_rows(chunks, owners):
    """[(start, stop)] rows of each rank given the plan's chunks (start, stop) and chunk_owners."""
    return [(chunks[a][0], chunks[b - 1][1]) if b > a else (0, 0) for a, b in owners]


class PartLayout:
    """The keys, shapes and dtypes of one chunk's gradient parts, and their flat packing.

    Keys in sorted order; a vector of ``dtype`` (the widest part dtype, so packing is exact) holds
    one chunk's parts back to back, ``size`` elements.
    """

    def __init__(self, parts):
        self.keys = sorted(parts)
        self.shapes = {k: tuple(parts[k].shape) for k in self.keys}
        self.dtypes = {k: np.dtype(parts[k].dtype) for k in self.keys}
        self.dtype = np.result_type(*self.dtypes.values())
        self.sizes = {k: math.prod(self.shapes[k]) for k in self.keys}
        self.size = sum(self.sizes.values())

    def pack(self, xp, parts_list):
        """-> one flat vector of every chunk's parts, chunk after chunk."""
        if not parts_list:
            return xp.empty(0, self.dtype)
        return xp.concatenate([part[k].reshape(-1).astype(self.dtype, copy=False)
                               for part in parts_list for k in self.keys])

    def unpack(self, flat, count):
        """flat vector of ``count`` chunks -> [parts dict] (views of flat, in the parts' own dtypes)."""
        parts, at = [], 0
        for _ in range(count):
            part = {}
            for k in self.keys:
                piece = flat[at:at + self.sizes[k]].reshape(self.shapes[k])
                part[k] = piece if piece.dtype == self.dtypes[k] else piece.astype(self.dtypes[k])
                at += self.sizes[k]
            parts.append(part)
        return parts


def split_gathered(flat, counts):
    """The concatenation of every rank's vector (``counts`` elements each) -> the list of vectors."""
    out, at = [], 0
    for c in counts:
        out.append(flat[at:at + c])
        at += c
    return out


