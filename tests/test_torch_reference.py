"""Gradients against an independent autograd implementation (PyTorch, CPU, float32): rel. error < 1e-4.

PyTorch is a reference in tests only, never a dependency of gpucnn; skipped when it is not installed.
"""
import numpy as np
import pytest

import gpucnn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                 / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))


def _torch_seed_network(net, x, y, loss):
    """The same network, weights and cost in PyTorch; returns the autograd gradients."""
    W1, b1, W2, b2 = (torch.tensor(v, requires_grad=True) for v in net.get_params().values())
    xt = torch.tensor(x, requires_grad=True)
    act = torch.sigmoid if loss == "quadratic" else torch.relu
    z = F.linear(torch.flatten(F.max_pool2d(act(F.conv2d(xt, W1, b1)), 2), 1), W2, b2)
    if loss == "quadratic":
        target = F.one_hot(torch.tensor(y), 10).float()
        cost = 0.5 * ((torch.sigmoid(z) - target) ** 2).sum() / len(y)
    else:
        cost = F.cross_entropy(z, torch.tensor(y))
    cost.backward()
    return [t.grad.numpy() for t in (W1, b1, W2, b2, xt)], float(cost.detach())


@pytest.mark.parametrize("loss, activation", [("quadratic", "sigmoid"), ("cross_entropy", "relu")])
@pytest.mark.parametrize("inputs", ["random", "digits"])
def test_seed_network_gradients_match_pytorch(loss, activation, inputs, rng, digits):
    if inputs == "random":
        x, y = rng.random((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8)
    else:
        pick = np.random.default_rng(3).permutation(len(digits[1]))[:8]
        x, y = digits[0][pick], digits[1][pick]
    net = gpucnn.seed_network(backend="numpy", seed=4, loss=loss, activation=activation)
    cost = net.cost(x, y)
    dx = net.backward(y)
    ours = [net.layers[0].dW, net.layers[0].db, net.layers[4].dW, net.layers[4].db, dx]
    theirs, torch_cost = _torch_seed_network(net, x, y, loss)
    assert abs(cost - torch_cost) <= 1e-5 * abs(torch_cost)
    for name, a, b in zip(["conv dW", "conv db", "dense dW", "dense db", "dx"], ours, theirs):
        assert _rel(a, b) < 1e-4, (name, _rel(a, b))


def test_one_training_step_matches_pytorch_sgd(rng):
    x, y = rng.random((10, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 10)
    net = gpucnn.seed_network(backend="numpy", seed=0)
    start = net.get_params()
    from gpucnn.optim import SGD
    net.train_step(x, net.targets(y, 10), SGD(1.0))
    grads, _ = _torch_seed_network(gpucnn.seed_network(backend="numpy", seed=0), x, y, "quadratic")
    for (name, before), g in zip(start.items(), grads):
        assert _rel(net.get_params()[name], before - 1.0 * g) < 1e-5, name


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 1e-3), (0.0, 1e-2), (0.9, 0.0)])
def test_several_sgd_steps_with_momentum_and_weight_decay_match_torch_optim_sgd(rng, momentum, weight_decay):
    """Five steps of SGD(0.5, momentum, weight_decay) on different batches against torch.optim.SGD
    (float64 on both sides): lr applied twice, or decay added after the momentum update, goes red."""
    from gpucnn.optim import SGD
    net = gpucnn.Network([gpucnn.Dense(6, 5), gpucnn.Sigmoid(), gpucnn.Dense(5, 3), gpucnn.Sigmoid()],
                         backend="numpy", dtype=np.float64, seed=1)
    params = [torch.tensor(v, requires_grad=True) for v in net.get_params().values()]
    peer = torch.optim.SGD(params, lr=0.5, momentum=momentum, weight_decay=weight_decay)
    ours = SGD(0.5, momentum=momentum, weight_decay=weight_decay)
    for _ in range(5):
        x, y = rng.standard_normal((4, 6)), rng.integers(0, 3, 4)
        net.train_step(x, net.targets(y, 4), ours)
        W1, b1, W2, b2 = params
        a = torch.sigmoid(F.linear(torch.sigmoid(F.linear(torch.tensor(x), W1, b1)), W2, b2))
        cost = 0.5 * ((a - F.one_hot(torch.tensor(y), 3).double()) ** 2).sum() / 4
        peer.zero_grad()
        cost.backward()
        peer.step()
    for (name, value), theirs in zip(net.get_params().items(), params):
        assert _rel(value, theirs.detach().numpy()) < 1e-12, name
