"""The ``gpucnn`` command: train, evaluate, predict, download, info, bench.

Bad arguments and bad files give one line on stderr and a non-zero exit, never a traceback.
"""
import argparse
import importlib.metadata
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from . import bench, data, distributed, models
from .backend import backend_info
from .errors import DataError, GpucnnError
from .layers import ACTIVATIONS
from .losses import LOSSES
from .network import load
from .optim import OPTIMIZERS, get_optimizer
from .schedules import SCHEDULES
from .serialization import check_output_path
from .training.loop import Interrupted, stop_on_signals
from .validation import check_positive_int

EXIT_USAGE, EXIT_ERROR, EXIT_INTERNAL = 2, 1, 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}     # 128 + the signal's number, as a shell reports it
IMAGE_SUFFIXES = (".png", ".npy")

USAGE_SCREEN = """\
gpucnn: a CNN with hand-written backprop on NumPy or raw CUDA.

  gpucnn train                  train the seed network (the shipped digits, or full MNIST if found)
  gpucnn train --arch lenet5    other networks: seed, lenet5, wide
  gpucnn evaluate MODEL         accuracy of a saved model
  gpucnn predict MODEL IMAGE... the digit in .png/.npy images, or in every image of a folder
  gpucnn download               full MNIST into the cache (checksummed)
  gpucnn info                   which backends can run here, and why
  gpucnn bench --quick          speed against PyTorch (from a source checkout)

gpucnn COMMAND --help shows a command's options and their defaults; gpucnn --version."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


class UsageError(Exception):
    pass


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' for options that have a real default (not None, not a bare flag)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def version():
    try:
        return importlib.metadata.version("gpucnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e . in the checkout)"


def build_parser():
    parser = OneLineParser(prog="gpucnn", description="A CNN with hand-written backprop on NumPy or raw CUDA.",
                           formatter_class=DefaultsFormatter)
    parser.add_argument("--version", action="version", version=f"gpucnn {version()}")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND")

    def command(name, help_text, **kwargs):
        return sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsFormatter,
                              **kwargs)

    train = command("train", "train a network on MNIST (the shipped 5,000-digit sample unless full MNIST "
                             "is found)")
    train.add_argument("--arch", choices=list(models.ARCHITECTURES), default="seed",
                       help="network: seed (conv 3@5x5, pool, dense), lenet5, wide (conv 32, conv 64, dense)")
    train.add_argument("--epochs", type=int, default=20, help="passes over the training digits")
    train.add_argument("--batch-size", type=int, default=10, help="digits per SGD step")
    # The textbook lr 3.0 saturates the seed net's sigmoid outputs (stuck at 10%); 1.0 trains well.
    train.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd", help="the update rule")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: with sgd " + ", ".join(
                           f"{a} {models.sgd_lr(a):g}" for a in models.ARCHITECTURES)
                       + f"; with adam {OPTIMIZERS['adam'].default_lr:g})")
    train.add_argument("--lr-schedule", choices=["none", *SCHEDULES], default="none",
                       help="lr per epoch: none (constant), step or cosine decay from --lr")
    train.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    train.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    train.add_argument("--loss", choices=list(LOSSES), default=None,
                       help="cost (default: quadratic for seed, cross_entropy for the others)")
    train.add_argument("--activation", choices=list(ACTIVATIONS), default=None,
                       help="activation of the hidden layers (default: sigmoid for seed, relu for the others)")
    train.add_argument("--seed", type=int, default=0, help="initial weights and shuffle order")
    train.add_argument("--backend", default=None,
                       help="auto, numpy, cupy or emulated (default: $GPUCNN_BACKEND, else auto)")
    train.add_argument("--data", default=None,
                       help="directory with the MNIST IDX files (default: the cache if it has them, else "
                            "the shipped sample)")
    train.add_argument("--sample", action="store_true",
                       help="use the shipped 5,000-digit sample even if full MNIST is present")
    train.add_argument("--model", default="gpucnn-model.npz", help="where to save the trained model")
    train.add_argument("--force", action="store_true", help="overwrite --model if it exists")
    train.add_argument("--checkpoint", default=None,
                       help="write a resumable checkpoint here at each epoch's end (atomically); Ctrl-C "
                            "writes one anyway, to MODEL's name with .checkpoint.npz")
    train.add_argument("--every", type=int, default=None, help="checkpoint every N steps too")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    train.add_argument("--quiet", action="store_true", help="no progress, no epoch lines")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel under mpiexec (one process per rank): only rank 0 prints and writes")
    train.add_argument("--comm-timeout", type=float, default=distributed.DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="with --distributed: a rank that waits longer for the others ends the job")

    evaluate = command("evaluate", "accuracy of a saved model on the test / held-out digits")
    evaluate.add_argument("model", help="a model file written by gpucnn train or net.save")
    evaluate.add_argument("--data", default=None, help="directory with the MNIST IDX files")
    evaluate.add_argument("--sample", action="store_true", help="the shipped sample's held-out digits")
    evaluate.add_argument("--backend", default=None, help="auto, numpy, cupy or emulated")

    predict = command("predict", "the digit in 28x28 images (.png or .npy): files, or folders of them")
    predict.add_argument("model", help="a model file written by gpucnn train or net.save")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="an image file or a folder of images")
    predict.add_argument("--backend", default=None, help="auto, numpy, cupy or emulated")

    download = command("download", "download full MNIST (60,000 + 10,000 digits, 12 MB gzipped) into the cache, "
                                   "checking each file's md5")
    download.add_argument("--dir", default=None,
                          help=f"target directory (default: $GPUCNN_DATA, else ~/.cache/gpucnn; now "
                               f"{data.cache_dir()})")
    download.add_argument("--mirror", action="append", default=None,
                          help="a URL prefix to try first (repeatable); then the public mirrors")
    download.add_argument("--timeout", type=float, default=10.0, help="seconds per network operation")

    command("bench", "speed against PyTorch, side by side (benchmarks/; gpucnn bench --help for its options)",
            add_help=False)

    info = command("info", "which backends can run here, and why a GPU backend can or cannot")
    info.add_argument("--json", action="store_true", help="machine-readable")
    return parser


def _data(args):
    if args.data is not None and args.sample:
        raise UsageError("--data and --sample exclude each other")
    return data.load_training_data(directory=args.data, prefer_full=not args.sample)


def _check_train_args(args):
    """Argument errors, and a model an earlier run left, before the (slow) data loading."""
    check_positive_int(args.epochs, "--epochs")
    check_positive_int(args.batch_size, "--batch-size")
    if args.every is not None:
        check_positive_int(args.every, "--every")
    if args.lr is None and args.optimizer == "sgd":
        args.lr = models.sgd_lr(args.arch)
    args.lr = get_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay).lr
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint PATH")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative int, got {args.seed}")
    model = Path(args.model)
    if model.is_dir():
        raise UsageError(f"--model {model} is a directory; give a file name such as {model / 'model.npz'}")
    if model.exists() and not args.force:
        raise GpucnnError(f"{model} exists (a model of an earlier run?); pass --force to overwrite it, or "
                          f"--model NEW.npz to keep both")
    # output paths before the training whose result they would lose (serialization.check_output_path)
    check_output_path(args.model, "model file (--model)")
    if args.checkpoint:
        if os.path.realpath(args.checkpoint) == os.path.realpath(args.model):
            raise UsageError(f"--checkpoint and --model are the same file ({args.model}): the model would "
                             "overwrite the checkpoint, and --resume could no longer continue")
        check_output_path(args.checkpoint, "checkpoint (--checkpoint)")
    if args.resume and not os.path.exists(args.checkpoint):
        print(f"gpucnn: no checkpoint at {os.path.abspath(args.checkpoint)} yet: training from scratch "
              "(it is written there as training goes)", file=sys.stderr, flush=True)
        args.resume = False


def interrupted_checkpoint(model):
    """Where Ctrl-C saves when no --checkpoint was given: gpucnn-model.npz -> gpucnn-model.checkpoint.npz."""
    model = Path(model)
    return str(model.with_name(model.stem + ".checkpoint.npz"))


def resume_command(argv, checkpoint):
    """The command line that continues an interrupted ``gpucnn train`` from ``checkpoint``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--checkpoint":
            skip = True
        elif arg != "--resume" and not arg.startswith("--checkpoint="):
            kept.append(arg)
    return shlex.join(["gpucnn", *kept, "--checkpoint", checkpoint, "--resume"])


def cmd_train(args):
    _check_train_args(args)
    comm = distributed.cli_comm(args.distributed, args.comm_timeout)   # refuses N copies without --distributed
    lead = comm is None or comm.rank == 0                              # only rank 0 prints and writes
    args.quiet = args.quiet or not lead
    net = models.build(args.arch, backend=args.backend, seed=args.seed, loss=args.loss, activation=args.activation)
    x, y, xv, yv, description = _data(args)
    if not args.quiet:
        print(f"data: {description}", flush=True)
        print(f"network: {args.arch}, {sum(p.value.size for p in net.parameters()):,} parameters, "
              f"loss {net.loss.name}, {args.optimizer} lr {args.lr:g}"
              + ("" if args.lr_schedule == "none" else f" ({args.lr_schedule} schedule)"), flush=True)
    try:
        with stop_on_signals(interrupted_checkpoint(args.model)) if comm is None else distributed.cli_session(comm):
            history = net.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                              lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                              lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
                              validation=(xv, yv),
                              verbose=not args.quiet, checkpoint=args.checkpoint, every=args.every,
                              resume=args.resume, comm=comm)
    except Interrupted as stop:
        print(f"gpucnn: {stop.signal_name} in epoch {stop.epoch} of {args.epochs}, after step {stop.step} "
              f"of {stop.steps}: saved that step's state to {stop.checkpoint}\n"
              f"gpucnn: resume with: {resume_command(args.argv, stop.checkpoint)}", file=sys.stderr)
        return EXIT_SIGNAL.get(stop.signal_name, 130)
    accuracy = history["val_accuracy"][-1]
    if not lead:
        return 0
    net.save(args.model)
    print(f"held-out accuracy {accuracy:.4f} on {len(yv)} digits; model saved to {args.model}")


def cmd_evaluate(args):
    net = load(args.model, backend=args.backend)
    _, _, xv, yv, description = _data(args)
    print(f"accuracy {net.evaluate(xv, yv):.4f} on {len(yv)} digits ({description})")


def image_paths(items):
    """Files as given, folders expanded to their .png/.npy files (sorted); a folder without any is an error."""
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{item}: no .png or .npy images in this folder")
            paths.extend(found)
        else:
            paths.append(item)
    return paths


def image_notes(image):
    """What makes a 28x28 image (values in [0, 1]) unlike an MNIST digit: [] or short notes.

    MNIST digits are light ink on a black background, scaled into a 20x20 box and centred by their
    centre of mass at the middle of the 28x28 field; a model trained on them misreads others.
    """
    a = np.asarray(image, dtype=np.float64).reshape(28, 28)
    border = np.concatenate([a[:2].ravel(), a[-2:].ravel(), a[2:-2, :2].ravel(), a[2:-2, -2:].ravel()])
    if border.mean() > 0.5:
        return ["looks inverted (light background): MNIST digits are light on black; invert it (1 - pixel)"]
    ink = a.sum()
    if ink < 1.0:
        return ["nearly blank: no digit to read"]
    rows, cols = np.arange(28) + 0.5, np.arange(28) + 0.5
    r, c = (a.sum(axis=1) @ rows) / ink, (a.sum(axis=0) @ cols) / ink
    if max(abs(r - 14.0), abs(c - 14.0)) > 3.0:
        return [f"off-centre (centre of mass at row {r:.1f}, column {c:.1f}; MNIST centres digits at 14, 14)"]
    return []


def cmd_predict(args):
    net = load(args.model, backend=args.backend)
    paths = image_paths(args.images)
    images = np.concatenate([data.load_image(p) for p in paths])      # any bad file fails before output
    scores = net.predict_proba(images)
    for path, image, p in zip(paths, images, scores):
        notes = image_notes(image)
        if len(paths) == 1:
            print(f"{int(p.argmax())}  (scores: {np.array2string(p, precision=3, suppress_small=True)})")
        else:
            print(f"{int(p.argmax())}  {path}  (score {p.max():.3f})")
        for note in notes:
            print(f"   note: {path.name} {note}")


def cmd_download(args):
    directory = Path(args.dir).expanduser() if args.dir else data.cache_dir()
    mirrors = tuple(args.mirror or ()) + tuple(data.MNIST_MIRRORS)
    print(f"downloading MNIST into {directory} (md5 of each file checked) ...", flush=True)
    data.download_mnist(directory, mirrors=mirrors, timeout=args.timeout)
    d = data.load_mnist(directory)                     # every file parses and agrees, or DataError
    print(f"MNIST ready in {directory}: {len(d['y_train']):,} training and {len(d['y_test']):,} test digits; "
          + ("gpucnn train now uses it" if directory == data.cache_dir() else f"use it with --data {directory}"))


def cmd_info(args):
    info = backend_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        print(f"{key:>20}: {value}")


def cmd_bench(args):
    try:
        status = bench.main(args.bench_args)
    except SystemExit as exc:           # the harness's own argparse: --help, or a bad flag
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    # bench_gpu exits 3 for "no usable GPU" (it has said so); for gpucnn, 3 means an internal error
    return EXIT_ERROR if status == EXIT_INTERNAL else status


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "download": cmd_download,
            "info": cmd_info, "bench": cmd_bench}


def parse(argv):
    """argv -> args; ``bench`` passes every argument after it, flags included, to the harness."""
    args, extra = build_parser().parse_known_args(argv)
    if args.command is None:
        raise UsageError("a command is required: " + ", ".join(COMMANDS))
    if args.command == "bench":
        args.bench_args = argv[argv.index("bench") + 1:]
    elif extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(argv)
    return args


def main(argv=None):
    """Run one command; every failure is one line on stderr and a non-zero status, never a traceback.

    Set GPUCNN_TRACEBACK=1 to see the traceback of an unexpected error (a bug in gpucnn).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv:
            print(USAGE_SCREEN)
        args = parse(argv)
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
