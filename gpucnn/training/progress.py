"""The progress display of ``fit``: a one-line bar with the running loss, on stderr, only on a terminal."""
import sys
import time


class Progress:
    def __init__(self, epoch, epochs, total, verbose):
        self.prefix, self.total = f"epoch {epoch}/{epochs}", total
        self.enabled = verbose and sys.stderr.isatty()
        self.last = 0.0

    def update(self, done, running_loss):
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        filled = int(30 * done / self.total)
        sys.stderr.write(f"\r{self.prefix} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{done}/{self.total} loss {running_loss:.4f}")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * 79 + "\r")
