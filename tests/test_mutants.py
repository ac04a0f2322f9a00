"""The mutation-testing harness (vrn_site.mutants) on a tiny fixture project, tests/fixtures/mutants:
calc/arith.py has mutants that its tests kill, one that loops forever, one equivalent, one that
survives, and three on a line no test executes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vrn_site.mutants import Project, dependents, mutants_of, render

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "mutants"
EQUIVALENT = "calc/arith.py::clamp::< → <=::if x < low"


def copy_fixture(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(FIXTURE, project, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def run_harness(project: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    equivalents = tmp_path / "equivalent.toml"
    equivalents.write_text(
        f"[[equivalent]]\nid = '{EQUIVALENT}'\nreason = 'at x == low both branches return x'\n\n"
        "[[equivalent]]\nid = 'calc/arith.py::gone::drop -::y = -x'\nreason = 'no such code'\n"
    )
    command = [sys.executable, "-m", "vrn_site.mutants", "--root", str(project)]
    command += ["--package", "calc", "--equivalent", str(equivalents), "--jobs", "2"]
    command += ["--min-timeout", "4", "--timeout-factor", "2"]
    command += ["--report", str(tmp_path / "report.json")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp_path = tmp_path_factory.mktemp("mutants")
    result = run_harness(copy_fixture(tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((tmp_path / "report.json").read_text())


def test_each_mutant_gets_its_fate(report: dict) -> None:
    entry = report["modules"]["calc/arith.py"]
    assert entry["tests"] == ["tests/test_arith.py"]
    # 13 mutants: 5 fail a test, 3 loop forever (i += 1 deleted, negated, or 0 added), 1 declared
    # equivalent, 4 survive (i = 1 counts to n as well; double() is never called).
    expected = {"mutants": 13, "killed_by_tests": 5, "killed_by_notebooks": 0, "timeouts": 3}
    expected |= {"survived": 4, "equivalent": 1}
    assert {key: entry[key] for key in expected} == expected
    assert entry["kill_rate"] == round(8 / 12, 4)  # equivalents leave the denominator
    assert report["kill_rate"] == entry["kill_rate"]
    assert report["totals"]["killed"] == 8


def test_survivors_say_where_and_whether_a_test_reaches_them(report: dict) -> None:
    survivors = report["modules"]["calc/arith.py"]["survivors"]
    reached = [(s["line"], s["operator"], s["after"]) for s in survivors if s["covered"]]
    assert reached == [(14, "0 → 1", "i = 1")]
    unreached = sorted(s["operator"] for s in survivors if not s["covered"])
    assert unreached == ["* → /", "2 → 3", "return → return None"]
    assert {s["line"] for s in survivors if not s["covered"]} == {22}


def test_equivalents_are_listed_with_their_reason(report: dict) -> None:
    entry = report["modules"]["calc/arith.py"]
    assert [(e["id"], e["reason"]) for e in entry["equivalents"]] == [
        (EQUIVALENT, "at x == low both branches return x")
    ]
    assert EQUIVALENT not in {s["id"] for s in entry["survivors"]}
    assert entry["unmatched_equivalents"] == ["calc/arith.py::gone::drop -::y = -x"]
    assert entry["stale_equivalents"] == []


def test_render_shows_rate_table_survivors_and_reasons(report: dict) -> None:
    page = render(report)
    assert "**Kill rate: 66.7%**: 8 of 12 mutants killed" in page
    assert "| `calc/arith.py` | 13 | 5 | 0 | 3 | 4 | 1 | 66.7% |" in page
    assert "line 14, `0 → 1`: `i = 0` → `i = 1`" in page
    assert "(no test executes this line)" in page
    assert "at x == low both branches return x" in page


def test_a_failing_baseline_stops_the_run_naming_the_test(tmp_path: Path) -> None:
    project = copy_fixture(tmp_path)
    (project / "tests" / "test_broken.py").write_text(
        "from calc.arith import clamp\n\n\ndef test_fails():\n    assert clamp(9, 0, 5) == 9\n"
    )
    result = run_harness(project, tmp_path)
    assert result.returncode != 0
    assert "baseline fails" in result.stderr
    assert "tests/test_broken.py::test_fails" in result.stderr
    assert not (tmp_path / "report.json").exists()


def test_ids_survive_edits_elsewhere_and_are_unique(tmp_path: Path) -> None:
    before = mutants_of(FIXTURE / "calc" / "arith.py", FIXTURE)
    project = copy_fixture(tmp_path)
    module = project / "calc" / "arith.py"
    module.write_text("# a comment\n\nSCALE = 3\n" + module.read_text())
    after = [m for m in mutants_of(module, project) if m.qualname != "<module>"]
    assert [m.id for m in after] == [m.id for m in before]
    assert [m.line for m in after] == [m.line + 3 for m in before]
    assert len({m.id for m in before}) == len(before)


def test_what_is_never_mutated(tmp_path: Path) -> None:
    module = tmp_path / "pkg" / "m.py"
    module.parent.mkdir()
    module.write_text(
        '"""Docstring 1."""\n\n\n'
        "def f(x: int = 2) -> list[int]:\n"
        '    """Docstring 2."""\n'
        "    if x < 0:\n"
        '        raise ValueError(f"{x + 1} is negative")\n'
        "    print(x - 1)\n"
        "    return [x]\n"
    )
    found = {(m.line, m.operator) for m in mutants_of(module, tmp_path)}
    # The default, the comparison and its constant, and the return value: not the docstrings,
    # the annotations, the error message or the print.
    assert found == {(4, "2 → 3"), (6, "< → <="), (6, "0 → 1"), (9, "return → return None")}
    mutated = {m.after for m in mutants_of(module, tmp_path)}
    assert "if (x <= 0):" in mutated


def test_tests_and_notebooks_follow_imports() -> None:
    graph = dependents(Project())
    tests, notebooks = graph["snippets/attention.py"]
    # test_decoding imports snippets.attention only through reference_models and snippets.gpt.
    assert {"tests/test_attention.py", "tests/test_gpt.py", "tests/test_decoding.py"} <= set(tests)
    assert "tests/test_runtime.py" not in tests and "tests/test_mutants.py" not in tests
    assert "notebooks/gpt/tiny_gpt.ipynb" in notebooks
    assert "snippets/runtime.py" not in graph
    assert graph["snippets/dpo.py"] == (
        ["tests/test_dpo.py"],
        ["notebooks/zephyr/zephyr_pipeline.ipynb"],
    )
