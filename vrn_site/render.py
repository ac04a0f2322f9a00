"""What the ledger plugin writes into pages: verdict lines, claims tables, the ledger, claims.json.

Pure rendering: it reads the loaded site (vrn_site.ledger.Site) and the last verifying run
(vrn_site.record), and returns Markdown or JSON. The plugin (vrn_site.plugin) decides where it goes.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from vrn_site.ledger import UNVERIFIABLE, VERDICTS, Claim, Notebook, verdict_counts
from vrn_site.record import STRICT, RunRecord, RunStatus

FENCED = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)  # fenced code blocks
CLAIMS_MARKER = "<!-- claims-table -->"
LEDGER_MARKER = "<!-- ledger -->"
VERDICT_MARKER = re.compile(r"^<!-- claim: (\S+) -->[ \t]*$", re.M)
IMAGE_WITHOUT_ALT = re.compile(r"!\[\s*\]\(")


class MarkdownError(ValueError):
    """A page whose claim markers or images do not follow the conventions."""


def link(from_src: str, to_src: str) -> str:
    """The relative link from one source file (relative to docs_dir) to another."""
    return os.path.relpath(to_src, PurePosixPath(from_src).parent.as_posix()).replace(os.sep, "/")


def badge(verdict: str) -> str:
    return f'<span class="verdict verdict-{verdict.replace(" ", "-")}">{verdict}</span>'


def table_cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def outside_fences(markdown: str, change: Callable[[str], str]) -> str:
    """``change`` applied to the Markdown outside fenced code blocks (examples stay literal)."""
    parts, at = [], 0
    for block in FENCED.finditer(markdown):
        parts += [change(markdown[at : block.start()]), block.group(0)]
        at = block.end()
    return "".join([*parts, change(markdown[at:])])


@dataclass
class Renderer:
    """Renders the claims of a site and the outcome of its last verifying run."""

    claims: list[Claim]
    notebooks: list[Notebook]
    run: RunRecord | None
    status: RunStatus | None  # whether the run verified what is being built

    def result(self, claim: Claim) -> str:
        """The claim's outcome in the last run, as a small labelled span."""
        if not self.run:
            return '<span class="run">not run in this build</span>'
        outcome = self.run.claims.get(claim.id, "not run")
        if outcome == "passed" and self.run.mode != STRICT:
            outcome = "asserts passed, outputs not compared"
        if outcome.startswith("passed") and self.status and self.status.stale:
            outcome = "passed on other notebooks"
        return f'<span class="run run-{outcome.replace(" ", "-")}">{outcome}</span>'

    def check_links(self, claim: Claim, from_src: str) -> list[str]:
        links = []
        for check in claim.checks:
            target = link(from_src, check.notebook.as_posix())
            links.append(f"[{check.notebook.stem}, {check.label}]({target}#{check.anchor})")
        return links

    def verdict_line(self, claim: Claim, from_src: str) -> str:
        """What replaces ``<!-- claim: id -->`` under a section's heading."""
        if claim.verdict == UNVERIFIABLE:
            evidence = f"not checkable here: {html.escape(claim.reason or '')}"
        else:
            links = ", ".join(self.check_links(claim, from_src))
            date = f" on {self.run.date}" if self.run else ""
            evidence = f"checked in {links}; last run{date}: {self.result(claim)}"
        return (
            f'<p class="vrn-verdict" id="verdict-{claim.id}" markdown="span">'
            f"{badge(claim.verdict)} <strong>{claim.seed}</strong> · {evidence}</p>\n"
        )

    def _check_column(self, claim: Claim, from_src: str) -> str:
        if claim.verdict == UNVERIFIABLE:
            sources = "; ".join(claim.sources)
            return f"not checkable: {table_cell(claim.reason or '')}" + (
                f" ({table_cell(sources)})" if sources else ""
            )
        return "<br>".join(self.check_links(claim, from_src)) + "<br>" + self.result(claim)

    def claims_table(self, claims: list[Claim], from_src: str, with_note: bool) -> str:
        """One row per claim; what the notes said folds under the finding, so the table fits a
        phone and the check column stays visible."""
        head = ["Claim", "Verdict", "What we found", "Check and last run"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in claims:
            section = f"{link(from_src, c.note.as_posix())}#verdict-{c.id}"
            label = f"{c.note.stem} · {c.seed}" if with_note else c.seed
            cells = [
                f'[{label}]({section} "{c.id}")',
                badge(c.verdict),
                f"{table_cell(c.finding)}<details><summary>The notes said</summary>"
                f"{html.escape(table_cell(c.claim))}</details>",
                self._check_column(c, from_src),
            ]
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows) + "\n"

    def page(self, markdown: str, src: str, where: str) -> str:
        """A page's Markdown with its claim markers rendered; MarkdownError naming ``where`` (the
        page as an author sees it) if a marker is missing, repeated or unknown, or an image has
        no alt text."""
        if IMAGE_WITHOUT_ALT.search(markdown):
            raise MarkdownError(f"{where}: an image has no alt text (![what it shows](...))")
        own = [c for c in self.claims if c.note.as_posix() == src]
        if own and CLAIMS_MARKER not in markdown:
            raise MarkdownError(
                f"{where}: the page declares claims but has no '{CLAIMS_MARKER}' line"
            )
        marked = VERDICT_MARKER.findall(FENCED.sub("", markdown))
        for claim_id in marked:
            if claim_id not in {c.id for c in own}:
                raise MarkdownError(
                    f"{where}: '<!-- claim: {claim_id} -->' names no claim of this page"
                )
        for claim in own:
            if marked.count(claim.id) != 1:
                raise MarkdownError(
                    f"{where}: claim {claim.id!r} needs exactly one '<!-- claim: {claim.id} -->' "
                    "line under the heading of the section that argues it "
                    f"(found {marked.count(claim.id)})"
                )
        by_id = {c.id: c for c in own}
        markdown = outside_fences(
            markdown,
            lambda text: VERDICT_MARKER.sub(
                lambda m: self.verdict_line(by_id[m.group(1)], src), text
            ),
        )
        if own:
            table = self.claims_table(own, src, with_note=False)
            markdown = markdown.replace(
                CLAIMS_MARKER, f'<div class="vrn-claims" markdown>\n\n{table}\n</div>\n'
            )
        if LEDGER_MARKER in markdown:
            markdown = markdown.replace(LEDGER_MARKER, self.ledger(src))
        return markdown

    def ledger(self, from_src: str) -> str:
        """What replaces ``<!-- ledger -->``: counts, the last run, every claim, where each
        notebook's stored outputs were computed."""
        counts = verdict_counts(self.claims)
        lines = [
            f"**{len(self.claims)} claims** from {len({c.note for c in self.claims})} notes.",
            "",
            "| Verdict | Claims |",
            "|---|---|",
            *[f"| {badge(v)} | {counts[v]} |" for v in VERDICTS],
            "",
            *self._last_run(),
            '<div class="vrn-claims vrn-ledger" markdown>',
            "",
            self.claims_table(self.claims, from_src, with_note=True),
            "</div>",
            "",
            "## Where the stored outputs were computed",
            "",
            self._executions(from_src),
        ]
        return "\n".join(lines)

    def _last_run(self) -> list[str]:
        if not self.run or not self.status:
            return [
                '!!! warning "No verifying run in this build"',
                "    This site was built without running the notebooks' checks first; "
                "`make test` runs them and records the result shown here.",
                "",
            ]
        kind = "success" if self.status.verified else "failure"
        lines = [f'!!! {kind} "Last verifying run"', f"    {self.status.summary}"]
        lines += [f"    {line}" for line in ["", *self.status.problems] if self.status.problems]
        return [*lines, "", f"    Ran on {self.run.describe()}.", ""]

    def _executions(self, from_src: str) -> str:
        rows = [
            "| Notebook | Stored on | CPU, kernels, threads | torch | Seconds |",
            "|---|---|---|---|---|",
        ]
        for nb in self.notebooks:
            meta = nb.executed
            numerics = ", ".join(
                str(meta.get(k, "?")) for k in ("cpu", "aten_capability", "mkl_cbwr", "threads")
            )
            rows.append(
                f"| [{nb.path.stem}]({link(from_src, nb.path.as_posix())}) | "
                f"{meta.get('date', '?')} | {numerics} | {meta.get('torch', '?')} | "
                f"{meta.get('seconds', '?')} |"
            )
        return "\n".join(rows)

    def claims_json(self) -> str:
        run = self.run
        payload = {
            "generated_by": "Verified Reading Notes",
            "verdict_counts": verdict_counts(self.claims),
            "last_run": run.environment() if run else None,
            "last_run_status": self.status.to_json() if self.status else None,
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


def plain_search_index(data: dict) -> dict:
    """Material's search index with the math of every title and text as plain text."""
    for doc in data.get("docs", []):
        for key in ("title", "text"):
            doc[key] = plain_math(doc.get(key, ""))
    return data
