"""A newcomer's first hour with the ``gpucnn`` command and the training display (issue 14).

Help with defaults, --version, a usage screen on bare ``gpucnn``; ``train --arch``; no silent overwrite
of an earlier model; Ctrl-C / SIGTERM saves a resumable checkpoint and says how to resume; ``predict``
on folders, flagging inverted and off-centre digits; ``download`` against a local HTTP server; ``bench``
accepting its own flags; the progress bar in a 40-column terminal and without a terminal; ``fit``
saying which backend ``auto`` chose and why. Error cases of the CLI are in tests/test_errors.py.
"""
import gzip
import hashlib
import io
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import cli, data, models
from gpucnn.training import progress as progress_module
from gpucnn.training.loop import Interrupted, stop_on_signals

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures

def idx_bytes(a):
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def mnist_arrays(digits, n_train, n_test):
    """Real digits from the shipped sample as IDX-ready uint8 arrays, classes interleaved."""
    x, y = digits
    order = np.argsort(np.arange(len(y)) % 500, kind="stable")     # 0,1,...,9,0,1,... by label
    x8 = np.round(x[order, 0] * 255).astype(np.uint8)
    return {"x_train": x8[:n_train], "y_train": y[order][:n_train].astype(np.uint8),
            "x_test": x8[n_train:n_train + n_test], "y_test": y[order][n_train:n_train + n_test].astype(np.uint8)}


def write_mnist(directory, raw):
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in data.MNIST_FILES.items():
        (directory / stem).write_bytes(idx_bytes(raw[key]))
    return directory


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory, digits):
    """300 training and 100 test digits as an MNIST folder."""
    return write_mnist(tmp_path_factory.mktemp("mnist"), mnist_arrays(digits, 300, 100))


def run_cli(*args, cwd, timeout=120):
    env = {**os.environ, "GPUCNN_DATA": str(cwd / "no-cache"), "GPUCNN_BACKEND": "numpy"}
    env.pop("GPUCNN_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "gpucnn", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- help, version, usage

def test_help_shows_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for option, default in [("--epochs", "20"), ("--batch-size", "10"), ("--arch", "seed"),
                            ("--model", "gpucnn-model.npz"), ("--momentum", "0.0")]:
        options = out[out.index("options:"):]
        block = options[options.index(option):]
        assert f"(default: {default})" in " ".join(block.split())[:400], (option, out)
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "seed 1" in " ".join(out.split())          # the learning rate of each architecture


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpucnn {gpucnn.__version__}"


def test_bare_gpucnn_prints_a_usage_screen(capsys):
    assert cli.main([]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    for command in ("gpucnn train", "gpucnn predict", "gpucnn download", "gpucnn info", "--help"):
        assert command in captured.out
    assert "the following arguments are required" not in captured.err
    assert captured.err.count("\n") == 1


def test_unknown_option_is_one_line(capsys):
    assert cli.main(["info", "--bogus"]) == cli.EXIT_USAGE
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# ---------------------------------------------------------------- train

@pytest.mark.parametrize("arch, layers, params", [("seed", 6, 4_408), ("lenet5", 12, 61_706),
                                                  ("wide", 8, 62_346)])
def test_architectures(arch, layers, params):
    net = models.build(arch, backend="numpy")
    assert len(net.layers) == layers and sum(p.value.size for p in net.parameters()) == params
    assert net.shapes[-1] == (10,)


def test_seed_network_is_still_exported():
    assert gpucnn.seed_network is models.seed_network


def test_train_wide_then_refuse_to_overwrite(small_mnist, tmp_path):
    result = run_cli("train", "--arch", "wide", "--data", small_mnist, "--epochs", "1", "--model", "m.npz",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = gpucnn.load(tmp_path / "m.npz", backend="numpy")
    assert [type(layer).__name__ for layer in saved.layers][:2] == ["Conv2D", "ReLU"] and len(saved.layers) == 8
    assert "network: wide, 62,346 parameters, loss cross_entropy, sgd lr 0.05" in result.stdout
    assert re.search(r"epoch 1/1: .*\(\d+\.\d+ s, [\d,]+ img/s\)", result.stdout), result.stdout
    first = (tmp_path / "m.npz").read_bytes()

    again = run_cli("train", "--data", small_mnist, "--epochs", "1", "--model", "m.npz", cwd=tmp_path)
    assert again.returncode == 1 and again.stdout == ""          # refused before loading any data
    assert "m.npz exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "m.npz").read_bytes() == first

    forced = run_cli("train", "--data", small_mnist, "--epochs", "1", "--model", "m.npz", "--force",
                     "--quiet", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert len(gpucnn.load(tmp_path / "m.npz", backend="numpy").layers) == 6     # now the seed net


def test_train_optimizer_and_schedule_reach_fit(small_mnist, tmp_path, monkeypatch, capsys):
    calls = []
    real_fit = gpucnn.Network.fit

    def spy(net, *args, **kwargs):
        calls.append((kwargs, real_fit(net, *args, **kwargs)))
        return calls[-1][1]
    monkeypatch.setattr(gpucnn.Network, "fit", spy)
    monkeypatch.setenv("GPUCNN_BACKEND", "numpy")
    assert cli.main(["train", "--data", str(small_mnist), "--optimizer", "adam", "--lr-schedule", "cosine",
                     "--epochs", "3", "--model", str(tmp_path / "m.npz"), "--quiet"]) == 0, capsys.readouterr().err
    kwargs, history = calls[0]
    assert (kwargs["optimizer"], kwargs["lr"], kwargs["lr_schedule"]) == ("adam", 1e-3, "cosine")
    assert history["lr"][0] == 1e-3 and history["lr"][0] > history["lr"][1] > history["lr"][2]
    assert cli.main(["train", "--optimizer", "adam", "--momentum", "0.9"]) == cli.EXIT_ERROR
    assert "momentum" in capsys.readouterr().err


def _stepping_signal(net, signum, at_step):
    """Wrap net.train_step so that the process signals itself during step ``at_step`` (1-based)."""
    calls = [0]
    step = net.train_step

    def train_step(*args):
        calls[0] += 1
        if calls[0] == at_step:
            os.kill(os.getpid(), signum)
        return step(*args)
    net.train_step = train_step


def test_signal_stops_after_the_step_and_the_checkpoint_resumes_exactly(digits, tmp_path):
    x, y = digits[0][::25], digits[1][::25]                     # 200 digits, every class
    kwargs = dict(epochs=2, batch_size=10, lr=1.0, momentum=0.9, verbose=False)
    reference = gpucnn.seed_network(backend="numpy", seed=3)
    reference.fit(x, y, **kwargs)

    net = gpucnn.seed_network(backend="numpy", seed=3)
    _stepping_signal(net, signal.SIGINT, at_step=27)            # epoch 2, step 7
    path = tmp_path / "stop.npz"
    with pytest.raises(Interrupted) as stop, stop_on_signals(str(path)):
        net.fit(x, y, **kwargs)
    assert (stop.value.signal_name, stop.value.epoch, stop.value.step, stop.value.steps) == ("SIGINT", 2, 7, 20)
    assert stop.value.checkpoint == str(path) and path.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # handlers restored

    resumed = gpucnn.seed_network(backend="numpy", seed=3)
    resumed.fit(x, y, checkpoint=str(path), resume=True, **kwargs)
    for name, value in reference.get_params().items():
        np.testing.assert_array_equal(resumed.get_params()[name], value, err_msg=name)


@pytest.mark.slow
def test_sigterm_during_train_saves_and_prints_how_to_resume(small_mnist, tmp_path):
    env = {**os.environ, "GPUCNN_DATA": str(tmp_path / "no-cache"), "GPUCNN_BACKEND": "numpy"}
    args = ["train", "--data", str(small_mnist), "--epochs", "200", "--batch-size", "1", "--model", "m.npz"]
    proc = subprocess.Popen([sys.executable, "-m", "gpucnn", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:                               # training runs once an epoch line appears
            if line.startswith("epoch 1/200"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "SIGTERM in epoch" in err and "saved that step's state to m.checkpoint.npz" in err, err
    assert not (tmp_path / "m.npz").exists() and (tmp_path / "m.checkpoint.npz").exists()
    command = err.split("resume with: ")[1].strip()
    assert command.endswith("--checkpoint m.checkpoint.npz --resume")
    stopped_at = int(re.search(r"in epoch (\d+) of 200", err).group(1))
    # The printed command itself continues the run (from the epoch it stopped in); stop it again.
    resumed = subprocess.Popen([sys.executable, "-m", "gpucnn", *command.split()[1:]], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in resumed.stdout:
            if line.startswith("epoch "):
                assert int(line.split()[1].split("/")[0]) >= stopped_at   # continues, not from epoch 1
                break
        resumed.send_signal(signal.SIGTERM)
        _, err2 = resumed.communicate(timeout=60)
    finally:
        resumed.kill()
    assert resumed.returncode == 143 and "resume with:" in err2, err2


def test_resume_command_replaces_checkpoint_and_resume():
    argv = ["train", "--epochs", "3", "--checkpoint", "a.npz", "--resume", "--model", "my model.npz"]
    assert cli.resume_command(argv, "b.npz") == \
        "gpucnn train --epochs 3 --model 'my model.npz' --checkpoint b.npz --resume"


# ---------------------------------------------------------------- predict

def test_image_notes_leave_real_digits_alone(digits):
    x = digits[0]
    flagged = [i for i in range(0, len(x), 5) if cli.image_notes(x[i])]
    assert len(flagged) <= 10, f"{len(flagged)} of 1000 real digits flagged"     # 1% at most


def test_image_notes_flag_inverted_off_centre_and_blank(digits):
    digit = digits[0][0, 0]
    assert "inverted" in cli.image_notes(1.0 - digit)[0]
    assert "off-centre" in cli.image_notes(np.roll(digit, (8, 8), axis=(0, 1)))[0]
    assert "blank" in cli.image_notes(np.zeros((28, 28)))[0]


def test_predict_a_folder_and_files(digits, tmp_path, capsys):
    x, _ = digits
    net = gpucnn.seed_network(backend="numpy")
    net.save(tmp_path / "model.npz")
    folder = tmp_path / "digits"
    folder.mkdir()
    np.save(folder / "a_plain.npy", x[0, 0])
    np.save(folder / "b_inverted.npy", 1.0 - x[600, 0])
    np.save(folder / "c_shifted.npy", np.roll(x[1200, 0], (9, -9), axis=(0, 1)))
    (folder / "notes.txt").write_text("not an image")
    np.save(tmp_path / "d_extra.npy", x[1800, 0])
    assert cli.main(["predict", str(tmp_path / "model.npz"), str(folder), str(tmp_path / "d_extra.npy"),
                     "--backend", "numpy"]) == 0
    out = capsys.readouterr().out.splitlines()
    predictions = [line for line in out if not line.startswith("   note:")]
    assert [line.split()[1].rsplit("/", 1)[-1] for line in predictions] == \
        ["a_plain.npy", "b_inverted.npy", "c_shifted.npy", "d_extra.npy"]
    expected = net.predict(np.stack([np.load(p)[None] for p in
                                     sorted(folder.glob("*.npy")) + [tmp_path / "d_extra.npy"]]))
    assert [int(line.split()[0]) for line in predictions] == list(expected)
    notes = [line for line in out if line.startswith("   note:")]
    assert len(notes) == 2 and "b_inverted.npy looks inverted" in notes[0] and "c_shifted.npy off-centre" in notes[1]


def test_predict_an_empty_folder_is_one_line(tmp_path, capsys):
    gpucnn.seed_network(backend="numpy").save(tmp_path / "model.npz")
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(tmp_path / "model.npz"), str(tmp_path / "empty")]) == cli.EXIT_ERROR
    assert "no .png or .npy images" in capsys.readouterr().err


# ---------------------------------------------------------------- download

@pytest.fixture
def served_mnist(server, digits, monkeypatch):
    """Real digits served gzipped under /m/; the md5 table and the public mirrors swapped for the test's."""
    raw = mnist_arrays(digits, 40, 20)
    for key, stem in data.MNIST_FILES.items():
        blob = gzip.compress(idx_bytes(raw[key]))
        server.files[f"/m/{stem}.gz"] = blob
        monkeypatch.setitem(data.MNIST_MD5, stem + ".gz", hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(data, "MNIST_MIRRORS", ())           # nothing leaves the machine
    return server


def test_download_into_a_directory(served_mnist, tmp_path, capsys):
    target = tmp_path / "mnist"
    assert cli.main(["download", "--dir", str(target), "--mirror", served_mnist.url + "/m/", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "40 training and 20 test digits" in out and f"--data {target}" in out
    assert data.load_mnist(target)["x_train"].shape == (40, 1, 28, 28)


def test_download_default_is_the_cache(served_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path / "cache"))
    assert cli.main(["download", "--mirror", served_mnist.url + "/m"]) == 0
    assert "gpucnn train now uses it" in capsys.readouterr().out
    assert data.find_mnist() == tmp_path / "cache"


def test_download_bad_checksum_is_one_line(served_mnist, tmp_path, capsys):
    for path, blob in list(served_mnist.files.items()):
        served_mnist.files[path] = blob[:-1] + bytes([blob[-1] ^ 1])
    assert cli.main(["download", "--dir", str(tmp_path / "m"), "--mirror", served_mnist.url + "/m/"]) == \
        cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err
    assert not any((tmp_path / "m").glob("*.gz"))


# ---------------------------------------------------------------- bench

def test_bench_help_reaches_the_harness(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--rounds" in out


@pytest.mark.slow
def test_bench_quick_runs_one_configuration(capsys):
    assert cli.main(["bench", "--quick", "--no-torch", "--no-reference", "--only", "infer seed b256"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"infer seed b256\s+gpucnn [\d.]+k?/s", out), out


def test_bench_rejects_a_bad_flag_of_the_harness(capsys):
    assert cli.main(["bench", "--rounds", "many"]) == cli.EXIT_USAGE
    assert "--rounds" in capsys.readouterr().err


# ---------------------------------------------------------------- progress and epoch lines

class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def _draw(stream, total=5000, steps=20, verbose=True):
    bar = progress_module.Progress(3, 20, total, verbose, stream=stream)
    for i in range(1, steps + 1):
        bar.update(total * i // steps, 0.1234)
        time.sleep(0.006)
    bar.close()
    return bar


@pytest.mark.parametrize("columns", [40, 60, 120])
def test_progress_fits_the_terminal(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(progress_module, "notebook_tqdm", lambda: None)
    stream = FakeTerminal()
    _draw(stream)
    frames = [f for f in stream.getvalue().split("\r") if f.strip()]
    assert len(frames) >= 2 and "\n" not in stream.getvalue()
    assert all(len(f) <= columns - 1 for f in frames), max(frames, key=len)
    last = frames[-1]
    assert "loss 0.123" in last and "img/s" in last and re.search(r"<\d\d:\d\d", last), last
    assert ("epoch 3/20" if columns >= 71 else "3/20") in last
    if columns >= 51:
        assert re.search(r"\d\d:\d\d<\d\d:\d\d", last), last           # elapsed too


def test_progress_on_a_terminal_that_reports_no_size(monkeypatch):
    """Some ptys (script(1), CI runners) report 0x0: tqdm would hide the bar; we assume 80x24."""
    monkeypatch.setattr(progress_module.shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((0, 0)))
    monkeypatch.setattr(progress_module, "notebook_tqdm", lambda: None)
    stream = FakeTerminal()
    _draw(stream)
    frames = [f for f in stream.getvalue().split("\r") if f.strip()]
    assert len(frames) >= 2 and all(len(f) <= 79 for f in frames) and "loss 0.1234" in frames[-1]


def test_no_bar_without_a_terminal(monkeypatch):
    monkeypatch.setattr(progress_module, "notebook_tqdm", lambda: None)
    stream = io.StringIO()
    assert not _draw(stream).enabled and stream.getvalue() == ""


def test_fit_output_without_a_terminal(digits, capsys):
    """Not a TTY (as under pytest): no bar on stderr; the epoch lines carry time and throughput, and
    the first line says which backend auto chose and why."""
    x, y = digits[0][::50], digits[1][::50]
    gpucnn.seed_network(backend="auto").fit(x, y, epochs=2, batch_size=10, lr=1.0)
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    reason = gpucnn.backend_info()["cupy_reason"] if gpucnn.backend_info()["auto"] == "numpy" else "CuPy sees"
    assert lines[0].startswith(f"backend {gpucnn.backend_info()['auto']} (auto: ") and reason in lines[0]
    assert all(re.fullmatch(r"epoch \d/2: loss .* \(\d+\.\d+ s, [\d,]+ img/s\)", line) for line in lines[1:])
    gpucnn.seed_network(backend="numpy").fit(x, y, epochs=1, batch_size=10, lr=1.0)
    assert capsys.readouterr().out.splitlines()[0].startswith("backend numpy; ")    # asked for, no reason
