"""Model files: an ``.npz`` of plain arrays plus the architecture as JSON. No pickle anywhere, so a
file is safe to load and a model saved on one backend loads on any other.

    architecture            JSON (a 0-d unicode array): layers, loss, input_shape, format version
    layers.<i>.<W|b>        float32 parameter arrays

NOTE: files are read member by member through ``read_npy``, which checks each .npy header against the
bytes that follow before allocating anything; any defect is a ModelFileError naming the file.
"""
import json
import math
import os
import struct
import tempfile
import tokenize
import zipfile
import zlib

import numpy as np

from .errors import ModelFileError
from .layers import LAYER_TYPES

FORMAT = "gpucnn-model-1"
# Members a training checkpoint adds to a model file (gpucnn/training/checkpoint.py): the loop's state
# and the optimizer's per-parameter state. A checkpoint loads as a model; nothing else is accepted.
STATE_KEY, OPTIM_PREFIX = "training_state", "optim."
CHECKPOINT_MEMBERS = (STATE_KEY, OPTIM_PREFIX)


def save(net, path, extra=None):
    """Write atomically (temporary file + rename): a crash leaves the previous file intact.

    The file gets the permissions of a plain ``open`` (0666 less the umask), not mkstemp's 0600.
    """
    for i, layer in enumerate(net.layers):
        if LAYER_TYPES.get(type(layer).__name__) is not type(layer):
            raise TypeError(f"cannot save layer {i} {layer!r}: its class {type(layer).__qualname__} is not "
                            "registered, so load() could not rebuild it; decorate the class with "
                            "@gpucnn.register_layer (and give it config() returning its constructor arguments)")
    arrays = net.get_arrays()
    description = {"format": FORMAT, **net.architecture()}
    arrays["architecture"] = np.array(json.dumps(description))
    for key, value in (extra or {}).items():
        arrays[key] = value
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_npy(f, nbytes, source, error=ModelFileError):
    """One array from the .npy bytes in file object f (nbytes of them, header included); no pickle.

    The header is not trusted: its shape and dtype must account for exactly the bytes that follow, so a
    corrupt header can neither allocate more than the file holds nor yield a short array.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    except (ValueError, EOFError, OSError, SyntaxError, tokenize.TokenError) as exc:
        # numpy parses the header dict with tokenize + ast and lets their errors through
        raise error(f"{source}: not a .npy array ({exc})") from None
    if dtype.hasobject or dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise error(f"{source}: unsupported .npy array (dtype {dtype}, shape {shape})")
    count = math.prod(shape)
    need, have = count * dtype.itemsize, nbytes - f.tell()
    if need != have:
        raise error(f"{source}: the .npy header promises {need} data bytes (shape {shape}, dtype {dtype}), "
                    f"the file holds {have}")
    data = f.read(need)
    if len(data) != need:
        raise error(f"{source}: truncated .npy data ({len(data)} of {need} bytes)")
    a = np.frombuffer(data, dtype=dtype, count=count)
    return (a.reshape(shape[::-1]).T if fortran else a.reshape(shape)).copy()


def _read_npz(path):
    """{name: array} from an .npz written by np.savez; every member must be a plain .npy array."""
    arrays = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename[:-len(".npy")]
            if not info.filename.endswith(".npy") or name in arrays:
                raise ModelFileError(f"{path}: unexpected member {info.filename!r}: not a gpucnn model file")
            with zf.open(info) as f:
                arrays[name] = read_npy(f, info.file_size, f"{path}:{info.filename}")
    return arrays


# What zipfile and zlib raise for a damaged archive: bad headers, CRC, compression method, encryption.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
               NotImplementedError, RuntimeError, OverflowError)


def read_model_file(path):
    """-> (description dict, {name: array}); ModelFileError for anything that is not our model file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path} is a directory, not a model file")
    if not os.path.isfile(path):
        raise ModelFileError(f"model file not found: {path}")
    try:
        arrays = _read_npz(path)
    except ModelFileError:
        raise
    except _ZIP_ERRORS as exc:
        raise ModelFileError(f"{path} is not a readable gpucnn model file ({type(exc).__name__}: {exc})") from None
    arch = arrays.pop("architecture", None)
    if arch is None:
        raise ModelFileError(f"{path} has no architecture record: not a gpucnn model file")
    if arch.dtype.kind != "U" or arch.ndim != 0:
        raise ModelFileError(f"{path}: the architecture record is {arch.dtype} {arch.shape}, not a JSON string")
    try:
        description = json.loads(str(arch))
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: the architecture record is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise ModelFileError(f"{path}: unknown model format {found!r} (expected {FORMAT!r})")
    return description, arrays


def layers_from(description):
    """(layers, loss, input_shape) from a description; checks its structure, builds nothing big."""
    if not isinstance(description, dict):
        raise ModelFileError(f"the model's architecture is a {type(description).__name__}, not a dict")
    layer_specs, loss, input_shape = (description.get(k) for k in ("layers", "loss", "input_shape"))
    if not isinstance(layer_specs, list) or not layer_specs:
        raise ModelFileError(f"the model's architecture has no layer list (got {type(layer_specs).__name__})")
    if not isinstance(input_shape, list) or not input_shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise ModelFileError(f"the model's input_shape must be a list of positive ints, got {input_shape!r}")
    layers = []
    for i, spec in enumerate(layer_specs):
        kind = spec.get("type") if isinstance(spec, dict) else None
        if not isinstance(kind, str) or kind not in LAYER_TYPES:
            raise ModelFileError(f"layer {i} of the model has unknown type {kind!r}; "
                                 f"expected one of {', '.join(LAYER_TYPES)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "type"}
        try:
            layers.append(LAYER_TYPES[kind](**kwargs))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"layer {i} of the model ({kind}) cannot be built: {exc}") from None
    return layers, loss, tuple(input_shape)


def expected_arrays(layers):
    """{name: (owner description, shape)} of every parameter and buffer a model of these layers holds."""
    out = {}
    for i, layer in enumerate(layers):
        for key, shape in layer.param_shapes().items():
            out[f"layers.{i}.{key}"] = (repr(layer), shape)
        for key, shape in layer.buffer_shapes().items():
            out[f"layers.{i}.{key}"] = (repr(layer), shape)
    return out


def checked_arrays(layers, arrays, path, extra_prefixes=()):
    """{name: value} of every parameter and buffer after checking names, shapes, dtypes and values.

    Raises ModelFileError before any change; an array the architecture does not know (and that is not
    a checkpoint's state or under one of ``extra_prefixes``) is refused, not ignored.
    """
    expected = expected_arrays(layers)
    allowed = CHECKPOINT_MEMBERS + tuple(extra_prefixes)
    unknown = sorted(k for k in arrays if k not in expected and not k.startswith(allowed))
    if unknown:
        raise ModelFileError(f"{path}: unknown arrays {', '.join(unknown[:5])}"
                             f"{' ...' if len(unknown) > 5 else ''}: not part of this architecture")
    out = {}
    for name, (_, shape) in expected.items():
        if name not in arrays:
            raise ModelFileError(f"{path}: parameter {name} is missing (a different architecture?)")
        value = arrays[name]
        if value.shape != shape or value.dtype.kind != "f":
            raise ModelFileError(f"{path}: parameter {name} has shape {value.shape} dtype {value.dtype}, "
                                 f"the architecture needs {shape} float")
        if not np.isfinite(value).all():
            raise ModelFileError(f"{path}: parameter {name} contains NaN or inf")
        out[name] = value
    return out


def assign_arrays(net, arrays, path="model", extra_prefixes=()):
    """Copy saved parameters and buffers into net, checking that every name and shape matches.

    All or nothing: every array is checked before the first one is assigned.
    """
    checked = checked_arrays(net.layers, arrays, path, extra_prefixes)
    net.load_arrays(checked)
