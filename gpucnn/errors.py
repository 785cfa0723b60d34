"""The project's own exceptions. Each subclasses a built-in, so ``except ValueError`` still works."""


class GpucnnError(Exception):
    """Base of every error gpucnn raises on purpose."""


class BackendUnavailable(GpucnnError, RuntimeError):
    """A backend was asked for where it cannot run; the message names the reason."""


class ShapeError(GpucnnError, ValueError):
    """Layers that do not chain, or an input of the wrong shape."""


class DataError(GpucnnError, ValueError):
    """A missing, corrupt or truncated data file (IDX, CSV) or bad data values."""


class ModelFileError(GpucnnError, ValueError):
    """A missing, corrupt or incompatible model / checkpoint file."""


class NoCheckpointWarning(UserWarning):
    """``fit(resume=True)`` found no checkpoint at the path given and trains from scratch."""



class PixelRangeWarning(UserWarning):
    """Images that look like unscaled 0..255 pixels (float whole numbers up to 255) were given."""
