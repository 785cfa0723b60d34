"""Model files: an ``.npz`` of plain arrays plus the architecture as JSON. No pickle anywhere, so a
file is safe to load and a model saved on one backend loads on any other.

    architecture            JSON (a 0-d unicode array): layers, loss, input_shape, format version
    layers.<i>.<W|b>        float32 parameter arrays
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import ModelFileError
from .layers import LAYER_TYPES

FORMAT = "gpucnn-model-1"


def save(net, path, extra=None):
    """Write atomically (temporary file + rename): a crash leaves the previous file intact."""
    arrays = {name: value for name, value in net.get_params().items()}
    description = {"format": FORMAT, **net.architecture()}
    arrays["architecture"] = np.array(json.dumps(description))
    for key, value in (extra or {}).items():
        arrays[key] = value
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_model_file(path):
    """-> (description dict, {name: array}); ModelFileError for anything that is not our model file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelFileError(f"{path} is not a readable gpucnn model file ({type(exc).__name__}: {exc})") from None
    if "architecture" not in arrays:
        raise ModelFileError(f"{path} has no architecture record: not a gpucnn model file")
    try:
        description = json.loads(str(arrays.pop("architecture")))
    except ValueError as exc:
        raise ModelFileError(f"{path}: the architecture record is not valid JSON ({exc})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unknown model format {description.get('format') if isinstance(description, dict) else description!r}")
    return description, arrays


def build_network(description, backend=None):
    """A fresh Network from an architecture description (as written by ``save``)."""
    from .network import Network
    try:
        layers = []
        for spec in description["layers"]:
            spec = dict(spec)
            cls = LAYER_TYPES[spec.pop("type")]
            layers.append(cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}))
        return Network(layers, loss=description["loss"], backend=backend,
                       input_shape=tuple(description["input_shape"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the model's architecture cannot be built: {type(exc).__name__}: {exc}") from None


def load(path, backend=None):
    """Load a model saved by ``net.save(path)`` onto any backend."""
    description, arrays = read_model_file(path)
    net = build_network(description, backend)
    assign_params(net, arrays, path)
    return net


def assign_params(net, arrays, path="model"):
    """Copy saved parameters into net, checking that every name and shape matches."""
    for name, layer, p in net.parameters():
        if name not in arrays:
            raise ModelFileError(f"{path}: parameter {name} is missing (a different architecture?)")
        value = arrays[name]
        expected = layer.param_shapes()[p]
        if value.shape != expected or value.dtype.kind != "f":
            raise ModelFileError(f"{path}: parameter {name} has shape {value.shape} dtype {value.dtype}, "
                                 f"the architecture needs {expected} float")
        if not np.isfinite(value).all():
            raise ModelFileError(f"{path}: parameter {name} contains NaN or inf")
        setattr(layer, p, value)
