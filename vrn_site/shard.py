"""Spread the checks over machines: ``make test SHARD=i/n`` runs shard i of n.

Whole notes go to one shard (a note's notebooks share a kernel's worth of setup and its claims are
recorded together), balanced by the seconds each notebook took when it was last stored (longest
first, each to the lightest shard). Unit test files are spread the same way by size. Every shard
writes its own run record; ``python -m vrn_site.record merge`` makes one record of them, and the
site is built from that.
"""

from __future__ import annotations

import re
from pathlib import Path

from vrn_site.ledger import Site

SHARD = re.compile(r"^([1-9][0-9]*)/([1-9][0-9]*)$")


def parse(text: str) -> tuple[int, int]:
    """``"i/n"`` as (i, n), 1 <= i <= n; ValueError saying what is expected."""
    match = SHARD.match(text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"SHARD={text!r}: expected i/n with 1 <= i <= n, e.g. SHARD=1/2")
    return int(match[1]), int(match[2])


def balance(weights: dict[str, float], n: int) -> list[set[str]]:
    """``n`` groups of the keys, heaviest first into the lightest group (ties by name: the same
    split on every machine)."""
    groups: list[set[str]] = [set() for _ in range(n)]
    loads = [0.0] * n
    for key in sorted(weights, key=lambda k: (-weights[k], k)):
        lightest = min(range(n), key=lambda g: (loads[g], g))
        groups[lightest].add(key)
        loads[lightest] += weights[key]
    return groups


def notes_of_shard(site: Site, i: int, n: int) -> set[str]:
    """The slugs of the notes that shard i of n checks."""
    seconds = {note.slug: 0.0 for note in site.notes}
    for nb in site.notebooks:
        seconds[nb.path.parent.name] = seconds.get(nb.path.parent.name, 0.0) + float(
            nb.executed.get("seconds") or 1.0
        )
    return balance(seconds, n)[i - 1]


def test_files_of_shard(files: list[Path], i: int, n: int) -> set[str]:
    """The unit test files (by name) that shard i of n runs."""
    return balance({f.name: float(f.stat().st_size) for f in files}, n)[i - 1]
