"""The claims ledger: claims from the notes' front matter, checks from tagged notebook cells.

A claim lives in the front matter of its note (docs/notes/*.md, key ``claims``); its check is a
notebook cell tagged ``claim:<id>`` whose code asserts the finding. ``load_ledger`` reads both and
raises ``LedgerError`` listing every problem, each naming the file and the claim:
a claim with no check, a check naming an unknown claim, a tagged cell without an assert, a duplicate
id, a missing or unknown field, a notebook that is not valid JSON.

``python -m vrn_site.ledger`` checks the ledger of this repository and prints a summary.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

VERDICTS = ("holds", "nuance", "corrected", "answered", "unverifiable here")
TAG_PREFIX = "claim:"
ID_PATTERN = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$")
SEED_PATTERN = re.compile(r"^[A-Z][0-9]+$")
REQUIRED = ("id", "seed", "claim", "verdict", "finding")
OPTIONAL = ("reason", "sources")


class LedgerError(Exception):
    """Every problem found in the ledger, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "the claims ledger has problems:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def check_anchor(claim_id: str, n: int) -> str:
    """The HTML id of the n-th (from 1) cell of a notebook page that checks ``claim_id``."""
    return f"claim-{claim_id}" if n == 1 else f"claim-{claim_id}-{n}"


@dataclass
class Check:
    notebook: Path  # relative to the repository root
    cell: int  # index of the cell in the notebook
    cell_id: str | None
    execution_count: int | None  # the "In [n]" a reader sees beside the cell
    anchor: str  # the HTML id of the cell on the notebook's page


@dataclass
class Claim:
    id: str
    seed: str
    claim: str
    verdict: str
    finding: str
    note: Path  # the note page, relative to docs_dir
    reason: str | None = None
    sources: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "seed": self.seed,
            "note": self.note.as_posix(),
            "claim": self.claim,
            "verdict": self.verdict,
            "finding": self.finding,
            "reason": self.reason,
            "sources": self.sources,
            "checks": [
                {
                    "notebook": c.notebook.as_posix(),
                    "cell": c.cell,
                    "cell_id": c.cell_id,
                    "anchor": c.anchor,
                }
                for c in self.checks
            ],
        }


def notebook_paths(notebooks_dir: Path) -> list[Path]:
    """Every notebook under ``notebooks_dir``, sorted, without Jupyter's checkpoint copies."""
    return [
        p for p in sorted(notebooks_dir.glob("**/*.ipynb")) if ".ipynb_checkpoints" not in p.parts
    ]


def claim_ids_in_tags(tags: list[str]) -> list[str]:
    """The claim ids named by a cell's tags (``claim:<id>``)."""
    return [t[len(TAG_PREFIX) :] for t in tags if t.startswith(TAG_PREFIX)]


def front_matter(path: Path) -> dict:
    """The YAML front matter of a Markdown file ({} when it has none)."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(?:\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise LedgerError([f"{path}: front matter is not valid YAML: {err}"]) from None
    return data if isinstance(data, dict) else {}


def has_assert(source: str) -> bool:
    """Whether cell code contains an assert statement or an ``assert_*`` call."""
    code = "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
    )
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith("assert"):
                return True
    return False


def read_claims(docs_dir: Path, problems: list[str]) -> list[Claim]:
    claims: list[Claim] = []
    for page in sorted(docs_dir.glob("**/*.md")):
        entries = front_matter(page).get("claims")
        if entries is None:
            continue
        where = page.relative_to(docs_dir.parent) if docs_dir.parent in page.parents else page
        if not isinstance(entries, list):
            problems.append(f"{where}: 'claims' must be a list of claims")
            continue
        for n, entry in enumerate(entries, 1):
            label = (
                f"{where}: claim {entry.get('id', f'#{n}')!r}" if isinstance(entry, dict) else ""
            )
            if not isinstance(entry, dict):
                problems.append(f"{where}: claim #{n} is not a mapping")
                continue
            missing = [k for k in REQUIRED if not str(entry.get(k) or "").strip()]
            unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
            if missing:
                problems.append(f"{label} lacks {', '.join(missing)}")
                continue
            if unknown:
                problems.append(f"{label} has unknown field(s) {', '.join(unknown)}")
            if not ID_PATTERN.match(str(entry["id"])):
                problems.append(f"{label}: id must be lowercase words joined by '.' or '-'")
            if not SEED_PATTERN.match(str(entry["seed"])):
                problems.append(f"{label}: seed {entry['seed']!r} is not a brief number like T4")
            if entry["verdict"] not in VERDICTS:
                problems.append(
                    f"{label}: verdict {entry['verdict']!r} is not one of {', '.join(VERDICTS)}"
                )
            if entry["verdict"] == "unverifiable here" and not entry.get("reason"):
                problems.append(f"{label} is 'unverifiable here' but gives no reason")
            claims.append(
                Claim(
                    id=str(entry["id"]),
                    seed=str(entry["seed"]),
                    claim=str(entry["claim"]).strip(),
                    verdict=entry["verdict"],
                    finding=str(entry["finding"]).strip(),
                    note=page.relative_to(docs_dir),
                    reason=entry.get("reason"),
                    sources=list(entry.get("sources") or []),
                )
            )
    return claims


def read_checks(root: Path, notebooks_dir: Path, problems: list[str]) -> dict[str, list[Check]]:
    checks: dict[str, list[Check]] = {}
    for path in notebook_paths(notebooks_dir):
        rel = path.relative_to(root)
        try:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            problems.append(f"{rel}: not a valid notebook ({err.__class__.__name__}: {err})")
            continue
        for index, cell in enumerate(cells):
            ids = claim_ids_in_tags(cell.get("metadata", {}).get("tags", []))
            if not ids:
                continue
            source = "".join(cell.get("source", ""))
            if cell.get("cell_type") != "code" or not has_assert(source):
                problems.append(
                    f"{rel}: cell {index} is tagged as the check of {', '.join(ids)} "
                    "but has no assert"
                )
            for claim_id in ids:
                found = checks.setdefault(claim_id, [])
                n = 1 + sum(c.notebook == rel for c in found)
                found.append(
                    Check(
                        rel,
                        index,
                        cell.get("id"),
                        cell.get("execution_count"),
                        check_anchor(claim_id, n),
                    )
                )
    return checks


def load_ledger(root: Path, docs_dir: Path | None = None, notebooks_dir: Path | None = None):
    """All claims of the site with their checks; raises LedgerError naming each problem."""
    root = Path(root)
    docs_dir = docs_dir or root / "docs"
    notebooks_dir = notebooks_dir or root / "notebooks"
    problems: list[str] = []
    claims = read_claims(docs_dir, problems)
    checks = read_checks(root, notebooks_dir, problems)

    seen: dict[str, Path] = {}
    for claim in claims:
        if claim.id in seen:
            problems.append(
                f"docs/{claim.note}: claim {claim.id!r} repeats an id already used in docs/{seen[claim.id]}"
            )
        seen.setdefault(claim.id, claim.note)
        claim.checks = checks.get(claim.id, [])
        if claim.verdict == "unverifiable here":
            if claim.checks:
                problems.append(
                    f"docs/{claim.note}: claim {claim.id!r} is 'unverifiable here' but has a check"
                )
        elif not claim.checks:
            problems.append(
                f"docs/{claim.note}: claim {claim.id!r} has no check: tag the notebook cell that "
                f"asserts it with '{TAG_PREFIX}{claim.id}'"
            )
    for claim_id, found in sorted(checks.items()):
        if claim_id not in seen:
            for check in found:
                problems.append(
                    f"{check.notebook}: cell {check.cell} checks unknown claim {claim_id!r} "
                    "(no note's front matter declares it)"
                )
    if problems:
        raise LedgerError(problems)
    return claims


def verdict_counts(claims: list[Claim]) -> dict[str, int]:
    return {v: sum(c.verdict == v for c in claims) for v in VERDICTS}


def main() -> None:
    claims = load_ledger(Path.cwd())
    counts = ", ".join(f"{n} {v}" for v, n in verdict_counts(claims).items() if n)
    print(f"{len(claims)} claims, each with a check or a reason ({counts})")


if __name__ == "__main__":
    try:
        main()
    except LedgerError as err:
        raise SystemExit(str(err)) from None
