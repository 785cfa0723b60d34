"""One rank of a test job: ``mpiexec -n N python -m mpi4py train.py OUT [options]`` (tests/test_distributed.py).

Trains the seed network on a few hundred shipped digits with ``fit(..., comm=)``; rank 0 writes
OUT (parameters, history, evaluation); every rank writes OUT.rank<R>.json with what it saw (an
error's type and message included), so the test can check that every rank agrees. Options plant
the failures the tests need (a raise, a SIGKILL, a stuck rank, another seed, a kill after a
checkpoint).
"""
import argparse
import json
import os
import signal
import sys
import time

import numpy as np

import gpucnn
from gpucnn import distributed


def digits(n):
    """n digits of the shipped sample, every class (the sample is sorted by label), fixed order."""
    x, y = gpucnn.data.load_sample()
    idx = np.random.default_rng(7).permutation(len(y))[:n]
    return x[idx], y[idx]


def network(activation="sigmoid", loss="quadratic", seed=0, dtype="float32"):
    """The seed network (ReLU + cross-entropy: no final activation), in float32 or float64."""
    act = {"sigmoid": gpucnn.Sigmoid, "relu": gpucnn.ReLU}[activation]
    layers = [gpucnn.Conv2D(1, 3, 5), act(), gpucnn.MaxPool2D(2), gpucnn.Flatten(), gpucnn.Dense(432, 10)]
    if loss == "quadratic":
        layers.append(gpucnn.Sigmoid())
    return gpucnn.Network(layers, loss=loss, backend="numpy", seed=seed, dtype=np.dtype(dtype))


def plant(args, comm):
    """Wrap the distributed step so that rank ``fail_rank`` fails at step ``fail_step`` (1-based)."""
    step = distributed.DistributedEpoch.train_step
    count = [0]

    def train_step(self, xb, y1, optimizer):
        count[0] += 1
        if comm.rank == args.fail_rank and count[0] == args.fail_step:
            with open(f"{args.out}.failed_at", "w") as f:       # the test times the job's end from here
                f.write(repr(time.time()))
            if args.fail == "raise":
                raise RuntimeError("planted failure")
            if args.fail == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if args.fail == "stuck":
                time.sleep(3600)
        return step(self, xb, y1, optimizer)

    distributed.DistributedEpoch.train_step = train_step


def fail_saves(comm):
    """Rank 0 cannot write checkpoints (a full disk, planted)."""
    def save(trainer, path):
        raise OSError(28, "No space left on device (planted)", str(path))
    if comm.rank == 0:
        gpucnn.training.checkpoint.save = save


def kill_after_saves(k, comm):
    """Rank 0 SIGKILLs itself (the whole job ends) right after its k-th checkpoint write."""
    save = distributed.DistributedTrainer.save_checkpoint
    count = [0]

    def save_checkpoint(self):
        save(self)
        count[0] += 1
        if comm.rank == 0 and count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    distributed.DistributedTrainer.save_checkpoint = save_checkpoint


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--loss", default="quadratic")
    p.add_argument("--activation", default="sigmoid")
    p.add_argument("--mode", default="exact")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--checkpoint")
    p.add_argument("--every", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-after-saves", type=int)
    p.add_argument("--fail", choices=["raise", "kill", "stuck", "save"])
    p.add_argument("--fail-rank", type=int, default=1)
    p.add_argument("--fail-step", type=int, default=3)
    p.add_argument("--seed-rank", type=int, help="this rank builds its network with seed 1 (others 0)")
    args = p.parse_args()

    comm = distributed.init(mode=args.mode, timeout=args.timeout)
    if args.fail == "save":
        fail_saves(comm)
    elif args.fail:
        plant(args, comm)
    if args.kill_after_saves:
        kill_after_saves(args.kill_after_saves, comm)
    x, y = digits(args.n)
    seed = 1 if comm.rank == args.seed_rank else 0
    net = network(args.activation, args.loss, seed, args.dtype)
    seen = {"rank": comm.rank, "size": comm.size, "path": net.execution_path()}
    try:
        history = net.fit(x, y, epochs=args.epochs, batch_size=args.batch, lr=args.lr, verbose=False,
                          validation=(x[:100], y[:100]), checkpoint=args.checkpoint, every=args.every,
                          resume=args.resume, comm=comm)
        seen["accuracy"] = net.evaluate(x, y, batch_size=128, comm=comm)
        y1 = net.targets(y, len(y))
        seen["score"] = list(net.score(net.backend.asarray(x, net.dtype), y1, y1.argmax(axis=1), 128, comm=comm))
        history.pop("time", None)              # wall time: the one entry that is not a result
        seen["history"] = history
    except Exception as exc:
        if not distributed.is_all_ranks(exc):          # one rank's own failure: the job is aborted
            raise
        seen["error"] = [type(exc).__name__, str(exc)]
    seen["params"] = {k: v.tobytes().hex() for k, v in net.get_params().items()}
    with open(f"{args.out}.rank{comm.rank}.json", "w") as f:
        json.dump(seen, f)
    if comm.rank == 0 and "error" not in seen:
        np.savez(args.out, **net.get_params())
        with open(args.out + ".json", "w") as f:
            json.dump(seen, f)


if __name__ == "__main__":
    sys.exit(main())
