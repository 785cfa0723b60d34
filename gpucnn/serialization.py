"""Model files: an ``.npz`` of plain arrays plus the architecture as JSON. No pickle anywhere, so a
file is safe to load and a model saved on one backend loads on any other.

    architecture            JSON (a 0-d unicode array): layers, loss, input_shape, format version
    layers.<i>.<W|b>        float32 parameter arrays

What a model file may contain, and how far it is trusted (``read_model_file``):
  - the path must be a regular file: a directory, FIFO, device or socket is named for what it is and
    never opened for reading (a FIFO would block, /dev/zero never ends);
  - the architecture record is read first, capped at 16 MiB; it names every other member allowed:
    the parameters and buffers of its layers (at most their shape in float64 plus a .npy header each),
    and in a checkpoint the training state (JSON, capped) and ``optim.<parameter>.<slot>`` arrays (at
    most 8 slots a parameter). Anything else is refused unread;
  - each member's size as the zip directory declares it is checked against that bound *before* it is
    inflated, and the read is capped at the declared size, so a small file cannot inflate to gigabytes;
  - each .npy header is checked against the bytes that follow (``read_npy``), no pickle, no object
    arrays; any defect is a ModelFileError naming the file.
Writing (``save``) checks the destination first (``check_output_path``) and replaces the file
atomically; a SIGTERM during the write is held until the new file is in place.
"""
import contextlib
import json
import math
import os
import signal
import struct
import tempfile
import threading
import zipfile
import zlib

import numpy as np

from .data.files import describe_path, named as _named, open_regular
from .data.npy import read_npy
from .errors import ModelFileError
from .layers import LAYER_TYPES, state_name

FORMAT = "gpucnn-model-1"
# Members a training checkpoint adds to a model file (gpucnn/training/checkpoint.py): the loop's state
# and the optimizer's per-parameter state. A checkpoint loads as a model; nothing else is accepted.
STATE_KEY, OPTIM_PREFIX = "training_state", "optim."
CHECKPOINT_MEMBERS = (STATE_KEY, OPTIM_PREFIX)


def save(net, path, extra=None):
    """Write atomically (temporary file + rename): a crash leaves the previous file intact.

    The file gets the permissions of a plain ``open`` (0666 less the umask), not mkstemp's 0600.
    """
    check_registered(net, "save")
    # no probe file: the write right after makes its own temporary file there (and names the path)
    path = check_output_path(path, "checkpoint" if extra else "model file", probe=False)
    arrays = net.get_arrays()
    description = {"format": FORMAT, **net.architecture()}
    arrays["architecture"] = np.array(json.dumps(description))
    for key, value in (extra or {}).items():
        arrays[key] = value
    with sigterm_deferred():
        _write_atomically(arrays, path)


def check_registered(net, what="save"):
    """Every layer's class must be registered, or load() (and unpickling) could not rebuild it."""
    for i, layer in enumerate(net.layers):
        if LAYER_TYPES.get(type(layer).__name__) is not type(layer):
            raise TypeError(f"cannot {what} layer {i} {layer!r}: its class {type(layer).__qualname__} is not "
                            "registered, so load() could not rebuild it; decorate the class with "
                            "@gpucnn.register_layer (and give it config() returning its constructor arguments)")


def _write_atomically(arrays, path):
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    except OSError as exc:           # name the user's path, not the temporary file's
        raise type(exc)(f"cannot write {path}: {exc.strerror or exc} (in {directory})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):         # disk full, quota: name the user's path
            raise type(exc)(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def sigterm_is_default():
    """Whether this thread may take SIGTERM over: the main thread, with SIGTERM at its default action
    (a handler the program or the CLI installed is left alone)."""
    return threading.current_thread() is threading.main_thread() \
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@contextlib.contextmanager
def sigterm_deferred():
    """A SIGTERM that arrives while a file is written is held until the write is done (renamed into
    place), then delivered: the process still dies by SIGTERM, but never leaves a ``.tmp-*`` file or
    a half-written checkpoint. Only where SIGTERM has its default action, in the main thread; a
    handler the program (or the CLI) installed is left alone. SIGINT already unwinds the write.
    """
    if not sigterm_is_default():
        yield
        return
    pending = []
    signal.signal(signal.SIGTERM, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if pending:
            os.kill(os.getpid(), signal.SIGTERM)


def check_output_path(path, what="model file", probe=True):
    """The path a model or checkpoint will be written to, checked before any work that would be lost
    if the write failed at the end: its directory exists and (``probe``: a probe file is made and
    removed) takes a new file; the path is not a directory, FIFO or device; an existing file there is
    a gpucnn model or checkpoint (replaced), never some other file (refused). Returns the path as a
    str; raises an OSError naming it.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"the {what} path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = os.fsdecode(path)
    if not path:
        raise ValueError(f"the {what} path is empty")
    kind = describe_path(path)
    if kind == "a directory" or path.endswith(os.sep):
        problem = "is a directory" if kind == "a directory" else f"ends in {os.sep!r}, a directory's name"
        raise IsADirectoryError(f"cannot write the {what} to {path}: it {problem}; give a file name")
    if kind is not None:
        raise OSError(f"cannot write the {what} to {_named(path)}: it is {kind}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        problem = "is not a directory" if os.path.exists(directory) else "does not exist"
        error = NotADirectoryError if os.path.exists(directory) else FileNotFoundError
        raise error(f"cannot write the {what} to {path}: the directory {directory} {problem}")
    try:                             # what rename-into-place needs: a new file in that directory
        if probe:
            fd, probe_path = tempfile.mkstemp(prefix=".tmp-", suffix=".probe", dir=directory)
            os.close(fd)
            os.unlink(probe_path)
    except OSError as exc:
        raise type(exc)(f"cannot write the {what} to {path}: {exc.strerror or exc} "
                        f"(directory {directory})") from None
    if os.path.exists(path) and os.path.getsize(path) > 0 and not _is_model_file(path):
        raise FileExistsError(f"{path} exists and is not a gpucnn model file: not overwriting it with "
                              f"the {what} (choose another path, or remove the file)")
    return path


def _is_model_file(path):
    """Whether path holds a gpucnn model or checkpoint (an .npz with an architecture record)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "architecture.npy" in zf.namelist()
    except _ZIP_ERRORS:
        return False


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What a model file may hold, in bytes per member before it is inflated: the architecture record and
# the training state are JSON strings (4 bytes a character); a parameter, buffer or optimizer slot is
# at most its architecture's shape in float64, plus a .npy header.
_MAX_JSON_BYTES = {"architecture": 16 << 20, STATE_KEY: 64 << 20}
_NPY_HEADER_BYTES = 1 << 16
_MAX_OPTIMIZER_SLOTS = 8


def _member_limits(description, path):
    """{member name: the most bytes it may inflate to} for a model of this architecture."""
    layers, _, _ = layers_from(description)
    limits = dict(_MAX_JSON_BYTES)
    for name, shape in expected_arrays(layers).items():
        limits[name] = math.prod(shape) * 8 + _NPY_HEADER_BYTES
    return limits


def _member_limit(name, limits, slots, path):
    if name in limits:
        return limits[name]
    if name.startswith(OPTIM_PREFIX):           # optim.<parameter name>.<slot>
        param, _, slot = name[len(OPTIM_PREFIX):].rpartition(".")
        if param in limits and slot.isidentifier():
            slots[param] = slots.get(param, 0) + 1
            if slots[param] <= _MAX_OPTIMIZER_SLOTS:
                return limits[param]
            raise ModelFileError(f"{path}: more than {_MAX_OPTIMIZER_SLOTS} optimizer slots for {param}")
    raise ModelFileError(f"{path}: unknown array {name!r}: not part of this architecture "
                         "(a gpucnn model file holds only the arrays its architecture names)")


def _read_member(zf, info, limit, path):
    """One .npy member, refused on its declared size before a byte is inflated; the read is capped."""
    if info.file_size > limit:
        raise ModelFileError(f"{path}: member {info.filename!r} declares {info.file_size} bytes, more than "
                             f"the {limit} this architecture allows for it")
    with zf.open(info) as f:
        return read_npy(f, info.file_size, f"{path}:{info.filename}", ModelFileError)


def _read_npz(f, path):
    """(description, {name: array}) from an .npz written by np.savez.

    The architecture record is read first (capped); it fixes which members may follow and how large
    each may be, and every member is checked against that *before* it is inflated.
    """
    arrays = {}
    with zipfile.ZipFile(f) as zf:
        infos = {}
        for info in zf.infolist():
            name = info.filename[:-len(".npy")]
            if not info.filename.endswith(".npy") or name in infos:
                raise ModelFileError(f"{path}: unexpected member {info.filename!r}: not a gpucnn model file")
            infos[name] = info
        if "architecture" not in infos:
            raise ModelFileError(f"{path} has no architecture record: not a gpucnn model file")
        description = _description(_read_member(zf, infos.pop("architecture"), _MAX_JSON_BYTES["architecture"],
                                                path), path)
        limits, slots = _member_limits(description, path), {}
        for name, info in infos.items():
            arrays[name] = _read_member(zf, info, _member_limit(name, limits, slots, path), path)
    return description, arrays


# What zipfile and zlib raise for a damaged archive: bad headers, CRC, compression method, encryption.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
               NotImplementedError, RuntimeError, OverflowError)


def _description(arch, path):
    if arch.dtype.kind != "U" or arch.ndim != 0:
        raise ModelFileError(f"{path}: the architecture record is {arch.dtype} {arch.shape}, not a JSON string")
    try:
        description = json.loads(str(arch))
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: the architecture record is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise ModelFileError(f"{path}: unknown model format {found!r} (expected {FORMAT!r})")
    return description


def read_model_file(path):
    """-> (description dict, {name: array}); ModelFileError for anything that is not our model file.

    Bounded: the path must be a regular file (never a FIFO or a device), and no member may inflate
    past what the architecture record declares for it (a parameter's shape in float64, a capped JSON
    record); a member the architecture does not name is refused unread.
    """
    path = os.fspath(path)
    with open_regular(path, "model file", ModelFileError) as f:
        try:
            return _read_npz(f, path)
        except ModelFileError:
            raise
        except _ZIP_ERRORS as exc:
            raise ModelFileError(f"{path} is not a readable gpucnn model file ({type(exc).__name__}: {exc})") from None


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
    """{name: shape} of every parameter and buffer a model of these layers holds."""
    return {state_name(i, key): shape for i, layer in enumerate(layers)
            for key, shape in {**layer.param_shapes(), **layer.buffer_shapes()}.items()}


def checked_arrays(layers, arrays, path):
    """{name: value} of every parameter and buffer after checking names, shapes, dtypes and values.

    Raises ModelFileError before any change; an array the architecture does not know (and that is not
    a checkpoint's state) is refused, not ignored.
    """
    expected = expected_arrays(layers)
    unknown = sorted(k for k in arrays if k not in expected and not k.startswith(CHECKPOINT_MEMBERS))
    if unknown:
        raise ModelFileError(f"{path}: unknown arrays {', '.join(unknown[:5])}"
                             f"{' ...' if len(unknown) > 5 else ''}: not part of this architecture")
    out = {}
    for name, shape in expected.items():
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


def assign_arrays(net, arrays, path="model"):
    """Copy saved parameters and buffers into net, checking that every name and shape matches.

    All or nothing: every array is checked before the first one is assigned.
    """
    checked = checked_arrays(net.layers, arrays, path)
    net.load_arrays(checked)
