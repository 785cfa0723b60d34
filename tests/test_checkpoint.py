"""Checkpoints: atomic writes that survive SIGKILL, and resume that equals an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpucnn
from gpucnn.errors import ModelFileError
from gpucnn.serialization import read_model_file


@pytest.fixture
def small(digits):
    pick = np.random.default_rng(5).permutation(len(digits[1]))[:200]
    return digits[0][pick], digits[1][pick]


FIT = dict(epochs=3, batch_size=16, lr=0.5, momentum=0.9, verbose=False)


class Interrupt(Exception):
    pass


def _interrupted_fit(x, y, path, stop_at):
    """fit() that dies at its stop_at-th step, like a killed process (checkpoint every 5 steps)."""
    net = gpucnn.seed_network(backend="numpy", seed=3)
    real_step, calls = net.train_step, [0]

    def step(*args):
        calls[0] += 1
        if calls[0] == stop_at:
            raise Interrupt
        return real_step(*args)
    net.train_step = step
    with pytest.raises(Interrupt):
        net.fit(x, y, checkpoint=path, every=5, **FIT)


@pytest.mark.parametrize("stop_at", [3, 14, 23, 39])       # before any checkpoint, mid-epoch, near an epoch end
def test_resume_equals_uninterrupted_run(small, tmp_path, stop_at):
    x, y = small
    reference = gpucnn.seed_network(backend="numpy", seed=3)
    history = reference.fit(x, y, **FIT)
    path = tmp_path / "run.npz"
    _interrupted_fit(x, y, path, stop_at)
    resumed = gpucnn.seed_network(backend="numpy", seed=3)
    resumed_history = resumed.fit(x, y, checkpoint=path, resume=True, every=5, **FIT)
    for name, value in reference.get_params().items():
        assert value.tobytes() == resumed.get_params()[name].tobytes(), name
    assert resumed_history == history


def test_checkpoint_loads_as_a_model(small, tmp_path):
    x, y = small
    net = gpucnn.seed_network(backend="numpy", seed=0)
    net.fit(x, y, checkpoint=tmp_path / "c.npz", **FIT)
    loaded = gpucnn.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))


def test_resume_with_other_arguments_is_refused(small, tmp_path):
    x, y = small
    gpucnn.seed_network(backend="numpy", seed=0).fit(x, y, checkpoint=tmp_path / "c.npz", **FIT)
    with pytest.raises(ModelFileError, match="batch_size 16 .checkpoint. vs 32"):
        gpucnn.seed_network(backend="numpy", seed=0).fit(
            x, y, checkpoint=tmp_path / "c.npz", resume=True, **{**FIT, "batch_size": 32})


def test_resume_into_another_loss_is_refused(small, tmp_path):
    x, y = small
    gpucnn.seed_network(backend="numpy", loss="cross_entropy").fit(x, y, checkpoint=tmp_path / "c.npz", **FIT)
    with pytest.raises(ModelFileError, match="another architecture"):
        gpucnn.Network([gpucnn.Conv2D(1, 3, 5), gpucnn.Sigmoid(), gpucnn.MaxPool2D(2), gpucnn.Flatten(),
                        gpucnn.Dense(432, 10)], loss="quadratic", backend="numpy").fit(
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
    gpucnn.seed_network(backend="numpy").save(tmp_path / "m.npz")
    with pytest.raises(ModelFileError, match="not a training checkpoint"):
        gpucnn.seed_network(backend="numpy").fit(x, y, checkpoint=tmp_path / "m.npz", resume=True, **FIT)


def test_resume_without_a_checkpoint_starts_fresh(small, tmp_path):
    x, y = small
    a = gpucnn.seed_network(backend="numpy", seed=1)
    a.fit(x, y, checkpoint=tmp_path / "new.npz", resume=True, **FIT)
    b = gpucnn.seed_network(backend="numpy", seed=1)
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
    out = subprocess.run(cmd + ["--resume"], check=True, capture_output=True, text=True)
    assert "held-out accuracy" in out.stdout
    # resuming a finished run changes nothing
    for name, value in gpucnn.load(model).get_params().items():
        np.testing.assert_array_equal(value, first[name])
