"""examples/notebook_worker.ipynb, run by a real Jupyter kernel: a worker class defined in a
notebook cell runs on two CPU workers (sent by value to the spawned processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook_worker.ipynb"


def _text(cell: dict[str, object]) -> str:
    parts = []
    for output in cell.get("outputs", []):  # type: ignore[union-attr]
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_a_worker_class_defined_in_a_notebook_cell_runs() -> None:
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=90, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert _text(cells[1]) == "'ready'"
    assert _text(cells[2]) == "{'shouted': ['HELLO!!', 'A!!', 'CELL!!', 'FROM!!', 'NOTEBOOK!!']}"
    streamed = _text(cells[3]).splitlines()
    assert sorted(streamed[:2]) == ["{'rank': 0, 'words': 2}", "{'rank': 1, 'words': 1}"]  # every rank's items
    assert streamed[2:] == ["{'shouted': ['ONE!!', 'THREE!!', 'TWO!!']}"]
    assert _text(cells[4]) == "'stopped'"
    for cell in cells:
        assert not any(output.get("output_type") == "error" for output in cell.get("outputs", []))
