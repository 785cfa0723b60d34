"""What every layer shares: parameters as objects, ownership, modes, the registry of layer types.

A layer maps an activation ``a_prev`` (n, *in_shape) to its output (n, *out_shape) in ``forward`` and
maps dC/d(output) back to dC/d(a_prev) in ``backward``. For Conv2D and Dense the output is the
pre-activation z, so what ``backward`` receives is Nielsen's delta = dC/dz.

A layer owns its ``Parameter`` objects (value and gradient together) and its buffers (state saved
with the model that is not trained, e.g. running statistics). The optimizer, the trainer, the fast
paths, gradcheck and serialization reach parameters only through ``Parameter`` objects.
"""
import copy
import math
import numbers
import weakref

import numpy as np

from ..errors import GpucnnError, ShapeError


class LayerOwnershipError(GpucnnError, ValueError):
    """A layer instance used twice, or in two networks: its caches and parameters cannot be shared."""


def pair(value, name):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def positive_int(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def state_name(index, key):
    """The name of layer ``index``'s parameter or buffer ``key`` in a network: 'layers.<index>.<key>'
    (Parameter.name, get_params / get_arrays, model files)."""
    return f"layers.{index}.{key}"


def conv_outsize(size, k, pad, stride):
    """Output length of a convolution or pooling window sliding over ``size``: one formula everywhere."""
    return (size + 2 * pad - k) // stride + 1


class Parameter:
    """A trainable array and its gradient, owned by one layer.

    ``value`` lives on the network's backend and is updated in place by the optimizer; ``grad`` is
    dC/d(value) of the batch-mean cost after a backward pass (None before). ``name`` is the
    network-qualified name (``layers.0.W``) once the layer belongs to a network, else the local key.
    """
    __slots__ = ("key", "name", "shape", "value", "grad")

    def __init__(self, key, shape):
        self.key, self.name, self.shape = key, key, tuple(shape)
        self.value, self.grad = None, None

    def assign(self, value, backend, dtype, owner="parameter"):
        """Replace the value by a checked copy (shape, real, finite): training never writes into the
        caller's array, and a NaN never gets in."""
        if not hasattr(value, "shape"):
            value = np.asarray(value, dtype=np.float64)
        if tuple(value.shape) != self.shape:
            raise ShapeError(f"{owner}.{self.key} must have shape {self.shape}, got {tuple(value.shape)}")
        if value.dtype.kind not in "fiu" or value.dtype == np.bool_:
            raise TypeError(f"{owner}.{self.key} must hold real numbers, got dtype {value.dtype}")
        new = backend.asarray(value, dtype).copy()
        if not bool(backend.xp.isfinite(new).all()):
            raise ValueError(f"{owner}.{self.key} contains NaN or inf")
        self.value = new

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.shape})"


class Layer:
    """Base class: no parameters, identity shape, train mode.

    Subclasses with parameters give ``param_shapes()`` and ``fan_in``; ``bind`` draws the initial
    values (unless the layer already holds values of the right shape, e.g. a deep copy of a trained
    layer: transfer learning keeps them).
    """
    _positional = ()

    def __init__(self):
        self.params = {key: Parameter(key, shape) for key, shape in self.param_shapes().items()}
        self.buffers = {}
        self.training = True
        self.backend = None
        self._owner = None

    # -- the layer's contract -----------------------------------------------------------------
    def param_shapes(self):
        return {}

    def buffer_shapes(self):
        """Shapes of the saved non-trained state (e.g. running statistics), known from the config."""
        return {}

    def output_shape(self, in_shape):
        return in_shape

    def backward_params(self, delta):
        """backward() as the network's first layer, where dC/d(input) is not needed: fills the
        parameters' grads. Layers that can skip computing dC/d(input) override this."""
        self.backward(delta)

    def config(self):
        """The constructor arguments, for the JSON architecture in a saved model."""
        return {}

    # -- parameters -----------------------------------------------------------------------------
    @property
    def param_names(self):
        return tuple(self.params)

    def parameters(self):
        """This layer's Parameter objects, in a fixed order."""
        return list(self.params.values())

    def bind(self, owner, index, backend, dtype, rng):
        """Attach to a network (``owner``) as its layer ``index`` on ``backend``.

        A layer belongs to one network, once: reusing an instance would share its forward caches
        (the backward of the first use would read the second's) and re-initialise its weights.
        """
        self.check_free(owner)
        self._owner = weakref.ref(owner)
        self.backend, self.xp, self.dtype = backend, backend.xp, np.dtype(dtype)
        for key, p in self.params.items():
            p.name = state_name(index, key)
            if p.value is None:
                p.value = backend.asarray(self.initial_value(key, p.shape, rng), dtype)
            else:                               # kept (transfer learning): moved to this backend
                p.assign(p.value if isinstance(p.value, np.ndarray) else _host(p.value),
                         backend, dtype, repr(self))
            p.grad = None

    def check_free(self, owner=None):
        """Refuse a layer that belongs to another (living) network."""
        current = self._owner() if self._owner is not None else None
        if current is not None and current is not owner:
            raise LayerOwnershipError(
                f"{self!r} already belongs to another network; layers cannot be shared between networks. "
                "To start from its trained weights, pass copy.deepcopy(layer) (it keeps them)")

    def unbind(self):
        self._owner = None

    def initial_value(self, key, shape, rng):
        # PyTorch's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b, so the
        # seed recipe can be compared with PyTorch on equal terms.
        bound = 1.0 / math.sqrt(self.fan_in)
        return rng.uniform(-bound, bound, shape)

    def __deepcopy__(self, memo):
        """A copy that belongs to no network yet, with copies of the parameter values (host arrays)."""
        new = copy.copy(self)
        memo[id(self)] = new
        new._owner = None
        new.params, new.buffers = self._host_state()
        for attr in self._caches:
            new.__dict__.pop(attr, None)
        return new

    def _host_state(self):
        """(params, buffers) as a free layer holds them: fresh Parameters and buffers with host copies
        of the values (what deepcopy and pickling give)."""
        params = {}
        for key, p in self.params.items():
            params[key] = Parameter(key, p.shape)
            params[key].value = None if p.value is None else _host(p.value).copy()
        return params, {k: _host(v).copy() for k, v in self.buffers.items()}

    _caches = ("a_prev", "z", "a", "argmax", "in_hw", "in_shape")   # forward caches, never copied

    def __getstate__(self):
        """Pickling a layer gives a free layer, as ``copy.deepcopy`` does: parameter values and buffers
        as host arrays, no network, no backend, no forward caches (a Network pickles whole instead)."""
        state = {k: v for k, v in self.__dict__.items()
                 if k not in self._caches and k not in ("backend", "xp", "_owner")}
        state["params"], state["buffers"] = self._host_state()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.backend, self._owner = None, None

    # -- modes ------------------------------------------------------------------------------------
    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def __repr__(self):
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in self.config().items()}
        args = ", ".join(f"{v!r}" if k in self._positional else f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


def _host(array):
    return array if isinstance(array, np.ndarray) else array.get()


def param_property(key):
    """``layer.W`` reads the live value; ``layer.W = array`` assigns a checked copy."""
    def get(self):
        return self.params[key].value

    def set(self, value):
        p = self.params[key]
        if self.backend is None:                # not bound yet: kept on the host until bind
            from_numpy = np.asarray(value, dtype=np.float64) if not hasattr(value, "shape") else value
            p.assign(_host(from_numpy), _HOST, np.float64, repr(self))
        else:
            p.assign(value, self.backend, self.dtype, repr(self))
    return property(get, set, doc=f"the parameter {key} (live array; assigning copies and checks it)")


def grad_property(key):
    return property(lambda self: self.params[key].grad, doc=f"dC/d{key} after backward (None before)")


class _HostBackend:
    """Where parameters assigned before a layer joins a network wait (NumPy, float64)."""
    name, xp = "host", np

    @staticmethod
    def asarray(array, dtype=np.float64):
        return np.ascontiguousarray(array, dtype=dtype)


_HOST = _HostBackend()


# -- the registry of layer types: what ``load`` can rebuild --------------------------------------
LAYER_TYPES = {}


def register_layer(cls):
    """Make a layer class known to ``gpucnn.load`` (by its class name); usable as a decorator.

    A custom layer must give ``config()`` returning its constructor arguments as JSON values.
    """
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer takes a subclass of gpucnn.layers.Layer, got {cls!r}")
    name = cls.__name__
    if name in LAYER_TYPES and LAYER_TYPES[name] is not cls:
        raise ValueError(f"a different layer class named {name!r} is already registered")
    LAYER_TYPES[name] = cls
    return cls
