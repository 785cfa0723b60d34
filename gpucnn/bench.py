"""``gpucnn bench``: run the benchmark harness of a source checkout (benchmarks/bench_cpu.py, bench_gpu.py).

    gpucnn bench [--quick] [--rounds N] [--only SUBSTR ...] [--out DIR] ...   CPU: vs PyTorch CPU
    gpucnn bench --gpu [...]                                                GPU: vs PyTorch CUDA

The harness scripts live in the repository's benchmarks/ folder (they are scripts, not part of the
installed package); from an installed wheel this prints where to find them and exits 2.
"""
import importlib.util
import sys
from pathlib import Path


def benchmarks_dir():
    """<repo>/benchmarks next to this package, or None (an installed wheel has no benchmarks/)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    return folder if (folder / "bench_cpu.py").is_file() else None


def main(argv=None):
    """Entry point of ``gpucnn bench``: argv without the leading 'bench'; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    gpu = "--gpu" in argv
    if gpu:
        argv.remove("--gpu")
    folder = benchmarks_dir()
    if folder is None:
        print("gpucnn bench needs a source checkout: the harness is benchmarks/bench_cpu.py and "
              "benchmarks/bench_gpu.py in the repository", file=sys.stderr)
        return 2
    name = "bench_gpu" if gpu else "bench_cpu"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
