"""What every fused plan shares: the step driver over chunks (the data-parallel pieces), the worker
thread, per-thread scratch buffers and the scoped process settings of a two-thread step.
"""
import math
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

THREAD_MIN = 64          # default: from this batch size on, two threads (below, the hand-off costs more)
SWITCH_INTERVAL = 1e-4   # the GIL switch interval during a two-thread step (s); see Plan._run


# -- scoped process state ------------------------------------------------------------------------
class ProcessSetting:
    """A process-wide setting held at ``value`` while at least one step is inside the scope.

    Refcounted under a lock: the first thread in saves the setting and sets it, the last one out
    restores what it saved, so however calls overlap (two threads in predict_proba at once) the
    process is as it was once every call has returned. ``value(saved)`` gives the value to hold.
    """

    def __init__(self, get, set_, value):
        self.get, self.set, self.value = get, set_, value
        self.lock = threading.Lock()
        self.depth, self.saved = 0, None

    def __enter__(self):
        with self.lock:
            if self.depth == 0:
                self.saved = self.get()
                self.set(self.value(self.saved))
            self.depth += 1
        return self

    def __exit__(self, *exc):
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                self.set(self.saved)
                self.saved = None


def _openblas_libs():
    """OpenBLAS's thread controls (threadpoolctl), or [] when it is not installed."""
    try:
        from threadpoolctl import ThreadpoolController      # optional dependency
    except ImportError:
        return []
    return ThreadpoolController().select(internal_api="openblas").lib_controllers


BLAS_LIBS = _openblas_libs()
# Two of our threads each run their own matmuls; OpenBLAS threads on top would fight them for the
# cores and spin for ~0.1 s after the step. A matmul's result does not depend on its thread count.
ONE_BLAS_THREAD = ProcessSetting(lambda: [lib.get_num_threads() for lib in BLAS_LIBS],
                                 lambda counts: [lib.set_num_threads(k) for lib, k in zip(BLAS_LIBS, counts)],
                                 lambda saved: [1] * len(saved))
SHORT_SWITCH = ProcessSetting(sys.getswitchinterval, sys.setswitchinterval,
                              lambda saved: min(saved, SWITCH_INTERVAL))

_executor = []
_executor_lock = threading.Lock()


def worker():
    """The one worker thread every plan shares, started on first use."""
    with _executor_lock:
        if not _executor:
            _executor.append(ThreadPoolExecutor(1, thread_name_prefix="gpucnn-fast"))
        return _executor[0]


def ordered_sum(items):
    """items[0] + items[1] + ... left to right, in the order given (chunk order, rank order): the same
    bits every run, on every rank. The one definition: the plans' parts, the batch norm's statistics and
    the distributed exchange all add this way."""
    total = None
    for item in items:
        total = item if total is None else total + item
    return total


class ThreadChoice:
    """One thread or two, per kind of call and batch size, from the measured time of this plan's calls.

    Two threads win on an idle 2-core machine (LeNet-5 at b64: 13k -> 19k img/s) and lose when other
    processes hold the cores (the hand-offs then wait for a core). Each mode is timed twice, then the
    faster runs and the other is retried every ``explore`` calls (the load changes); a mode's time is
    the median of its last ``keep`` calls, so one descheduled call does not flip the choice. The
    numbers never depend on the choice.
    """
    explore = 16
    keep = 5

    def __init__(self):
        self.lock = threading.Lock()
        self.stats = {}                 # key -> ([recent seconds, one thread], [two threads], [calls])

    def pick(self, key):
        with self.lock:
            one, two, calls = self.stats.setdefault(key, ([], [], [0]))
            calls[0] += 1
            if len(two) < 2:
                return True
            if len(one) < 2:
                return False
            best = statistics.median(two) < statistics.median(one)
            return best if calls[0] % self.explore else not best

    def record(self, key, two, seconds):
        with self.lock:
            recent = self.stats[key][1 if two else 0]
            recent.append(seconds)
            del recent[:-self.keep]

    def timed(self, key, run):
        two = self.pick(key)
        start = time.perf_counter()
        result = run(two)
        self.record(key, two, time.perf_counter() - start)
        return result


class Chunk:
    """Rows s:e of a batch, and where this chunk's arrays live.

    ``buf(key, shape)`` is scratch (per thread, reused chunk to chunk and step to step);
    ``keep(key, shape)`` is an array that must outlive the chunk when the forward is kept for a
    later backward (Network.forward), else scratch too. ``grad``: the backward follows in the same
    pass (a training step); else a stage leaves what only a backward needs (the pooling argmax) to
    its backward, which a kept forward may or may not get.
    """
    __slots__ = ("plan", "index", "s", "e", "m", "kept", "cache", "grad")

    def __init__(self, plan, index, s, e, kept, grad=True):
        self.plan, self.index, self.s, self.e, self.m = plan, index, s, e, e - s
        self.kept, self.grad = kept, grad
        self.cache = {}

    def buf(self, key, shape, dtype=np.float32):
        return self.plan.scratch_buffer(key, shape, dtype)

    def keep(self, key, shape, dtype=np.float32):
        if self.kept is None:
            return self.plan.scratch_buffer(key, shape, dtype)
        return _grown(self.kept, (self.index, key), shape, dtype)


def _grown(store, key, shape, dtype=np.float32):
    """A contiguous array of `shape` from `store`, reallocated only when it must grow."""
    size = math.prod(shape)
    if key not in store or store[key].size < size or store[key].dtype != dtype:
        store[key] = np.empty(size, dtype)
    return store[key][:size].reshape(shape)


class Plan:
    """The step driver: chunks, the two-thread split, the cost, the gradients, the update.

    A subclass gives ``_params(n)`` (this step's parameters in its layouts and its draws for n rows),
    ``_forward_chunk(chunk, x, params)`` (-> the chunk's output rows), ``_backward_chunk(chunk, g, params,
    need_dx)`` (g = dC/d out for its rows -> (gradient parts, dC/dx rows or None)), ``_store_grads(parts)``,
    and, for a forward kept for a later backward, ``_forward_all(chunks, x, params, out, kind)`` and
    ``_backward_all(chunks, out, y1, params, need_dx, parts, dx)`` over every chunk, with
    ``_whole_batch(params)``: whether this step must run them so (a layer's batch statistics).
    """
    chunk = 32
    thread_min = None   # from this batch size on, two threads (None: THREAD_MIN)
    threads = None      # None: two threads when the plan's timings say they pay; 1 or 2: fixed
    blas_min = 0        # batches below this skip the OpenBLAS guard (their gemms are single-threaded)

    def __init__(self, net):
        self.net = net
        self.out_features = net.shapes[-1][0]
        self.loss = net.loss
        self.scratch = threading.local()
        self.saved = None               # the kept forward: (out, chunks, kept arrays)
        self.choice = ThreadChoice()
        self._stores = {}               # per-chunk arrays that outlive a chunk (_kept_store)

    def scratch_buffer(self, key, shape, dtype=np.float32):
        """A contiguous float32 scratch array, kept per thread and per key and reused step to step
        (it grows to the largest size asked for; a final partial batch allocates nothing)."""
        cache = getattr(self.scratch, "bufs", None)
        if cache is None:
            cache = self.scratch.bufs = {}
        return _grown(cache, key, shape, dtype)

    def available(self):
        """None when the plan can run the network now, else why not (e.g. a layer's mode)."""
        return None

    # -- the entry points (the hooks in Network) ----------------------------------------------------
    def train_step(self, xb, y1, optimizer):
        """One optimizer step; returns (cost, out) as Network.train_step does. A non-finite cost skips
        the update. Built from the data-parallel pieces, so one process and N ranks run the same code.
        """
        xb, n = np.ascontiguousarray(xb, np.float32), xb.shape[0]
        y1 = np.ascontiguousarray(y1, np.float32)
        params = self.params(n)
        out = np.empty((n, self.out_features), np.float32)
        parts = self.chunk_parts(xb, y1, out, params, range(len(self.chunks(n))), n)
        return self.finish_step(out, y1, lambda: self.combine(parts), optimizer)

    def finish_step(self, out, y1, combined, optimizer):
        """The end of a step over the whole batch's out and y1: (cost, out); a finite cost stores the
        gradients (``combined()``: the summed parts) and takes the optimizer step."""
        cost = self.loss.cost(np, out, y1)
        self.saved = None
        self.net.out = None                          # the layers' caches are stale: no backward()
        if math.isfinite(cost):
            self.store_grads(combined())
            optimizer.step(self.net.parameters())
        return cost, out

    def forward(self, x, keep=False):
        """Network output for x (n, *input_shape). ``keep``: keep what ``backward`` needs (the plan's
        own arrays, reused by the next kept forward), as Network.forward does."""
        n = x.shape[0]
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((n, self.out_features), np.float32)
        params = self.params(n)
        # a whole-batch stage needs every chunk's arrays at once: an unkept forward keeps them too, in
        # a store of its own (the last kept forward's arrays stay for its backward)
        kept = None
        if keep or self._whole_batch(params):
            kept = self._kept_store("kept" if keep else "unkept")
        # grad=False: what only a backward needs (the pooling argmax) waits for backward()
        chunks = [Chunk(self, i, s, e, kept, False) for i, (s, e) in enumerate(self.chunks(n))]
        self._forward_all(chunks, x, params, out, "forward")
        if keep:                                     # an unkept forward (predict) leaves it alone
            self.saved = (out, chunks, params)
        return out

    def holds(self, out):
        """Whether ``out`` is the output of the last kept forward (then ``backward`` can run)."""
        return self.saved is not None and self.saved[0] is out

    def backward(self, y1, need_dx=True):
        """After ``forward(x, keep=True)``: fill every Parameter.grad and return dC/dx (n, *input_shape)
        (None without need_dx). The same chunks and sums as train_step: the same gradients."""
        out, chunks, params = self.saved
        y1 = np.ascontiguousarray(y1, np.float32)
        n = out.shape[0]
        parts = [None] * len(chunks)
        dx = np.empty((n, *self.net.input_shape), np.float32) if need_dx else None
        self._backward_all(chunks, out, y1, params, need_dx, parts, dx)
        self.store_grads(self.combine(parts))
        return dx

    def _kept_store(self, name="kept"):
        """Per-chunk arrays that outlive a chunk, by use: "kept" (a kept forward for its backward, or a
        phased step), "unkept" (a phased forward nobody will take a backward of)."""
        return self._stores.setdefault(name, {})

    def _loss_gradient(self, out_rows, y1_rows, n):
        # The backward runs before the cost is known to be finite (it is skipped afterwards if not):
        # an inf logit must not warn here, where the reference path would not have computed this.
        with np.errstate(invalid="ignore", over="ignore"):
            return self.loss.gradient(np, out_rows, y1_rows, n=n)

    # -- the data-parallel pieces (contract: see gpucnn/fast/__init__.py) ----------------------------
    def params(self, n=None):
        """This step's parameters in the plan's layouts, read afresh from the layers' Parameters, and,
        for a step over a batch of n, its random draws (dropout masks, from the layers' generators).
        Without n nothing is drawn (a probe of the parts' shapes); dropout then passes its input on."""
        return self._params(n)

    def chunks(self, n):
        """The chunks (start, stop) of a batch of n: a function of n only, so the sums are too. As few
        as chunks of at most ``self.chunk`` rows allow, of equal sizes (one row apart at most): a
        batch of 64 in chunks of at most 9 is 8 x 8, not 7 x 9 + 1, whose last chunk would cost a
        whole chunk's calls for one image and leave a thread idle meanwhile."""
        count = -(-n // self.chunk)
        size, extra = divmod(n, count) if n else (0, 0)
        bounds, start = [], 0
        for k in range(count):
            stop = start + size + (k < extra)
            bounds.append((start, stop))
            start = stop
        return bounds

    def chunk_parts(self, x, y1, out, params, chunk_ids, n):
        """Forward and backward of the chunks ``chunk_ids`` of a global batch of n.

        x (n, *input_shape), y1 (n, classes) and out (n, classes) are whole-batch arrays; only the
        rows of the given chunks are read (x, y1) and written (out). Returns one gradient-part dict
        per chunk, in the order of ``chunk_ids``; each part already divides by the global n.
        """
        bounds = self.chunks(n)
        parts = [None] * len(chunk_ids)
        if self._whole_batch(params):                # the whole batch, in phases (Stage.whole_batch)
            if list(chunk_ids) != list(range(len(bounds))):
                raise ValueError("this network's batch statistics (BatchNorm2D in train mode) need every "
                                 "chunk of the batch in one process")
            self.saved = None                        # the kept store is this step's now
            chunks = [Chunk(self, i, s, e, self._kept_store()) for i, (s, e) in enumerate(bounds)]
            self._forward_all(chunks, x, params, out, "step")
            self._backward_all(chunks, out, y1, params, False, parts, None)
            return parts
        chunks = [Chunk(self, i, *bounds[c], None) for i, c in enumerate(chunk_ids)]

        def one(chunk):
            s, e = chunk.s, chunk.e
            out[s:e] = self._forward_chunk(chunk, x, params)
            parts[chunk.index] = self._backward_chunk(chunk, self._loss_gradient(out[s:e], y1[s:e], n),
                                                      params, False)[0]
        self._run(one, chunks, n, "step")
        return parts

    def combine(self, parts_list):
        """The ordered sum of per-chunk parts (list order = chunk order): bitwise reproducible."""
        return {key: ordered_sum(part[key] for part in parts_list) for key in parts_list[0]}

    def store_grads(self, combined):
        """Write the combined parts into the layers' Parameter.grad (their own shapes and layout)."""
        self._store_grads(combined)

    # -- threads -------------------------------------------------------------------------------------
    def _threads_from(self):
        return THREAD_MIN if self.thread_min is None else self.thread_min

    def _run(self, one, chunks, n, kind):
        """one(chunk) for every chunk; from thread_min images on, on two threads when they pay.

        This thread and the worker take chunks from a shared queue, so a worker slow to wake up (an
        idle vCPU) costs nothing but its share. Which thread ran a chunk does not change its numbers,
        so whether two threads run may follow the machine: ``threads`` None (the default) lets the
        plan's own timings decide (ThreadChoice), 1 or 2 fixes it.
        """
        two = bool(BLAS_LIBS) and n >= self._threads_from() and len(chunks) > 1 and self.threads != 1
        if not two and n < self.blas_min:                  # one thread, no guard: just the chunks
            for chunk in chunks:
                one(chunk)
            return None
        todo, lock, stop = iter(chunks), threading.Lock(), threading.Event()

        def work():
            while not stop.is_set():
                with lock:
                    chunk = next(todo, None)
                if chunk is None:
                    return
                one(chunk)

        if two and self.threads is None:
            return self.choice.timed((kind, n), lambda two: self._work(work, two, stop))
        return self._work(work, two, stop)

    def _work(self, work, two, stop):
        with ONE_BLAS_THREAD:
            if not two:
                return work()
            # Both threads hand the GIL back and forth around every NumPy call. A thread whose call
            # has finished waits for the GIL; if the other keeps re-taking it first, the waiter gets
            # it only when the switch interval runs out: 5 ms by default, longer than a chunk. A short
            # interval during the step bounds that wait (measured: the wide net at b64 2.5k -> 4.2k
            # img/s, 2 threads).
            with SHORT_SWITCH:
                other = worker().submit(work)
                try:
                    work()
                except BaseException:
                    stop.set()                       # the worker finishes its chunk and stops
                    raise
                finally:
                    other.result()                   # never leave it running past this step
        return None
