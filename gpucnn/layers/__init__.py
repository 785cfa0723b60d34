"""Layers, each with its backward pass written out by hand (one family per module).

    base         Parameter, Layer, ownership, modes, ``register_layer`` / ``LAYER_TYPES``
    conv         Conv2D                 pooling      MaxPool2D
    dense        Dense                  reshape      Flatten
    activations  Sigmoid, ReLU, Tanh: the one definition of each sigma and sigma'
"""
from .activations import Activation, ReLU, Sigmoid, Tanh
from .base import LAYER_TYPES, Layer, LayerOwnershipError, Parameter, conv_outsize, register_layer
from .conv import Conv2D
from .dense import Dense
from .pooling import MaxPool2D
from .reshape import Flatten

__all__ = ["Layer", "Parameter", "LayerOwnershipError", "register_layer", "LAYER_TYPES", "conv_outsize",
           "Activation", "Sigmoid", "ReLU", "Tanh", "Conv2D", "Dense", "MaxPool2D", "Flatten"]
