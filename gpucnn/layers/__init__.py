"""Layers, each with its backward pass written out by hand (one family per module).

    base           Parameter, Layer, ownership, modes, ``register_layer`` / ``LAYER_TYPES``
    conv           Conv2D                 pooling      MaxPool2D, AvgPool2D
    dense          Dense                  reshape      Flatten
    normalization  BatchNorm2D            dropout      Dropout
    activations    Sigmoid, ReLU, Tanh: the one definition of each sigma and sigma'

Custom layers. Subclass ``Layer`` and give ``forward(a_prev)``, ``backward(da)`` (-> dC/da_prev),
``output_shape(in_shape)`` and ``config()`` (the constructor arguments as JSON values); a layer with
parameters also gives ``param_shapes()`` ({key: shape}), ``fan_in`` (or ``initial_value``) and fills
``self.params[key].grad`` in backward. Then register the class so ``gpucnn.load`` can rebuild it:

    @gpucnn.register_layer
    class Scale(gpucnn.Layer):
        def __init__(self, factor=2.0):
            self.factor = factor
            super().__init__()
        def forward(self, a_prev):
            return a_prev * self.factor
        def backward(self, da):
            return da * self.factor
        def config(self):
            return {"factor": self.factor}

``net.save`` refuses a network holding an unregistered layer class (the message says to register
it), so a saved file always loads; ``load`` finds the class by name, so the module defining it must
be imported before ``gpucnn.load``.
"""
from .activations import ACTIVATIONS, Activation, ReLU, Sigmoid, Tanh, activation_class
from .base import LAYER_TYPES, Layer, LayerOwnershipError, Parameter, conv_outsize, register_layer, state_name
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .normalization import BatchNorm2D
from .pooling import AvgPool2D, MaxPool2D
from .reshape import Flatten

__all__ = ["Layer", "Parameter", "LayerOwnershipError", "register_layer", "LAYER_TYPES", "conv_outsize", "state_name",
           "Activation", "ACTIVATIONS", "activation_class", "Sigmoid", "ReLU", "Tanh", "Conv2D", "Dense", "MaxPool2D", "Flatten",
           "AvgPool2D", "BatchNorm2D", "Dropout"]
