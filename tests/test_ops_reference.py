"""The vectorised NumPy reference against the naive loops of tests/oracle.py, op by op."""
import numpy as np
import pytest

from gpucnn.ops import OP_NAMES, reference
from tests import oracle

# (n, c, h, w, f, kh, kw, stride, padding)
CONV_CASES = [
    (1, 1, 6, 6, 1, 3, 3, 1, (0, 0)),
    (2, 1, 9, 8, 3, 5, 5, 1, (0, 0)),
    (2, 3, 7, 5, 2, 3, 2, 2, (1, 0)),
    (1, 2, 8, 9, 4, 2, 3, 3, (2, 1)),
    (3, 2, 5, 5, 2, 1, 1, 1, (0, 0)),
]
POOL_CASES = [(2, 3, 8, 8, 2, 2), (1, 2, 7, 9, 2, 2), (2, 1, 9, 7, 3, 2), (1, 1, 6, 6, 3, 3), (2, 2, 5, 6, 2, 1)]


def _conv_data(rng, n, c, h, w, f, kh, kw, stride, padding):
    x = rng.standard_normal((n, c, h, w))
    W = rng.standard_normal((f, c, kh, kw))
    b = rng.standard_normal(f)
    oh, ow = (h + 2 * padding[0] - kh) // stride + 1, (w + 2 * padding[1] - kw) // stride + 1
    delta = rng.standard_normal((n, f, oh, ow))
    return x, W, b, delta


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_ops_match_loops(case, rng):
    n, c, h, w, f, kh, kw, stride, padding = case
    x, W, b, delta = _conv_data(rng, *case)
    np.testing.assert_allclose(reference.conv2d_forward(x, W, b, stride, padding),
                               oracle.conv2d_forward(x, W, b, stride, padding), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference.conv2d_backward_weight(x, delta, (kh, kw), stride, padding),
                               oracle.conv2d_backward_weight(x, delta, (kh, kw), stride, padding),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference.conv2d_backward_bias(delta), oracle.conv2d_backward_bias(delta),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference.conv2d_backward_input(delta, W, (h, w), stride, padding),
                               oracle.conv2d_backward_input(delta, W, (h, w), stride, padding),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_pool_ops_match_loops(case, ties, rng):
    n, c, h, w, size, stride = case
    x = rng.standard_normal((n, c, h, w))
    if ties:                          # digit-like: most values equal, as on a blank background
        x = np.where(rng.random(x.shape) < 0.7, 0.5, np.round(x, 0))
    a, argmax = reference.maxpool2d_forward(x, size, stride)
    a_ref, argmax_ref = oracle.maxpool2d_forward(x, size, stride)
    np.testing.assert_array_equal(argmax, argmax_ref)
    np.testing.assert_array_equal(a, a_ref)
    assert argmax.dtype == np.int32
    delta = rng.standard_normal(a.shape)
    np.testing.assert_allclose(reference.maxpool2d_backward(delta, argmax, (h, w), size, stride),
                               oracle.maxpool2d_backward(delta, argmax_ref, (h, w), size, stride),
                               rtol=1e-12, atol=1e-12)


def test_first_maximum_wins_on_ties():
    x = np.full((1, 1, 2, 2), 0.5)
    a, argmax = reference.maxpool2d_forward(x, 2, 2)
    assert argmax[0, 0, 0, 0] == 0
    x[0, 0, 1, 0] = x[0, 0, 1, 1] = 0.9             # two maxima: the first in row-major order wins
    _, argmax = reference.maxpool2d_forward(x, 2, 2)
    assert argmax[0, 0, 0, 0] == 2
    da = reference.maxpool2d_backward(np.ones((1, 1, 1, 1)), argmax, (2, 2), 2, 2)
    np.testing.assert_array_equal(da[0, 0], [[0, 0], [1, 0]])   # exactly one input receives it


def test_reference_exports_the_op_set():
    for name in OP_NAMES:
        assert callable(getattr(reference, name))


def test_float32_stays_float32(rng):
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    W = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    z = reference.conv2d_forward(x, W, np.zeros(3, np.float32), 1, (0, 0))
    assert z.dtype == np.float32 and z.flags.c_contiguous
