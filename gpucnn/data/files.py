"""Opening the files users name: only a regular file is read, and a FIFO never blocks the caller."""
import os
import stat

from ..errors import DataError

_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path, what="file"):
    """A regular file opened for reading (binary); anything else is a DataError saying what it is.

    O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; a device is never read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((k for test, k in _NOT_REGULAR if test(mode)), "not a regular file")
        link = f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise DataError(f"{path}{link} is {kind}, not {what}")
    return os.fdopen(fd, "rb")
