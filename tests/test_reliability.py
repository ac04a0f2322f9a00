"""A claim is green only when a check that can fail has passed: each way a probe found to get a
green claim without one, and each bad input that failed silently or with a raw traceback, is a
case here, on a copy of the one-note fixture site (tests/fixtures/mini)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import (
    NOTE,
    NOTEBOOK,
    ROOT,
    edit,
    edit_notebook,
    ledger_problems,
    machine_traces,
    mkdocs_build,
    nbval,
)

from vrn_site import record
from vrn_site.ledger import load_site
from vrn_site.shard import balance, parse

# --- front matter that would drop a note's claims ------------------------------------------------


def test_unclosed_front_matter_names_the_note(mini_site):
    edit(mini_site / NOTE, "\n---\n\n# Demo note", "\n\n# Demo note")
    problems = ledger_problems(mini_site)
    assert f"{NOTE}: the front matter opened by '---' on line 1 is never closed" in problems


def test_a_misspelt_claims_key_names_the_note(mini_site):
    edit(mini_site / NOTE, "claims:\n", "claim:\n")
    problems = ledger_problems(mini_site)
    assert f"{NOTE}: unknown front matter key(s) 'claim'" in problems
    assert f"{NOTE}: the note declares no claims" in problems


def test_a_yaml_error_gives_the_files_line_and_a_relative_path(mini_site):
    edit(mini_site / NOTE, "order: 1\n", "order: [1\n")  # line 3 of the file
    problems = ledger_problems(mini_site)
    assert f"{NOTE}:4: the front matter is not valid YAML" in problems  # the flow ends on line 4
    assert str(mini_site) not in problems


def test_null_cell_metadata_is_read_as_no_tags(mini_site):
    path = mini_site / NOTEBOOK
    nb = json.loads(path.read_text())
    nb["cells"][1]["metadata"] = None
    path.write_text(json.dumps(nb))
    assert {c.id for c in load_site(mini_site).claims} == {"demo.addition", "demo.unknowable"}


# --- checks that cannot fail ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "tags", "reason"),
    [
        ("assert True\nprint('four')", [], "constant"),
        ("if False:\n    assert total == 4\nprint('four')", [], "never runs"),
        ("# NBVAL_SKIP\nassert total == 5\nprint('four')", [], "NBVAL_SKIP"),
        ("assert total == 5\nprint('four')", ["raises-exception"], "raises-exception"),
        ("assert total == 4\nprint('four')", ["nbval-skip"], "nbval-skip"),
    ],
)
def test_a_check_that_cannot_fail_stops_the_ledger_and_the_build(mini_site, source, tags, reason):
    def vacuous(nb):
        nb.cells[2].source = source
        nb.cells[2].metadata["tags"] += tags

    edit_notebook(mini_site, vacuous)
    problems = ledger_problems(mini_site)
    assert f"{NOTEBOOK} Cell 1, In [2] (claim demo.addition): the check cannot fail" in problems
    assert reason in problems


# --- what a run verified, and what the site says about it ----------------------------------------


def test_a_failing_check_names_its_claim_and_cell(mini_site):
    edit_notebook(mini_site, lambda nb: setattr(nb.cells[1], "source", "total = 2 + 3\nprint(4)"))
    result = nbval(mini_site)
    assert result.returncode != 0
    assert f"{NOTEBOOK} Cell 1, In [2] is the check of claim demo.addition" in result.stdout


def test_a_failed_import_skips_the_rest_of_the_notebook_with_its_reason(mini_site):
    edit_notebook(
        mini_site, lambda nb: setattr(nb.cells[1], "source", "import no_such_module\ntotal = 4")
    )
    result = nbval(mini_site)
    assert result.returncode != 0
    assert "NameError" not in result.stdout, result.stdout[-3000:]
    assert "ModuleNotFoundError" in result.stdout
    assert "2 skipped" in result.stdout, result.stdout[-1000:]
    run = record.read(mini_site / "build" / "verification.json")
    assert run.claims == {"demo.addition": "skipped"}


def test_require_all_fails_a_run_that_did_not_verify_every_claim(mini_site):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval", "notebooks"]
        + ["-q", "--ledger-require-all", "-k", "not Cell 1"],
        cwd=mini_site,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0, result.stdout[-2000:]
    assert "claims not verified" in result.stdout
    assert f"demo.addition (not run, {NOTE})" in result.stdout


def test_the_page_says_when_the_run_is_stale_or_partial(mini_site):
    assert nbval(mini_site).returncode == 0
    edit_notebook(mini_site, lambda nb: nb.cells[0].source.replace("Demo", "The demo"))
    edit(mini_site / NOTEBOOK, "Demo notebook", "The demo notebook")  # a new digest
    run = record.read(mini_site / "build" / "verification.json")
    status = record.status(run, load_site(mini_site), mini_site)
    assert status.stale and not status.verified
    assert f"changed since the run: {NOTEBOOK}" in status.problems
    assert mkdocs_build(mini_site).returncode == 0  # the build passes, and says so on the page
    ledger = (mini_site / "_site" / "ledger" / "index.html").read_text()
    assert "have changed since" in ledger and "passed on other notebooks" in ledger

    partial = record.RunRecord.from_json(json.loads(json.dumps(record.dataclasses.asdict(run))))
    partial.claims, partial.notebooks = {}, {}
    status = record.status(partial, load_site(mini_site), mini_site)
    assert not status.verified and "not run: demo.addition" in status.problems


def test_a_lax_run_is_not_shown_as_verified(mini_site):
    assert nbval(mini_site, "--nbval-lax").returncode == 0
    run = record.read(mini_site / "build" / "verification.json")
    status = record.status(run, load_site(mini_site), mini_site)
    assert not status.verified and any("not strict" in p for p in status.problems)
    assert mkdocs_build(mini_site).returncode == 0
    note = (mini_site / "_site" / "notes" / "demo" / "index.html").read_text()
    assert "asserts passed, outputs not compared" in note


# --- shards --------------------------------------------------------------------------------------


def add_second_note(site: Path) -> None:
    """A copy of the demo note and notebook under another name, with its own claim ids."""
    text = (site / NOTE).read_text().replace("demo.", "twin.").replace("demo:", "twin:")
    (site / "docs" / "notes" / "twin.md").write_text(text.replace("{{ twin.", "{{ twin."))
    (site / "notebooks" / "twin").mkdir()
    nb = (site / NOTEBOOK).read_text().replace("claim:demo.", "claim:twin.")
    (site / "notebooks" / "twin" / "twin.ipynb").write_text(nb)


def run_nbval(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval", "notebooks", "-q"]
        + ["--ledger-require-all", *args],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_shards_merged_give_the_ledger_of_one_run(mini_site):
    add_second_note(mini_site)
    assert {c.id for c in load_site(mini_site).claims} >= {"demo.addition", "twin.addition"}
    one = run_nbval(mini_site, "--ledger-record", "one.json")
    assert one.returncode == 0, one.stdout[-2000:]
    for i in (1, 2):
        shard = run_nbval(mini_site, "--shard", f"{i}/2", "--ledger-record", f"shard{i}.json")
        assert shard.returncode == 0, shard.stdout[-2000:]
        assert "1 checkable" not in shard.stdout
    shards = [record.read(mini_site / f"shard{i}.json") for i in (1, 2)]
    assert all(len(s.claims) == 1 for s in shards)  # each shard checked one whole note
    merged = record.merge(shards)
    single = record.read(mini_site / "one.json")
    assert merged.claims == single.claims == {"demo.addition": "passed", "twin.addition": "passed"}
    assert merged.notebooks == single.notebooks
    site = load_site(mini_site)
    assert record.status(merged, site, mini_site).verified
    with pytest.raises(ValueError, match="more than one shard"):
        record.merge([shards[0], shards[0]])


def test_a_bad_shard_is_refused_with_what_is_expected():
    for bad in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(ValueError, match="expected i/n"):
            parse(bad)
    assert parse("2/3") == (2, 3)


def test_balance_puts_each_key_in_one_group_heaviest_first():
    groups = balance({"a": 5, "b": 4, "c": 3, "d": 1}, 2)
    assert groups == [{"a", "d"}, {"b", "c"}]
    assert set().union(*groups) == {"a", "b", "c", "d"}


# --- the built site leaks nothing of this machine ------------------------------------------------


def test_the_built_site_leaks_no_path_host_or_user(mini_site):
    assert nbval(mini_site).returncode == 0  # the run record is on the ledger page
    assert mkdocs_build(mini_site).returncode == 0
    assert machine_traces(mini_site / "_site", mini_site) == []


def test_the_leak_scan_finds_a_stored_traceback_path(mini_site, tmp_path):
    built = tmp_path / "built"
    shutil.copytree(mini_site / "notebooks", built)
    leaky = nbformat.read(built / "demo" / "demo.ipynb", as_version=4)
    trace = f"File {ROOT}/snippets/gpt.py:12"
    leaky.cells[1].outputs = [
        nbformat.v4.new_output("error", ename="E", evalue="x", traceback=[trace])
    ]
    nbformat.write(leaky, built / "demo" / "demo.ipynb")
    assert machine_traces(built, mini_site) == [f"demo/demo.ipynb: {ROOT}"]


def test_two_runs_that_disagree_are_named_claim_by_claim(mini_site):
    assert nbval(mini_site).returncode == 0
    path = mini_site / "build" / "verification.json"
    first = record.read(path)
    again = record.RunRecord.from_json(record.dataclasses.asdict(first))
    assert record.differences(first, again) == []
    again.claims = {"demo.addition": "failed"}
    assert record.differences(first, again) == ["claim demo.addition: passed vs failed"]
    record.write(mini_site / "other.json", again)
    result = subprocess.run(
        [sys.executable, "-m", "vrn_site.record", "same", str(path), str(mini_site / "other.json")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "claim demo.addition: passed vs failed" in result.stderr


# --- the executor --------------------------------------------------------------------------------


def test_the_executor_names_a_notebook_whose_cell_runs_too_long(mini_site):
    edit_notebook(
        mini_site, lambda nb: setattr(nb.cells[1], "source", "import time\ntime.sleep(30)")
    )
    result = subprocess.run(
        [sys.executable, "-m", "vrn_site.execute", "--timeout", "2", str(mini_site / NOTEBOOK)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]  # after what the interrupted kernel printed
    assert last.startswith(f"{mini_site / NOTEBOOK}: a cell ran longer than 2 s and was stopped")


# --- an optional reference library that is not installed ---------------------------------------

CROSS_CHECKS = {  # test module: the reference library it compares with
    "test_gpt.py": "transformers",
    "test_gqa.py": "transformers",
    "test_decoding.py": "transformers",
    "test_bert.py": "transformers",
    "test_beam_search.py": "transformers",
    "test_lora.py": "peft",
}


def test_without_transformers_or_peft_the_cross_checks_skip_with_their_reason():
    """With both libraries unimportable (None in sys.modules makes `import` raise ImportError),
    each cross-check module is skipped, the reason naming what it needed: no error, no pass."""
    hide = (
        "import sys; sys.modules.update(transformers=None, peft=None); import pytest; "
        f"raise SystemExit(pytest.main({['-p', 'no:cacheprovider', '-rs', *CROSS_CHECKS]!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide], cwd=ROOT / "tests", capture_output=True, text=True
    )
    out = done.stdout
    assert done.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, out  # all skipped whole
    assert f"{len(CROSS_CHECKS)} skipped" in out and "passed" not in out and "error" not in out, out
    skips = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    for module, library in CROSS_CHECKS.items():
        [line] = [s for s in skips if module in s]
        assert library in line and "SKIPPED [1]" in line, line
