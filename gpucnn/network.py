"""The network: a list of layers, a cost, a backend; forward, hand-written backward, training, files.

    a = net.forward(x)       x (n, *input_shape) -> network output (n, classes)
    dx = net.backward(y)     delta^L from the cost, then each layer's backward in reverse order;
                             fills every layer's dW, db with gradients of the batch-mean cost

Execution: a fused plan (gpucnn/fast/ on the CPU) runs the network when one covers it; it is a plan
over the layers' own primitives and is checked against the layer-by-layer path, which stays the
definition. ``net.summary()`` says which path runs and why.
"""
import contextlib
import copy
import math
import os
import signal
import warnings

import numpy as np

from . import distributed, fast, gpu_step, layers as L, serialization, trace as tracing
from .backend import Backend, auto_reason, get_backend, requested_name, to_numpy
from .errors import ModelFileError, NoCheckpointWarning, ShapeError
from .callbacks import Callback
from .losses import get_loss
from .optim import get_optimizer
from .schedules import get_schedule
from .training import Trainer
from .training.loop import stop_on_signals
from .validation import check_flag, check_inputs, check_labels, check_positive_int


# Activations the CUDA conv kernel can apply itself (cuda/conv2d_forward.cu), by exact type: a subclass
# may change sigma.
FUSED_ACTIVATIONS = {L.Sigmoid: "sigmoid", L.ReLU: "relu", L.Tanh: "tanh"}


class Network:
    def __init__(self, layers, loss="quadratic", backend=None, seed=0, input_shape=None,
                 dtype=np.float32):
        if not isinstance(layers, (list, tuple)) or not layers \
                or not all(isinstance(layer, L.Layer) for layer in layers):
            raise TypeError("layers must be a non-empty list of gpucnn layers")
        self.layers = list(layers)
        _check_distinct(self.layers)
        self.loss = get_loss(loss)
        self.backend = get_backend(backend)
        # fit says why auto chose this backend (get_backend has checked the name)
        self.auto_backend = not isinstance(backend, Backend) and requested_name(backend) == "auto"
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        if self.dtype == np.float64 and self.backend.name != "numpy":
            raise TypeError(f"the {self.backend.name} backend runs float32 only; use backend='numpy' for float64")
        if input_shape is not None and (not isinstance(input_shape, (tuple, list)) or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape)):
            raise TypeError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None \
            else self._default_input_shape()
        self.shapes = self._check_shapes()
        self.classes = self.shapes[-1][0]
        self.seed = _check_seed(seed)
        init_rng = np.random.default_rng(self.seed)
        for layer in self.layers:
            layer.check_free()
        try:
            for i, layer in enumerate(self.layers):
                layer.bind(self, i, self.backend, self.dtype, init_rng)
        except BaseException:
            for layer in self.layers:             # all or nothing: the layers stay free
                layer.unbind()
            raise
        self.shuffle_rng = np.random.default_rng([self.seed, 1])   # separate stream: resumable
        self.training = True
        self.out = None
        self._fast, self._fast_reason = fast.plan_for(self)

    def _default_input_shape(self):
        first = self.layers[0]
        if isinstance(first, L.Conv2D):
            return (first.in_channels, 28, 28)
        if isinstance(first, L.Dense):
            return (first.in_features,)
        raise ShapeError(f"cannot infer the input shape for a network starting with {first!r}; "
                         "pass input_shape=")

    def _check_shapes(self):
        """Per-sample shape after each layer; fails at construction, naming the layer and both shapes."""
        shapes, shape = [self.input_shape], self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ShapeError as exc:
                raise ShapeError(f"layer {i} {layer!r} does not fit the output of the layer before it, "
                                 f"shape {shape}: {exc}") from None
            shapes.append(tuple(shape))
        if len(shape) != 1:
            raise ShapeError(f"the network must end in a vector per sample, got shape {shape}; add Flatten/Dense")
        return shapes

    # -- modes -------------------------------------------------------------------------------------
    def train(self, mode=True):
        """Train mode (as in PyTorch): layers such as Dropout and BatchNorm behave as in training."""
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(self.training)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def mode(self, training):
        """Inside: train (True) or eval (False) mode; the previous mode comes back after."""
        before = self.training
        self.train(training)
        try:
            yield self
        finally:
            self.train(before)

    # -- forward and backward -------------------------------------------------------------------
    def forward(self, x):
        """x (n, *input_shape) -> output (n, classes), caching what backward needs."""
        check_inputs(x, self.input_shape)
        a = self.backend.asarray(x, self.dtype)
        plan = self._plan()
        if plan is not None:                       # the fused plan keeps what its backward needs
            self.out = plan.forward(a, keep=True)
            return self.out
        return self._forward(a)

    def _plan(self):
        """The fused plan when it can run the network now (a layer's mode may rule it out), else None."""
        return self._fast if self._fast is not None and self._fast.available() is None else None

    def _forward(self, a):
        """Layer by layer; on the CUDA backends a Conv2D and the activation above it run as one kernel
        (bias and sigma fused into the convolution: one launch and one pass over z fewer)."""
        fused = hasattr(self.backend.ops, "conv2d_forward_activation")
        layers, i = self.layers, 0
        while i < len(layers):
            layer, above = layers[i], (layers[i + 1] if i + 1 < len(layers) else None)
            name = FUSED_ACTIVATIONS.get(type(above)) if fused and type(layer) is L.Conv2D else None
            if name is not None:
                a = layer.forward_activated(a, above, name)
                i += 2
            else:
                a = layer.forward(a)
                i += 1
        self.out = a
        return a

    def backward(self, y):
        """dC/dx of the batch-mean cost for the last forward; fills layer.dW / layer.db."""
        if self.out is None:
            raise RuntimeError("backward() needs a forward() first")
        return self._backward(self.targets(y, self.out.shape[0]))

    def _backward(self, y1, need_dx=True):
        if self._fast is not None and self._fast.holds(self.out):     # the last forward was the plan's
            return self._fast.backward(y1, need_dx)
        grad = self.loss.gradient(self.backend.xp, self.out, y1)
        for layer in reversed(self.layers[1:]):
            grad = layer.backward(grad)
        if need_dx:
            return self.layers[0].backward(grad)
        self.layers[0].backward_params(grad)       # nothing below the first layer needs dC/dx
        return None

    def targets(self, y, n, kind=None):
        """Labels (n,) or one-hot rows (n, classes) -> one-hot rows on the backend, in the net's dtype.

        ``kind``: what ``check_labels`` already said of y ('labels' or 'onehot'), so y is not checked
        twice (fit checks everything before it builds anything)."""
        if kind is None:
            kind = check_labels(y, n, self.classes, distributions=self._distributions)
        if kind == "onehot":
            return self.backend.asarray(y, self.dtype)
        labels = self.backend.asarray(y, np.int64)
        return (self.backend.xp.arange(self.classes)[None, :] == labels[:, None]).astype(self.dtype)

    @property
    def _distributions(self):
        """Cross-entropy target rows must be probability distributions (validation.check_labels)."""
        return self.loss.name == "cross_entropy"

    def cost(self, x, y):
        out = self.forward(x)
        return self.loss.cost(self.backend.xp, out, self.targets(y, out.shape[0]))

    def trace(self, x, y):
        """Every z, a, sigma'(z), delta, dW, db of one forward and backward pass (gpucnn/trace.py)."""
        return tracing.trace(self, x, y)

    # -- parameters ------------------------------------------------------------------------------
    def parameters(self):
        """Every Parameter (value and grad), in layer order."""
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self):
        """(name, Parameter) pairs, e.g. ('layers.0.W', <Parameter>)."""
        return [(p.name, p) for p in self.parameters()]

    def get_params(self):
        """All parameters as NumPy arrays, by name."""
        return {p.name: to_numpy(p.value).copy() for p in self.parameters()}

    def get_arrays(self):
        """Parameters and buffers (e.g. running statistics) as NumPy arrays: what a model file holds."""
        arrays = self.get_params()
        for i, layer in enumerate(self.layers):
            for key, value in layer.buffers.items():
                arrays[L.state_name(i, key)] = to_numpy(value).copy()
        return arrays

    def set_params(self, params):
        """Assign parameters by name (as ``get_params`` gives them); all are checked before any is set."""
        if not isinstance(params, dict):
            raise TypeError(f"set_params takes a dict {{name: array}} as get_params gives, got {type(params).__name__}")
        arrays = {name: np.asarray(v) for name, v in params.items()}
        for i, layer in enumerate(self.layers):          # buffers are optional here; kept if absent
            for key, value in layer.buffers.items():
                arrays.setdefault(L.state_name(i, key), to_numpy(value))
        serialization.assign_arrays(self, arrays, "params")

    def load_arrays(self, arrays):
        """Assign already checked arrays (``serialization.checked_arrays``: names, shapes, float,
        finite) by name, as copies on the backend (not checked again)."""
        for i, layer in enumerate(self.layers):
            for key, p in layer.params.items():
                p.value = self.backend.asarray(arrays[p.name], self.dtype).copy()
            for key in layer.buffers:
                layer.buffers[key] = self.backend.asarray(arrays[L.state_name(i, key)], self.dtype).copy()

    # -- training --------------------------------------------------------------------------------
    def train_step(self, xb, y1, optimizer):
        """One optimizer step on a checked batch already on the backend (y1 one-hot rows).

        Returns (batch cost, output). A non-finite cost skips the update.
        """
        plan = self._plan()
        if plan is not None:
            return plan.train_step(xb, y1, optimizer)
        out = self._forward(xb)
        cost = self.loss.cost(self.backend.xp, out, y1)
        if math.isfinite(cost):
            self._backward(y1, need_dx=False)
            optimizer.step(self.parameters())
        return cost, out

    def fit(self, x, y, epochs=1, batch_size=10, lr=None, momentum=0.0, weight_decay=0.0,
            validation=None, shuffle=True, verbose=True, checkpoint=None, every=None, resume=False,
            optimizer="sgd", lr_schedule=None, callbacks=None, comm=None):
        """Mini-batch training in train mode (the previous mode comes back after). Returns the history,
        a dict of per-epoch lists: loss, accuracy, val_loss, val_accuracy (with validation), time
        (seconds) and lr.

        - ``optimizer``: "sgd" (``lr`` default 0.5, ``momentum``, ``weight_decay``), "adam" (``lr``
          default 1e-3, ``weight_decay``) or an ``Optimizer`` object (``gpucnn.optim.SGD``/``Adam``,
          then lr, momentum and weight_decay are its own). ``lr=None``: the optimizer's default.
        - ``lr_schedule``: None, "step", "cosine", a ``gpucnn.schedules`` object or a callable
          epoch (0-based) -> lr; it sets the lr before each epoch (gpucnn/schedules.py).
        - ``callbacks``: ``gpucnn.callbacks.Callback`` objects, e.g. ``EarlyStopping``; one whose
          ``on_epoch_end`` returns True stops training after that epoch.

        - A NaN or inf loss stops training with ``Divergence`` (naming the epoch and step), keeping the
          last good parameters.
        - ``checkpoint=path`` writes a checkpoint atomically at the end of every epoch, and every
          ``every`` steps when given; ``resume=True`` continues from it (same arguments) and ends with
          the same parameters as an uninterrupted run.
        - ``comm=gpucnn.distributed.init()``: data-parallel over the ranks of an MPI job, the batch size
          global; parameters and history bitwise those of one process (docs/distributed.md). Only
          rank 0 prints and writes checkpoints.
        """
        check_inputs(x, self.input_shape)
        y_kind = check_labels(y, x.shape[0], self.classes, distributions=self._distributions)
        n = x.shape[0]
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size", upper=n)
        shuffle, resume = check_flag(shuffle, "shuffle"), check_flag(resume, "resume")   # 'False' is truthy
        if every is not None:
            every = check_positive_int(every, "every")
        if resume and not checkpoint:
            raise ValueError("resume=True needs checkpoint=path")
        if checkpoint:                   # before the first step, not when the first write fails
            checkpoint = serialization.check_output_path(checkpoint, "checkpoint")
        optimizer = get_optimizer(optimizer, lr, momentum, weight_decay)
        schedule = get_schedule(lr_schedule)
        callbacks = list(callbacks or ())
        bad = [c for c in callbacks if not isinstance(c, Callback)]
        if bad:
            raise TypeError(f"callbacks must be gpucnn.callbacks.Callback objects, got {bad[0]!r}")
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                raise TypeError(f"validation must be a pair (x, y), got {type(validation).__name__}")
            xv, yv = validation
            check_inputs(xv, self.input_shape, "validation x")
            yv_kind = check_labels(yv, xv.shape[0], self.classes, "validation y", self._distributions)
        xd, yd = self.backend.asarray(x, self.dtype), self.targets(y, n, y_kind)   # on the device once
        if validation is not None:
            y1v = self.targets(yv, xv.shape[0], yv_kind)
            validation = (self.backend.asarray(xv, self.dtype), y1v, y1v.argmax(axis=1))
        verbose = verbose and (comm is None or comm.rank == 0)
        if verbose:
            print(self.backend_choice(), flush=True)
        if comm is None:
            trainer = Trainer(self, xd, yd, epochs, batch_size, optimizer, shuffle, verbose, checkpoint, every,
                              schedule=schedule, callbacks=callbacks)
        else:
            trainer = distributed.DistributedTrainer(comm, self, xd, yd, epochs, batch_size, optimizer, shuffle,
                                                     verbose, checkpoint, every, validation,
                                                     schedule=schedule, callbacks=callbacks)
        if resume and comm is not None:
            resume = trainer.resume(checkpoint)    # rank 0 looks for the file, every rank resumes from it
        elif resume and os.path.exists(checkpoint):
            trainer.resume(checkpoint)
        elif resume:                     # a first run of a restartable job, or a typo: say which path
            warnings.warn(f"resume=True but there is no checkpoint at {os.path.abspath(checkpoint)}: "
                          "training from scratch (the checkpoint is written there as training goes)",
                          NoCheckpointWarning, stacklevel=2)
        with self.mode(True), _sigterm_stops_like_ctrl_c(comm):
            return trainer.run(validation)

    # -- inference -------------------------------------------------------------------------------
    def predict_proba(self, x, batch_size=1024):
        """Network outputs (softmax probabilities for cross_entropy) as NumPy, in batches, in eval mode."""
        check_inputs(x, self.input_shape)
        batch_size = check_positive_int(batch_size, "batch_size")
        with self.mode(False):
            outs = [to_numpy(self.loss.probabilities(self.backend.xp, self._infer(x[i:i + batch_size])))
                    for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(outs)

    def _infer(self, x):
        """Output for a checked batch, through the fast path when there is one (no caches kept)."""
        a = self.backend.asarray(x, self.dtype)
        plan = self._plan()
        return plan.forward(a) if plan is not None else self._forward(a)

    def predict(self, x, batch_size=1024):
        """Predicted labels (n,) int64 (eval mode)."""
        return self.predict_proba(x, batch_size).argmax(axis=1).astype(np.int64)

    def evaluate(self, x, y, batch_size=1024, comm=None):
        """Accuracy in [0, 1] (eval mode); ``comm``: split over the ranks, the same number."""
        check_inputs(x, self.input_shape)
        batch_size = check_positive_int(batch_size, "batch_size")
        y1 = self.targets(y, x.shape[0])
        return self.score(x, y1, y1.argmax(axis=1), batch_size, comm)[1]

    def score(self, x, y1, labels, batch_size=1024, comm=None):
        """(batch-mean cost, accuracy) of checked x, targets y1 and labels, in batches (fast path if any),
        in eval mode (the previous mode comes back after)."""
        if comm is not None:
            with self.mode(False):
                return distributed.score(self, comm, x, y1, labels, batch_size)
        cost, correct = 0.0, 0
        with self.mode(False):
            for i in range(0, x.shape[0], batch_size):
                out = self._infer(x[i:i + batch_size])
                cost += self.loss.cost(self.backend.xp, out, y1[i:i + batch_size]) * out.shape[0]
                correct += int((out.argmax(axis=1) == labels[i:i + batch_size]).sum())
        return cost / x.shape[0], correct / x.shape[0]

    # -- description -----------------------------------------------------------------------------
    def architecture(self):
        return {"layers": [{"type": type(layer).__name__, **layer.config()} for layer in self.layers],
                "loss": self.loss.name, "input_shape": list(self.input_shape)}

    def backend_choice(self):
        """'backend numpy (auto: CuPy is not installed ...); fused CPU plan SeedPlan': what fit prints first."""
        name = self.backend.name
        if self.auto_backend:
            why = "CuPy sees a GPU and our kernels compile" if name == "cupy" else auto_reason()
            name += f" (auto: {why})"
        return f"backend {name}; {self.execution_path()}"

    def execution_path(self):
        """Which path runs this network, and why (not) the fused one."""
        if self.backend.name in ("cupy", "emulated"):
            return gpu_step.describe(self)                 # the CUDA backends' training step
        if self._fast is not None:
            why_not = self._fast.available()             # e.g. a layer's mode rules the plan out now
            if why_not is not None:
                return f"layer by layer ({why_not})"
            return f"fused CPU plan {type(self._fast).__name__}"
        return f"layer by layer ({self._fast_reason})"

    def summary(self):
        """Each layer with its output shape and parameter count, the total, and the execution path."""
        lines = [f"Network on backend {self.backend.name!r}, loss {self.loss.name!r}, {self.dtype.name}",
                 f"  {'layer':<44} {'output':<16} {'params':>8}",
                 f"  {'input':<44} {str(self.input_shape):<16} {'':>8}"]
        total = 0
        for layer, shape in zip(self.layers, self.shapes[1:]):
            count = sum(math.prod(p.shape) for p in layer.parameters())
            total += count
            lines.append(f"  {layer!r:<44} {str(shape):<16} {count:>8,}")
        lines.append(f"  total parameters: {total:,}")
        lines.append(f"  execution: {self.execution_path()}")
        return "\n".join(lines)

    def __repr__(self):
        return self.summary()

    def __deepcopy__(self, memo):
        """An independent network with the same layers, parameters, buffers, mode and shuffle state."""
        layers = [copy.deepcopy(layer, memo) for layer in self.layers]     # free copies, values kept
        new = Network(layers, loss=self.loss.name, backend=self.backend, seed=self.seed,
                      input_shape=self.input_shape, dtype=self.dtype)
        new.shuffle_rng.bit_generator.state = self.shuffle_rng.bit_generator.state
        new.auto_backend = self.auto_backend
        return new.train(self.training)

    def save(self, path):
        serialization.save(self, path)

    def __reduce__(self):
        """Pickling (multiprocessing, joblib) carries what a model file holds plus the backend name,
        seed, dtype, mode and shuffle state; unpickling rebuilds and checks it as ``load`` does."""
        serialization.check_registered(self, "pickle")
        return (_unpickle, (self.architecture(), self.get_arrays(), self.backend.name, self.seed,
                            self.dtype.name, self.training, self.shuffle_rng.bit_generator.state))


def _sigterm_stops_like_ctrl_c(comm):
    """During fit, a SIGTERM that would kill the process (its default action) instead lets the step in
    flight finish, saves fit's checkpoint when it has one, and raises ``Interrupted`` (a
    KeyboardInterrupt, as Ctrl-C raises): no half-written file, and a message. A handler of the
    caller's (the CLI's, or the user's own) is left alone, as are threads other than the main one and
    distributed runs (there the launcher ends the job)."""
    if comm is not None or not serialization.sigterm_is_default():
        return contextlib.nullcontext()
    return stop_on_signals(None, signals=(signal.SIGTERM,))


def _check_distinct(layers):
    """The same layer instance twice in one network would share its caches: the first use's backward
    would read the second use's input (a silently wrong dW)."""
    seen = {}
    for i, layer in enumerate(layers):
        if id(layer) in seen:
            raise L.LayerOwnershipError(
                f"layers {seen[id(layer)]} and {i} are the same {layer!r} instance; every position needs "
                f"its own layer object (e.g. write {type(layer).__name__}() twice)")
        seen[id(layer)] = i


def _check_seed(seed):
    """An int >= 0, or None for fresh entropy (as NumPy means it); the seed drawn is kept in net.seed."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (1 << 63))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def _unpickle(description, arrays, backend, seed, dtype, training, shuffle_state):
    layers, loss, input_shape = serialization.layers_from(description)
    net = Network(layers, loss=loss, backend=backend, seed=seed, input_shape=input_shape, dtype=dtype)
    serialization.assign_arrays(net, arrays, "pickled network")
    net.shuffle_rng.bit_generator.state = shuffle_state
    return net.train(training)


def build_network(description, backend=None, arrays=None, path="model"):
    """A fresh Network from an architecture description (as written by ``save``).

    With ``arrays`` they are checked against the layers *before* the network allocates any weights
    (a corrupt description cannot ask for gigabytes), then assigned: the network holds them.
    """
    backend = get_backend(backend)          # a bad backend name is the caller's error, not the file's
    layers, loss, input_shape = serialization.layers_from(description)
    checked = serialization.checked_arrays(layers, arrays, path) if arrays is not None else None
    try:
        net = Network(layers, loss=loss, backend=backend, input_shape=input_shape)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"the model's architecture cannot be built: {type(exc).__name__}: {exc}") from None
    if checked is not None:
        net.load_arrays(checked)
    return net


def load(path, backend=None):
    """Load a model saved by ``net.save(path)`` onto any backend."""
    description, arrays = serialization.read_model_file(path)
    return build_network(description, backend, arrays, path)


def seed_network(backend=None, seed=0, loss="quadratic", activation="sigmoid"):
    """The seed network: 1x28x28 -> conv 3@5x5 -> sigma -> maxpool 2 -> 432 -> dense 10 -> sigma.

    ``activation="relu"`` with ``loss="cross_entropy"`` gives the modern variant (no final sigma:
    the softmax belongs to the loss).
    """
    act = L.activation_class(activation)
    return classifier([L.Conv2D(1, 3, 5), act(), L.MaxPool2D(2), L.Flatten(), L.Dense(432, 10)],
                      loss, backend, seed)


def classifier(layers, loss, backend=None, seed=0):
    """A Network of ``layers`` ending in the class scores: with the quadratic loss a final Sigmoid
    is added; with cross_entropy the softmax belongs to the loss."""
    if loss == "quadratic":
        layers = [*layers, L.Sigmoid()]
    return Network(layers, loss=loss, backend=backend, seed=seed)
