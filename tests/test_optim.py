"""Optimizers: Adam against torch.optim.Adam, fit's optimizer arguments, and bit-exact resume with
Adam's state, Dropout's generator and BatchNorm's running statistics in the checkpoint."""
import numpy as np
import pytest

import gpucnn
from gpucnn import AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Network, ReLU
from gpucnn.layers import Parameter
from gpucnn.optim import SGD, Adam, get_optimizer

torch = pytest.importorskip("torch")
from tests.torch_twin import copy_params, train_side_by_side    # noqa: E402  (needs torch)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_ten_adam_steps_match_torch_on_given_gradients(weight_decay):
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((6, 5)).astype(np.float32)
    p = Parameter("W", W0.shape)
    p.value = W0.copy()
    t = torch.tensor(W0.copy(), requires_grad=True)
    ours = Adam(3e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=weight_decay)
    theirs = torch.optim.Adam([t], lr=3e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=weight_decay)
    for _ in range(10):
        g = rng.standard_normal(W0.shape).astype(np.float32)
        p.grad, t.grad = g, torch.tensor(g)
        ours.step([p])
        theirs.step()
    assert _rel(p.value - W0, t.detach().numpy() - W0) < 1e-4        # the update, not just the weights
    assert int(ours.state["W"]["t"]) == 10
    assert _rel(ours.state["W"]["v"], theirs.state[t]["exp_avg_sq"].numpy()) < 1e-5


def _bn_net(seed=1):
    return Network([Conv2D(1, 4, 5), BatchNorm2D(4), ReLU(), AvgPool2D(2), Flatten(), Dense(576, 10)],
                   loss="cross_entropy", backend="numpy", seed=seed)


def test_ten_adam_steps_of_a_batchnorm_network_match_torch(digits):
    x, y = digits[0][:80], digits[1][:80]
    net = _bn_net()
    tnet = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(576, 10))
    copy_params(tnet, net)
    start = net.get_params()
    train_side_by_side(net, tnet, Adam(1e-3, weight_decay=1e-4),
                       torch.optim.Adam(tnet.parameters(), lr=1e-3, weight_decay=1e-4), x, y, 10)
    for (name, value), t in zip(net.get_params().items(), tnet.parameters()):
        if name == "layers.0.b":     # its gradient is 0 by the math (BatchNorm follows): Adam moves it by noise
            continue
        assert _rel(value - start[name], t.detach().numpy() - start[name]) < 1e-4, name


def test_fit_takes_an_optimizer_by_name_or_object(digits):
    x, y = digits[0][:60], digits[1][:60]
    assert get_optimizer("sgd").lr == 0.5 and get_optimizer("adam").lr == 1e-3      # lr=None: defaults
    assert isinstance(get_optimizer("Adam", lr=0.01, weight_decay=0.1), Adam)
    with pytest.raises(ValueError, match="momentum is SGD's"):
        get_optimizer("adam", momentum=0.9)
    with pytest.raises(ValueError, match="'sgd', 'adam'"):
        get_optimizer("rmsprop")
    with pytest.raises(ValueError, match="carries its own lr"):
        get_optimizer(SGD(0.1), lr=0.2)
    by_name = _bn_net().fit(x, y, epochs=2, batch_size=20, optimizer="adam", verbose=False)
    by_object = _bn_net().fit(x, y, epochs=2, batch_size=20, optimizer=Adam(), verbose=False)
    assert by_name["loss"] == by_object["loss"] and by_name["lr"] == [1e-3, 1e-3]
    sgd = _bn_net().fit(x, y, epochs=1, batch_size=20, verbose=False)
    assert sgd["lr"] == [0.5]                                       # SGD keeps the old default


FIT = dict(epochs=3, batch_size=16, optimizer="adam", lr=2e-3, lr_schedule="step", verbose=False)


def _drop_net():
    return Network([Conv2D(1, 3, 5), BatchNorm2D(3), ReLU(), AvgPool2D(2), Flatten(), Dropout(0.3),
                    Dense(432, 10)], loss="cross_entropy", backend="numpy", seed=6)


class _Stop(Exception):
    pass


def test_resume_with_adam_dropout_batchnorm_is_bit_exact(digits, tmp_path):
    """Killed at the 7th step (epoch 2, step 3 of 4): resumed from the checkpoint after its step 2."""
    x, y, stop_at = digits[0][:64], digits[1][:64], 7
    reference = _drop_net()
    history = reference.fit(x, y, **FIT)
    path = tmp_path / "run.npz"
    net, calls = _drop_net(), [0]
    real_step = net.train_step

    def step(*args):
        calls[0] += 1
        if calls[0] == stop_at:
            raise _Stop
        return real_step(*args)
    net.train_step = step
    with pytest.raises(_Stop):
        net.fit(x, y, checkpoint=path, every=2, **FIT)
    resumed = _drop_net()
    resumed_history = resumed.fit(x, y, checkpoint=path, resume=True, every=2, **FIT)
    for name, value in reference.get_arrays().items():       # parameters and running statistics
        assert value.tobytes() == resumed.get_arrays()[name].tobytes(), name
    assert resumed.layers[5].rng.bit_generator.state == reference.layers[5].rng.bit_generator.state
    timeless = lambda h: {k: v for k, v in h.items() if k != "time"}
    assert timeless(resumed_history) == timeless(history)
    assert history["lr"] == pytest.approx([2e-3, 2e-4, 2e-5])             # "step": a third of the epochs, gamma 0.1


def test_resume_refuses_another_optimizer_or_schedule(digits, tmp_path):
    x, y = digits[0][:48], digits[1][:48]
    path = tmp_path / "run.npz"
    _drop_net().fit(x, y, checkpoint=path, **FIT)
    with pytest.raises(gpucnn.ModelFileError, match="optimizer 'adam' .checkpoint. vs 'sgd'"):
        _drop_net().fit(x, y, checkpoint=path, resume=True, **{**FIT, "optimizer": "sgd"})
    with pytest.raises(gpucnn.ModelFileError, match="lr_schedule"):
        _drop_net().fit(x, y, checkpoint=path, resume=True, **{**FIT, "lr_schedule": "cosine"})
