"""The notebooks run top to bottom, and their cells check the library with asserts.

Each notebook is executed in memory with nbclient (kernel python3, cwd notebooks/), so a failing
cell or assert fails the test and the committed file, outputs included, is never rewritten. Also
checked without a kernel: the committed copies carry their outputs (executed in order, no errors)
and no path of the machine that ran them, and they use gpucnn's public API only, never
re-implementing or reaching into private modules.

How to regenerate the committed outputs: notebooks/README.md.
"""
import re
from pathlib import Path

import pytest

import gpucnn

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["01_backprop_by_hand.ipynb", "02_train_mnist.ipynb", "03_backends.ipynb", "04_modern_cnn.ipynb"]
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


MACHINE_PATH = re.compile(r"(?<![\w.])/(?:root|home|tmp|work)\b")


def _output_text(output):
    parts = [output.get("text", ""), *output.get("traceback", [])]
    parts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_hold_no_machine_paths(name):
    """A saved output must not show where the notebook ran (/root/..., /home/..., /tmp/..., /work/...)."""
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    found = []
    for i, cell in enumerate(_code_cells(nb), start=1):
        for output in cell.outputs:
            text = _output_text(output)
            found += [(i, text[m.start():m.start() + 60].split()[0]) for m in MACHINE_PATH.finditer(text)]
    assert not found, f"{name}: outputs name paths of the machine that ran it (code cell, path): {found[:5]}"


def test_notebook_01_takes_delta_through_a_second_conv_layer():
    """The section on delta through a conv layer to the layer below: a two-conv network, the full
    convolution with the flipped kernel checked against the library and centred differences, and
    colorbars on the maps whose values matter."""
    nb = nbformat.read(NOTEBOOKS_DIR / "01_backprop_by_hand.ipynb", as_version=4)
    source = "\n".join(cell.source for cell in _code_cells(nb))
    assert "## δ through a conv layer to the layer below" in "\n".join(c.source for c in nb.cells)
    two_conv = [c.source for c in _code_cells(nb) if c.source.count("gpucnn.Conv2D(") >= 2]
    assert two_conv, "no network with two conv layers"
    assert "::-1, ::-1]" in two_conv[0] and "np.pad(" in two_conv[0]          # flipped kernel, padded delta
    assert re.search(r"assert_allclose\(da1, full", two_conv[0])              # checked against the library
    assert "centred_difference(two," in source                                  # and by finite differences
    assert source.count("colorbar=True") + source.count("colorbar=f ==") + source.count("colorbar=c ==") >= 8


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
