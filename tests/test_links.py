"""The site's own link check (vrn_site.links) on a handmade built site."""

from __future__ import annotations

from pathlib import Path

from vrn_site.links import broken_links


def write(site: Path, rel: str, body: str) -> None:
    path = site / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body>{body}</body></html>")


def test_links_to_files_folders_and_anchors_that_exist_pass(tmp_path):
    write(
        tmp_path,
        "index.html",
        '<a href="notes/gpt/#kv">x</a><img src="fig.png"><a href="#top" id="top">',
    )
    write(tmp_path, "notes/gpt/index.html", '<h2 id="kv">KV</h2><a href="../../">home</a>')
    (tmp_path / "fig.png").write_bytes(b"png")
    write(tmp_path, "more.html", '<p id="top"></p><a href="https://example.org/x#y">e</a>')
    assert broken_links(tmp_path, {}) == []


def test_a_missing_file_and_a_missing_anchor_are_named_by_their_source(tmp_path):
    write(tmp_path, "index.html", '<a href="gone/">x</a><a href="notes/#nowhere">y</a>')
    write(tmp_path, "notes/index.html", '<h2 id="here">here</h2>')
    problems = broken_links(tmp_path, {"index.html": "docs/index.md"})
    assert problems == [
        "docs/index.md: links to 'gone/', which is not in the site",
        "docs/index.md: links to 'notes/#nowhere', but notes/index.html has no element with id "
        "'nowhere'",
    ]


def test_links_written_as_code_are_not_links(tmp_path):
    write(tmp_path, "index.html", '<code>&lt;a href="gone.html"&gt;</code>')
    assert broken_links(tmp_path, {}) == []
