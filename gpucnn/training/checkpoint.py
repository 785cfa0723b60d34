"""Training checkpoints: a model file (gpucnn/serialization.py) plus the loop's state.

State: the epoch and step, the shuffle generator's state at the start of that epoch, the generator
state of every layer that draws (Dropout's ``rng``), the optimizer's per-parameter state
(``optim.<param name>.<slot>`` arrays; integer slots such as Adam's step count stay int64 on the host),
the running sums of the epoch and the history so far. Resuming rebuilds the epoch's permutation
from that generator state and skips the steps already done, so a resumed run gives the same
parameters, bit for bit, as one that was never interrupted (same backend).
"""
import json

import numpy as np

from ..backend import to_numpy
from ..errors import ModelFileError
from ..serialization import OPTIM_PREFIX, STATE_KEY, assign_arrays, read_model_file, save as save_model


def save(trainer, path):
    t = trainer
    slots = sorted(f"{name}|{slot}" for name, state in t.optimizer.state.items() for slot in state)
    state = {"signature": t.signature(), "epoch": t.epoch, "step": t.step,
             "cost_sum": t.cost_sum, "correct": int(t.correct), "history": t.history,
             "epoch_rng_state": t.epoch_rng_state,
             "shuffle_rng_state": t.net.shuffle_rng.bit_generator.state, "optimizer_state": slots,
             "layer_rng_states": {str(i): layer.rng.bit_generator.state for i, layer in _drawing_layers(t.net)}}
    extra = {STATE_KEY: np.array(json.dumps(state))}
    for name, slots_of in t.optimizer.state.items():
        for slot, value in slots_of.items():
            extra[f"{OPTIM_PREFIX}{name}.{slot}"] = to_numpy(value)
    save_model(t.net, path, extra=extra)


def resume(trainer, path):
    """Load parameters and loop state from a checkpoint written by an identical ``fit`` call."""
    t = trainer
    description, arrays = read_model_file(path)
    if {k: v for k, v in description.items() if k != "format"} != t.net.architecture():
        raise ModelFileError(f"{path}: the checkpoint is of another architecture (layers, loss or input shape)")
    if STATE_KEY not in arrays:
        raise ModelFileError(f"{path} is a model file, not a training checkpoint (no training state)")
    try:
        state = json.loads(str(arrays.pop(STATE_KEY)))
        mismatch = {k: (state["signature"].get(k), v) for k, v in t.signature().items()
                    if state["signature"].get(k) != v}
        if mismatch:
            raise ModelFileError(f"{path}: cannot resume, fit() arguments differ from the checkpoint's "
                                 + ", ".join(f"{k} {a!r} (checkpoint) vs {b!r}" for k, (a, b) in mismatch.items()))
        shapes = {p.name: p.shape for p in t.params}
        optimizer_state = {}
        for entry in state["optimizer_state"]:
            name, slot = entry.split("|")
            value = arrays[f"{OPTIM_PREFIX}{name}.{slot}"]
            _check_slot(path, name, slot, value, shapes)
            optimizer_state.setdefault(name, {})[slot] = (   # a count stays a host integer
                value.astype(np.int64) if value.dtype.kind in "iu" else t.net.backend.asarray(value, t.net.dtype))
        layer_rng_states = state.get("layer_rng_states", {})
        drawing = dict(_drawing_layers(t.net))
        if sorted(map(int, layer_rng_states)) != sorted(drawing):
            raise ModelFileError(f"{path}: the checkpoint has generator states for layers "
                                 f"{sorted(map(int, layer_rng_states))}, the network draws in {sorted(drawing)}")
        epoch, step = _position(path, state, t)
        cost_sum, correct = float(state["cost_sum"]), int(state["correct"])
        history = {**{key: [] for key in t.history}, **state["history"]}
        for rng_state in (state["epoch_rng_state"], state["shuffle_rng_state"], *layer_rng_states.values()):
            if rng_state is not None:      # a generator state that does not load is refused before any change
                np.random.default_rng().bit_generator.state = rng_state
        # everything checked: from here on nothing can fail half-way
        assign_arrays(t.net, arrays, path)
        t.optimizer.state = optimizer_state
        t.epoch, t.step, t.cost_sum, t.correct, t.history = epoch, step, cost_sum, correct, history
        t.epoch_rng_state = state["epoch_rng_state"]
        t.net.shuffle_rng.bit_generator.state = state["shuffle_rng_state"]
        for i, rng_state in layer_rng_states.items():
            drawing[int(i)].rng.bit_generator.state = rng_state
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path}: corrupt training state ({type(exc).__name__}: {exc})") from None


def _check_slot(path, name, slot, value, shapes):
    """An optimizer slot: a finite float array of its parameter's shape, or an integer count."""
    if name not in shapes:
        raise ModelFileError(f"{path}: optimizer state for {name}, which this network does not have")
    if value.dtype.kind in "iu" and value.ndim == 0:
        return
    if value.dtype.kind != "f" or value.shape != shapes[name] or not np.isfinite(value).all():
        raise ModelFileError(f"{path}: optimizer state {name}.{slot} is {value.dtype} {value.shape}, "
                             f"expected finite floats of shape {shapes[name]}")


def _position(path, state, t):
    """(epoch, step) of the checkpoint, inside this run: 0 <= epoch <= epochs, 0 <= step < steps."""
    epoch, step = state["epoch"], state["step"]
    steps = -(-t.n // t.batch_size)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, step)) \
            or not (0 <= epoch <= t.epochs and 0 <= step < steps) or (epoch == t.epochs and step):
        raise ModelFileError(f"{path}: corrupt training state: epoch {epoch!r}, step {step!r} is not a "
                             f"position in a run of {t.epochs} epochs of {steps} steps")
    return epoch, step


def _drawing_layers(net):
    """(index, layer) of the layers with their own random generator (``layer.rng``, e.g. Dropout)."""
    return [(i, layer) for i, layer in enumerate(net.layers) if getattr(layer, "rng", None) is not None]
