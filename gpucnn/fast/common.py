"""What every fast plan shares: the element-wise pieces written as layers.py writes them, the
first-maximum pooling route, the OpenBLAS thread guard, the worker thread and the step driver.
"""
import contextlib
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import layers as L

THREAD_MIN = 64     # default: from this batch size on, two threads (below, the hand-off costs more)
SWITCH_INTERVAL = 1e-4   # the GIL switch interval during a two-thread step (s); see Plan._run
ACTIVATIONS = (L.Sigmoid, L.ReLU, L.Tanh)


# -- element-wise pieces, written exactly as layers.py / losses.py write them ---------------------
# (same expression, same order of operations: for the same input, the same bits)

def sigma_inplace(kind, z, halved=False):
    """z -> sigma(z) in place (Sigmoid: 0.5 * tanh(0.5 z) + 0.5, as in layers.Sigmoid).

    halved: z already holds 0.5 * z (Sigmoid only).
    """
    if kind is L.Sigmoid:
        if not halved:
            np.multiply(z, 0.5, out=z)
        np.tanh(z, out=z)
        np.multiply(z, 0.5, out=z)
        np.add(z, 0.5, out=z)
    elif kind is L.ReLU:
        np.maximum(z, 0, out=z)
    else:
        np.tanh(z, out=z)
    return z


def sigma_prime(kind, a, z=None):
    """sigma'(z) from the output a (Sigmoid, Tanh) or the input z (ReLU), as layers.py computes it.

    At a pooling window's argmax, sigma'(z) is a function of the pooled value alone: pass it as a
    (and as z for ReLU, where [z > 0] = [a > 0]).
    """
    if kind is L.Sigmoid:
        return a * (1 - a)
    if kind is L.Tanh:
        return 1 - a * a
    return (z > 0).astype(np.float32)


def loss_gradient(loss_name, out, y1, n):
    """dC/d(out) of the batch-mean cost for a chunk of rows of a batch of n (losses.py, row-wise)."""
    if loss_name == "quadratic":
        return (out - y1) / n
    # The backward runs before the cost is known to be finite (it is skipped afterwards if not):
    # an inf logit must not warn here, where the reference path would not have computed this.
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True) - y1) / n


def first_max_route(taps, pooled, dz_max, delta_taps):
    """delta at tap k of each 2x2 window = dz_max where tap k is the FIRST maximum, else 0.

    taps, delta_taps: the 4 views of a and of delta in row-major window order (k = dy*2 + dx),
    pooled = max of the taps, dz_max (same shape) = the delta the window's argmax receives.
    What is not yet routed is carried from tap to tap: rest - rest*hit is rest or exactly 0, so
    every delta entry is exactly dz_max or 0, as in the reference. (An infinite dz_max would
    give NaN here where the reference gives inf; training has diverged either way.)
    """
    rest = dz_max
    for k in range(3):
        np.multiply(rest, np.equal(taps[k], pooled), out=delta_taps[k])
        rest = rest - delta_taps[k]
    np.copyto(delta_taps[3], rest)               # no earlier tap was the maximum: tap 3 is


def pool_max(taps):
    pooled = np.maximum(taps[0], taps[1])
    np.maximum(pooled, taps[2], out=pooled)
    np.maximum(pooled, taps[3], out=pooled)
    return pooled


# -- threads -------------------------------------------------------------------------------------
_executor = []


def worker():
    """The one worker thread every plan shares, started on first use."""
    if not _executor:
        _executor.append(ThreadPoolExecutor(1, thread_name_prefix="gpucnn-fast"))
    return _executor[0]


class OneBlasThread:
    """Hold OpenBLAS to one thread during a step (threadpoolctl when present, else do nothing).

    Two of our threads each run their own matmuls; OpenBLAS threads on top would fight them for the
    two cores, and spin for ~0.1 s after the step. A matmul's result does not depend on this.
    """

    _libs = None                          # found once per process (a scan of the loaded libraries)

    def __init__(self):
        if OneBlasThread._libs is None:
            try:
                from threadpoolctl import ThreadpoolController
                OneBlasThread._libs = ThreadpoolController().select(internal_api="openblas").lib_controllers
            except Exception:             # threadpoolctl missing or unusable: run as configured
                OneBlasThread._libs = []
        self.libs = OneBlasThread._libs
        self.saved = []

    def __enter__(self):
        self.saved = [lib.get_num_threads() for lib in self.libs]
        for lib in self.libs:
            lib.set_num_threads(1)

    def __exit__(self, *exc):
        for lib, n in zip(self.libs, self.saved):
            lib.set_num_threads(n)

    @property
    def active(self):
        return bool(self.libs)


class Plan:
    """The step driver: chunks, the two-thread split, the cost, the gradients, the update.

    A subclass gives ``_params()`` (this step's parameters in its layouts), ``_chunk(...)`` (forward
    and backward of images s:e, returning a dict of gradient parts) and ``_store_grads(parts)``.
    """
    chunk = 32
    thread_min = None   # from this batch size on, two threads (None: THREAD_MIN)
    blas_min = 0        # batches below this skip the OpenBLAS guard (their gemms are single-threaded)

    def __init__(self, net):
        self.net = net
        self.out_features = net.shapes[-1][0]
        self.loss_name = net.loss.name
        self.blas = OneBlasThread()
        self.scratch = threading.local()

    def buffer(self, key, shape):
        """A contiguous float32 scratch array of `shape`, kept per thread and per key and reused step
        to step (it grows to the largest size asked for; a final partial batch allocates nothing)."""
        cache = getattr(self.scratch, "bufs", None)
        if cache is None:
            cache = self.scratch.bufs = {}
        size = math.prod(shape)
        if key not in cache or cache[key].size < size:
            cache[key] = np.empty(size, np.float32)
        return cache[key][:size].reshape(shape)

    # -- the public entry points (the hook in Network) --------------------------------------------
    def train_step(self, xb, y1, optimizer):
        """One SGD step; returns (cost, out) as Network.train_step does. A non-finite cost skips it.

        Built from the data-parallel pieces (params, chunks, chunk_parts, combine, store_grads), so one
        process and N ranks run the same code.
        """
        xb, n = np.ascontiguousarray(xb, np.float32), xb.shape[0]
        y1 = np.ascontiguousarray(y1, np.float32)
        params = self.params()
        out = np.empty((n, self.out_features), np.float32)
        parts = self.chunk_parts(xb, y1, out, params, range(len(self.chunks(n))), n)
        cost = self.net.loss.cost(np, out, y1)
        self.net.out = None                          # the layers' caches are stale: no backward()
        if math.isfinite(cost):
            self.store_grads(self.combine(parts))
            optimizer.step(self.net.parameters())
        return cost, out

    def forward(self, x):
        """Network output for x (n, *input_shape), as Network._forward gives it (no caches kept)."""
        n = x.shape[0]
        out = np.empty((n, self.out_features), np.float32)
        self._run(np.ascontiguousarray(x, np.float32), None, out, self.params(),
                  list(range(len(self.chunks(n)))), n, backward=False)
        return out

    # -- the data-parallel pieces (contract: see gpucnn/fast/__init__.py) ------------------------
    def params(self):
        """This step's parameters in the plan's layouts, read afresh from the layers' Parameters."""
        return self._params()

    def chunk_parts(self, x, y1, out, params, chunk_ids, n):
        """Forward and backward of the chunks ``chunk_ids`` of a global batch of n.

        x (n, *input_shape), y1 (n, classes) and out (n, classes) are whole-batch arrays; only the
        rows of the given chunks are read (x, y1) and written (out). Returns one gradient-part dict
        per chunk, in the order of ``chunk_ids``; each part already divides by the global n.
        """
        return self._run(x, y1, out, params, list(chunk_ids), n, backward=True)

    def combine(self, parts_list):
        """The ordered sum of per-chunk parts (list order = chunk order): bitwise reproducible."""
        total = dict(parts_list[0])
        for part in parts_list[1:]:
            for key in total:
                total[key] = total[key] + part[key]
        return total

    def store_grads(self, combined):
        """Write the combined parts into the layers' Parameter.grad (their own shapes and layout)."""
        self._store_grads(combined)

    def _threads_from(self):
        return THREAD_MIN if self.thread_min is None else self.thread_min

    def chunks(self, n):
        """The chunks (start, stop) of a batch of n: a function of n only, so the sums are too."""
        return [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]

    def _run(self, x, y1, out, params, chunk_ids, n, backward):
        """Forward (and backward) of the chunks ``chunk_ids``; returns their parts in that order.

        From thread_min images on, this thread and the worker take chunks from a shared queue, so a
        worker slow to wake up (an idle vCPU) costs nothing but its share. Which thread ran a chunk
        does not change its numbers: bitwise reproducible.
        """
        chunks = self.chunks(n)
        results = [None] * len(chunk_ids)
        todo, lock, stop = iter(range(len(chunk_ids))), threading.Lock(), threading.Event()

        def work():
            while not stop.is_set():
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                s, e = chunks[chunk_ids[i]]
                results[i] = self._chunk(x, y1, out, params, s, e, n, backward)

        with self._guard(n):
            if self.blas.active and n >= self._threads_from() and len(chunk_ids) > 1:
                # Both threads hand the GIL back and forth around every NumPy call. A thread whose
                # call has finished waits for the GIL; if the other keeps re-taking it first, the
                # waiter gets it only when the switch interval runs out: 5 ms by default, longer than
                # a chunk. A short interval during the step bounds that wait (measured: the wide net
                # at b64 2.5k -> 4.2k img/s, 2 threads).
                interval = sys.getswitchinterval()
                sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
                try:
                    other = worker().submit(work)
                    try:
                        work()
                    except BaseException:
                        stop.set()                   # the worker finishes its chunk and stops
                        raise
                    finally:
                        other.result()               # never leave it running past this step
                finally:
                    sys.setswitchinterval(interval)
            else:
                work()
        return results if backward else None

    def _guard(self, n):
        return self.blas if n >= self.blas_min else contextlib.nullcontext()

    def _dense_forward(self, p, params, out, s, e):
        """z = p W^T + b (+ final activation) for the chunk's pooled rows p; fills out[s:e]."""
        zL = p @ params["W2p"].T + params["b2"]
        final = self.final
        aL = sigma_inplace(final, zL.copy() if final is L.ReLU else zL) if final is not None else zL
        out[s:e] = aL
        return zL, aL

    def _dense_backward(self, p, zL, aL, params, y1, s, e, n):
        """-> (dC/dp, the dense layer's gradient parts) for the chunk."""
        g = loss_gradient(self.loss_name, aL, y1[s:e], n)
        deltaL = g * sigma_prime(self.final, aL, zL) if self.final is not None else g
        return deltaL @ params["W2p"], {"dW2p": deltaL.T @ p, "db2": deltaL.sum(axis=0)}
