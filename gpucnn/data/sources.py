"""What ``gpucnn train`` learns from: full MNIST when it is found, else the shipped 5,000-digit sample."""
from pathlib import Path

from .mnist import find_mnist, load_mnist, source_name
from .sample import load_sample
from .split import train_test_split


def load_training_data(directory=None, prefer_full=True):
    """(x_train, y_train, x_held, y_held, description): what ``gpucnn train`` learns from.

    - ``directory`` given: full MNIST from there (its official test set held out).
    - else, ``prefer_full`` and full MNIST found (``find_mnist``): the same.
    - else the 5,000-digit sample: all of it for training when the official test set can be found
      (the bar's recipe), otherwise 4,000 for training and 1,000 held out (stratified, 100 per class,
      seed 0), which is NOT the official test set. The description says which.
    """
    found = Path(directory) if directory is not None else find_mnist()
    where = source_name(found) if found is not None else None
    if directory is not None or (prefer_full and found is not None):
        d = load_mnist(found)
        desc = (f"MNIST: {len(d['y_train']):,} training digits, official {len(d['y_test']):,}-digit "
                f"test set (from {where})")
        return d["x_train"], d["y_train"], d["x_test"], d["y_test"], desc
    x, y = load_sample()
    if found is not None:
        d = load_mnist(found)
        desc = (f"MNIST sample (shipped): all {len(y):,} digits for training; held out: the official "
                f"{len(d['y_test']):,}-digit test set (from {where})")
        return x, y, d["x_test"], d["y_test"], desc
    x_tr, y_tr, x_te, y_te = train_test_split(x, y, test_fraction=0.2, seed=0)
    desc = (f"MNIST sample (shipped): {len(y_tr):,} training / {len(y_te):,} held-out digits from the "
            f"5,000-digit sample (stratified); not the official test set")
    return x_tr, y_tr, x_te, y_te, desc
