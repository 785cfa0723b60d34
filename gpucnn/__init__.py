"""gpucnn: a convolutional network with backpropagation written out by hand, on NumPy or raw CUDA.

    net = gpucnn.seed_network(backend="auto", seed=0)
    net.fit(x, y, epochs=20, batch_size=10, lr=1.0)

The layering (imports run downwards only; tests/test_layering.py checks it):

    errors, backend, ops/, emulator/      arrays, op sets and kernels
    layers/, losses, optim                the math: one definition of each piece
    fast/, gpu_step                       fused plans over the layers' primitives
    serialization                         the model-file format
    training/                             the epoch loop, its engines, checkpoints, progress
    trace, network                        the Network: forward, backward, fit, save/load
    models, gradcheck                     ready-made networks (lenet5, wide); finite differences
    data/                                 MNIST files, the shipped sample, images (independent)
    cli, bench                            the command line
"""
from . import backend, callbacks, data, optim, schedules
from .backend import backend_info, get_backend, to_numpy
from .errors import BackendUnavailable, DataError, GpucnnError, ModelFileError, ShapeError
from .gradcheck import gradcheck
from .layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, LayerOwnershipError,
                     MaxPool2D, Parameter, ReLU, Sigmoid, Tanh, register_layer)
from .network import Network, load, seed_network
from . import models
from .trace import Trace, trace
from .training import Divergence

__version__ = "0.1.0"
__all__ = [
    "backend", "data", "Network", "seed_network", "load", "gradcheck", "trace", "Trace", "to_numpy", "get_backend",
    "backend_info", "Conv2D", "Dense", "Flatten", "MaxPool2D", "ReLU", "Sigmoid", "Tanh", "Layer", "Parameter",
    "register_layer", "GpucnnError", "BackendUnavailable", "DataError", "ModelFileError", "ShapeError",
    "LayerOwnershipError", "Divergence",
    "AvgPool2D", "BatchNorm2D", "Dropout", "optim", "schedules", "callbacks",
    "models",
]
