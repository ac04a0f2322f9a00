"""Edits to the HTML that mkdocs-jupyter makes of a notebook, applied by the ledger plugin.

- ``searchable``: keeps code, outputs, prompts, copy buttons, tag chips and heading anchors out of
  the search index, so searches find the notes' prose and the notebooks' text.
- ``finish``: drops mkdocs-jupyter's own MathJax and Mermaid loaders (the site serves its own),
  puts each checking cell's anchor and a banner linking back to its claim before the cell, rejects
  links to ``.ipynb`` files, and offers the notebook for download.

The regular expressions below follow the markup of mkdocs-jupyter 0.25 (nbconvert's lab template).
If a new version changes it, ``finish`` fails loudly: the checking cells are counted against the
ledger, and a cell the page does not show is an error.
"""

from __future__ import annotations

import html
import re
from pathlib import PurePosixPath

from vrn_site.ledger import Claim, claim_ids_in_tags
from vrn_site.render import badge, link

SEARCH_EXCLUDED = re.compile(
    r'<pre(?=[\s>])|<(?:div|span|a)(?= class="(?:jp-InputPrompt|jp-OutputPrompt|notice|'
    r"clipboard-copy-txt|cell-tag|anchor-link)\b)"
)
TAGGED_CELL = re.compile(r'<div (?:id="[^"]*" )?class="jp-Cell [^"]*celltag_claim:[^"]*">')
CELL_TAG = re.compile(r"celltag_(\S+?)(?=[\s\"])")
NOTEBOOK_MATHJAX = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S
)
NOTEBOOK_MERMAID = re.compile(
    r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded", async \(\) => \{\s*'
    r'const diagrams = document\.querySelectorAll\("\.jp-Mermaid.*?<!-- End of mermaid configuration -->',
    re.S,
)
IPYNB_LINK = re.compile(r'<a [^>]*href="([^"#]*\.ipynb)(?:#[^"]*)?"')
WRAPPER = '<div class="jupyter-wrapper">'


class PageError(ValueError):
    """A notebook page that does not match the ledger, or links where no page is."""


def searchable(page_html: str) -> str:
    """Material's search skips elements marked ``data-search-exclude``, but tracks them by tag
    name, so a mark holds only on an element without a nested element of its own tag: mark the
    leaves."""
    return SEARCH_EXCLUDED.sub(r'\g<0> data-search-exclude="notebook"', page_html)


def note_url(from_src: str, note_src: str, use_directory_urls: bool) -> str:
    """The URL of a note relative to a notebook page (after directory URLs)."""
    target = link(from_src, note_src)[: -len(".md")]
    if use_directory_urls:
        # A notebook page lives one folder deeper (name/index.html) than its source file.
        return "../" + target + "/"
    return target + ".html"


def mark_checks(page_html: str, src: str, claims: list[Claim], use_directory_urls: bool) -> str:
    """Before each checking cell, its anchor and a banner linking to the claim it checks.

    The ledger numbered each notebook's checks in cell order; the anchors are handed out in the
    same order, and the page must show exactly those cells."""
    by_id = {c.id: c for c in claims}
    pending = {
        c.id: [check.anchor for check in c.checks if check.notebook.as_posix() == src]
        for c in claims
    }

    def mark(match: re.Match) -> str:
        banners = []
        for claim_id in claim_ids_in_tags(CELL_TAG.findall(match[0])):
            if not pending.get(claim_id):
                raise PageError(f"{src}: the page shows a check of {claim_id!r} the ledger lacks")
            claim, anchor = by_id[claim_id], pending[claim_id].pop(0)
            url = note_url(src, claim.note.as_posix(), use_directory_urls)
            banners.append(
                f'<div class="vrn-check" id="{anchor}">'
                f'Checks claim <a href="{url}#verdict-{claim.id}">{claim.seed} · '
                f"{html.escape(claim.id)}</a> {badge(claim.verdict)}</div>"
            )
        return "".join(banners) + match[0]

    page_html = TAGGED_CELL.sub(mark, page_html)
    if missing := [a for anchors in pending.values() for a in anchors]:
        raise PageError(f"{src}: checking cells {missing} are not on the rendered page")
    return page_html


def finish(page_html: str, src: str, claims: list[Claim], use_directory_urls: bool) -> str:
    """The notebook page as the site serves it (see the module docstring)."""
    page_html = NOTEBOOK_MERMAID.sub("", NOTEBOOK_MATHJAX.sub("", page_html))
    page_html = mark_checks(page_html, src, claims, use_directory_urls)
    if bad := IPYNB_LINK.search(page_html):
        href = bad[1]
        raise PageError(
            f"{src}: links to {href!r}, which is no page on the site; "
            f"link to the rendered notebook's address instead (e.g. '../{href[:-6]}/')"
        )
    # mkdocs-jupyter (include_source) copies the .ipynb beside the page: offer it for download.
    download = (
        f'<p class="vrn-download"><a href="{PurePosixPath(src).name}" download>Download this '
        "notebook</a> and run it locally (see the README), on CPU or GPU.</p>"
    )
    return page_html.replace(WRAPPER, download + WRAPPER, 1)
