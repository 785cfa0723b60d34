"""Opening the files users name: only a regular file is read, a FIFO never blocks the caller, and
anything else is named for what it is (model files, images and IDX files all open through here)."""
import os
import stat

from ..errors import DataError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def describe_path(path):
    """What is at path when it is not a regular file: 'a directory', 'a FIFO (named pipe)', ... or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:                  # missing, a file used as a directory, no permission to look
        return "a broken symlink" if os.path.islink(path) else None
    return next((kind for test, kind in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def named(path):
    """The path as the user gave it, and where a symlink really points."""
    return f"{path} (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else str(path)


def open_regular(path, what="file", error=DataError):
    """A binary file object for path, which must be a regular file: a FIFO is never opened (that would
    block), a device never read (``/dev/zero`` has no end). ``what``: 'model file', 'image file' ...
    for the messages; ``error``: the exception class they raise."""
    path = os.fspath(path)
    article = "an" if what[:1].lower() in "aeiou" or what.startswith("IDX") else "a"
    kind = describe_path(path)
    if kind is None and not os.path.exists(path):
        raise error(f"cannot read {what} {path}: not found")
    if kind is not None:
        raise error(f"{named(path)} is {kind}, not {article} {what}")
    try:       # O_NONBLOCK: should a FIFO replace the file after the check, opening it does not block
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {named(path)}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{named(path)} is not a regular file, not {article} {what}")
    return os.fdopen(fd, "rb")
