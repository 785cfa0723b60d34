"""How the command line ends a distributed run that failed: once, and never with a hang.

An error every rank raised at the same point (a divergence, the start-of-training check, a
checkpoint rank 0 could not write) is reported by rank 0 alone; the other ranks exit with status 1
quietly. An error on one rank only prints ``gpucnn: error: rank R: ...`` and aborts the job: the
other ranks are waiting for that rank in a collective and would otherwise wait for the watchdog.
"""
import contextlib

from .engine import is_all_ranks

EXIT_ERROR = 1


@contextlib.contextmanager
def cli_session(comm):
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
