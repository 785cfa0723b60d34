"""Ready-made networks for 1x28x28 digits, and the learning rate each trains well with under SGD.

    seed_network()   conv 3@5x5 -> sigma -> pool 2 -> dense 432->10 -> sigma     (the seed question's net)
    lenet5()         conv 6@5x5 pad 2 -> pool -> conv 16@5x5 -> pool -> 400->120->84->10   (LeNet-5)
    wide_network()   conv 32@5x5 -> pool -> conv 64@5x5 -> pool -> dense 1024->10        (the benchmarks')

``ARCHITECTURES`` maps the names ``gpucnn train --arch`` accepts to the builder and its SGD learning rate.
"""
from . import layers as L
from .network import classifier, seed_network


def lenet5(backend=None, seed=0, loss="cross_entropy", activation="relu"):
    """LeNet-5 (LeCun et al. 1998) on 28x28 digits, with max pooling and ReLU by default.

    Shapes: 1x28x28 -> conv 6@5x5, padding 2 -> 6x28x28 -> pool -> 6x14x14 -> conv 16@5x5 -> 16x10x10
    -> pool -> 16x5x5 -> flatten 400 -> 120 -> 84 -> 10 (61,706 parameters). With the quadratic loss a
    final sigmoid is added; with cross_entropy the softmax belongs to the loss.
    """
    act = L.activation_class(activation)
    layers = [L.Conv2D(1, 6, 5, padding=2), act(), L.MaxPool2D(2), L.Conv2D(6, 16, 5), act(), L.MaxPool2D(2),
              L.Flatten(), L.Dense(400, 120), act(), L.Dense(120, 84), act(), L.Dense(84, 10)]
    return classifier(layers, loss, backend, seed)


def wide_network(backend=None, seed=0, loss="cross_entropy", activation="relu"):
    """The wide conv stack of the benchmarks: 1x28x28 -> conv 32@5x5 -> 32x24x24 -> pool -> 32x12x12
    -> conv 64@5x5 -> 64x8x8 -> pool -> 64x4x4 -> flatten 1024 -> dense 10 (62,346 parameters)."""
    act = L.activation_class(activation)
    layers = [L.Conv2D(1, 32, 5), act(), L.MaxPool2D(2), L.Conv2D(32, 64, 5), act(), L.MaxPool2D(2),
              L.Flatten(), L.Dense(1024, 10)]
    return classifier(layers, loss, backend, seed)


# name -> (builder, default loss, default activation, SGD learning rate that trains it at batch 10)
ARCHITECTURES = {
    "seed": (seed_network, "quadratic", "sigmoid", 1.0),
    "lenet5": (lenet5, "cross_entropy", "relu", 0.1),
    "wide": (wide_network, "cross_entropy", "relu", 0.05),
}


def build(arch, backend=None, seed=0, loss=None, activation=None):
    """The network ``arch`` names ('seed', 'lenet5', 'wide'); loss/activation None: the architecture's own."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    builder, default_loss, default_activation, _ = ARCHITECTURES[arch]
    return builder(backend=backend, seed=seed, loss=loss or default_loss, activation=activation or default_activation)


def sgd_lr(arch):
    """The SGD learning rate ``arch`` trains well with (batch 10): seed 1.0, lenet5 0.1, wide 0.05."""
    return ARCHITECTURES[arch][3]
