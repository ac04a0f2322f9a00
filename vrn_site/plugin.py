"""MkDocs plugin ``ledger``: notes, notebooks and claims become pages, tables and claims.json.

Everything comes from one read of docs/ and notebooks/ (vrn_site.ledger.load_site) in on_config:
- on_config: load and check the site (any problem stops the build, naming the claim and the file);
  fill the "Notes" section of the navigation: each note, then its notebooks, in the notes' order.
- on_files: add every notebook as a page (before mkdocs-jupyter converts them), each figure of a
  notebook (a cell tagged ``figure:<name>``) as ``figures/<notebook>/<name>.png``, claims.json, and
  the vendored MathJax and Mermaid files from node_modules under assets/vendor/.
- on_page_markdown: fill in quoted numbers (``{{ notebook.name }}``, vrn_site.values); replace each
  ``<!-- claim: <id> -->`` with the claim's verdict, check link and last run, ``<!-- claims-table -->``
  with the page's claims and ``<!-- ledger -->`` with every claim of the site; reject images without
  alt text.
- on_post_page: on notebook pages, drop mkdocs-jupyter's own MathJax/Mermaid loaders (the site loads
  its own) and mark each checking cell, found by its cell id, with its anchor and a link back to the
  section of the note that argues the claim.
"""

from __future__ import annotations

import dataclasses
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

from vrn_site import changelog, record
from vrn_site.ledger import (
    UNVERIFIABLE,
    VERDICTS,
    Claim,
    LedgerError,
    claim_ids_in_tags,
    load_site,
    verdict_counts,
)
from vrn_site.values import fill

CLAIMS_MARKER = "<!-- claims-table -->"
LEDGER_MARKER = "<!-- ledger -->"
CHANGELOG_MARKER = "<!-- changelog -->"
VERDICT_MARKER = re.compile(r"^<!-- claim: (\S+) -->[ \t]*$", re.M)
FENCED = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)  # fenced code blocks
IMAGE_WITHOUT_ALT = re.compile(r"!\[\s*\]\(")
NOTES_SECTION = "Notes"
# A search ranks a note above its notebooks, whose titles and prose repeat the note's subject
# (the ``boost`` that Material's search reads from a page's metadata).
NOTE_SEARCH_BOOST, NOTEBOOK_SEARCH_BOOST = 10, 0.1
SEARCH_EXCLUDED = re.compile(
    r'<pre(?=[\s>])|<(?:div|span|a)(?= class="(?:jp-InputPrompt|jp-OutputPrompt|notice|'
    r"clipboard-copy-txt|cell-tag|anchor-link)\b)"
)
TAGGED_CELL = re.compile(r'<div (?:id="[^"]*" )?class="jp-Cell [^"]*celltag_claim:[^"]*">')
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


class LedgerConfig(Config):
    notebooks_dir = config_options.Type(str, default="notebooks")
    node_modules = config_options.Type(str, default="node_modules")
    run_record = config_options.Type(str, default=record.DEFAULT_PATH)


class LedgerPlugin(BasePlugin[LedgerConfig]):
    def on_config(self, config):
        self.root = Path(config.config_file_path).resolve().parent
        self.docs_dir = Path(config.docs_dir)
        self.notebooks_dir = self.root / self.config.notebooks_dir
        try:
            self.site = load_site(self.root, self.docs_dir, self.notebooks_dir)
            self.run = record.read(self.root / self.config.run_record)
        except (LedgerError, ValueError) as err:
            raise PluginError(str(err)) from None
        self.values = self.site.values
        self.claims = [
            dataclasses.replace(
                c,
                claim=self._fill(c.claim, self._docs(c.note)),
                finding=self._fill(c.finding, self._docs(c.note)),
            )
            for c in self.site.claims
        ]
        self.by_id = {c.id: c for c in self.claims}
        config.nav = self._nav(config.nav)
        config.watch.extend(
            str(p) for p in (self.notebooks_dir, self.root / "snippets") if p.is_dir()
        )
        return config

    def _docs(self, src: Path | str) -> str:
        """A page's path as an author sees it (docs_dir may be configured elsewhere)."""
        return (self.docs_dir / src).relative_to(self.root).as_posix()

    def _fill(self, text: str, where: str) -> str:
        try:
            return fill(text, self.values, where)
        except KeyError as err:
            raise PluginError(err.args[0]) from None

    def _nav(self, nav: list | None) -> list:
        """The configured navigation with its (empty) Notes section filled from the notes."""
        notes = []
        for note in self.site.notes:
            pages = [{"The note": note.src.as_posix()}]
            pages += [
                {title: f"{self.config.notebooks_dir}/{note.slug}/{stem}.ipynb"}
                for stem, title in note.notebooks.items()
            ]
            notes.append({note.nav_title: pages})
        nav = list(nav or [])
        for i, entry in enumerate(nav):
            if isinstance(entry, dict) and list(entry) == [NOTES_SECTION]:
                if entry[NOTES_SECTION]:
                    raise PluginError(
                        f"mkdocs.yml: leave the nav's '{NOTES_SECTION}' section empty "
                        "([]): the ledger plugin fills it from the notes' front matter"
                    )
                nav[i] = {NOTES_SECTION: notes}
                return nav
        raise PluginError(f"mkdocs.yml: the nav needs an empty '{NOTES_SECTION}: []' section")

    @event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
    def on_files(self, files: Files, config) -> Files:
        for nb in self.site.notebooks:
            files.append(
                File(nb.path.as_posix(), str(self.root), config.site_dir, config.use_directory_urls)
            )
        for figure in self.site.figures:
            files.append(File.generated(config, figure.src_uri, content=figure.png))
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
        where = self._docs(src)
        markdown = self._fill(markdown, where)
        if IMAGE_WITHOUT_ALT.search(markdown):
            raise PluginError(f"{where}: an image has no alt text (![what it shows](...))")
        own = [c for c in self.claims if c.note.as_posix() == src]
        if any(n.src.as_posix() == src for n in self.site.notes):
            page.meta.setdefault("search", {}).setdefault("boost", NOTE_SEARCH_BOOST)
        if own and CLAIMS_MARKER not in markdown:
            raise PluginError(
                f"{where}: the page declares claims but has no '{CLAIMS_MARKER}' line"
            )
        marked = VERDICT_MARKER.findall(FENCED.sub("", markdown))
        for claim_id in marked:
            if claim_id not in {c.id for c in own}:
                raise PluginError(
                    f"{where}: '<!-- claim: {claim_id} -->' names no claim of this page"
                )
        for claim in own:
            if marked.count(claim.id) != 1:
                raise PluginError(
                    f"{where}: claim {claim.id!r} needs exactly one '<!-- claim: {claim.id} -->' "
                    f"line under the heading of the section that argues it (found {marked.count(claim.id)})"
                )
        markdown = _outside_fences(
            markdown,
            lambda text: VERDICT_MARKER.sub(
                lambda m: self._verdict_line(self.by_id[m.group(1)], src), text
            ),
        )
        if own:
            table = self._claims_table(own, src, with_note=False)
            markdown = markdown.replace(
                CLAIMS_MARKER, f'<div class="vrn-claims" markdown>\n\n{table}\n</div>\n'
            )
        if LEDGER_MARKER in markdown:
            markdown = markdown.replace(LEDGER_MARKER, self._ledger(src))
        if CHANGELOG_MARKER in markdown:
            markdown = markdown.replace(
                CHANGELOG_MARKER, changelog.render(changelog.history(self.root))
            )
        return markdown

    # --- rendering -------------------------------------------------------------------------
    def _link(self, from_src: str, to_src: str) -> str:
        return os.path.relpath(to_src, PurePosixPath(from_src).parent.as_posix()).replace(
            os.sep, "/"
        )

    def _check_links(self, claim: Claim, from_src: str) -> list[str]:
        links = []
        for check in claim.checks:
            target = self._link(from_src, check.notebook.as_posix())
            prompt = f"In [{check.execution_count}]" if check.execution_count else "cell"
            links.append(f"[{check.notebook.stem}, {prompt}]({target}#{check.anchor})")
        return links

    def _check_cell(self, claim: Claim, from_src: str) -> str:
        if claim.verdict == UNVERIFIABLE:
            sources = "; ".join(claim.sources)
            return f"not checkable: {_cell(claim.reason or '')}" + (
                f" ({_cell(sources)})" if sources else ""
            )
        return "<br>".join(self._check_links(claim, from_src)) + "<br>" + self._result(claim)

    def _result(self, claim: Claim) -> str:
        if not self.run:
            return '<span class="run">not run in this build</span>'
        outcome = self.run.claims.get(claim.id, "not run")
        return f'<span class="run run-{outcome.replace(" ", "-")}">{outcome}</span>'

    def _verdict_line(self, claim: Claim, from_src: str) -> str:
        """What replaces ``<!-- claim: id -->`` under a section's heading."""
        if claim.verdict == UNVERIFIABLE:
            evidence = f"not checkable here: {html.escape(claim.reason or '')}"
        else:
            links = ", ".join(self._check_links(claim, from_src))
            date = f" on {self.run.date}" if self.run else ""
            evidence = f"checked in {links}; last run{date}: {self._result(claim)}"
        return (
            f'<p class="vrn-verdict" id="verdict-{claim.id}" markdown="span">'
            f"{_badge(claim.verdict)} <strong>{claim.seed}</strong> · {evidence}</p>\n"
        )

    def _claims_table(self, claims: list[Claim], from_src: str, with_note: bool) -> str:
        """One row per claim; what the notes said folds under the finding, so the table fits a
        phone and the check column stays visible."""
        head = ["Claim", "Verdict", "What we found", "Check and last run"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in claims:
            section = f"{self._link(from_src, c.note.as_posix())}#verdict-{c.id}"
            label = f"{c.note.stem} · {c.seed}" if with_note else c.seed
            rows.append(
                "| "
                + " | ".join(
                    [
                        f'[{label}]({section} "{c.id}")',
                        _badge(c.verdict),
                        f"{_cell(c.finding)}<details><summary>The notes said</summary>"
                        f"{html.escape(_cell(c.claim))}</details>",
                        self._check_cell(c, from_src),
                    ]
                )
                + " |"
            )
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
            checkable = [c.id for c in self.claims if c.verdict != UNVERIFIABLE]
            passed = sum(self.run.claims.get(i) == "passed" for i in checkable)
            kind = "success" if passed == len(checkable) else "failure"
            lines += [
                f'!!! {kind} "Last verifying run"',
                f"    {passed} of {len(checkable)} checks passed on {self.run.describe()}.",
                "",
            ]
        else:
            lines += [
                '!!! warning "No verifying run in this build"',
                "    This site was built without running the notebooks' checks first; "
                "`make test` runs them and records the result shown here.",
                "",
            ]
        lines += [
            '<div class="vrn-claims vrn-ledger" markdown>',
            "",
            self._claims_table(self.claims, from_src, with_note=True),
            "</div>",
            "",
            "## Where the stored outputs were computed",
            "",
            self._executions(from_src),
        ]
        return "\n".join(lines)

    def _executions(self, from_src: str) -> str:
        rows = [
            "| Notebook | Stored on | CPU, kernels, threads | torch | Seconds |",
            "|---|---|---|---|---|",
        ]
        for nb in self.site.notebooks:
            meta = nb.executed
            numerics = ", ".join(
                str(meta.get(k, "?")) for k in ("cpu", "aten_capability", "mkl_cbwr", "threads")
            )
            rows.append(
                f"| [{nb.path.stem}]({self._link(from_src, nb.path.as_posix())}) | "
                f"{meta.get('date', '?')} | {numerics} | {meta.get('torch', '?')} | "
                f"{meta.get('seconds', '?')} |"
            )
        return "\n".join(rows)

    # --- notebook pages ------------------------------------------------------------------
    def on_page_content(self, html_text: str, page, config, files) -> str:
        """Keep notebook code, outputs, prompts, copy buttons, tag chips and heading anchors out of
        the search index, so searches find the notes' prose and the notebooks' text. Material skips
        elements marked ``data-search-exclude``, but tracks them by tag name, so a mark holds only
        on an element without a nested element of its own tag: mark the leaves."""
        if not page.file.src_uri.endswith(".ipynb"):
            return html_text
        page.meta.setdefault("search", {}).setdefault("boost", NOTEBOOK_SEARCH_BOOST)
        return SEARCH_EXCLUDED.sub(r'\g<0> data-search-exclude="notebook"', html_text)

    @event_priority(-100)  # after the search plugin has written its index
    def on_post_build(self, config) -> None:
        """Search previews show math as text a reader can read, not TeX source."""
        index = Path(config.site_dir) / "search" / "search_index.json"
        if not index.exists():
            return
        data = json.loads(index.read_text(encoding="utf-8"))
        for doc in data.get("docs", []):
            for key in ("title", "text"):
                doc[key] = plain_math(doc.get(key, ""))
        index.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    def on_post_page(self, output: str, page, config) -> str:
        src = page.file.src_uri
        if not src.endswith(".ipynb"):
            return output
        output = NOTEBOOK_MATHJAX.sub("", output)
        output = NOTEBOOK_MERMAID.sub("", output)
        # The ledger numbered each notebook's checks in cell order; hand its anchors out in the
        # same order, and stop if the page does not show exactly those cells.
        pending = {
            claim.id: [c.anchor for c in claim.checks if c.notebook.as_posix() == src]
            for claim in self.claims
        }

        def mark(match: re.Match) -> str:
            banners = []
            for claim_id in claim_ids_in_tags(re.findall(r"celltag_(\S+?)(?=[\s\"])", match[0])):
                if not pending.get(claim_id):
                    raise PluginError(
                        f"{src}: the page shows a check of {claim_id!r} the ledger lacks"
                    )
                claim, anchor = self.by_id[claim_id], pending[claim_id].pop(0)
                note_url = _page_url(
                    self._link(src, claim.note.as_posix()), config.use_directory_urls
                )
                banners.append(
                    f'<div class="vrn-check" id="{anchor}">'
                    f'Checks claim <a href="{note_url}#verdict-{claim.id}">{claim.seed} · '
                    f"{html.escape(claim.id)}</a> {_badge(claim.verdict)}</div>"
                )
            return "".join(banners) + match[0]

        output = TAGGED_CELL.sub(mark, output)
        if missing := [a for anchors in pending.values() for a in anchors]:
            raise PluginError(f"{src}: checking cells {missing} are not on the rendered page")
        for href in re.findall(r'<a [^>]*href="([^"#]*\.ipynb)(?:#[^"]*)?"', output):
            raise PluginError(
                f"{src}: links to {href!r}, which is no page on the site; "
                f"link to the rendered notebook's address instead (e.g. '../{href[:-6]}/')"
            )
        # mkdocs-jupyter (include_source) copies the .ipynb beside the page: offer it for download.
        name = PurePosixPath(src).name
        download = (
            f'<p class="vrn-download"><a href="{name}" download>Download this notebook</a> '
            "and run it locally (see the README), on CPU or GPU.</p>"
        )
        return output.replace(
            '<div class="jupyter-wrapper">', download + '<div class="jupyter-wrapper">', 1
        )

    def _claims_json(self) -> str:
        run = self.run
        payload = {
            "generated_by": "Verified Reading Notes",
            "verdict_counts": verdict_counts(self.claims),
            "last_run": run.environment() if run else None,
            "claims": [
                c.to_json() | {"last_run": run.claims.get(c.id) if run else None}
                for c in self.claims
            ],
        }
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


TEX_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "theta": "θ", "lambda": "λ", "mu": "μ", "pi": "π", "sigma": "σ", "tau": "τ", "phi": "φ",
    "log": "log", "exp": "exp", "max": "max", "min": "min", "sum": "Σ", "prod": "Π",
    "cdot": "·", "times": "×", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "neq": "≠",
    "approx": "≈", "to": "→", "rightarrow": "→", "infty": "∞", "sqrt": "√", "ldots": "…",
    "dots": "…", "star": "*", "top": "ᵀ", "mid": "|", "quad": " ", "in": "∈",
}  # fmt: skip
TEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
TEX_FRAC = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")
TEX_SQRT = re.compile(r"\\sqrt\{([^{}]*)\}")
TEX_WRAPPER = re.compile(r"\\(?:text|mathrm|mathbf|operatorname|mathit)\{([^{}]*)\}")


def plain_math(text: str) -> str:
    """Inline TeX as plain text: delimiters dropped, commands as symbols (``\\varepsilon`` → ε)."""
    text = re.sub(r"\\[()\[\]]|\$\$?", "", text)
    text = TEX_WRAPPER.sub(r"\1", text)
    while (simpler := TEX_FRAC.sub(r"(\1)/(\2)", TEX_SQRT.sub(r"√(\1)", text))) != text:
        text = simpler  # innermost first: \frac{QK^T}{\sqrt{d_k}}
    text = TEX_COMMAND.sub(lambda m: TEX_SYMBOLS.get(m[1], m[1]), text)
    return re.sub(r"[{}]", "", text)


def _outside_fences(markdown: str, change) -> str:
    """``change`` applied to the Markdown outside fenced code blocks (examples stay literal)."""
    parts, at = [], 0
    for block in FENCED.finditer(markdown):
        parts += [change(markdown[at : block.start()]), block.group(0)]
        at = block.end()
    return "".join([*parts, change(markdown[at:])])


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
