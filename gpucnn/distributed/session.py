"""How the command line ends a distributed run that failed: once, and never with a hang.

An error every rank raised at the same point (a divergence, the start-of-training check, a
checkpoint rank 0 could not write) is reported by rank 0 alone; the other ranks exit with status 1
quietly. An error on one rank only prints ``gpucnn: error: rank R: ...`` and aborts the job: the
other ranks are waiting for that rank in a collective and would otherwise wait for the watchdog.
"""
import contextlib

from .comm import DEFAULT_TIMEOUT, check_not_launched, init
from .engine import is_all_ranks

EXIT_ERROR = 1


def cli_comm(distributed, timeout=DEFAULT_TIMEOUT):
    """``--distributed``: the communicator of the job. Without it: None, after refusing to run as one
    of several copies an MPI launcher started (they would all write the same files)."""
    if not distributed:
        check_not_launched()
        return None
    return init(timeout=timeout)


@contextlib.contextmanager
def cli_session(comm):
    """Around a command's work; comm None (one process): nothing changes."""
    if comm is None:
        yield comm
        return
    try:
        yield comm
    except SystemExit:
        raise
    except BaseException as exc:
        if not is_all_ranks(exc):
            comm.abort(f"{type(exc).__name__}: {exc}")
        if comm.rank != 0:
            raise SystemExit(EXIT_ERROR) from None
        raise
