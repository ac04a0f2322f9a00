"""The claims ledger and its guards: every kind of bad input fails loudly, naming the file and the
problem. Each case breaks a copy of the one-note fixture site (tests/fixtures/mini) in one way."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest
from conftest import (
    NOTE,
    NOTEBOOK,
    ROOT,
    assert_build_fails,
    edit,
    edit_notebook,
    ledger_problems,
    mkdocs_build,
    nbval,
)

from vrn_site.ledger import load_site
from vrn_site.values import REFERENCE, fill

# --- the fixture itself is sound ----------------------------------------------------------------


def test_the_fixture_ledger_loads_with_its_check(mini_site):
    claims = {c.id: c for c in load_site(mini_site).claims}
    assert set(claims) == {"demo.addition", "demo.unknowable"}
    (check,) = claims["demo.addition"].checks
    assert (check.notebook.as_posix(), check.cell) == (NOTEBOOK, 2)
    assert claims["demo.unknowable"].checks == []


def test_the_fixture_site_builds_with_claims_table_ledger_and_claims_json(mini_site):
    result = mkdocs_build(mini_site)
    assert result.returncode == 0, result.stderr[-3000:]
    built = mini_site / "_site"
    note = (built / "notes" / "demo" / "index.html").read_text()
    assert 'href="../../notebooks/demo/demo/#claim-demo.addition"' in note
    assert "verdict-unverifiable-here" in note
    notebook = (built / "notebooks" / "demo" / "demo" / "index.html").read_text()
    assert 'id="claim-demo.addition"' in notebook  # the anchor the claims table links to
    assert "cdnjs" not in notebook and "Load mathjax" not in notebook
    assert (
        built / "notebooks" / "demo" / "demo" / "demo.ipynb"
    ).exists()  # the download link's target
    ledger = (built / "ledger" / "index.html").read_text()
    assert "No verifying run in this build" in ledger
    published = json.loads((built / "claims.json").read_text())
    assert [c["id"] for c in published["claims"]] == ["demo.addition", "demo.unknowable"]
    assert published["verdict_counts"]["holds"] == 1


# --- claims and checks --------------------------------------------------------------------------


def test_two_checks_of_one_claim_in_one_notebook_get_their_own_anchors(mini_site):
    def add_second_check(nb):
        nb.cells.append(nbformat.v4.new_code_cell("assert total % 2 == 0", execution_count=3))
        nb.cells[-1].metadata["tags"] = ["claim:demo.addition"]

    edit_notebook(mini_site, add_second_check)
    (claim, _) = load_site(mini_site).claims
    assert [c.anchor for c in claim.checks] == ["claim-demo.addition", "claim-demo.addition-2"]
    assert mkdocs_build(mini_site).returncode == 0
    built = mini_site / "_site"
    notebook = (built / "notebooks" / "demo" / "demo" / "index.html").read_text()
    assert 'id="claim-demo.addition"' in notebook and 'id="claim-demo.addition-2"' in notebook
    note = (built / "notes" / "demo" / "index.html").read_text()
    assert (
        'href="../../notebooks/demo/demo/#claim-demo.addition-2">demo, Cell 3, In [3]</a>' in note
    )


def test_a_claim_without_a_check_is_named(mini_site):
    edit_notebook(mini_site, lambda nb: nb.cells[2].metadata.update(tags=[]))
    problems = ledger_problems(mini_site)
    assert f"{NOTE}: claim 'demo.addition' has no check" in problems
    assert_build_fails(mini_site, "demo.addition", "has no check")


def test_a_tagged_cell_without_an_assert_is_named(mini_site):
    edit_notebook(mini_site, lambda nb: setattr(nb.cells[2], "source", "print(total == 4)"))
    problems = ledger_problems(mini_site)
    assert f"{NOTEBOOK} Cell 1, In [2] (claim demo.addition): the check cannot fail" in problems
    assert_build_fails(mini_site, NOTEBOOK, "the check cannot fail")


def test_a_check_of_an_unknown_claim_is_named(mini_site):
    edit_notebook(mini_site, lambda nb: nb.cells[2].metadata["tags"].append("claim:demo.missing"))
    problems = ledger_problems(mini_site)
    assert f"{NOTEBOOK}: Cell 1, In [2] checks unknown claim 'demo.missing'" in problems


def test_a_duplicate_claim_id_is_named(mini_site):
    other = mini_site / "docs" / "notes" / "other.md"
    other.write_text((mini_site / NOTE).read_text())
    problems = ledger_problems(mini_site)
    assert "claim 'demo.addition' repeats an id already used in docs/notes/" in problems
    assert_build_fails(mini_site, "repeats an id")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("verdict: holds", "verdict: true-ish", "verdict 'true-ish' is not one of"),
        (
            '    finding: "The sum is {{ demo.total }}."\n',
            "",
            "claim 'demo.addition' lacks finding",
        ),
        ("seed: X1", "seed: first", "seed 'first' is not a brief number"),
        ("id: demo.addition", "id: Demo Addition", "id must be lowercase"),
        ('    reason: "It needs a source this machine cannot reach."\n', "", "gives no reason"),
        ("    seed: X1", "    seed: X1\n    colour: blue", "has unknown field(s) colour"),
    ],
)
def test_a_malformed_claim_is_named(mini_site, old, new, message):
    edit(mini_site / NOTE, old, new)
    problems = ledger_problems(mini_site)
    assert NOTE in problems and message in problems, problems


def test_a_page_with_claims_but_no_table_marker_fails_the_build(mini_site):
    edit(mini_site / NOTE, "<!-- claims-table -->", "")
    assert_build_fails(mini_site, NOTE, "has no '<!-- claims-table -->' line")


def test_a_notebook_that_is_not_json_is_named(mini_site):
    (mini_site / NOTEBOOK).write_text('{"cells": [')
    problems = ledger_problems(mini_site)
    assert f"{NOTEBOOK}: not a valid notebook (JSONDecodeError" in problems
    assert_build_fails(mini_site, NOTEBOOK, "not a valid notebook")


# --- numbers quoted from notebooks ----------------------------------------------------------------


def test_a_quoted_number_comes_from_the_notebook_output(mini_site):
    assert mkdocs_build(mini_site).returncode == 0
    note = (mini_site / "_site" / "notes" / "demo" / "index.html").read_text()
    assert "two plus two is 4." in note and "The sum is 4." in note and "{{" not in note
    published = json.loads((mini_site / "_site" / "claims.json").read_text())
    assert published["claims"][0]["finding"] == "The sum is 4."


def test_a_quote_of_an_unpublished_number_fails_the_build(mini_site):
    edit(mini_site / NOTE, "{{ demo.total }}.\n", "{{ demo.product }}.\n")
    assert_build_fails(mini_site, NOTE, "demo.product", "prints 'product = ...'")


def test_a_changed_number_fails_nbval_before_it_reaches_the_page(mini_site):
    edit_notebook(mini_site, lambda nb: nb.cells[3].outputs[0].update(text="total = 5\n"))
    result = nbval(mini_site)
    assert result.returncode != 0 and "mismatch" in result.stdout.lower(), result.stdout[-3000:]


def test_lax_mode_still_compares_published_numbers_within_tolerance(mini_site):
    edit_notebook(mini_site, lambda nb: nb.cells[3].outputs[0].update(text="total = 9\n"))
    result = nbval(mini_site, "--nbval-lax")
    assert result.returncode != 0, result.stdout[-3000:]
    assert "published values beyond tolerance" in result.stdout, result.stdout[-3000:]
    assert "total: stored '9', now '4'" in result.stdout, result.stdout[-3000:]


def test_lax_mode_passes_the_untouched_fixture(mini_site):
    result = nbval(mini_site, "--nbval-lax")
    assert result.returncode == 0, result.stdout[-3000:]


# --- links --------------------------------------------------------------------------------------


def test_a_broken_link_in_a_note_fails_the_build(mini_site):
    edit(
        mini_site / NOTE,
        "[notebook](../notebooks/demo/demo.ipynb)",
        "[notebook](../notebooks/demo/gone.ipynb)",
    )
    assert_build_fails(mini_site, "notes/demo.md", "gone.ipynb")


def test_a_link_to_a_missing_anchor_fails_the_build(mini_site):
    edit(mini_site / NOTE, "[notebook](../notebooks/demo/demo.ipynb)", "[notebook](#no-such-part)")
    assert_build_fails(
        mini_site, "docs/notes/demo.md: links to '#no-such-part'", "no element with id"
    )


def test_a_broken_link_in_a_notebook_fails_the_build(mini_site):
    edit_notebook(
        mini_site,
        lambda nb: setattr(
            nb.cells[0], "source", nb.cells[0].source.replace("notes/demo/", "notes/gone/")
        ),
    )
    assert_build_fails(mini_site, "notebooks/demo/demo.ipynb", "notes/gone/")


def test_a_notebook_link_to_an_ipynb_file_fails_the_build(mini_site):
    edit_notebook(
        mini_site, lambda nb: setattr(nb.cells[0], "source", "# Demo\n\nSee [other](other.ipynb).")
    )
    assert_build_fails(mini_site, "notebooks/demo/demo.ipynb", "links to 'other.ipynb'")


# --- notebooks under nbval, and the run record --------------------------------------------------


def test_nbval_passes_and_records_the_verified_claims(mini_site):
    result = nbval(mini_site)
    assert result.returncode == 0, result.stdout[-3000:]
    record = json.loads((mini_site / "build" / "verification.json").read_text())
    assert record["claims"] == {"demo.addition": "passed"}
    assert record["device"] and record["torch"] and record["mode"].startswith("nbval:")
    # the ledger page now shows that run
    assert mkdocs_build(mini_site).returncode == 0
    ledger = (mini_site / "_site" / "ledger" / "index.html").read_text()
    assert "1 of 1 checks passed" in ledger


def test_a_cell_that_raises_fails_nbval_naming_the_notebook(mini_site):
    edit_notebook(
        mini_site,
        lambda nb: setattr(nb.cells[1], "source", "total = 2 + 2\nraise ValueError('boom')"),
    )
    result = nbval(mini_site)
    assert result.returncode != 0
    assert NOTEBOOK in result.stdout and "ValueError" in result.stdout, result.stdout[-3000:]
    assert "boom" in result.stdout
    record = json.loads((mini_site / "build" / "verification.json").read_text())
    assert record["claims"]["demo.addition"] in {"passed", "failed"}  # recorded either way


def test_a_failing_check_is_recorded_as_failed(mini_site):
    edit_notebook(mini_site, lambda nb: setattr(nb.cells[1], "source", "total = 2 + 3\nprint(4)"))
    result = nbval(mini_site)
    assert result.returncode != 0 and "AssertionError" in result.stdout, result.stdout[-3000:]
    record = json.loads((mini_site / "build" / "verification.json").read_text())
    assert record["claims"] == {"demo.addition": "failed"}


def test_a_stored_output_that_no_longer_matches_fails_nbval(mini_site):
    edit_notebook(mini_site, lambda nb: nb.cells[1].outputs[0].update(text="5\n"))
    result = nbval(mini_site)
    assert result.returncode != 0
    assert NOTEBOOK in result.stdout and "mismatch" in result.stdout.lower(), result.stdout[-3000:]


def test_the_executor_names_the_notebook_whose_cell_fails(mini_site):
    edit_notebook(mini_site, lambda nb: setattr(nb.cells[1], "source", "raise KeyError('gone')"))
    result = subprocess.run(
        [sys.executable, "-m", "vrn_site.execute", str(mini_site / NOTEBOOK)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert f"{mini_site / NOTEBOOK}: a cell failed" in result.stderr and "KeyError" in result.stderr


def test_the_project_ledger_is_sound():
    claims = load_site(ROOT).claims
    assert claims, "the project declares no claims"
    for claim in claims:
        assert claim.checks or claim.verdict == "unverifiable here", claim.id


def test_the_project_notes_quote_only_published_values():
    values = load_site(ROOT).values
    quoted = 0
    for page in sorted((ROOT / "docs").glob("**/*.md")):
        text = page.read_text()
        quoted += len(REFERENCE.findall(text))
        fill(text, values, str(page.relative_to(ROOT)))  # raises KeyError naming the page
    assert quoted > 0, "no note quotes a measured number from its notebooks"
