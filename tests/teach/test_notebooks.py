"""The tutorial notebooks (notebooks/*.ipynb) run top to bottom in fast mode and draw what they teach.

Each notebook is executed with nbclient under SLIMSAM_FAST=1 (the toy SAM and toy photos, offline, CPU), in a
temporary working folder.
A notebook teaches one step per `## ` section; every such section must end up with at least one figure.
Notebooks 03 and 04 must also show what they say: the toy SAM's masks are good, pruning spoils them and aligning
brings them back, in mIoU on the held-out toy photos.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
# What notebooks 03 and 04 must show in fast mode, in the mIoU of their `scores` on the held-out toy photos: the
# moments compared (teacher, before pruning, after pruning, after aligning), and how much pruning must cost and
# aligning win back at least. Floors set with a margin below what the notebooks measured (README, "Notebooks"):
# 03: 0.479 -> 0.378 -> 0.469; 04: step-1 model 0.467 -> 0.421 -> 0.472, teacher 0.479.
MOMENTS = {"03_step1_embedding_pruning": ("before pruning (teacher)", "before pruning (teacher)", "after pruning",
                                          "after aligning"),
           "04_step2_bottleneck_pruning": ("teacher", "step-1 model (before pruning)", "after pruning",
                                           "after aligning")}
PRUNING_LOSS = {"03_step1_embedding_pruning": 0.05, "04_step2_bottleneck_pruning": 0.02}
ALIGNING_GAIN = {"03_step1_embedding_pruning": 0.05, "04_step2_bottleneck_pruning": 0.02}
TEACHER_MIOU = 0.4  # the toy SAM's
RECOVERED = 0.9  # after aligning, at least this fraction of the teacher's mIoU
# Appended to those two notebooks: prints their `scores` (a slimsam.evaluate.scores.Comparison) as JSON.
SCORES_CELL = ("import json\n"
               "print(json.dumps({'metric': scores.metric,\n"
               "                  'values': {s['model']: s[scores.metric] for s in scores.summaries()}}))")
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
    if path.stem in MOMENTS:
        notebook.cells.append(nbformat.v4.new_code_cell(SCORES_CELL))
    # Run in a private folder: the notebook's _work/ lands there, so concurrent runs never share it.
    NotebookClient(notebook, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    sections = figures_per_section(notebook)
    assert len(sections) >= 3, f"{path.name}: expected several `## ` steps, found {list(sections)}"
    missing = [section for section, count in sections.items() if count == 0]
    assert not missing, f"{path.name}: no figure in section(s) {missing}"
    if path.stem in MOMENTS:
        check_masks_degrade_and_recover(path.stem, json.loads(notebook.cells[-1].outputs[0]["text"]))


def check_masks_degrade_and_recover(name: str, reported: dict) -> None:
    """reported: the notebook's `scores` as SCORES_CELL prints them."""
    assert reported["metric"] == "miou", f"{name}: fast mode's held-out photos have masks, so mIoU is measured"
    teacher, before, pruned, aligned = (reported["values"][moment] for moment in MOMENTS[name])
    shown = f"{name}: teacher {teacher:.3f}, before pruning {before:.3f}, pruned {pruned:.3f}, aligned {aligned:.3f}"
    assert teacher >= TEACHER_MIOU, shown
    assert pruned <= before - PRUNING_LOSS[name], shown
    assert aligned >= pruned + ALIGNING_GAIN[name], shown
    assert aligned >= RECOVERED * teacher, shown


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


def test_the_mask_check_fails_when_the_masks_do_not_degrade_and_recover():
    name = "03_step1_embedding_pruning"
    teacher, _, pruned, aligned = MOMENTS[name]
    working = {teacher: 0.5, pruned: 0.3, aligned: 0.48}
    check_masks_degrade_and_recover(name, {"metric": "miou", "values": working})
    for broken in ({aligned: 0.3 + ALIGNING_GAIN[name] / 2}, {pruned: 0.5 - PRUNING_LOSS[name] / 2},
                   {aligned: 0.5 * RECOVERED - 0.01}, {teacher: TEACHER_MIOU - 0.01, aligned: 0.38}):
        with pytest.raises(AssertionError):
            check_masks_degrade_and_recover(name, {"metric": "miou", "values": working | broken})
    with pytest.raises(AssertionError, match="mIoU"):
        check_masks_degrade_and_recover(name, {"metric": "agreement", "values": working})
