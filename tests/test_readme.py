"""README.md says what a newcomer types first; this checks that it works as written.

Every ```python block runs on its own (a fresh interpreter, an empty directory, no cache of full MNIST),
within a small time budget, and writes nothing to stderr but progress; the blocks print rather than
leaving bare expressions that a script would drop; the two commands stay at the top; every command of
the CLI is documented.
"""
import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpucnn import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
BUDGET_S = 90          # per block, on a loaded 2-core CI machine; each takes a few seconds when idle


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_has_no_bare_expressions(index):
    """`net.layers[0].dW.shape` alone on a line prints in a REPL and nothing in a script."""
    bare = [ast.unparse(node) for node in ast.walk(ast.parse(BLOCKS[index]))
            if isinstance(node, ast.Expr) and not isinstance(node.value, (ast.Call, ast.Constant))]
    assert not bare, f"README block {index}: bare expressions {bare}; print() them"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs_as_written(index, tmp_path):
    env = {**os.environ, "GPUCNN_DATA": str(tmp_path / "no-cache"), "PYTHONPATH": str(REPO)}
    env.pop("GPUCNN_BACKEND", None)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=BUDGET_S)
    assert result.returncode == 0, f"README block {index} failed:\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"README block {index} printed nothing"
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr[-3000:]
    assert time.monotonic() - start < BUDGET_S


def test_tour_holds_out_a_stratified_split():
    tour = BLOCKS[0]
    assert "train_test_split" in tour and "[4000:]" not in tour.replace("x[4000:] would", "")
    fit = tour[tour.index(".fit("):]
    assert "x_train" in fit and "validation=(x_test, y_test)" in fit
    assert "W = np.zeros" not in tour and ".W = " not in tour       # no zeroed weights, then training


def test_the_two_commands_stay_at_the_top():
    top = README[:README.index("## The math")]
    assert "\n    pip install -e . && gpucnn train\n" in top
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] in top    # the test command is CI's


def test_every_cli_command_is_documented():
    section = README[README.index("## Command line"):README.index("## Data")]
    for command in cli.COMMANDS:
        assert f"gpucnn {command}" in section, command
    for option in ("--arch", "--optimizer", "--lr-schedule", "--force", "--version"):
        assert option in section, option


def test_install_help_is_honest():
    install = README[README.index("## Installing"):README.index("## The math")]
    assert "pip install 'gpucnn[cuda12]'" not in README and 'pip install "gpucnn[' not in README
    assert 'pip install -e ".[cuda12]"' in install and "cupy-cuda12x[ctk]" in install and "CUDA_PATH" in install
    extras = re.findall(r'^\s*(\w[\w-]*) = \[', (REPO / "pyproject.toml").read_text().split(
        "[project.optional-dependencies]")[1].split("\n[")[0], flags=re.M)
    for extra in extras:
        assert f'".[{extra}]"' in install, f"extra {extra!r} is not documented in the README"
