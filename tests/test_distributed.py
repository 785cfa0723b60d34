"""Data-parallel training (gpucnn/distributed/): MPI jobs of 2 and 3 ranks on the CI's 2 cores against
one process, bit for bit; resume on another rank count; failures that end the job, never hang.

The jobs run ``mpiexec -n N python -m mpi4py tests/distributed_scripts/train.py`` with the mpiexec
installed next to this Python (the mpich wheel's); they are skipped, saying why, without mpi4py or
that mpiexec. Each job trains the seed network on 300 shipped digits with a global batch of 96:
steps of 96, 96, 96 and a partial 12, i.e. 3, 3, 3 and 1 chunks of the fused plan, so with 2 or 3
ranks some rank gets no sample in the last step of each epoch.
"""
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gpucnn
from gpucnn.distributed import comm as dcomm, exchange
from gpucnn.errors import BackendUnavailable
from gpucnn.fast.common import ordered_sum

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed_scripts" / "train.py"
MPIEXEC = Path(sysconfig.get_path("scripts")) / "mpiexec"


def _why_no_mpi():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install -e '.[dev]' brings mpi4py and mpich)"
    if not MPIEXEC.exists():
        return f"no mpiexec next to this Python ({MPIEXEC}); pip install mpich"
    return None


needs_mpi = pytest.mark.skipif(_why_no_mpi() is not None, reason=str(_why_no_mpi()))


def _script():
    spec = importlib.util.spec_from_file_location("distributed_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mpirun(n, *args, timeout=60, command=None):
    """Run a job of n ranks; -> (CompletedProcess, seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               GPUCNN_FAST="auto", OMP_NUM_THREADS="1")
    command = command or [sys.executable, "-m", "mpi4py", str(SCRIPT)]
    start = time.monotonic()
    done = subprocess.run([str(MPIEXEC), "-n", str(n), *command, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    return done, time.monotonic() - start


def reference(epochs=2, batch=96, lr=1.0, dtype="float32", loss="quadratic", activation="sigmoid", n=300):
    """One process, no communicator: what every job must reproduce."""
    s = _script()
    x, y = s.digits(n)
    net = s.network(activation, loss, 0, dtype)
    history = net.fit(x, y, epochs=epochs, batch_size=batch, lr=lr, verbose=False, validation=(x[:100], y[:100]))
    history.pop("time", None)
    y1 = net.targets(y, len(y))
    net.score_ = list(net.score(net.backend.asarray(x, net.dtype), y1, y1.argmax(axis=1), 128))
    return net, history, net.evaluate(x, y, batch_size=128)


def results(out, size):
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(size)]


def params_of(seen):
    return {k: bytes.fromhex(v) for k, v in seen["params"].items()}


def assert_bitwise(seen, net, history, accuracy):
    want = {k: v.tobytes() for k, v in net.get_params().items()}
    assert params_of(seen) == want
    assert seen["history"] == json.loads(json.dumps(history))
    assert seen["accuracy"] == accuracy
    assert seen["score"] == net.score_              # evaluation split over the ranks: the same cost


# -- the bookkeeping, without MPI -----------------------------------------------------------------
def test_chunks_go_to_ranks_in_order_and_all_of_them():
    for k in range(0, 9):
        for size in range(1, 5):
            owners = exchange.chunk_owners(k, size)
            flat = [c for a, b in owners for c in range(a, b)]
            assert flat == list(range(k))                       # each chunk once, in chunk order
            assert max(b - a for a, b in owners) - min(b - a for a, b in owners) <= 1
    assert exchange.chunk_owners(1, 3) == [(0, 0), (0, 0), (0, 1)]   # two ranks without a sample
    chunks = [(0, 32), (32, 64), (64, 76)]
    assert exchange.chunk_rows(chunks, exchange.chunk_owners(3, 2)) == [(0, 32), (32, 76)]


def test_part_layout_round_trip_is_exact_and_ordered_sum_is_left_to_right():
    rng = np.random.default_rng(0)
    parts = [{"b": rng.standard_normal(3).astype(np.float32), "a": rng.standard_normal((2, 2)).astype(np.float64)}
             for _ in range(3)]
    lay = exchange.PartLayout(parts[0])
    flat = lay.pack(np, parts)
    assert flat.dtype == np.float64 and flat.size == 3 * lay.size
    back = lay.unpack(flat, 3)
    for got, want in zip(back, parts):
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes()
    # float32 addition is not associative: these three sum differently in another order
    v = [np.float32(1.0), np.float32(1e8), np.float32(-1e8)]
    assert ordered_sum(v) == (v[0] + v[1]) + v[2] != v[0] + (v[1] + v[2])


def test_launcher_environment_is_read_and_a_lone_copy_refuses():
    assert dcomm.launcher_world({}) is None
    assert dcomm.launcher_world({"PMI_SIZE": "4", "PMI_RANK": "2"}) == (4, 2, "PMI_SIZE")
    assert dcomm.launcher_world({"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "0"})[0] == 3
    assert dcomm.launcher_world({"PMIX_RANK": "1"}) == (None, 1, "PMIX_RANK")
    dcomm.check_not_launched({"PMI_SIZE": "1", "PMI_RANK": "0"})            # a launcher of one: fine
    with pytest.raises(dcomm.DistributedError, match="--distributed"):
        dcomm.check_not_launched({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"})


def test_a_launcher_of_another_mpi_is_refused():
    dcomm.check_world_size(4, (4, 0, "PMI_SIZE"))
    dcomm.check_world_size(4, (2, 0, "MPI_LOCALNRANKS"))                     # 2 of 4 on this node
    with pytest.raises(dcomm.DistributedError, match=r"started 4 processes.*world of 1.*mpiexec"):
        dcomm.check_world_size(1, (4, 0, "OMPI_COMM_WORLD_SIZE"))


def test_nccl_without_cupy_is_a_clear_backend_unavailable():
    class Mpi:                                  # what NcclComm reads of the MPI communicator
        rank, size, local_rank, mode, watchdog = 0, 1, 0, "exact", None
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here: NcclComm would try the device")
    with pytest.raises(BackendUnavailable, match="nccl backend needs CuPy"):
        dcomm.NcclComm(Mpi())


class _DevArray(np.ndarray):
    """A host array that looks like a CuPy one to NcclComm (``.data.ptr``)."""
    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)


def _fake_cupy():
    dev = lambda a: np.asarray(a).view(_DevArray)
    stream = SimpleNamespace(ptr=0, synchronize=lambda: None)
    return SimpleNamespace(
        ndarray=_DevArray, asarray=dev, ascontiguousarray=lambda a: dev(np.ascontiguousarray(a)),
        zeros=lambda n, dt: dev(np.zeros(n, dt)), empty=lambda n, dt: dev(np.empty(n, dt)),
        concatenate=lambda parts: dev(np.concatenate(parts)), asnumpy=np.asarray,
        cuda=SimpleNamespace(get_current_stream=lambda: stream, runtime=SimpleNamespace(getDeviceCount=lambda: 2),
                             Device=lambda i: SimpleNamespace(use=lambda: None)))


class _FakeNccl:
    """Rank 0 of 2: the peer (rank 1) runs the same NcclComm code with ``peer`` as its data."""
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    types = {7: np.float32, 8: np.float64}

    def __init__(self, peer):
        self.peer, self.calls = peer, []

    def get_unique_id(self):
        return b"id-from-rank-0"

    def NcclCommunicator(self, size, uid, rank):
        self.calls.append(("init", size, uid, rank))
        return self

    def _view(self, ptr, count, dtype):
        import ctypes
        t = np.dtype(self.types[dtype])
        return np.frombuffer((ctypes.c_char * (count * t.itemsize)).from_address(ptr), t)

    def allGather(self, send, recv, count, dtype, stream):
        out = self._view(recv, 2 * count, dtype)
        out[:count] = self._view(send, count, dtype)
        out[count:] = 0
        out[count:count + self.peer.size] = self.peer              # the peer pads as rank 0 does

    def allReduce(self, send, recv, count, dtype, op, stream):
        self._view(recv, count, dtype)[:] = self._view(send, count, dtype) + self.peer


def test_nccl_communicator_pads_gathers_in_rank_order_and_sums_without_a_gpu():
    from gpucnn.distributed.watchdog import Watchdog
    sent = []
    mpi = SimpleNamespace(rank=0, size=2, local_rank=0, mode="exact", watchdog=Watchdog(None, None),
                          broadcast_object=lambda obj, root=0, what="": sent.append(obj) or obj)
    nccl = _FakeNccl(np.arange(3, dtype=np.float32) + 10)
    comm = dcomm.NcclComm(mpi, nccl=nccl, cupy=_fake_cupy())
    assert sent == [b"id-from-rank-0"] and nccl.calls == [("init", 2, b"id-from-rank-0", 0)]
    got = comm.allgather(np.arange(1, 6, dtype=np.float32), [5, 3])      # ranks send 5 and 3 elements
    np.testing.assert_array_equal(got, [1, 2, 3, 4, 5, 10, 11, 12])
    total = comm.allreduce_sum(np.ones(3, np.float32))
    np.testing.assert_array_equal(total, np.arange(3) + 11)
    with pytest.raises(dcomm.DistributedError, match="float32 and float64"):
        comm.allgather(np.zeros(2, np.int64), [2, 2])
    with pytest.raises(BackendUnavailable, match="local rank 2 on its node, which has 2 GPU"):
        dcomm.NcclComm(SimpleNamespace(**{**vars(mpi), "rank": 2, "local_rank": 2}), nccl=nccl, cupy=_fake_cupy())


def test_watchdog_fires_once_past_the_deadline_and_not_before():
    from gpucnn.distributed.watchdog import Watchdog
    import threading
    fired, rang = [], threading.Event()
    dog = Watchdog(0.3, lambda message: fired.append(message) or rang.set())
    with dog.guard("a quick collective"):
        time.sleep(0.05)
    time.sleep(0.4)
    assert fired == []
    with dog.guard("a collective that never ends"):
        assert rang.wait(10)                     # fires (late only on a very loaded machine)
    assert len(fired) == 1 and "within 0.3 s during a collective that never ends" in fired[0]


class OneRank:
    """The communicator interface for a world of one, in this process (no MPI)."""
    rank, size, local_rank, backend = 0, 1, 0, "fake"

    def __init__(self, mode="exact"):
        self.mode = mode

    def for_network(self, net):
        return self

    def allgather(self, local, counts):
        return local.reshape(-1).copy()

    def broadcast(self, array, root=0):
        return array

    def allreduce_sum(self, array):
        return array

    def allgather_object(self, obj, what=""):
        return [obj]

    def broadcast_object(self, obj, root=0, what=""):
        return obj


@pytest.mark.parametrize("extra, mode, message", [
    (gpucnn.BatchNorm2D(3), "exact", r"layers \[2\] keep buffers"),
    (gpucnn.BatchNorm2D(3), "allreduce", r"layers \[2\] keep buffers"),
    (gpucnn.Dropout(0.5), "exact", r"layers \[2\] are Dropout.*mode='allreduce'"),
])
def test_layers_that_would_break_the_promise_are_refused_before_training(extra, mode, message):
    net = gpucnn.Network([gpucnn.Conv2D(1, 3, 5), gpucnn.ReLU(), extra, gpucnn.MaxPool2D(2), gpucnn.Flatten(),
                          gpucnn.Dense(432, 10)], loss="cross_entropy", backend="numpy")
    x, y = _script().digits(40)
    before = net.get_params()
    with pytest.raises(dcomm.DistributedError, match=message):
        net.fit(x, y, epochs=1, batch_size=20, lr=0.1, verbose=False, comm=OneRank(mode))
    assert all(np.array_equal(v, net.get_params()[k]) for k, v in before.items())


def test_dropout_trains_in_allreduce_mode_and_one_rank_is_one_process():
    def net():
        return gpucnn.Network([gpucnn.Conv2D(1, 3, 5), gpucnn.ReLU(), gpucnn.Dropout(0.5), gpucnn.MaxPool2D(2),
                               gpucnn.Flatten(), gpucnn.Dense(432, 10)], loss="cross_entropy", backend="numpy")
    x, y = _script().digits(40)
    a, b = net(), net()
    ha = a.fit(x, y, epochs=1, batch_size=20, lr=0.1, verbose=False)
    hb = b.fit(x, y, epochs=1, batch_size=20, lr=0.1, verbose=False, comm=OneRank("allreduce"))
    assert ha["loss"] == hb["loss"]
    assert all(np.array_equal(v, b.get_params()[k]) for k, v in a.get_params().items())


# -- MPI jobs ---------------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_exact_mode_is_bitwise_one_process(tmp_path, n):
    done, _ = mpirun(n, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    net, history, accuracy = reference()
    everyone = results(tmp_path / "out", n)
    assert everyone[0]["path"].startswith("fused CPU plan")      # the exact scheme needs the chunks
    for seen in everyone:                        # every rank ends with the same numbers
        assert_bitwise(seen, net, history, accuracy)
    assert not done.stdout.strip()               # verbose=False: nothing printed


@needs_mpi
@pytest.mark.slow
def test_generic_float64_path_within_1e9(tmp_path):
    # 290 digits: the last batch has 2 rows, so rank 0 of 3 gets none in that step
    done, _ = mpirun(3, tmp_path / "out", "--dtype", "float64", "--n", 290)
    assert done.returncode == 0, done.stderr
    net, history, accuracy = reference(dtype="float64", n=290)
    seen = results(tmp_path / "out", 3)[0]
    assert seen["path"].startswith("layer by layer")
    for k, v in net.get_params().items():
        got = np.frombuffer(params_of(seen)[k], np.float64).reshape(v.shape)
        np.testing.assert_allclose(got, v, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(seen["history"]["loss"], history["loss"], rtol=1e-9)
    assert seen["accuracy"] == accuracy


@needs_mpi
@pytest.mark.slow
def test_allreduce_mode_within_its_documented_tolerance(tmp_path):
    done, _ = mpirun(3, tmp_path / "out", "--mode", "allreduce")
    assert done.returncode == 0, done.stderr
    net, history, _ = reference()
    seen = results(tmp_path / "out", 3)[0]
    for k, v in net.get_params().items():       # docs/distributed.md: |dW| <= 1e-7 after this job
        got = np.frombuffer(params_of(seen)[k], np.float32).reshape(v.shape)
        np.testing.assert_allclose(got, v, rtol=0, atol=1e-7)


@needs_mpi
@pytest.mark.slow
def test_resume_on_another_rank_count_is_bitwise_an_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "run.npz"
    # 3 ranks, checkpoints every 2 steps and at epoch ends; rank 0 is killed after the third write
    # (step 2 of epoch 2), which ends the job; 2 ranks resume from it and finish
    killed, _ = mpirun(3, tmp_path / "a", "--checkpoint", ckpt, "--every", 2, "--kill-after-saves", 3)
    assert killed.returncode != 0 and ckpt.exists() and not Path(f"{tmp_path / 'a'}.rank0.json").exists()
    done, _ = mpirun(2, tmp_path / "b", "--checkpoint", ckpt, "--every", 2, "--resume")
    assert done.returncode == 0, done.stderr
    net, history, accuracy = reference()
    for seen in results(tmp_path / "b", 2):
        assert_bitwise(seen, net, history, accuracy)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("fail, message", [
    ("raise", "gpucnn: error: rank 1: RuntimeError: planted failure"),
    ("kill", "Killed (signal 9)"),              # the launcher says so: the rank cannot
    ("stuck", "gpucnn: error: rank 0: no answer from the other ranks within 3 s"),
])
def test_a_failing_rank_ends_the_job_within_the_timeout(tmp_path, fail, message):
    timeout = 3
    done, _ = mpirun(2, tmp_path / "out", "--fail", fail, "--timeout", timeout, timeout=60)
    ended = time.time()
    said = f"rc {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert done.returncode != 0, said
    assert message in done.stderr + done.stdout, said
    failed_at = float(Path(f"{tmp_path / 'out'}.failed_at").read_text())
    assert ended - failed_at < timeout + 5, f"{ended - failed_at:.1f} s after the failure; {said}"


@needs_mpi
@pytest.mark.slow
def test_a_checkpoint_rank_0_cannot_write_is_an_error_on_every_rank(tmp_path):
    done, _ = mpirun(2, tmp_path / "out", "--fail", "save", "--checkpoint", tmp_path / "run.npz", "--every", 2)
    assert done.returncode == 0, done.stderr
    (kind0, text0), (kind1, text1) = (seen["error"] for seen in results(tmp_path / "out", 2))
    assert kind0 == "OSError" and "No space left on device (planted)" in text0
    assert kind1 == "DistributedError" and "rank 0 could not write the checkpoint" in text1 and \
        "No space left on device (planted)" in text1


@needs_mpi
@pytest.mark.slow
def test_divergence_is_reported_by_every_rank_alike(tmp_path):
    done, _ = mpirun(3, tmp_path / "out", "--loss", "cross_entropy", "--activation", "relu", "--lr", 1e20)
    assert done.returncode == 0, done.stderr
    everyone = results(tmp_path / "out", 3)
    errors = {tuple(seen["error"]) for seen in everyone}
    assert len(errors) == 1
    kind, text = errors.pop()
    assert kind == "Divergence" and "step 3" in text
    net = _script().network("relu", "cross_entropy")
    with pytest.raises(gpucnn.Divergence) as one, np.errstate(all="ignore"):
        net.fit(*_script().digits(300), epochs=2, batch_size=96, lr=1e20, verbose=False)
    assert text == str(one.value)
    want = {k: v.tobytes() for k, v in net.get_params().items()}   # the same last good parameters
    for seen in everyone:
        assert params_of(seen) == want


@needs_mpi
@pytest.mark.slow
def test_mismatched_seeds_are_a_clear_error_on_every_rank(tmp_path):
    done, _ = mpirun(3, tmp_path / "out", "--seed-rank", 2)
    assert done.returncode == 0, done.stderr
    for seen in results(tmp_path / "out", 3):
        kind, text = seen["error"]
        assert kind == "DistributedError"
        assert "seed: rank 2 has 1 where rank 0 has 0" in text


# -- the command line -------------------------------------------------------------------------------
def _idx(a):
    a = np.asarray(a, np.uint8)
    return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """300 training and 100 held-out digits as the four MNIST IDX files."""
    x, y = _script().digits(400)
    images = np.rint(x[:, 0] * 255).astype(np.uint8)
    d = tmp_path_factory.mktemp("idx")
    for name, a in [("train-images-idx3-ubyte", images[:300]), ("train-labels-idx1-ubyte", y[:300]),
                    ("t10k-images-idx3-ubyte", images[300:]), ("t10k-labels-idx1-ubyte", y[300:])]:
        (d / name).write_bytes(_idx(a))
    return d


def _train_args(d, model):
    return ["train", "--data", d, "--epochs", 2, "--batch-size", 96, "--model", model]


def _epoch_lines(stdout):
    """The epoch lines without their wall time."""
    return [line.split(" (")[0] for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.fixture(scope="module")
def cli_reference(digits_dir, tmp_path_factory):
    model = tmp_path_factory.mktemp("one") / "model.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "gpucnn", *map(str, _train_args(digits_dir, model))],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return dict(np.load(model)), _epoch_lines(done.stdout)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_cli_distributed_is_bitwise_one_process_and_only_rank_0_speaks(tmp_path, digits_dir, cli_reference, n):
    model = tmp_path / "model.npz"
    done, _ = mpirun(n, *_train_args(digits_dir, model), "--distributed",
                     command=[sys.executable, "-m", "mpi4py", "-m", "gpucnn"])
    assert done.returncode == 0, done.stderr
    arrays, lines = cli_reference
    got = dict(np.load(model))
    assert got.keys() == arrays.keys() and all(got[k].tobytes() == arrays[k].tobytes() for k in arrays)
    assert _epoch_lines(done.stdout) == lines and len(lines) == 2
    assert done.stdout.count("model saved to") == 1 and done.stdout.count("data: ") == 1


@needs_mpi
@pytest.mark.slow
def test_cli_copies_under_a_launcher_without_distributed_refuse(tmp_path, digits_dir):
    done, _ = mpirun(2, *_train_args(digits_dir, tmp_path / "model.npz"), command=[sys.executable, "-m", "gpucnn"])
    assert done.returncode != 0
    assert done.stderr.count("--distributed is not given") == 2 and not (tmp_path / "model.npz").exists()
