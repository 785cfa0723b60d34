"""Checkpoints: atomic writes that survive SIGKILL, and resume that equals an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn.errors import ModelFileError, NoCheckpointWarning
from gpucnn.serialization import read_model_file


@pytest.fixture
def small(digits):
    pick = np.random.default_rng(5).permutation(len(digits[1]))[:200]
    return digits[0][pick], digits[1][pick]


# Settings that train (loss 1.9 -> 0.4, accuracy 0.37 -> 0.85 over the 3 epochs, gradients far from 0):
# with saturated sigmoids (loss stuck at 0.5, zero gradients) a wrong resume changes nothing and slips by.
FIT = dict(epochs=3, batch_size=16, lr=0.05, momentum=0.9, verbose=False)
STEPS = 13                                  # per epoch: ceil(200 / 16)


def seed_net(seed):
    return gpucnn.seed_network(backend="numpy", seed=seed, loss="cross_entropy", activation="relu")


def timeless(history):
    """The history without wall-clock times, which differ between any two runs."""
    return {k: v for k, v in history.items() if k != "time"}


class Interrupt(Exception):
    pass


def recording(net, x, stop_at=None):
    """Wrap net.train_step: record which samples (indices into x) each step trains on; optionally die
    at the stop_at-th step, like a killed process."""
    index = {row.tobytes(): i for i, row in enumerate(x)}
    real_step, batches = net.train_step, []

    def step(xb, yb, optimizer):
        if len(batches) + 1 == stop_at:
            raise Interrupt
        batches.append([index[row.tobytes()] for row in np.asarray(xb)])
        return real_step(xb, yb, optimizer)
    net.train_step = step
    return batches


def _interrupted_fit(x, y, path, stop_at):
    """fit() that dies at its stop_at-th step (checkpoint every 5 steps); the batches it trained on."""
    net = seed_net(3)
    batches = recording(net, x, stop_at)
    with pytest.raises(Interrupt):
        net.fit(x, y, checkpoint=path, every=5, **FIT)
    return batches


def assert_each_sample_once_per_epoch(batches, n):
    assert len(batches) == FIT["epochs"] * STEPS
    for epoch in range(FIT["epochs"]):
        seen = sorted(i for batch in batches[epoch * STEPS:(epoch + 1) * STEPS] for i in batch)
        assert seen == list(range(n)), f"epoch {epoch + 1} did not train on every sample exactly once"


def test_the_settings_train_and_every_sample_is_used_once_per_epoch(small):
    x, y = small
    net = seed_net(3)
    batches = recording(net, x)
    history = net.fit(x, y, **FIT)
    assert history["loss"][-1] < 0.5 * history["loss"][0] and history["accuracy"][-1] > 0.6, history
    assert_each_sample_once_per_epoch(batches, len(y))
    net.forward(x[:16])
    net.backward(y[:16])
    assert all(float(np.abs(p.grad).max()) > 1e-3 for p in net.parameters())


@pytest.mark.parametrize("stop_at", [3, 14, 23, 39])       # before any checkpoint, mid-epoch, near an epoch end
def test_resume_equals_uninterrupted_run(small, tmp_path, stop_at):
    x, y = small
    reference = seed_net(3)
    history = reference.fit(x, y, **FIT)
    path = tmp_path / "run.npz"
    first = _interrupted_fit(x, y, path, stop_at)
    done = 0                                       # steps the checkpoint holds; the rest are redone
    if path.exists():
        state = json.loads(str(read_model_file(path)[1]["training_state"]))
        done = state["epoch"] * STEPS + state["step"]
    resumed = seed_net(3)
    second = recording(resumed, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoCheckpointWarning)     # stop_at 3: no checkpoint yet
        resumed_history = resumed.fit(x, y, checkpoint=path, resume=True, every=5, **FIT)
    for name, value in reference.get_params().items():
        assert value.tobytes() == resumed.get_params()[name].tobytes(), name
    assert timeless(resumed_history) == timeless(history)
    assert_each_sample_once_per_epoch(first[:done] + second, len(y))


def test_checkpoint_loads_as_a_model(small, tmp_path):
    x, y = small
    net = seed_net(0)
    net.fit(x, y, checkpoint=tmp_path / "c.npz", **FIT)
    loaded = gpucnn.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))


def test_resume_with_other_arguments_is_refused(small, tmp_path):
    x, y = small
    seed_net(0).fit(x, y, checkpoint=tmp_path / "c.npz", **FIT)
    with pytest.raises(ModelFileError, match="batch_size 16 .checkpoint. vs 32"):
        seed_net(0).fit(
            x, y, checkpoint=tmp_path / "c.npz", resume=True, **{**FIT, "batch_size": 32})


def test_resume_into_another_loss_is_refused(small, tmp_path):
    x, y = small
    gpucnn.Network([gpucnn.Conv2D(1, 3, 5), gpucnn.ReLU(), gpucnn.MaxPool2D(2), gpucnn.Flatten(),
                    gpucnn.Dense(432, 10)], loss="quadratic", backend="numpy").fit(
        x, y, checkpoint=tmp_path / "c.npz", **FIT)
    with pytest.raises(ModelFileError, match="another architecture"):
        seed_net(0).fit(
            x, y, checkpoint=tmp_path / "c.npz", resume=True, **FIT)


def test_files_get_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        gpucnn.seed_network(backend="numpy").save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.npz").st_mode & 0o777 == 0o644


def test_resume_from_a_plain_model_file_is_refused(small, tmp_path):
    x, y = small
    seed_net(0).save(tmp_path / "m.npz")
    with pytest.raises(ModelFileError, match="not a training checkpoint"):
        seed_net(0).fit(x, y, checkpoint=tmp_path / "m.npz", resume=True, **FIT)


def test_resume_without_a_checkpoint_starts_fresh_and_says_where_it_looked(small, tmp_path):
    """A restartable job's first run, or a typo: either way training starts from scratch, not silently."""
    x, y = small
    a = seed_net(1)
    with pytest.warns(NoCheckpointWarning, match=f"no checkpoint at {tmp_path / 'new.npz'}: training from scratch"):
        a.fit(x, y, checkpoint=tmp_path / "new.npz", resume=True, **FIT)
    assert (tmp_path / "new.npz").exists()
    b = seed_net(1)
    b.fit(x, y, **FIT)
    np.testing.assert_array_equal(a.get_params()["layers.0.W"], b.get_params()["layers.0.W"])


TRAINER = """
import sys, numpy as np, gpucnn
x, y = gpucnn.data.load_sample()
net = gpucnn.seed_network(backend="numpy", seed=0)
print("ready", flush=True)
net.fit(x, y, epochs=100, batch_size=4, lr=0.5, checkpoint=sys.argv[1], every=1, resume=True, verbose=False)
"""


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    """Kill a process that writes a checkpoint every step, several times, resuming each time; the file
    always loads, and each run got further than the one before."""
    path = tmp_path / "run.npz"
    rng = np.random.default_rng(0)
    last_progress = -1
    for attempt in range(6):
        before = path.stat().st_mtime_ns if path.exists() else None
        proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 30               # this run has written (however loaded CI is)
        while (not path.exists() or path.stat().st_mtime_ns == before) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.random() * 0.5)                 # somewhere in a stream of checkpoint writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        net = gpucnn.load(path)                        # never half-written
        assert np.isfinite(net.get_params()["layers.4.W"]).all()
        state = json.loads(str(read_model_file(path)[1]["training_state"]))
        progress = state["epoch"] * 1250 + state["step"]          # 1,250 steps per epoch
        assert progress > last_progress
        last_progress = progress


def test_cli_checkpoint_and_resume(tmp_path):
    ckpt, model = tmp_path / "c.npz", tmp_path / "m.npz"
    cmd = [sys.executable, "-m", "gpucnn", "train", "--sample", "--epochs", "1", "--batch-size", "50",
           "--checkpoint", str(ckpt), "--model", str(model), "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True)
    first = gpucnn.load(model).get_params()
    again = tmp_path / "m2.npz"
    out = subprocess.run(cmd[:-2] + [str(again), "--quiet", "--resume"], check=True, capture_output=True, text=True)
    assert "held-out accuracy" in out.stdout
    # resuming a finished run changes nothing
    for name, value in gpucnn.load(again).get_params().items():
        np.testing.assert_array_equal(value, first[name])


SLOW_WRITER = """
import sys, time, numpy as np, gpucnn
real_savez = np.savez
def slow_savez(f, **arrays):          # a checkpoint write that takes a while: SIGTERM lands inside it
    real_savez(f, **arrays)
    print("writing", flush=True)
    time.sleep(0.5)
np.savez = slow_savez
rng = np.random.default_rng(0)
x, y = rng.random((40, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 40)
net = gpucnn.seed_network(backend="numpy", seed=0)
net.fit(x, y, epochs=20, batch_size=4, lr=0.5, checkpoint=sys.argv[1], every=1, verbose=False)
"""


def test_sigterm_during_a_checkpoint_write_leaves_no_temporary_file(tmp_path):
    """SIGTERM (what a scheduler or `kill` sends) in the middle of a write: the write is finished and
    renamed into place first, so no .tmp-*.npz is left behind and the checkpoint is the newest one."""
    path = tmp_path / "run.npz"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE)
    try:
        for _ in range(3):                               # the third write is in progress
            assert proc.stdout.readline().strip() == b"writing"
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]
    state = json.loads(str(read_model_file(path)[1]["training_state"]))
    assert state["step"] == 3                            # the write SIGTERM interrupted, complete
    assert np.isfinite(gpucnn.load(path).get_params()["layers.4.W"]).all()


def _tamper(path, out, change_state=None, **arrays):
    """A copy of checkpoint path with its training state edited and arrays replaced or added."""
    _, saved = read_model_file(path)
    state = json.loads(str(saved["training_state"]))
    if change_state is not None:
        state = change_state(state)
    with open(out, "wb") as f:
        np.savez(f, **{**saved, **arrays, "training_state": np.array(
            state if isinstance(state, str) else json.dumps(state))}, architecture=np.array(
            json.dumps({"format": "gpucnn-model-1", **seed_net(0).architecture()})))
    return out


TAMPERED = [
    # (id, how the checkpoint is edited, fragments of the refusal)
    ("negative-step", dict(change_state=lambda s: {**s, "step": -3}), ["epoch 1, step -3"]),
    ("epoch-past-the-end", dict(change_state=lambda s: {**s, "epoch": 99}), ["epoch 99", "3 epochs of 13 steps"]),
    ("step-a-string", dict(change_state=lambda s: {**s, "step": "4"}), ["step '4'"]),
    ("deep-json", dict(change_state=lambda s: "[" * 100000 + "]" * 100000), ["corrupt training state"]),
    ("history-not-a-dict", dict(change_state=lambda s: {**s, "history": [1, 2]}), ["corrupt training state"]),
    ("bad-generator-state", dict(change_state=lambda s: {**s, "shuffle_rng_state": {"bit_generator": "MT"}}),
     ["corrupt training state"]),
    ("velocity-wrong-shape", {"optim.layers.4.W.velocity": np.zeros((3,), np.float32)},
     ["layers.4.W.velocity", "(3,)", "(10, 432)"]),
    ("velocity-nan", {"optim.layers.0.b.velocity": np.full(3, np.nan, np.float32)}, ["layers.0.b.velocity"]),
]


@pytest.mark.parametrize("edit, fragments", [c[1:] for c in TAMPERED], ids=[c[0] for c in TAMPERED])
def test_a_tampered_checkpoint_is_refused_before_anything_changes(small, tmp_path, edit, fragments):
    x, y = small
    good = tmp_path / "good.npz"
    _interrupted_fit(x, y, good, stop_at=20)             # last checkpoint: epoch 2, step 5
    path = _tamper(good, tmp_path / "bad.npz", **edit)
    net = seed_net(3)
    before, shuffle = net.get_params(), json.dumps(net.shuffle_rng.bit_generator.state)
    steps = recording(net, x)
    with pytest.raises(ModelFileError) as info:
        net.fit(x, y, checkpoint=path, resume=True, every=5, **FIT)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert steps == []
    for name, value in net.get_params().items():
        np.testing.assert_array_equal(value, before[name])
    assert json.dumps(net.shuffle_rng.bit_generator.state) == shuffle


def test_sigterm_during_fit_stops_like_ctrl_c_with_a_message(tmp_path):
    """Through the API too, SIGTERM lets the step finish, saves the checkpoint and raises Interrupted
    (a KeyboardInterrupt): a message naming the signal and the checkpoint, not a silent -15."""
    path = tmp_path / "run.npz"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        for _ in range(2):
            assert proc.stdout.readline().strip() == b"writing"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, (proc.returncode, err)         # an exception, not death by signal
    assert b"Interrupted: SIGTERM: stopped in epoch" in err and str(path).encode() in err
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]
    assert np.isfinite(gpucnn.load(path).get_params()["layers.4.W"]).all()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL    # (in this process: untouched)
