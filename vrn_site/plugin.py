"""MkDocs plugin ``ledger``: notebooks from notebooks/, the claims tables, the ledger page,
claims.json, and the scripts the site serves itself.

- on_config: load and check the ledger (vrn_site.ledger); any problem stops the build with a message
  naming the claim and the file.
- on_files: add every notebook under ``notebooks_dir`` as a page (before mkdocs-jupyter converts
  them), and the vendored MathJax and Mermaid files from node_modules under assets/vendor/.
- on_page_markdown: fill in the numbers a note quotes from its notebooks (``{{ notebook.name }}``,
  vrn_site.values); replace ``<!-- claims-table -->`` on a note page with its claims, and
  ``<!-- ledger -->`` with every claim of the site, counts by verdict and the last verifying run.
- on_post_page: on notebook pages, drop mkdocs-jupyter's own MathJax/Mermaid loaders (the site loads
  its own) and mark each checking cell with an anchor ``claim-<id>`` and a link back to its note.
  claims.json, the whole ledger, is added at the site root.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path, PurePosixPath

from mkdocs.config import config_options
from mkdocs.config.base import Config
from mkdocs.exceptions import PluginError
from mkdocs.plugins import BasePlugin, event_priority
from mkdocs.structure.files import File, Files

from vrn_site.ledger import (
    VERDICTS,
    Claim,
    LedgerError,
    check_anchor,
    claim_ids_in_tags,
    load_ledger,
    notebook_paths,
    verdict_counts,
)
from vrn_site.values import fill, published_values

CLAIMS_MARKER = "<!-- claims-table -->"
LEDGER_MARKER = "<!-- ledger -->"
# Files of the npm packages the site serves itself (package.json), relative to node_modules/.
VENDORED = {
    "mathjax/es5": (
        "tex-mml-chtml.js",
        "output/chtml/fonts/woff-v2/*",
        "input/tex/extensions/**/*",
        "ui/*",
        "a11y/*",
    ),
    "mermaid/dist": ("mermaid.min.js",),
}
NOTEBOOK_MATHJAX = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S
)
NOTEBOOK_MERMAID = re.compile(
    r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded", async \(\) => \{\s*'
    r'const diagrams = document\.querySelectorAll\("\.jp-Mermaid.*?<!-- End of mermaid configuration -->',
    re.S,
)
TAGGED_CELL = re.compile(r'<div (?:id="[^"]*" )?class="jp-Cell [^"]*celltag_claim:[^"]*">')


class LedgerConfig(Config):
    notebooks_dir = config_options.Type(str, default="notebooks")
    node_modules = config_options.Type(str, default="node_modules")
    run_record = config_options.Type(str, default="build/verification.json")


class LedgerPlugin(BasePlugin[LedgerConfig]):
    def on_config(self, config):
        self.root = Path(config.config_file_path).resolve().parent
        self.notebooks_dir = self.root / self.config.notebooks_dir
        try:
            self.claims = load_ledger(self.root, Path(config.docs_dir), self.notebooks_dir)
        except LedgerError as err:
            raise PluginError(str(err)) from None
        self.values = published_values(self.notebooks_dir)
        for claim in self.claims:
            claim.claim = self._fill(claim.claim, f"docs/{claim.note}")
            claim.finding = self._fill(claim.finding, f"docs/{claim.note}")
        self.by_id = {c.id: c for c in self.claims}
        self.run = self._read_run_record()
        config.watch.extend(
            str(p) for p in (self.notebooks_dir, self.root / "snippets") if p.is_dir()
        )
        return config

    def _fill(self, text: str, where: str) -> str:
        try:
            return fill(text, self.values, where)
        except KeyError as err:
            raise PluginError(err.args[0]) from None

    def _read_run_record(self) -> dict | None:
        path = self.root / self.config.run_record
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PluginError(
                f"{path}: the verifying run's record is not valid JSON: {err}"
            ) from None

    @event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
    def on_files(self, files: Files, config) -> Files:
        for path in notebook_paths(self.notebooks_dir):
            rel = path.relative_to(self.root).as_posix()
            files.append(File(rel, str(self.root), config.site_dir, config.use_directory_urls))
        node_modules = self.root / self.config.node_modules
        for package_dir, patterns in VENDORED.items():
            base = node_modules / package_dir
            if not base.is_dir():
                raise PluginError(
                    f"{base} is missing: the site serves MathJax and Mermaid itself; "
                    "run `make setup` (or `npm ci`) first"
                )
            for pattern in patterns:
                for path in sorted(base.glob(pattern)):
                    if path.is_file():
                        rel = path.relative_to(node_modules).as_posix()
                        files.append(
                            File(
                                rel,
                                str(node_modules),
                                config.site_dir,
                                False,
                                dest_uri=f"assets/vendor/{rel}",
                            )
                        )
        files.append(File.generated(config, "claims.json", content=self._claims_json()))
        return files

    def on_page_markdown(self, markdown: str, page, config, files) -> str:
        src = page.file.src_uri
        markdown = self._fill(markdown, f"docs/{src}")
        own = [c for c in self.claims if c.note.as_posix() == src]
        if own and CLAIMS_MARKER not in markdown:
            raise PluginError(
                f"docs/{src}: the page declares claims but has no '{CLAIMS_MARKER}' line"
            )
        if own:
            markdown = markdown.replace(
                CLAIMS_MARKER, self._claims_table(own, src, with_note=False)
            )
        if LEDGER_MARKER in markdown:
            markdown = markdown.replace(LEDGER_MARKER, self._ledger(src))
        return markdown

    # --- rendering -------------------------------------------------------------------------
    def _link(self, from_src: str, to_src: str) -> str:
        return os.path.relpath(to_src, PurePosixPath(from_src).parent.as_posix()).replace(
            os.sep, "/"
        )

    def _check_cell(self, claim: Claim, from_src: str) -> str:
        if claim.verdict == "unverifiable here":
            sources = "; ".join(claim.sources)
            return f"not checkable: {_cell(claim.reason or '')}" + (
                f" ({_cell(sources)})" if sources else ""
            )
        links = []
        for check in claim.checks:
            target = self._link(from_src, check.notebook.as_posix())
            prompt = f"In [{check.execution_count}]" if check.execution_count else "cell"
            links.append(f"[{check.notebook.stem}, {prompt}]({target}#{check.anchor})")
        return "<br>".join(links) + "<br>" + self._result(claim)

    def _result(self, claim: Claim) -> str:
        if not self.run:
            return '<span class="run">not run in this build</span>'
        outcome = self.run.get("claims", {}).get(claim.id, "not run")
        return f'<span class="run run-{outcome.replace(" ", "-")}">{outcome}</span>'

    def _claims_table(self, claims: list[Claim], from_src: str, with_note: bool) -> str:
        head = ["Seed", "The notes said", "Verdict", "What we found", "Check and last run"]
        if with_note:
            head.insert(0, "Note")
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in claims:
            cells = [
                f'<strong title="{c.id}">{c.seed}</strong>',
                _cell(c.claim),
                _badge(c.verdict),
                _cell(c.finding),
                self._check_cell(c, from_src),
            ]
            if with_note:
                cells.insert(
                    0, f"[{c.note.stem}]({self._link(from_src, c.note.as_posix())}#claims)"
                )
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows) + "\n"

    def _ledger(self, from_src: str) -> str:
        counts = verdict_counts(self.claims)
        lines = [
            f"**{len(self.claims)} claims** from {len({c.note for c in self.claims})} notes.",
            "",
            "| Verdict | Claims |",
            "|---|---|",
            *[f"| {_badge(v)} | {counts[v]} |" for v in VERDICTS],
            "",
        ]
        if self.run:
            outcomes = self.run.get("claims", {})
            checkable = [c.id for c in self.claims if c.verdict != "unverifiable here"]
            passed = sum(outcomes.get(i) == "passed" for i in checkable)
            kind = "success" if passed == len(checkable) else "failure"
            lines += [
                f'!!! {kind} "Last verifying run"',
                f"    {passed} of {len(checkable)} checks passed on {self.run['date']}: "
                f"{self.run['platform']}, Python {self.run['python']}, torch {self.run['torch']}, "
                f"device {self.run['device']} ({self.run['mode']}).",
                "",
            ]
        else:
            lines += [
                '!!! warning "No verifying run in this build"',
                "    This site was built without running the notebooks' checks first; "
                "`make test` runs them and records the result shown here.",
                "",
            ]
        lines.append(self._executions())
        lines += ["", self._claims_table(self.claims, from_src, with_note=True)]
        return "\n".join(lines)

    def _executions(self) -> str:
        rows = [
            "| Notebook | Outputs stored on | torch | Device | Seconds |",
            "|---|---|---|---|---|",
        ]
        for path in notebook_paths(self.notebooks_dir):
            meta = (
                json.loads(path.read_text()).get("metadata", {}).get("vrn", {}).get("executed", {})
            )
            rel = path.relative_to(self.root).as_posix()
            rows.append(
                f"| [{path.stem}]({self._link('ledger.md', rel)}) | {meta.get('date', '?')} | "
                f"{meta.get('torch', '?')} | {meta.get('device', '?')} | {meta.get('seconds', '?')} |"
            )
        return "\n".join(rows)

    # --- notebook pages ------------------------------------------------------------------
    def on_post_page(self, output: str, page, config) -> str:
        if not page.file.src_uri.endswith(".ipynb"):
            return output
        output = NOTEBOOK_MATHJAX.sub("", output)
        output = NOTEBOOK_MERMAID.sub("", output)

        seen: dict[str, int] = {}

        def mark(match: re.Match) -> str:
            tags = re.findall(r"celltag_(claim:\S+?)(?=[\s\"])", match.group(0))
            banners = []
            for claim_id in claim_ids_in_tags(tags):
                claim = self.by_id[claim_id]
                seen[claim_id] = seen.get(claim_id, 0) + 1
                note_url = self._link(page.file.src_uri, claim.note.as_posix())
                note_url = _page_url(note_url, config.use_directory_urls)
                banners.append(
                    f'<div class="vrn-check" id="{check_anchor(claim_id, seen[claim_id])}">'
                    f'Checks claim <a href="{note_url}#claims">{claim.seed} · '
                    f"{html.escape(claim.id)}</a> {_badge(claim.verdict)}</div>"
                )
            return "".join(banners) + match.group(0)

        output = TAGGED_CELL.sub(mark, output)
        for href in re.findall(r'<a [^>]*href="([^"#]*\.ipynb)(?:#[^"]*)?"', output):
            raise PluginError(
                f"{page.file.src_uri}: links to {href!r}, which is no page on the site; "
                f"link to the rendered notebook's address instead (e.g. '../{href[:-6]}/')"
            )
        # mkdocs-jupyter (include_source) copies the .ipynb beside the page: offer it for download.
        name = PurePosixPath(page.file.src_uri).name
        download = (
            f'<p class="vrn-download"><a href="{name}" download>Download this notebook</a> '
            "and run it locally (see the README), on CPU or GPU.</p>"
        )
        return output.replace(
            '<div class="jupyter-wrapper">', download + '<div class="jupyter-wrapper">', 1
        )

    def _claims_json(self) -> str:
        payload = {
            "generated_by": "Verified Reading Notes",
            "verdict_counts": verdict_counts(self.claims),
            "last_run": {k: v for k, v in (self.run or {}).items() if k != "claims"} or None,
            "claims": [
                c.to_json() | {"last_run": (self.run or {}).get("claims", {}).get(c.id)}
                for c in self.claims
            ],
        }
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _badge(verdict: str) -> str:
    return f'<span class="verdict verdict-{verdict.replace(" ", "-")}">{verdict}</span>'


def _page_url(rel_md: str, use_directory_urls: bool) -> str:
    """The URL of a Markdown page relative to a notebook page (after directory URLs)."""
    target = rel_md[: -len(".md")]
    if use_directory_urls:
        # A notebook page lives one folder deeper (name/index.html) than its source file.
        return "../" + target + "/"
    return target + ".html"
