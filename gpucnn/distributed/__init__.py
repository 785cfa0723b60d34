"""Data-parallel training over MPI (mpi4py, CPU) or NCCL (cupy.cuda.nccl, GPU), equal to one process.

    comm = gpucnn.distributed.init()          # under mpiexec -n N: rank, size, local_rank
    net.fit(x, y, ..., comm=comm)             # the batch size is global: the same run as one process
    net.evaluate(xv, yv, comm=comm)

    comm       the communicators, init, the launcher and world-size checks (mpi4py imported in init)
    exchange   which chunks / rows each rank computes, packing, the fixed-order sums
    engine     DistributedTrainer, its step, the start-of-training check, distributed score
    watchdog   every collective under a timeout: a failed or stuck rank ends the job, never a hang

docs/distributed.md: launching, what "exact" means, the allreduce mode's tolerance, failures.
"""
from .comm import (DEFAULT_TIMEOUT, DistributedError, MpiComm, NcclComm, check_not_launched, check_world_size,
                   init, launcher_world, mpiexec_path)
from .engine import DistributedEpoch, DistributedTrainer, is_all_ranks, score
from .session import cli_comm, cli_session

__all__ = ["init", "DistributedError", "MpiComm", "NcclComm", "DistributedTrainer", "DistributedEpoch", "score",
           "launcher_world", "check_not_launched", "check_world_size", "mpiexec_path", "cli_comm", "cli_session",
           "is_all_ranks", "DEFAULT_TIMEOUT"]
