"""Holding data out: a seeded shuffle-and-split, stratified by label unless told otherwise.

Stratified matters here: the offline sample is sorted by label, so a slice (``x[4000:]``) holds out only
8s and 9s, and even a plain shuffle gives classes a few percent more or less than their share.
"""
import numpy as np

from ..errors import DataError


def _class_quotas(counts, n_test):
    """Test items per class: proportional to `counts`, rounded by largest remainder to sum to n_test.

    Integer arithmetic (share = counts * n_test / n as quotient and remainder), so no share is floored
    one short by rounding; ties in the remainder go to the lower class index.
    """
    n = counts.sum()
    quotas, remainders = np.divmod(counts * n_test, n)
    order = np.argsort(-remainders, kind="stable")
    quotas[order[:n_test - quotas.sum()]] += 1
    return quotas


def train_test_split(x, y, test_fraction=0.2, seed=0, *, stratify=True):
    """Shuffle with `seed` and split: returns (x_train, y_train, x_test, y_test).

    The test part has round(n * test_fraction) items (at least one, and one left for training); the
    same seed always gives the same split. stratify=True (the default) gives every class of `y` (1-D
    labels) its share of the test part, rounded so the total is exact: each class's test count is
    within one of n_class * test_fraction. stratify=False shuffles without looking at the labels.
    Both parts come out shuffled (not grouped by class).
    """
    n = len(x)
    if len(y) != n:
        raise DataError(f"{n} inputs but {len(y)} labels")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise DataError(f"cannot split {n} item(s)")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    rng = np.random.default_rng(seed)
    if not stratify:
        order = rng.permutation(n)
        test, train = order[:n_test], order[n_test:]
        return x[train], y[train], x[test], y[test]
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise DataError(f"stratify needs 1-D labels, got shape {labels.shape} (pass stratify=False)")
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    quotas = _class_quotas(np.array([len(m) for m in members]), n_test)
    test = np.concatenate([m[:q] for m, q in zip(members, quotas)])
    train = np.concatenate([m[q:] for m, q in zip(members, quotas)])
    test, train = rng.permutation(test), rng.permutation(train)
    return x[train], y[train], x[test], y[test]
