"""The watchdog: a collective that does not complete within the timeout ends the whole job.

MPI has no timeout of its own: a rank that died without MPI noticing, or one stuck in a loop, leaves
every other rank waiting in its next collective forever. Each collective runs under
``watchdog.guard(what)``; a daemon thread wakes every ``POLL`` seconds and, past the deadline, calls
``on_timeout(message)``, which prints ``gpucnn: error: rank R: ...`` and aborts the job (MPI_Abort
ends every rank, the stuck one included). mpi4py releases the GIL inside blocking MPI calls, so the
thread runs while the main thread waits.
"""
import contextlib
import threading
import time

POLL = 0.1      # seconds between checks: the job ends within timeout + POLL (+ the launcher's cleanup)


class Watchdog:
    def __init__(self, timeout, on_timeout):
        if timeout is not None and not timeout > 0:
            raise ValueError(f"the communication timeout must be > 0 seconds or None, got {timeout!r}")
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.what, self.deadline = None, None
        self.thread = None
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def guard(self, what):
        """Run the block (one collective) under the deadline now + timeout."""
        if self.timeout is None:
            yield
            return
        self._start()
        with self.lock:
            self.what, self.deadline = what, time.monotonic() + self.timeout
        try:
            yield
        finally:
            with self.lock:
                self.what, self.deadline = None, None

    def _start(self):
        if self.thread is None:
            self.thread = threading.Thread(target=self._watch, name="gpucnn-watchdog", daemon=True)
            self.thread.start()

    def _watch(self):
        while True:
            time.sleep(POLL)
            with self.lock:
                late = self.deadline is not None and time.monotonic() > self.deadline
                what = self.what
            if late:
                self.on_timeout(f"no answer from the other ranks within {self.timeout:g} s during {what} "
                                "(another rank failed, was killed or is stuck); aborting the job")
                return
