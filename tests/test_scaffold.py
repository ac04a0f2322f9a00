"""`make note` end to end, in a copy of the one-note fixture site: the scaffolded note builds, its
placeholder check fails under nbval saying what to do, and a real check makes it pass. Bad input is
refused with a message naming the problem, and nothing is overwritten."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from conftest import mkdocs_build, nbval

from vrn_site.ledger import load_site
from vrn_site.scaffold import ScaffoldError, scaffold

SLUG, TITLE, ARXIV = "flash-attention", "FlashAttention", "2205.14135"


def make_note(site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vrn_site.scaffold", *args, "--root", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_scaffolded_note_builds_fails_its_placeholder_then_passes_a_real_check(mini_site):
    result = make_note(mini_site, SLUG, TITLE, ARXIV)
    assert result.returncode == 0, result.stderr
    assert "wrote docs/notes/flash-attention.md" in result.stdout

    claims = {c.id for c in load_site(mini_site).claims}
    assert "flash-attention.placeholder" in claims
    built = mkdocs_build(mini_site)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (mini_site / "_site" / "notes" / "flash-attention" / "index.html").exists()

    failing = nbval(mini_site)
    assert failing.returncode != 0
    assert "flash-attention.placeholder is a placeholder: write the first real claim" in (
        failing.stdout
    ), failing.stdout[-3000:]

    path = mini_site / "notebooks" / SLUG / "flash_attention_checks.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[-1].source = "blocks = [4, 4, 4]\nassert sum(blocks) == 12"
    nbformat.write(nb, path)
    passing = nbval(mini_site)
    assert passing.returncode == 0, passing.stdout[-3000:]


@pytest.mark.parametrize(
    "slug, arxiv, message",
    [
        ("Flash_Attention", ARXIV, "is not a slug"),
        ("flash-attention", "arXiv 2205", "is not an arXiv id"),
    ],
)
def test_bad_input_is_refused_with_a_reason(mini_site, slug, arxiv, message):
    result = make_note(mini_site, slug, TITLE, arxiv)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (mini_site / "docs" / "notes" / "flash-attention.md").exists()


def test_an_existing_note_is_never_overwritten(mini_site):
    before = (mini_site / "docs" / "notes" / "demo.md").read_text()
    with pytest.raises(ScaffoldError, match="exists already"):
        scaffold(mini_site, "demo", TITLE, ARXIV)
    assert (mini_site / "docs" / "notes" / "demo.md").read_text() == before
