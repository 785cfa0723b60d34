"""An installed wheel, outside the source checkout, carries the CUDA kernels, the emulator and the
shipped 5,000-digit sample (with its licence notice)."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import numpy as np, gpucnn, sys
from gpucnn.ops.cuda import cuda_source_dir
assert gpucnn.__file__.startswith(sys.argv[1]), gpucnn.__file__
print(cuda_source_dir())
ops = gpucnn.get_backend("emulated").ops
x = np.ones((1, 1, 6, 6), np.float32); W = np.ones((2, 1, 3, 3), np.float32); b = np.zeros(2, np.float32)
assert (ops.conv2d_forward(x, W, b, 1, (0, 0)) == 9).all()
xs, ys = gpucnn.data.load_sample()
assert xs.shape == (5000, 1, 28, 28) and ys.shape == (5000,), (xs.shape, ys.shape)
print("ok")
"""


@pytest.mark.slow
def test_installed_wheel_runs_the_kernels_outside_the_checkout(tmp_path):
    pytest.importorskip("hatchling")
    subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("gpucnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("gpucnn/_cuda/conv2d_forward.cu", "gpucnn/_cuda/maxpool2d.cu",
                   "gpucnn/emulator/cuda_emu.h", "gpucnn/emulator/runtime.cpp",
                   "gpucnn/data/mnist_sample_5k.npz", "gpucnn/data/NOTICE"):
        assert needed in names, needed
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "GPUCNN_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(target / "gpucnn" / "_cuda"), "ok"]
