"""The claims ledger: claims from the notes' front matter, checks from tagged notebook cells.

A claim lives in the front matter of its note (docs/notes/*.md, key ``claims``); its check is a
notebook cell tagged ``claim:<id>`` whose code asserts the finding. ``load_site`` reads both and
raises ``LedgerError`` listing every problem, each naming the file and the claim:
a claim with no check, a check naming an unknown claim, a tagged cell whose check cannot fail
(vrn_site.vacuity), a duplicate id, a missing or unknown field, a note whose front matter is
unclosed, invalid or declares no claims, a notebook that is not valid JSON, a quoted value that no
notebook publishes.

Each notebook is read once (``read_notebook``): its checks, the values its ``publish`` cells print,
its figures (cells tagged ``figure:<name>``), its execution record and a digest of its content (a
run record names the digests it verified). ``load_site`` adds the notes (title, place in the
navigation, their notebooks), fills the values the claims quote, and ties everything together.

Cells are numbered as nbval numbers them: "Cell N" counts code cells from 0; on the site a reader
also sees Jupyter's "In [n]" beside the cell. Messages give both.

``python -m vrn_site.ledger`` checks the ledger of this repository and prints a summary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vrn_site.vacuity import cannot_fail, describe
from vrn_site.values import PUBLISH_TAG, fill

VERDICTS = ("holds", "nuance", "corrected", "answered", "unverifiable here")
UNVERIFIABLE = "unverifiable here"
TAG_PREFIX = "claim:"
FIGURE_PREFIX = "figure:"
MIN_FIGURE_DPI = 150
VALUE_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*) = (.+)$")
FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---\s*(?:\n|$)", re.DOTALL)
FIGURE_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
ID_PATTERN = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$")
SEED_PATTERN = re.compile(r"^[A-Z][0-9]+$")
REQUIRED = ("id", "seed", "claim", "verdict", "finding")
OPTIONAL = ("reason", "sources")
BENCH, BENCH_RESULTS = "bench", "bench.json"  # {{ bench.<name> }}: docs/bench.json (make bench)
NOTE_KEYS = ("title", "nav_title", "order", "notebooks", "claims")
MKDOCS_KEYS = ("description", "hide", "search", "status", "subtitle", "tags", "template", "icon")


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


def cell_label(code_cell: int, execution_count: int | None) -> str:
    """How every message names a cell: nbval's "Cell N" (code cells from 0) and Jupyter's "In [n]"."""
    return f"Cell {code_cell}" + (f", In [{execution_count}]" if execution_count else "")


@dataclass
class Check:
    notebook: Path  # relative to the repository root
    cell: int  # index of the cell among all cells of the notebook (its JSON position)
    code_cell: int  # index among code cells: nbval's "Cell N"
    cell_id: str | None
    execution_count: int | None  # the "In [n]" a reader sees beside the cell
    anchor: str  # the HTML id of the cell on the notebook's page

    @property
    def label(self) -> str:
        return cell_label(self.code_cell, self.execution_count)


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
                    "nbval_cell": c.code_cell,
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


def shown(path: Path, root: Path) -> str:
    """``path`` as messages show it: relative to the repository root, never the machine's layout."""
    path = Path(path)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def front_matter(path: Path, root: Path, problems: list[str]) -> dict | None:
    """The YAML front matter of a Markdown file: {} when it has none, None (and a problem naming
    the file and the line) when it is unclosed, not valid YAML or not a mapping."""
    text = path.read_text(encoding="utf-8")
    if text.split("\n", 1)[0].rstrip() != "---":
        return {}
    where = shown(path, root)
    match = FRONT_MATTER.match(text)
    if not match:
        problems.append(
            f"{where}: the front matter opened by '---' on line 1 is never closed by a '---' line"
        )
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 2}" if mark else ""  # the YAML starts on the file's line 2
        problem = " ".join(
            filter(None, [getattr(err, "context", None), getattr(err, "problem", None)])
        )
        problems.append(f"{where}{line}: the front matter is not valid YAML: {problem or err}")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{where}: the front matter must be a mapping of keys to values")
        return None
    return data


def read_claims(meta: dict, where: str, note: Path, problems: list[str]) -> list[Claim]:
    """The claims declared in one page's front matter ``meta`` (``note``: the page, relative to
    docs_dir; ``where``: the page as messages show it)."""
    entries = meta.get("claims")
    if entries is None:
        return []
    if not isinstance(entries, list):
        problems.append(f"{where}: 'claims' must be a list of claims")
        return []
    claims: list[Claim] = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            problems.append(f"{where}: claim #{n} is not a mapping")
            continue
        label = f"{where}: claim {entry.get('id', f'#{n}')!r}"
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
                note=note,
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
    digest: str  # sha256 of the file: a run record names the notebooks it verified by digest
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


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_notebook(root: Path, path: Path, problems: list[str]) -> Notebook | None:
    """Checks, published values, figures and execution record of one notebook (None if unreadable)."""
    rel = path.relative_to(root)
    data = path.read_bytes()
    try:
        nb = json.loads(data)
        cells = nb["cells"]
        executed = ((nb.get("metadata") or {}).get("vrn") or {}).get("executed") or {}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        problems.append(f"{rel}: not a valid notebook ({err.__class__.__name__}: {err})")
        return None
    found = Notebook(rel, digest(data), executed=executed)
    code_cells = [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]
    sources = ["".join(c.get("source") or "") for c in code_cells]
    code_cell = -1
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict):
            problems.append(f"{rel}: cell {index} of the JSON is not an object")
            continue
        is_code = cell.get("cell_type") == "code"
        code_cell += is_code
        label = cell_label(code_cell, cell.get("execution_count")) if is_code else None
        tags = (cell.get("metadata") or {}).get("tags") or []
        ids = claim_ids_in_tags(tags)
        if ids and not is_code:
            problems.append(
                f"{rel}: a Markdown cell (cell {index} of the JSON) is tagged as the check of "
                f"{', '.join(ids)}: tag the code cell that asserts it"
            )
            continue
        if ids:
            reasons = cannot_fail("".join(cell.get("source") or ""), tags, sources, root)
            if reasons:
                problems.append(describe(rel, label, ids, reasons))
        for claim_id in ids:
            same = found.checks.setdefault(claim_id, [])
            same.append(
                Check(
                    rel,
                    index,
                    code_cell,
                    cell.get("id"),
                    cell.get("execution_count"),
                    check_anchor(claim_id, len(same) + 1),
                )
            )
        outputs = cell.get("outputs") or []
        if PUBLISH_TAG in tags:
            for output in outputs:
                if output.get("output_type") == "stream" and output.get("name") == "stdout":
                    for line in "".join(output.get("text", "")).splitlines():
                        if match := VALUE_LINE.match(line.strip()):
                            found.values[match.group(1)] = match.group(2).strip()
        for name in (t[len(FIGURE_PREFIX) :] for t in tags if t.startswith(FIGURE_PREFIX)):
            where = f"{rel}: {label or f'cell {index}'} (tag {FIGURE_PREFIX}{name})"
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


def read_notes(
    pages: dict[Path, dict],
    root: Path,
    docs_dir: Path,
    notebooks: list[Notebook],
    problems: list[str],
) -> list[Note]:
    """The notes (docs/notes/*.md, front matter in ``pages``) and their notebooks, each notebook
    listed by exactly one note."""
    notes: list[Note] = []
    notes_dir = docs_dir / "notes"
    for page, meta in pages.items():
        if page.parent != notes_dir:
            continue
        where, slug = shown(page, root), page.stem
        if unknown := sorted(set(meta) - set(NOTE_KEYS) - set(MKDOCS_KEYS)):
            problems.append(
                f"{where}: unknown front matter key(s) {', '.join(map(repr, unknown))}; a note's "
                f"keys are {', '.join(NOTE_KEYS)}"
            )
        if not meta.get("claims"):
            problems.append(
                f"{where}: the note declares no claims: its front matter needs a 'claims:' list "
                "(`make note` writes a placeholder to start from)"
            )
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
            problems.append(
                f"{nb.path}: no note {shown(notes_dir / folder, root)}.md for its folder"
            )
        elif nb.path.stem not in note.notebooks:
            problems.append(
                f"{nb.path}: not listed under 'notebooks' in the front matter of "
                f"{shown(docs_dir / note.src, root)}"
            )
    stems = {nb.path.stem: nb.path for nb in notebooks}
    for note in notes:
        for stem in note.notebooks:
            path = stems.get(stem)
            if path is None or path.parent.name != note.slug:
                problems.append(
                    f"{shown(docs_dir / note.src, root)}: lists notebook {stem!r}, but there is no "
                    f"{note.slug}/{stem}.ipynb in the notebooks folder"
                )
    return sorted(notes, key=lambda n: (n.order, n.slug))


@dataclass
class Site:
    """Everything the site machinery needs, read once from docs/ and notebooks/."""

    root: Path
    docs_dir: Path
    claims: list[Claim]
    notes: list[Note]
    notebooks: list[Notebook]
    # {notebook stem: {name: value}} from the stored outputs of cells tagged ``publish``, and
    # {"bench": {name: value}} from the committed benchmark results (docs/bench.json)
    values: dict[str, dict[str, str]]

    @property
    def figures(self) -> list[Figure]:
        return [f for nb in self.notebooks for f in nb.figures.values()]

    def shown(self, path: Path) -> str:
        """A path as messages show it (relative to the repository root)."""
        return shown(path, self.root)


def read_results(path: Path, problems: list[str], root: Path) -> dict | None:
    """Committed results that a page renders (docs/bench.json, docs/mutants.json); None if absent."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        problems.append(f"{shown(path, root)}: not valid JSON ({err})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{shown(path, root)}: expected a JSON object")
        return None
    return data


def load_site(root: Path, docs_dir: Path | None = None, notebooks_dir: Path | None = None) -> Site:
    """Notes, claims and notebooks of the site; raises LedgerError naming each problem."""
    root = Path(root)
    docs_dir = Path(docs_dir or root / "docs")
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    problems: list[str] = []
    pages = {
        page: meta
        for page in sorted(docs_dir.glob("**/*.md"))
        if (meta := front_matter(page, root, problems)) is not None
    }
    claims = [
        claim
        for page, meta in pages.items()
        for claim in read_claims(meta, shown(page, root), page.relative_to(docs_dir), problems)
    ]
    notebooks = [
        nb for p in notebook_paths(notebooks_dir) if (nb := read_notebook(root, p, problems))
    ]
    notes = read_notes(pages, root, docs_dir, notebooks, problems)

    stems: dict[str, Path] = {}
    for nb in notebooks:
        if nb.path.stem in stems:
            problems.append(
                f"{nb.path}: another notebook, {stems[nb.path.stem]}, has the same file name; "
                f"notes quote values as {{{{ {nb.path.stem}.name }}}}, so names must be unique"
            )
        stems.setdefault(nb.path.stem, nb.path)
    values = {nb.path.stem: nb.values for nb in notebooks}
    if BENCH in values:
        problems.append(f"{stems[BENCH]}: the name {BENCH!r} is kept for the benchmark's values")
    bench = read_results(docs_dir / BENCH_RESULTS, problems, root)
    if bench is not None:
        from vrn_site.bench import published_values  # no torch: it imports that lazily

        values[BENCH] = published_values(bench)

    checks: dict[str, list[Check]] = {}
    for nb in notebooks:
        for claim_id, found in nb.checks.items():
            checks.setdefault(claim_id, []).extend(found)
    seen: dict[str, Path] = {}
    for claim in claims:
        where = shown(docs_dir / claim.note, root)
        if claim.id in seen:
            problems.append(
                f"{where}: claim {claim.id!r} repeats an id already used in "
                f"{shown(docs_dir / seen[claim.id], root)}"
            )
        seen.setdefault(claim.id, claim.note)
        claim.checks = checks.get(claim.id, [])
        try:
            claim.claim = fill(claim.claim, values, f"{where}: claim {claim.id!r}")
            claim.finding = fill(claim.finding, values, f"{where}: claim {claim.id!r}")
        except KeyError as err:
            problems.append(err.args[0])
        if claim.verdict == UNVERIFIABLE:
            if claim.checks:
                problems.append(f"{where}: claim {claim.id!r} is '{UNVERIFIABLE}' but has a check")
        elif not claim.checks:
            problems.append(
                f"{where}: claim {claim.id!r} has no check: tag the notebook cell that "
                f"asserts it with '{TAG_PREFIX}{claim.id}'"
            )
    for claim_id, found in sorted(checks.items()):
        if claim_id not in seen:
            for check in found:
                problems.append(
                    f"{check.notebook}: {check.label} checks unknown claim {claim_id!r} "
                    "(no note's front matter declares it)"
                )
    if problems:
        raise LedgerError(problems)
    return Site(root, docs_dir, claims, notes, notebooks, values)


def verdict_counts(claims: list[Claim]) -> dict[str, int]:
    return {v: sum(c.verdict == v for c in claims) for v in VERDICTS}


def main() -> None:
    from vrn_site import project_root

    claims = load_site(project_root()).claims
    counts = ", ".join(f"{n} {v}" for v, n in verdict_counts(claims).items() if n)
    print(f"{len(claims)} claims, each with a check that can fail or a reason ({counts})")


if __name__ == "__main__":
    try:
        main()
    except LedgerError as err:
        raise SystemExit(str(err)) from None
