"""Scaffold a new note: ``make note NAME=<slug> TITLE="<paper title>" ARXIV=<id>``.

Writes docs/notes/<slug>.md (front matter with one placeholder claim, the paper's reference block,
the sections every note has) and notebooks/<slug>/<slug>_checks.ipynb (title, the setup cell, and
the placeholder claim's checking cell). The placeholder check fails, saying what to do, until the
first real claim replaces it; the note builds from the start. Refuses to overwrite anything and
rejects a bad slug or arXiv id with a message saying why.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

from vrn_site import project_root
from vrn_site.ledger import front_matter

SLUG = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
ARXIV = re.compile(r"^\d{4}\.\d{4,5}(?:v\d+)?$")
SETUP = """from snippets.runtime import setup  # first: pins the CPU's numerics before torch loads

device, gen = setup(seed=0)"""


class ScaffoldError(ValueError):
    """The note cannot be scaffolded; the message says why."""


def placeholder_id(slug: str) -> str:
    return f"{slug}.placeholder"


def page_text(slug: str, title: str, arxiv: str, order: int, notebook: str) -> str:
    claim_id = placeholder_id(slug)
    return f"""---
title: "{title}"
nav_title: "{title}"
order: {order}
notebooks:
  {notebook}: "Checks"
claims:
  - id: {claim_id}
    seed: X1
    claim: "A placeholder: replace it with the first claim of the reading notes on this paper."
    verdict: holds
    finding: "Nothing yet: this claim's check fails until a real claim replaces it."
---

# {title}

!!! abstract "Paper"
    Authors (year). *{title}*. [arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})

The idea of the paper in a paragraph, in our own words.

## What the notes said, and what we found

### X1 · The first claim
<!-- claim: {claim_id} -->

> The notes: what the reading notes said, paraphrased.

**What the paper says.** Cited with its section, table or equation.

**What we found.** The evidence: an excerpt of `snippets/`, the equation, a figure from the
notebook.

## Notebooks

- [Checks](../notebooks/{slug}/{notebook}.ipynb)

## Claims

<!-- claims-table -->

## References

- Authors (year). *{title}*. arXiv:{arxiv}.
"""


def notebook(slug: str, title: str) -> nbformat.NotebookNode:
    claim_id = placeholder_id(slug)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            f"# {title}: checks\n\nCompanion notebook of the note [{title}](../../../notes/{slug}/)."
        ),
        nbformat.v4.new_code_cell(SETUP),
        nbformat.v4.new_markdown_cell("## X1 · The first claim"),
        nbformat.v4.new_code_cell(
            "# Replace this cell with code that asserts the first real claim's finding, and the\n"
            f"# placeholder claim in docs/notes/{slug}.md with that claim (id, seed, verdict, finding).\n"
            f"assert False, (  # noqa: B011\n"
            f'    "{claim_id} is a placeholder: write the first real claim in "\n'
            f'    "docs/notes/{slug}.md and assert its finding in this cell"\n'
            f")"
        ),
    ]
    nb.cells[-1].metadata["tags"] = [f"claim:{claim_id}"]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def scaffold(root: Path, slug: str, title: str, arxiv: str) -> list[Path]:
    """Write the note and its notebook under ``root``; return the paths written."""
    if not SLUG.match(slug):
        raise ScaffoldError(
            f"NAME={slug!r} is not a slug: lowercase letters and digits, words joined by '-' "
            "(e.g. NAME=flash-attention)"
        )
    if not ARXIV.match(arxiv):
        raise ScaffoldError(f"ARXIV={arxiv!r} is not an arXiv id like 2305.13245 (or 2305.13245v2)")
    if not title.strip():
        raise ScaffoldError(
            'TITLE is empty: give the paper\'s title, TITLE="Attention Is All You Need"'
        )
    page = root / "docs" / "notes" / f"{slug}.md"
    folder = root / "notebooks" / slug
    for existing in (page, folder):
        if existing.exists():
            raise ScaffoldError(f"{existing.relative_to(root)} exists already: not overwriting it")
    orders = [
        o
        for p in (root / "docs" / "notes").glob("*.md")
        if isinstance(o := (front_matter(p, root, []) or {}).get("order"), int)
    ]
    stem = f"{slug.replace('-', '_')}_checks"
    page.write_text(page_text(slug, title.strip(), arxiv, max(orders, default=0) + 1, stem))
    folder.mkdir(parents=True)
    nbformat.write(notebook(slug, title.strip()), folder / f"{stem}.ipynb")
    return [page, folder / f"{stem}.ipynb"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("title")
    parser.add_argument("arxiv")
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args(argv)
    args.root = args.root or project_root()
    try:
        written = scaffold(args.root, args.slug, args.title, args.arxiv)
    except ScaffoldError as err:
        sys.exit(f"make note: {err}")
    for path in written:
        print(f"wrote {path.relative_to(args.root)}")
    print(
        "Next: write the first claim in the note's front matter, assert it in the notebook's "
        "checking cell, then `make notebooks` and `make test`."
    )


if __name__ == "__main__":
    main()
