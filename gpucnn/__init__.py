"""gpucnn: a convolutional network with backpropagation written out by hand, on NumPy or raw CUDA."""
from . import backend
from .backend import backend_info, get_backend, to_numpy
from .errors import BackendUnavailable, DataError, GpucnnError, ModelFileError, ShapeError

__version__ = "0.1.0"
