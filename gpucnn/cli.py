"""The ``gpucnn`` command: train, evaluate, predict, info.

Bad arguments and bad files give one line on stderr and a non-zero exit, never a traceback.
"""
import argparse
import json
import os
import sys

import numpy as np

from . import bench, data, distributed
from .backend import backend_info
from .errors import GpucnnError
from .network import load, seed_network
from .optim import SGD
from .validation import check_positive_int

EXIT_USAGE, EXIT_ERROR, EXIT_INTERNAL = 2, 1, 3


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


class UsageError(Exception):
    pass


def build_parser():
    parser = OneLineParser(prog="gpucnn", description="A CNN with hand-written backprop on NumPy or raw CUDA.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = sub.add_parser("train", help="train the seed network on MNIST (the offline sample by default)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=10)
    # The textbook lr 3.0 saturates this conv net's sigmoid outputs (stuck at 10%); 1.0 trains well.
    train.add_argument("--lr", type=float, default=1.0)
    train.add_argument("--momentum", type=float, default=0.0)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--loss", choices=["quadratic", "cross_entropy"], default="quadratic")
    train.add_argument("--activation", choices=["sigmoid", "relu", "tanh"], default="sigmoid")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--backend", default=None, help="auto (default), numpy, cupy or emulated")
    train.add_argument("--data", default=None, help="directory with the MNIST IDX files (default: cache, else the sample)")
    train.add_argument("--sample", action="store_true", help="use the offline 5,000-digit sample even if full MNIST is present")
    train.add_argument("--model", default="gpucnn-model.npz", help="where to save the trained model")
    train.add_argument("--checkpoint", default=None, help="write a training checkpoint here (atomically)")
    train.add_argument("--every", type=int, default=None, help="checkpoint every N steps too (default: each epoch)")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    train.add_argument("--quiet", action="store_true")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel under mpiexec (one process per rank): only rank 0 prints and writes")
    train.add_argument("--comm-timeout", type=float, default=distributed.DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="with --distributed: a rank that waits longer for the others ends the job")

    evaluate = sub.add_parser("evaluate", help="accuracy of a saved model on the test / held-out digits")
    evaluate.add_argument("model")
    evaluate.add_argument("--data", default=None)
    evaluate.add_argument("--sample", action="store_true")
    evaluate.add_argument("--backend", default=None)

    predict = sub.add_parser("predict", help="the digit in a 28x28 image (.png or .npy)")
    predict.add_argument("model")
    predict.add_argument("image")
    predict.add_argument("--backend", default=None)

    bench = sub.add_parser("bench", help="speed against PyTorch, side by side (benchmarks/)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)

    info = sub.add_parser("info", help="which backends can run here, and why a GPU backend can or cannot")
    info.add_argument("--json", action="store_true")
    return parser


def _data(args):
    if args.data is not None and args.sample:
        raise UsageError("--data and --sample exclude each other")
    return data.load_training_data(directory=args.data, prefer_full=not args.sample)


def _check_train_args(args):
    """Argument errors before the (slow) data loading."""
    check_positive_int(args.epochs, "--epochs")
    check_positive_int(args.batch_size, "--batch-size")
    if args.every is not None:
        check_positive_int(args.every, "--every")
    SGD(args.lr, args.momentum, args.weight_decay)
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint PATH")


def cmd_train(args):
    _check_train_args(args)
    comm = distributed.cli_comm(args.distributed, args.comm_timeout)   # refuses N copies without --distributed
    lead = comm is None or comm.rank == 0                              # only rank 0 prints and writes
    args.quiet = args.quiet or not lead
    net = seed_network(backend=args.backend, seed=args.seed, loss=args.loss, activation=args.activation)
    x, y, xv, yv, description = _data(args)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    say(f"data: {description}")
    say(f"backend: {net.backend.name}")
    with distributed.cli_session(comm):
        history = net.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                weight_decay=args.weight_decay, validation=(xv, yv), verbose=not args.quiet,
                checkpoint=args.checkpoint, every=args.every, resume=args.resume, comm=comm)
    accuracy = history["val_accuracy"][-1]
    if not lead:
        return 0
    net.save(args.model)
    print(f"held-out accuracy {accuracy:.4f} on {len(yv)} digits; model saved to {args.model}")


def cmd_evaluate(args):
    net = load(args.model, backend=args.backend)
    _, _, xv, yv, description = _data(args)
    print(f"accuracy {net.evaluate(xv, yv):.4f} on {len(yv)} digits ({description})")


def cmd_predict(args):
    net = load(args.model, backend=args.backend)
    p = net.predict_proba(data.load_image(args.image))[0]
    print(f"{int(p.argmax())}  (scores: {np.array2string(p, precision=3, suppress_small=True)})")


def cmd_info(args):
    info = backend_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        print(f"{key:>20}: {value}")


def cmd_bench(args):
    return bench.main(args.bench_args)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "info": cmd_info,
            "bench": cmd_bench}


def main(argv=None):
    """Run one command; every failure is one line on stderr and a non-zero status, never a traceback.

    Set GPUCNN_TRACEBACK=1 to see the traceback of an unexpected error (a bug in gpucnn).
    """
    try:
        args = build_parser().parse_args(argv)
        status = COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"gpucnn: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (GpucnnError, ValueError, TypeError, OSError, FloatingPointError, MemoryError) as exc:
        print(f"gpucnn: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gpucnn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:                    # a bug, still one line; the traceback on request
        if os.environ.get("GPUCNN_TRACEBACK"):
            raise
        print(f"gpucnn: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(set GPUCNN_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return status or 0


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
