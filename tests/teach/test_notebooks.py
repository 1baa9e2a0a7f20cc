"""The tutorial notebooks (notebooks/*.ipynb) run top to bottom in fast mode and draw what they teach.

Each notebook is executed with nbclient under SLIMSAM_FAST=1 (tiny stand-in models, offline, CPU), in a
temporary working folder.
A notebook teaches one step per `## ` section; every such section must end up with at least one figure.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SERIES = ["01_sam_anatomy", "02_importance", "03_step1_embedding_pruning", "04_step2_bottleneck_pruning",
          "05_compare_and_export", "06_your_own_data"]


def figures_per_section(notebook) -> dict[str, int]:
    """`## ` heading -> number of image outputs of the code cells under it (up to the next `## ` heading)."""
    counts: dict[str, int] = {}
    section = None
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    section = line[3:].strip()
                    counts[section] = 0
        elif cell.cell_type == "code" and section is not None:
            counts[section] += sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))
    return counts


def test_the_series_is_complete():
    assert [path.stem for path in NOTEBOOKS] == SERIES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code"
    assert all(not cell.outputs and cell.execution_count is None for cell in code), \
        f"{path.name} is stored with outputs; clear them before committing"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_runs_in_fast_mode_with_a_figure_per_step(path, monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMSAM_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    # Run in a private folder: the notebook's _work/ lands there, so concurrent runs never share it.
    NotebookClient(notebook, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    sections = figures_per_section(notebook)
    assert len(sections) >= 3, f"{path.name}: expected several `## ` steps, found {list(sections)}"
    missing = [section for section, count in sections.items() if count == 0]
    assert not missing, f"{path.name}: no figure in section(s) {missing}"


def test_figure_counting_sees_a_section_without_figures():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## 1. drawn"),
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("display_data", data={"image/png": "x"})]),
        nbformat.v4.new_markdown_cell("## 2. not drawn"),
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", text="numbers only")]),
    ])
    assert figures_per_section(notebook) == {"1. drawn": 1, "2. not drawn": 0}


def test_fast_mode_switch(monkeypatch):
    from slimsam.teach import tutorial

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("SLIMSAM_FAST", raising=False)
    assert not tutorial.fast_mode()
    monkeypatch.setenv("SLIMSAM_FAST", "1")
    assert tutorial.fast_mode()
    monkeypatch.setenv("SLIMSAM_FAST", "0")
    assert not tutorial.fast_mode()
    monkeypatch.setenv("CI", "true")
    assert tutorial.fast_mode()


def test_work_dir_is_emptied_on_every_run(tmp_path):
    from slimsam.teach import tutorial

    first = tutorial.work_dir("nb", root=tmp_path)
    (first / "leftover.txt").write_text("from the last run")
    assert list(tutorial.work_dir("nb", root=tmp_path).iterdir()) == []
