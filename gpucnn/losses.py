"""Costs of the batch mean. Each gives the cost and dC/d(network output).

    quadratic      C = 1/n sum_x 1/2 ||a - y||^2          dC/da = (a - y) / n
                   (the seed network's; the last Sigmoid turns it into delta^L = (a - y) * sigma'(z^L))
    cross_entropy  p = softmax(z), C = -1/n sum_x log p_y   dC/dz = (p - y) / n
                   (the network's last output is the logits z; softmax belongs to the loss)
"""


class Quadratic:
    name = "quadratic"

    def probabilities(self, xp, out):
        return out

    def cost_array(self, xp, out, y_onehot):
        """The batch-mean cost as a 0-d array on the backend (no host read: the device epoch sums these)."""
        return 0.5 * ((out - y_onehot) ** 2).sum() / out.shape[0]

    def cost(self, xp, out, y_onehot):
        return float(self.cost_array(xp, out, y_onehot))

    def gradient(self, xp, out, y_onehot, n=None):
        """dC/d(out) for these rows of a batch of n (default: the rows given)."""
        return (out - y_onehot) / (out.shape[0] if n is None else n)


class CrossEntropy:
    name = "cross_entropy"

    def probabilities(self, xp, z):
        e = xp.exp(z - z.max(axis=1, keepdims=True))    # shift: exp never overflows
        return e / e.sum(axis=1, keepdims=True)

    def cost_array(self, xp, z, y_onehot):
        """The batch-mean cost as a 0-d array on the backend (no host read: the device epoch sums these)."""
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        return -(log_p * y_onehot).sum() / z.shape[0]

    def cost(self, xp, z, y_onehot):
        return float(self.cost_array(xp, z, y_onehot))

    def gradient(self, xp, z, y_onehot, n=None):
        """dC/dz for these rows of a batch of n (default: the rows given)."""
        return (self.probabilities(xp, z) - y_onehot) / (z.shape[0] if n is None else n)


LOSSES = {"quadratic": Quadratic, "cross_entropy": CrossEntropy}


def get_loss(name):
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]()
