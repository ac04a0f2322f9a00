"""The ledger's history from git: when each claim was added, and when a verdict changed.

Walks the commits that touched the notes (docs/notes/*.md), reads each changed note's front matter
as it was then, and compares claim by claim. A shallow clone or a tree without git has no history
to show; the page says so instead of showing a wrong one.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from vrn_site.ledger import FRONT_MATTER


@dataclass
class Change:
    date: str  # YYYY-MM-DD, the commit's author date
    commit: str  # abbreviated hash
    note: str  # the note's file stem
    claim: str
    seed: str
    what: str  # "added as nuance", "verdict holds → corrected", "removed"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def _claims(text: str) -> dict[str, tuple[str, str]]:
    """{claim id: (seed, verdict)} from a note's text as committed (unreadable → {})."""
    match = FRONT_MATTER.match(text)
    try:
        meta = yaml.safe_load(match.group(1)) if match else {}
    except yaml.YAMLError:
        return {}
    entries = (meta or {}).get("claims") or []
    return {
        str(c["id"]): (str(c.get("seed", "")), str(c.get("verdict", "")))
        for c in entries
        if isinstance(c, dict) and "id" in c
    }


def history(root: Path, notes_dir: str = "docs/notes") -> list[Change] | str:
    """Every claim change, oldest first; or a sentence saying why there is no history."""
    try:
        if _git(root, "rev-parse", "--is-shallow-repository").strip() == "true":
            return "This copy of the repository is a shallow clone: its history is not here."
        log = _git(
            root, "log", "--reverse", "--format=@%h %ad", "--date=short", "--name-only", "--",
            notes_dir,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "This copy of the site was built outside a git repository: no history to show."
    changes: list[Change] = []
    state: dict[str, dict[str, tuple[str, str]]] = {}  # note path -> its claims
    commit = date = ""
    for line in log.splitlines():
        if line.startswith("@"):
            commit, date = line[1:].split()
            continue
        if not line.endswith(".md"):
            continue
        try:
            now = _claims(_git(root, "show", f"{commit}:{line}"))
        except subprocess.CalledProcessError:
            now = {}  # the note was deleted or moved in this commit
        before = state.get(line, {})
        note = Path(line).stem
        for claim, (seed, verdict) in now.items():
            if claim not in before:
                changes.append(Change(date, commit, note, claim, seed, f"added as {verdict}"))
            elif before[claim][1] != verdict:
                was = before[claim][1]
                changes.append(
                    Change(date, commit, note, claim, seed, f"verdict {was} → {verdict}")
                )
        for claim, (seed, _) in before.items():
            if claim not in now:
                changes.append(Change(date, commit, note, claim, seed, "removed"))
        state[line] = now
    return changes


def render(changes: list[Change] | str) -> str:
    """The changelog as Markdown: newest first, one row per change."""
    if isinstance(changes, str):
        return f'!!! note "No history"\n    {changes}\n'
    rows = ["| Date | Note | Claim | Change | Commit |", "|---|---|---|---|---|"]
    for c in reversed(changes):
        rows.append(f"| {c.date} | {c.note} | {c.seed} `{c.claim}` | {c.what} | `{c.commit}` |")
    return f"{len(changes)} changes to the claims ledger.\n\n" + "\n".join(rows) + "\n"
