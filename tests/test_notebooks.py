"""The notebooks run top to bottom, and their cells check the library with asserts.

Each notebook is executed in memory with nbclient (kernel python3, cwd notebooks/), so a failing
cell or assert fails the test and the committed file, outputs included, is never rewritten. Also
checked without a kernel: the committed copies carry their outputs (executed in order, no errors),
and they use gpucnn's public API only, never re-implementing or reaching into private modules.

How to regenerate the committed outputs: notebooks/README.md.
"""
import re
from pathlib import Path

import pytest

import gpucnn

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["01_backprop_by_hand.ipynb", "02_train_mnist.ipynb", "03_backends.ipynb"]
CELL_TIMEOUT_S = 300
PUBLIC = set(gpucnn.__all__) | {"data", "__version__"}


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_its_outputs(name):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), \
        f"{name}: run it top to bottom and commit it with its outputs"
    errors = [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{name}: committed with an error output: {errors[0].get('ename')}"
    assert any("image/png" in o.get("data", {}) for cell in cells for o in cell.outputs), \
        f"{name}: no plot in the committed outputs"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_uses_the_public_api_only(name):
    source = "\n".join(cell.source for cell in _code_cells(nbformat.read(NOTEBOOKS_DIR / name, as_version=4)))
    private_imports = re.findall(r"^\s*(?:from\s+gpucnn\.(?!data\b)\S+\s+import|import\s+gpucnn\.\S+)",
                                 source, flags=re.M)
    assert not private_imports, f"{name}: imports below the public API: {private_imports}"
    used = set(re.findall(r"\bgpucnn\.(\w+)", source))
    assert used <= PUBLIC, f"{name}: uses gpucnn names outside gpucnn.__all__: {sorted(used - PUBLIC)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name):
    path = NOTEBOOKS_DIR / name
    committed = path.read_bytes()
    nb = nbformat.reads(committed.decode("utf-8"), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{name}: a cell failed:\n{exc}", pytrace=False)
    assert path.read_bytes() == committed, f"{name}: running the notebook changed the committed file"
