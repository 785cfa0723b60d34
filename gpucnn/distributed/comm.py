"""Communicators: who the ranks are and the four collectives data-parallel training needs.

    comm.rank, comm.size, comm.local_rank, comm.backend ("mpi" or "nccl"), comm.mode
    comm.allgather(local, counts)   rank r sends ``counts[r]`` elements; -> their concatenation, rank order
    comm.broadcast(array, root=0)   in place
    comm.allreduce_sum(array)       in place; the order of the sum is the library's (not fixed)
    comm.allgather_object(obj), comm.broadcast_object(obj)   small Python objects, over MPI
    comm.abort(message)             ``gpucnn: error: rank R: message`` on stderr, then MPI_Abort

Every collective runs under the watchdog (watchdog.py), so none can wait longer than the timeout.
``MpiComm`` moves host arrays through mpi4py (the MPI wheels are not CUDA-aware: device arrays are
copied to the host and back). ``NcclComm`` moves device arrays through ``cupy.cuda.nccl`` on the
current stream, with one GPU per rank chosen by local rank; its unique id is broadcast over the MPI
communicator (no TCP store), which also carries the Python objects and the abort.

mpi4py is imported here, inside ``init``, never at import time: the core stays NumPy-only.
"""
import os
import sys
import sysconfig
import time

import numpy as np

from ..backend import to_numpy
from ..errors import BackendUnavailable, GpucnnError
from .watchdog import Watchdog

MODES = ("exact", "allreduce")
BACKENDS = ("auto", "mpi", "nccl")
DEFAULT_TIMEOUT = 300.0     # seconds; a step, a checkpoint write or a validation pass must fit in it
ABORT_GRACE = 0.2           # seconds between the error line and MPI_Abort

# (size variable, rank variable) that MPI launchers set in each process they start.
LAUNCHER_VARS = (
    ("PMI_SIZE", "PMI_RANK"),                            # MPICH hydra, Intel MPI, srun --mpi=pmi2
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),    # Open MPI
    ("MPI_LOCALNRANKS", "MPI_LOCALRANKID"),              # MPICH hydra: processes on this node
    (None, "PMIX_RANK"),                                 # PMIx launchers (Open MPI 5, srun --mpi=pmix)
)


class DistributedError(GpucnnError, RuntimeError):
    """The ranks disagree (seed, data, arguments), the launcher and MPI disagree, or a collective failed."""


def launcher_world(environ=None):
    """(size or None, rank, variable) when an MPI launcher started this process, else None.

    size is None when the launcher says only the rank (PMIx); MPI_LOCALNRANKS counts this node only,
    so it is a lower bound of the world size.
    """
    env = os.environ if environ is None else environ
    for size_var, rank_var in LAUNCHER_VARS:
        if rank_var in env or (size_var and size_var in env):
            try:
                size = int(env[size_var]) if size_var and size_var in env else None
                rank = int(env.get(rank_var, 0))
            except ValueError:
                continue
            return size, rank, size_var or rank_var
    return None


def check_not_launched(environ=None):
    """Refuse to train alone when a launcher started several copies (they would all write the same files)."""
    world = launcher_world(environ)
    if world is None:
        return
    size, rank, var = world
    if (size or 1) > 1 or rank > 0:
        count = f"{size} copies" if size else "several copies"
        raise DistributedError(
            f"an MPI launcher started {count} of this command ({var} is set; this is rank {rank}) but "
            "--distributed is not given: each copy would train alone and write the same files. "
            "Add --distributed, or run one process without mpiexec")


def mpiexec_path():
    """The launcher of the MPI that mpi4py loads here (installed next to this Python by the mpich wheel)."""
    return os.path.join(sysconfig.get_path("scripts"), "mpiexec")


def init(backend="auto", mode="exact", timeout=DEFAULT_TIMEOUT):
    """-> a communicator of every rank the launcher started (``mpiexec -n N ...``); see this module.

    backend: "auto" (NCCL for a CuPy network, MPI otherwise, decided when ``fit`` sees the network),
    "mpi" or "nccl". mode: "exact" (bitwise equal to one process) or "allreduce" (faster, not bitwise;
    docs/distributed.md gives its tolerance). timeout: seconds any collective may wait (None: forever).
    Raises BackendUnavailable without mpi4py (or, for "nccl", without CuPy's NCCL), and
    DistributedError when the launcher promised another world size than MPI sees.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise BackendUnavailable(f"distributed training needs mpi4py and an MPI library "
                                 f"(from a checkout: pip install -e \".[mpi]\" mpich): {exc}") from None
    world = MPI.COMM_WORLD
    check_world_size(world.Get_size(), launcher_world(), MPI)
    comm = MpiComm(MPI, world.Dup(), mode, timeout, backend)
    return comm.for_backend("nccl") if backend == "nccl" else comm


def check_world_size(size, world, MPI=None):
    """The world MPI sees must be the one the launcher started: a launcher of another MPI starts N
    separate processes of size 1, each of which would train alone, silently."""
    if world is None:
        return
    promised, rank, var = world
    if promised is not None and (promised != size if var != "MPI_LOCALNRANKS" else promised > size):
        library = MPI.Get_library_version().splitlines()[0].strip() if MPI is not None else "?"
        raise DistributedError(
            f"the launcher started {promised} processes ({var}={promised}) but MPI sees a world of {size}: "
            f"that launcher belongs to another MPI than the one mpi4py loaded ({library}). "
            f"Start the job with {mpiexec_path()}")


class MpiComm:
    backend = "mpi"

    def __init__(self, MPI, world, mode="exact", timeout=DEFAULT_TIMEOUT, choice="auto"):
        self.MPI, self.world, self.mode, self.choice = MPI, world, mode, choice
        self.rank, self.size = world.Get_rank(), world.Get_size()
        node = world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        node.Free()
        self.watchdog = Watchdog(timeout, self.abort)
        self._nccl = None

    def __repr__(self):
        return (f"<gpucnn {self.backend} communicator: rank {self.rank} of {self.size}, local rank "
                f"{self.local_rank}, mode {self.mode!r}>")

    def for_backend(self, name):
        """This communicator ("mpi"), or the NCCL one built over it (once) for "nccl"."""
        if name == "mpi":
            return self
        if self._nccl is None:
            self._nccl = NcclComm(self)
        return self._nccl

    def for_network(self, net):
        """The communicator a network trains with: NCCL for CuPy arrays when the choice is auto."""
        if self.choice == "auto":
            return self.for_backend("nccl" if net.backend.name == "cupy" else "mpi")
        return self.for_backend(self.choice)

    # -- collectives ---------------------------------------------------------------------------
    def allgather(self, local, counts):
        host = np.ascontiguousarray(to_numpy(local)).reshape(-1)
        if host.size != counts[self.rank]:
            raise DistributedError(f"rank {self.rank} sends {host.size} elements, {counts[self.rank]} agreed")
        out = np.empty(sum(counts), host.dtype)
        with self.watchdog.guard("an all-gather"):
            self.world.Allgatherv(host, (out, list(counts)))
        return _like(local, out)

    def broadcast(self, array, root=0):
        host = np.ascontiguousarray(to_numpy(array))
        with self.watchdog.guard("a broadcast"):
            self.world.Bcast(host, root=root)
        array[...] = _like(array, host)
        return array

    def allreduce_sum(self, array):
        host = np.ascontiguousarray(to_numpy(array))
        with self.watchdog.guard("an all-reduce"):
            self.world.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        array[...] = _like(array, host)
        return array

    def allgather_object(self, obj, what="an all-gather of objects"):
        with self.watchdog.guard(what):
            return self.world.allgather(obj)

    def broadcast_object(self, obj, root=0, what="a broadcast of objects"):
        with self.watchdog.guard(what):
            return self.world.bcast(obj, root=root)

    def abort(self, message, code=1):
        """Print ``gpucnn: error: rank R: message`` and end every rank of the job (never returns)."""
        sys.stdout.flush()
        sys.stderr.write(f"gpucnn: error: rank {self.rank}: {' '.join(str(message).split())}\n")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE)             # the launcher forwards the line before it kills the job
        self.world.Abort(code)


def _like(template, host):
    """host (NumPy) as an array of the template's kind: CuPy arrays go back to the device."""
    if isinstance(template, np.ndarray):
        return host
    import cupy                                    # a device array reached us: CuPy is there
    return cupy.asarray(host)


class NcclComm:
    """The NCCL communicator of the same ranks: device arrays through NCCL, the rest over MPI.

    One GPU per rank: device ``local_rank``. NCCL's all-gather needs one count for every rank, so
    ``allgather`` pads each rank's part to the largest and slices the result. NOTE: written against
    CuPy's documented ``cupy.cuda.nccl`` API and unit-tested with a fake module; it has not run on a GPU.
    """
    backend = "nccl"

    def __init__(self, mpi, nccl=None, cupy=None):
        self.mpi = mpi
        self.rank, self.size, self.local_rank, self.mode = mpi.rank, mpi.size, mpi.local_rank, mpi.mode
        self.watchdog = mpi.watchdog
        if cupy is None or nccl is None:
            try:
                import cupy
                from cupy.cuda import nccl
            except ImportError as exc:
                raise BackendUnavailable(f"the nccl backend needs CuPy with NCCL (cupy.cuda.nccl): {exc}") from None
            if not getattr(nccl, "available", True):
                raise BackendUnavailable("the nccl backend needs CuPy built with NCCL; cupy.cuda.nccl is not available")
        self.cupy, self.nccl = cupy, nccl
        devices = cupy.cuda.runtime.getDeviceCount()
        if self.local_rank >= devices:
            raise BackendUnavailable(f"rank {self.rank} is local rank {self.local_rank} on its node, which has "
                                     f"{devices} GPU(s): start at most one rank per GPU")
        cupy.cuda.Device(self.local_rank).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = mpi.broadcast_object(uid, what="the broadcast of the NCCL id")
        with self.watchdog.guard("the NCCL communicator's creation"):
            self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def __repr__(self):
        return f"<gpucnn nccl communicator: rank {self.rank} of {self.size}, GPU {self.local_rank}, mode {self.mode!r}>"

    def for_backend(self, name):
        return self if name == "nccl" else self.mpi

    def for_network(self, net):
        return self

    def _type(self, array):
        try:
            return self.types[np.dtype(array.dtype)]
        except KeyError:
            raise DistributedError(f"the nccl communicator moves float32 and float64 arrays, not {array.dtype}") from None

    def _wait(self, what, stream):
        """NCCL calls return at once: wait for the stream under the watchdog, so a hang is seen."""
        with self.watchdog.guard(what):
            stream.synchronize()

    def allgather(self, local, counts):
        cp = self.cupy
        local = cp.ascontiguousarray(cp.asarray(local)).reshape(-1)
        if local.size != counts[self.rank]:
            raise DistributedError(f"rank {self.rank} sends {local.size} elements, {counts[self.rank]} agreed")
        width = max(max(counts), 1)
        send = cp.zeros(width, local.dtype)
        send[:local.size] = local
        recv = cp.empty(width * self.size, local.dtype)
        stream = cp.cuda.get_current_stream()
        self.comm.allGather(send.data.ptr, recv.data.ptr, width, self._type(local), stream.ptr)
        self._wait("an NCCL all-gather", stream)
        return cp.concatenate([recv[r * width:r * width + c] for r, c in enumerate(counts)])

    def broadcast(self, array, root=0):
        cp = self.cupy
        buf = cp.ascontiguousarray(cp.asarray(array))
        stream = cp.cuda.get_current_stream()
        self.comm.bcast(buf.data.ptr, buf.size, self._type(buf), root, stream.ptr)
        self._wait("an NCCL broadcast", stream)
        array[...] = buf if isinstance(array, cp.ndarray) else cp.asnumpy(buf)
        return array

    def allreduce_sum(self, array):
        cp = self.cupy
        buf = cp.ascontiguousarray(cp.asarray(array))
        stream = cp.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._type(buf), self.nccl.NCCL_SUM, stream.ptr)
        self._wait("an NCCL all-reduce", stream)
        array[...] = buf if isinstance(array, cp.ndarray) else cp.asnumpy(buf)
        return array

    def allgather_object(self, obj, what="an all-gather of objects"):
        return self.mpi.allgather_object(obj, what)

    def broadcast_object(self, obj, root=0, what="a broadcast of objects"):
        return self.mpi.broadcast_object(obj, root, what)

    def abort(self, message, code=1):
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(message, code)
