"""Throughput of data-parallel training on this machine: ``mpiexec -n N python -m mpi4py scaling.py``.

Trains the seed network for --epochs (5) epochs on the 5,000 shipped digits (global batch --batch) with
``fit(comm=)``, after a warm-up epoch, and prints one line from rank 0: ranks, seconds, images/s.
``--single`` runs plain ``fit`` without a communicator (the one-process baseline). A benchmark,
not a test: docs/distributed.md gives the numbers measured with it and the machine's load.
"""
import argparse
import time

import numpy as np

import gpucnn
from gpucnn import distributed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--mode", default="exact")
    p.add_argument("--single", action="store_true")
    args = p.parse_args()
    comm = None if args.single else distributed.init(mode=args.mode)
    x, y = gpucnn.data.load_sample()
    net = gpucnn.seed_network(backend="numpy", seed=0)
    warm = min(len(y), max(1000, 2 * args.batch))
    net.fit(x[:warm], y[:warm], epochs=1, batch_size=args.batch, lr=1.0, verbose=False, comm=comm)  # warm-up
    start = time.perf_counter()
    net.fit(x, y, epochs=args.epochs, batch_size=args.batch, lr=1.0, verbose=False, comm=comm)
    seconds = time.perf_counter() - start
    if comm is None or comm.rank == 0:
        ranks = "1 (no comm)" if comm is None else str(comm.size)
        print(f"ranks {ranks:>11}  batch {args.batch}  mode {args.mode:<9}  {seconds:6.2f} s  "
              f"{args.epochs * len(y) / seconds:7.0f} img/s  {net.execution_path()}", flush=True)


if __name__ == "__main__":
    main()
