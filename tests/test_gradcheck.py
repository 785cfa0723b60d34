"""float64 centred finite differences check the hand-written backward pass: every layer, whole networks,
random inputs and real digits (whose blank background makes pooling ties)."""
import numpy as np
import pytest

import gpucnn
from gpucnn import Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, Sigmoid, Tanh
from tests.conftest import TOL


def _check(net, x, y, max_per_param=None, inputs=True, float32_tol=1e-3):
    report = gpucnn.gradcheck(net, x, y, max_per_param=max_per_param, inputs=inputs)
    for name, r in report.items():
        assert r["rel_error"] < TOL["gradcheck"], (name, r)
        # the network's own float32 backward against the float64 numbers
        assert r["rel_error_backend"] < float32_tol, (name, r)
    return report


# Each layer alone (plus what it needs to end in a vector), input gradient included.
SINGLE_LAYER_NETS = {
    "conv": lambda: ([Conv2D(2, 3, (3, 2), stride=2, padding=1), Flatten()], (2, 7, 6), "quadratic"),
    "conv_same": lambda: ([Conv2D(1, 2, 3, padding="same"), Flatten()], (1, 5, 5), "quadratic"),
    "maxpool": lambda: ([MaxPool2D(2), Flatten()], (2, 6, 6), "quadratic"),
    "maxpool_overlap": lambda: ([MaxPool2D(3, stride=2), Flatten()], (1, 7, 7), "quadratic"),
    "dense": lambda: ([Dense(6, 4)], (6,), "quadratic"),
    # square W: a backward using W.T for W (or dW.T) passes every non-square test
    "dense_square": lambda: ([Dense(5, 5)], (5,), "quadratic"),
    "dense_square_stack": lambda: ([Dense(6, 6), Tanh(), Dense(6, 6), Sigmoid()], (6,), "quadratic"),
    "sigmoid": lambda: ([Dense(5, 4), Sigmoid()], (5,), "quadratic"),
    "tanh": lambda: ([Dense(5, 4), Tanh()], (5,), "quadratic"),
    "relu": lambda: ([Dense(5, 4), ReLU()], (5,), "quadratic"),
    "softmax_ce": lambda: ([Flatten(), Dense(12, 4)], (3, 2, 2), "cross_entropy"),
}


@pytest.mark.parametrize("kind", SINGLE_LAYER_NETS)
def test_every_layer(kind, rng):
    layers, input_shape, loss = SINGLE_LAYER_NETS[kind]()
    net = Network(layers, loss=loss, backend="numpy", input_shape=input_shape, seed=3)
    classes = net.classes
    x = rng.standard_normal((3,) + input_shape).astype(np.float32)
    y = rng.random((3, classes)).astype(np.float32) if loss == "quadratic" else np.array([0, 3, 1])
    _check(net, x, y)


def test_seed_network_random_inputs(rng):
    net = gpucnn.seed_network(backend="numpy", seed=0)
    x = rng.random((3, 1, 28, 28)).astype(np.float32)
    _check(net, x, np.array([3, 1, 4]), max_per_param=400)


def test_seed_network_real_digits_with_ties(digits):
    x, y = digits[0][:4], digits[1][:4]
    net = gpucnn.seed_network(backend="numpy", seed=1)
    # the digits really do produce ties in the pooling windows
    trace = net.trace(x, y)
    pooled_input = trace[2]["a_prev"].reshape(4, 3, 12, 2, 12, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    ties = (pooled_input == pooled_input.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert ties.mean() > 0.2
    # Exact ties (blank background) survive in float32; a near-tie closer than float32 resolution
    # (two z 4e-8 apart here) may be won by the other input in float32, hence the looser float32 bound.
    # Not dC/dx here: moving one background pixel breaks an exact tie, a true kink in x.
    _check(net, x, y, max_per_param=400, float32_tol=5e-3, inputs=False)


def test_two_conv_network_stride_padding_relu_softmax(rng, digits):
    layers = [Conv2D(1, 4, 3, stride=2, padding=1), ReLU(),                # 28 -> 14
              Conv2D(4, 5, (3, 2), padding=(1, 0)), Tanh(),                # 14x14 -> 14x13
              MaxPool2D(2), Flatten(), Dense(5 * 7 * 6, 10)]
    net = Network(layers, loss="cross_entropy", backend="numpy", seed=2)
    _check(net, rng.random((2, 1, 28, 28)).astype(np.float32), np.array([2, 7]), max_per_param=150)
    _check(net, digits[0][10:12], digits[1][10:12], max_per_param=150, inputs=False, float32_tol=5e-3)


def test_gradcheck_catches_a_wrong_gradient(rng):
    """The check must be able to fail: a bias gradient sent to every tied pool input is wrong."""
    net = Network([Conv2D(1, 1, 1), MaxPool2D(2), Flatten()], input_shape=(1, 2, 2), backend="numpy")
    net.layers[0].W = np.ones((1, 1, 1, 1), np.float32)
    pool = net.layers[1]
    original = pool.backward
    pool.backward = lambda da: np.broadcast_to(da, (da.shape[0], 1, 2, 2)).copy()   # every input gets it
    x = np.zeros((1, 1, 2, 2), np.float32)                                           # four-way tie
    report = gpucnn.gradcheck(net, x, np.array([[1.0]], np.float32))
    assert report["layers.0.b"]["rel_error_backend"] > 1.0     # 4x the true gradient
    pool.backward = original
    report = gpucnn.gradcheck(net, x, np.array([[1.0]], np.float32))
    assert report["layers.0.b"]["rel_error_backend"] < 1e-6


def test_gradcheck_counts_the_kinks_it_cannot_step_around(digits):
    """Moving a background pixel breaks an exact pooling tie: no derivative there, and the report says so."""
    net = gpucnn.seed_network(backend="numpy", seed=1)
    report = gpucnn.gradcheck(net, digits[0][:1], digits[1][:1], inputs=True, max_per_param=200, seed=1)
    assert report["x"]["kinks"] > 0
    assert all(report[name]["kinks"] == 0 for name in report if name != "x")
