"""A PyTorch twin of a gpucnn network, for the tests that train both side by side: gpucnn's initial
parameters copied in, then the same mini-batches, one optimizer step each. Import it after
``pytest.importorskip("torch")``."""
import torch
import torch.nn.functional as F


def copy_params(tnet, net):
    """tnet's parameters := net's, in order (as ``net.get_params()`` lists them)."""
    with torch.no_grad():
        for t, v in zip(tnet.parameters(), net.get_params().values()):
            t.copy_(torch.tensor(v))
    return tnet


def train_side_by_side(net, tnet, ours, theirs, x, y, steps, batch=8):
    """``steps`` steps of cross-entropy on consecutive batches of x, y: net with optimizer ``ours``,
    tnet with the torch optimizer ``theirs``."""
    for step in range(steps):
        xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        net.train_step(net.backend.asarray(xb), net.targets(yb, batch), ours)
        theirs.zero_grad()
        F.cross_entropy(tnet(torch.tensor(xb)), torch.tensor(yb)).backward()
        theirs.step()
