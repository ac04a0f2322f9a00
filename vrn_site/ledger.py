"""The claims ledger: claims from the notes' front matter, checks from tagged notebook cells.

A claim lives in the front matter of its note (docs/notes/*.md, key ``claims``); its check is a
notebook cell tagged ``claim:<id>`` whose code asserts the finding. ``load_ledger`` reads both and
raises ``LedgerError`` listing every problem, each naming the file and the claim:
a claim with no check, a check naming an unknown claim, a tagged cell without an assert, a duplicate
id, a missing or unknown field, a notebook that is not valid JSON.

Each notebook is read once (``read_notebook``): its checks, the values its ``publish`` cells print,
its figures (cells tagged ``figure:<name>``) and its execution record. ``load_site`` adds the notes
(title, place in the navigation, their notebooks) and ties everything together.

``python -m vrn_site.ledger`` checks the ledger of this repository and prints a summary.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import yaml

VERDICTS = ("holds", "nuance", "corrected", "answered", "unverifiable here")
UNVERIFIABLE = "unverifiable here"
TAG_PREFIX = "claim:"
FIGURE_PREFIX = "figure:"
PUBLISH_TAG = "publish"
MIN_FIGURE_DPI = 150
VALUE_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*) = (.+)$")
FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---\s*(?:\n|$)", re.DOTALL)
FIGURE_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
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
    match = FRONT_MATTER.match(text)
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
        where = _where(page, docs_dir)
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
            if entry["verdict"] == UNVERIFIABLE and not entry.get("reason"):
                problems.append(f"{label} is '{UNVERIFIABLE}' but gives no reason")
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


@dataclass
class Figure:
    notebook: Path  # relative to the repository root
    name: str
    png: bytes

    @property
    def src_uri(self) -> str:
        """Where the site serves it, relative to docs_dir (what a note's image link names)."""
        return f"figures/{self.notebook.stem}/{self.name}.png"


@dataclass
class Notebook:
    """One notebook, read once: what the ledger, the values and the site need from it."""

    path: Path  # relative to the repository root
    checks: dict[str, list[Check]] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    executed: dict = field(default_factory=dict)  # metadata.vrn.executed, written by the executor


@dataclass
class Note:
    slug: str  # docs/notes/<slug>.md, notebooks/<slug>/
    src: Path  # relative to docs_dir
    title: str
    nav_title: str
    order: int
    notebooks: dict[str, str]  # notebook stem -> short title in the navigation, in reading order


def png_dpi(png: bytes) -> float | None:
    """The resolution a PNG declares in its pHYs chunk (dots per inch), None if it declares none."""
    at = png.find(b"pHYs")
    if at < 0:
        return None
    x_per_unit, _, unit = struct.unpack(">IIB", png[at + 4 : at + 13])
    return x_per_unit * 0.0254 if unit == 1 else None


def read_notebook(root: Path, path: Path, problems: list[str]) -> Notebook | None:
    """Checks, published values, figures and execution record of one notebook (None if unreadable)."""
    rel = path.relative_to(root)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        problems.append(f"{rel}: not a valid notebook ({err.__class__.__name__}: {err})")
        return None
    found = Notebook(rel, executed=(nb.get("metadata") or {}).get("vrn", {}).get("executed", {}))
    for index, cell in enumerate(cells):
        tags = (cell.get("metadata") or {}).get("tags", [])
        ids = claim_ids_in_tags(tags)
        if ids:
            source = "".join(cell.get("source", ""))
            if cell.get("cell_type") != "code" or not has_assert(source):
                problems.append(
                    f"{rel}: cell {index} is tagged as the check of {', '.join(ids)} "
                    "but has no assert"
                )
        for claim_id in ids:
            same = found.checks.setdefault(claim_id, [])
            same.append(
                Check(
                    rel,
                    index,
                    cell.get("id"),
                    cell.get("execution_count"),
                    check_anchor(claim_id, len(same) + 1),
                )
            )
        outputs = cell.get("outputs", [])
        if PUBLISH_TAG in tags:
            for output in outputs:
                if output.get("output_type") == "stream" and output.get("name") == "stdout":
                    for line in "".join(output.get("text", "")).splitlines():
                        if match := VALUE_LINE.match(line.strip()):
                            found.values[match.group(1)] = match.group(2).strip()
        for name in (t[len(FIGURE_PREFIX) :] for t in tags if t.startswith(FIGURE_PREFIX)):
            where = f"{rel}: cell {index} (tag {FIGURE_PREFIX}{name})"
            pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
            if not FIGURE_NAME.match(name):
                problems.append(f"{where}: a figure name is lowercase words joined by '-'")
            elif name in found.figures:
                problems.append(f"{where}: the notebook already has a figure named {name!r}")
            elif len(pngs) != 1:
                problems.append(f"{where}: has {len(pngs)} PNG outputs, a figure cell needs one")
            else:
                png = base64.b64decode("".join(pngs[0]))
                dpi = png_dpi(png)
                if dpi is None or dpi < MIN_FIGURE_DPI - 1:
                    problems.append(
                        f"{where}: the PNG is {dpi or 'of unknown'} dpi, below {MIN_FIGURE_DPI}: "
                        "call snippets.runtime.setup() first (it stores figures at 200 dpi)"
                    )
                found.figures[name] = Figure(rel, name, png)
    return found


def read_notes(docs_dir: Path, notebooks: list[Notebook], problems: list[str]) -> list[Note]:
    """The notes (docs/notes/*.md) and their notebooks, each notebook listed by exactly one note."""
    notes: list[Note] = []
    for page in sorted((docs_dir / "notes").glob("*.md")):
        where = _where(page, docs_dir)
        meta = front_matter(page)
        slug = page.stem
        listed = meta.get("notebooks") or {}
        if not isinstance(listed, dict):
            problems.append(f"{where}: 'notebooks' must map each notebook's file stem to a title")
            listed = {}
        order = meta.get("order")
        if not isinstance(order, int):
            problems.append(f"{where}: front matter needs 'order', the note's place in the Notes")
            order = 10**6
        title = str(meta.get("title") or slug)
        notes.append(
            Note(
                slug,
                page.relative_to(docs_dir),
                title,
                str(meta.get("nav_title") or title),
                order,
                {str(k): str(v) for k, v in listed.items()},
            )
        )
    by_slug = {n.slug: n for n in notes}
    for nb in notebooks:
        folder = nb.path.parent.name
        note = by_slug.get(folder)
        if note is None:
            problems.append(f"{nb.path}: no note docs/notes/{folder}.md for its folder")
        elif nb.path.stem not in note.notebooks:
            problems.append(
                f"{nb.path}: not listed under 'notebooks' in the front matter of docs/{note.src}"
            )
    stems = {nb.path.stem: nb.path for nb in notebooks if nb.path.parent.name}
    for note in notes:
        for stem in note.notebooks:
            path = stems.get(stem)
            if path is None or path.parent.name != note.slug:
                problems.append(
                    f"docs/{note.src}: lists notebook {stem!r}, but there is no "
                    f"notebooks/{note.slug}/{stem}.ipynb"
                )
    return sorted(notes, key=lambda n: (n.order, n.slug))


@dataclass
class Site:
    """Everything the site machinery needs, read once from docs/ and notebooks/."""

    claims: list[Claim]
    notes: list[Note]
    notebooks: list[Notebook]

    @property
    def values(self) -> dict[str, dict[str, str]]:
        """{notebook stem: {name: value}}, from the stored outputs of cells tagged ``publish``."""
        return {nb.path.stem: nb.values for nb in self.notebooks}

    @property
    def figures(self) -> list[Figure]:
        return [f for nb in self.notebooks for f in nb.figures.values()]


def load_site(root: Path, docs_dir: Path | None = None, notebooks_dir: Path | None = None) -> Site:
    """Notes, claims and notebooks of the site; raises LedgerError naming each problem."""
    root = Path(root)
    docs_dir = Path(docs_dir or root / "docs")
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    problems: list[str] = []
    claims = read_claims(docs_dir, problems)
    notebooks = [
        nb for p in notebook_paths(notebooks_dir) if (nb := read_notebook(root, p, problems))
    ]
    notes = read_notes(docs_dir, notebooks, problems)

    stems: dict[str, Path] = {}
    for nb in notebooks:
        if nb.path.stem in stems:
            problems.append(
                f"{nb.path}: another notebook, {stems[nb.path.stem]}, has the same file name; "
                f"notes quote values as {{{{ {nb.path.stem}.name }}}}, so names must be unique"
            )
        stems.setdefault(nb.path.stem, nb.path)

    checks: dict[str, list[Check]] = {}
    for nb in notebooks:
        for claim_id, found in nb.checks.items():
            checks.setdefault(claim_id, []).extend(found)
    seen: dict[str, Path] = {}
    for claim in claims:
        if claim.id in seen:
            problems.append(
                f"docs/{claim.note}: claim {claim.id!r} repeats an id already used in docs/{seen[claim.id]}"
            )
        seen.setdefault(claim.id, claim.note)
        claim.checks = checks.get(claim.id, [])
        if claim.verdict == UNVERIFIABLE:
            if claim.checks:
                problems.append(
                    f"docs/{claim.note}: claim {claim.id!r} is '{UNVERIFIABLE}' but has a check"
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
    return Site(claims, notes, notebooks)


def load_ledger(root: Path, docs_dir: Path | None = None, notebooks_dir: Path | None = None):
    """All claims of the site with their checks; raises LedgerError naming each problem."""
    return load_site(root, docs_dir, notebooks_dir).claims


def _where(page: Path, docs_dir: Path) -> Path:
    return page.relative_to(docs_dir.parent) if docs_dir.parent in page.parents else page


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
