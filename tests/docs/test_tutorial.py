"""docs/tutorial.ipynb runs from top to bottom as committed, and shows what it says: its pictures and its numbers."""
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_runs_and_shows_its_pictures(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    committed = nbformat.read(TUTORIAL, as_version=4)
    executed = nbformat.read(TUTORIAL, as_version=4)
    nbclient.NotebookClient(executed, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2  # the grid and the curves
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "largest difference: 0.0" in text and "PASS" in text
    # the committed notebook carries its outputs (pictures included)
    committed_outputs = [output for cell in committed.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in committed_outputs) == 2
