"""gpucnn: a convolutional network with backpropagation written out by hand, on NumPy or raw CUDA.

    net = gpucnn.seed_network(backend="auto", seed=0)
    net.fit(x, y, epochs=20, batch_size=10, lr=1.0)
"""
from . import backend, data
from .backend import backend_info, get_backend, to_numpy
from .errors import BackendUnavailable, DataError, GpucnnError, ModelFileError, ShapeError
from .gradcheck import gradcheck
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid, Tanh
from .network import Network, seed_network
from .training import Divergence
from .serialization import load
from .trace import Trace, trace

Network.trace = trace

__version__ = "0.1.0"
__all__ = [
    "backend", "data", "Network", "seed_network", "load", "gradcheck", "trace", "Trace", "to_numpy", "get_backend",
    "backend_info", "Conv2D", "Dense", "Flatten", "MaxPool2D", "ReLU", "Sigmoid", "Tanh",
    "GpucnnError", "BackendUnavailable", "DataError", "ModelFileError", "ShapeError", "Divergence",
]
