"""The fast notebook checks of the pre-commit hook and `make lint` (vrn_site.checks)."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from vrn_site.checks import problems


def stored(tmp_path, *cells, tags=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    if tags:
        nb.cells[-1].metadata["tags"] = tags
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def executed(source: str, text: str = "") -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source, execution_count=1)
    if text:
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    return cell


def test_a_clean_notebook_passes(tmp_path):
    assert problems(stored(tmp_path, executed("print(1)", "1\n"))) == []


def test_an_unexecuted_cell_is_named(tmp_path):
    path = stored(tmp_path, executed("x = 1"), nbformat.v4.new_code_cell("x + 1"))
    (problem,) = problems(path)
    assert "nb.ipynb: Cell 1 is not stored executed" in problem


def test_a_scaffolded_placeholder_notebook_may_be_unexecuted(tmp_path):
    cell = nbformat.v4.new_code_cell("assert False")
    assert problems(stored(tmp_path, cell, tags=["claim:demo.placeholder"])) == []


@pytest.mark.parametrize("leak", ["/home/alice/notes/data.txt", "/work/main/snippets/gpt.py"])
def test_a_local_path_in_an_output_is_named(tmp_path, leak):
    (problem,) = problems(stored(tmp_path, executed("print(p)", f"reading {leak}\n")))
    assert "Cell 0, In [1] shows the local path" in problem and leak.split("/")[1] in problem


def test_the_command_exits_non_zero_naming_the_file(tmp_path):
    path = stored(tmp_path, nbformat.v4.new_code_cell("x"))
    result = subprocess.run(
        [sys.executable, "-m", "vrn_site.checks", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "nb.ipynb: Cell 0" in result.stderr


def test_the_host_name_in_an_output_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr("vrn_site.checks.HOST", "build-box-17")
    (problem,) = problems(stored(tmp_path, executed("print(host)", "ran on build-box-17\n")))
    assert "Cell 0, In [1] shows this machine's host name 'build-box-17'" in problem
