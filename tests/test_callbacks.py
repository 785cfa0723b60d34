"""Learning-rate schedules (against PyTorch's), callbacks, EarlyStopping, and the history fit returns."""
import math

import numpy as np
import pytest

import gpucnn
from gpucnn.callbacks import Callback, EarlyStopping
from gpucnn.schedules import CosineLR, StepLR, get_schedule

torch = pytest.importorskip("torch")


def _torch_lrs(make, epochs, lr=0.1):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler, lrs = make(opt), []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("ours, theirs", [
    (StepLR(3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    (StepLR(gamma=0.1), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.1)),      # a third of 10
    (CosineLR(), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10)),
    (CosineLR(min_lr=0.01, epochs=6), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 6, 0.01)),
], ids=["step", "step-default", "cosine", "cosine-min-period"])
def test_schedules_match_pytorch(ours, theirs):
    got = [ours.lr_at(e, 0.1, 10) for e in range(6 if isinstance(ours, CosineLR) and ours.epochs else 10)]
    np.testing.assert_allclose(got, _torch_lrs(theirs, len(got)), rtol=1e-12)


def test_schedule_specs():
    assert isinstance(get_schedule("step"), StepLR) and isinstance(get_schedule("Cosine"), CosineLR)
    assert get_schedule(None) is None
    assert get_schedule(lambda e: 0.1 * 0.9 ** e).lr_at(2, 1.0, 5) == pytest.approx(0.081)
    with pytest.raises(ValueError, match="'step', 'cosine'"):
        get_schedule("linear")
    with pytest.raises(TypeError):
        get_schedule(3)
    with pytest.raises(ValueError, match="step_size"):
        StepLR(0)


@pytest.fixture
def small(digits):
    pick = np.random.default_rng(2).permutation(len(digits[1]))[:80]
    return digits[0][pick[:60]], digits[1][pick[:60]], digits[0][pick[60:]], digits[1][pick[60:]]


class Recorder(Callback):
    """A user's hook: keeps each epoch's logs and parameters."""

    def __init__(self):
        self.logs, self.arrays, self.began, self.ended = [], [], 0, 0

    def on_train_begin(self, net):
        self.began += 1

    def on_epoch_end(self, epoch, logs, net):
        self.logs.append((epoch, dict(logs)))
        self.arrays.append(net.get_arrays())

    def on_train_end(self, net):
        self.ended += 1


def test_history_callback_hook_and_callable_schedule(small):
    x, y, xv, yv = small
    rec = Recorder()
    net = gpucnn.seed_network(backend="numpy", seed=1)
    history = net.fit(x, y, epochs=3, batch_size=20, lr=1.0, lr_schedule=lambda e: 1.0 / (e + 1),
                      validation=(xv, yv), callbacks=[rec], verbose=False)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "time", "lr"}
    assert all(len(v) == 3 for v in history.values())
    assert history["lr"] == [1.0, 0.5, 1 / 3] and all(t > 0 for t in history["time"])
    assert [e for e, _ in rec.logs] == [0, 1, 2] and rec.began == rec.ended == 1
    assert rec.logs[1][1] == {k: v[1] for k, v in history.items()}
    with pytest.raises(ValueError, match="learning rate -1"):
        gpucnn.seed_network(backend="numpy").fit(x, y, lr_schedule=lambda e: -1, verbose=False)
    with pytest.raises(TypeError, match="Callback objects"):
        gpucnn.seed_network(backend="numpy").fit(x, y, callbacks=[print], verbose=False)


class _StopAtOne(Callback):
    def on_epoch_end(self, epoch, logs, net):
        return epoch == 1


def test_a_callback_returning_true_stops_training(small):
    x, y, _, _ = small
    history = gpucnn.seed_network(backend="numpy").fit(x, y, epochs=5, batch_size=20, callbacks=[_StopAtOne()],
                                                       verbose=False)
    assert len(history["loss"]) == 2


def test_early_stopping_stops_and_restores_the_best_epoch(small):
    x, y, xv, yv = small
    rec = Recorder()
    stop = EarlyStopping(monitor="val_loss", patience=2, min_delta=10.0)   # nothing after epoch 0 counts
    net = gpucnn.seed_network(backend="numpy", seed=4)
    history = net.fit(x, y, epochs=6, batch_size=20, lr=1.0, validation=(xv, yv), callbacks=[rec, stop],
                      verbose=False)
    assert len(history["loss"]) == 3 and stop.stopped_epoch == 2 and stop.best_epoch == 0
    assert stop.best == history["val_loss"][0]
    for name, value in net.get_arrays().items():                 # epoch 0's parameters are back
        assert value.tobytes() == rec.arrays[0][name].tobytes(), name
    assert not np.array_equal(rec.arrays[2]["layers.0.W"], rec.arrays[0]["layers.0.W"])


def test_early_stopping_rules():
    class Net:
        def get_arrays(self):
            return {"w": np.zeros(1)}
    up = EarlyStopping(monitor="val_accuracy", patience=1, restore_best=False)
    up.on_train_begin(Net())
    assert [up.on_epoch_end(e, {"val_accuracy": v}, Net()) for e, v in enumerate([0.5, 0.6, 0.6])] \
        == [False, False, True]
    assert up.best == 0.6 and up.best_epoch == 1 and up.stopped_epoch == 2
    patient = EarlyStopping(monitor="loss", patience=0)
    patient.on_train_begin(Net())
    assert patient.on_epoch_end(0, {"loss": 1.0}, Net()) is False
    assert patient.on_epoch_end(1, {"loss": 1.0}, Net()) is True       # patience 0: the first non-gain
    with pytest.raises(ValueError, match="pass validation"):
        EarlyStopping().on_epoch_end(0, {"loss": 1.0}, Net())
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping(monitor="acc")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match=r"min_delta must be a finite real number >= 0, got -1"):
        EarlyStopping(min_delta=-1)


@pytest.mark.parametrize("patience", [2, 1])
def test_early_stopping_counts_resume_from_the_history(patience, small, tmp_path):
    """A resumed run's EarlyStopping stops at the same epoch as an uninterrupted one: after one more
    epoch (patience 2), or at once when the checkpoint's history already says stop (patience 1)."""
    x, y, xv, yv = small
    fit = dict(epochs=6, batch_size=20, lr=1.0, validation=(xv, yv), verbose=False)
    whole = EarlyStopping(patience=patience, min_delta=10.0)
    history = gpucnn.seed_network(backend="numpy").fit(x, y, callbacks=[whole], **fit)
    path = tmp_path / "run.npz"
    gpucnn.seed_network(backend="numpy").fit(x, y, checkpoint=path, callbacks=[_StopAtOne()], **fit)
    resumed = EarlyStopping(patience=patience, min_delta=10.0)
    again = gpucnn.seed_network(backend="numpy").fit(x, y, checkpoint=path, resume=True, callbacks=[resumed], **fit)
    assert resumed.stopped_epoch == whole.stopped_epoch == patience and len(again["loss"]) == patience + 1
    assert again["val_loss"] == history["val_loss"] and math.isclose(resumed.best, whole.best)
