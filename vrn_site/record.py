"""The record of the last verifying run (build/verification.json), read and written only here.

``make unit`` writes it (vrn_site.pytest_plugin): when and where the notebooks' checks ran, with
which numerics, in which mode, each claim's outcome, the commit, and the digests of the notebooks
and snippets it verified. The site's ledger page, each claim's verdict line and claims.json show it,
with ``status``: whether it verified what is being built (every checkable claim passed, in a strict
run, on these very notebooks and this code) or not (failed, partial, lax or stale, each named).
Shards of a run (``make unit SHARD=i/n``) write one record each; ``merge`` makes one of them.
Older records that lack a field still load; the field reads "unknown".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vrn_site.ledger import UNVERIFIABLE, Site

DEFAULT_PATH = "build/verification.json"
STRICT = "nbval: asserts and every stored output"
LAX = "nbval-lax: asserts only, stored outputs not compared"
UNKNOWN = "unknown"

# What a notebook kernel computes with on this machine: a fresh process that pins its numerics
# exactly as a notebook's first cell does, then reports them (see snippets/runtime.py).
_KERNEL_PROBE = """
import json
from snippets.runtime import numerics, setup
device, _ = setup()
import torch
name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
print(json.dumps({"torch": torch.__version__, "device": name} | numerics()))
"""


def run_environment() -> dict[str, str]:
    """Date, platform, Python, torch, device, CPU model and numerics settings of a notebook kernel."""
    probe = subprocess.run(
        [sys.executable, "-c", _KERNEL_PROBE], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise RuntimeError(f"the notebook kernels' numerics cannot be pinned here:\n{probe.stderr}")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
    } | json.loads(probe.stdout.strip().splitlines()[-1])


@dataclass
class RunRecord:
    date: str = UNKNOWN
    platform: str = UNKNOWN
    python: str = UNKNOWN
    torch: str = UNKNOWN
    device: str = UNKNOWN
    cpu: str = UNKNOWN
    aten_capability: str = UNKNOWN
    mkl_cbwr: str = UNKNOWN
    onednn_max_isa: str = UNKNOWN
    threads: str = UNKNOWN
    mode: str = UNKNOWN
    commit: str = UNKNOWN
    code: str = UNKNOWN  # digest of snippets/*.py, the code the notebooks import
    claims: dict[str, str] = field(default_factory=dict)  # claim id -> passed | failed | skipped
    notebooks: dict[str, str] = field(default_factory=dict)  # notebook path -> digest it verified
    notebook_seconds: dict[str, float] = field(default_factory=dict)  # notebook path -> seconds

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def environment(self) -> dict[str, str]:
        per_item = ("claims", "notebooks", "notebook_seconds")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in per_item}

    def describe(self) -> str:
        """One sentence: where and how the run happened."""
        return (
            f"{self.date}: {self.platform} ({self.cpu}), Python {self.python}, torch {self.torch}, "
            f"device {self.device}; ATen kernels {self.aten_capability}, MKL branch "
            f"{self.mkl_cbwr}, {self.threads} thread(s); {self.mode}"
        )


def read(path: Path) -> RunRecord | None:
    """The record at ``path``, None if there is none; ValueError naming the file if unreadable."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the verifying run's record is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the verifying run's record is not a JSON object")
    return RunRecord.from_json(data)


def write(path: Path, record: RunRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")


def commit(root: Path) -> str:
    """The checked-out commit (with "+changes" if the tree differs from it), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return UNKNOWN
    if head.returncode != 0:
        return UNKNOWN
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def code_digest(root: Path) -> str:
    """One digest of snippets/*.py: the run is stale if the code the notebooks import changed."""
    h = hashlib.sha256()
    for path in sorted((root / "snippets").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def merge(records: list[RunRecord]) -> RunRecord:
    """One record from the records of a run's shards: the union of their claims and notebooks.
    The shards must have run the same code on the same numerics (ValueError naming what differs)."""
    if not records:
        raise ValueError("no shard records to merge")
    first = records[0]
    same = ("torch", "aten_capability", "mkl_cbwr", "onednn_max_isa", "threads", "mode", "code")
    for other in records[1:]:
        if differ := [k for k in same if getattr(other, k) != getattr(first, k)]:
            raise ValueError(
                "the shards ran differently, not one run: "
                + ", ".join(f"{k} {getattr(first, k)!r} vs {getattr(other, k)!r}" for k in differ)
            )
        if overlap := set(first.claims) & set(other.claims):
            raise ValueError(f"claims {sorted(overlap)} were checked by more than one shard")
    merged = dataclasses.replace(
        first,
        date=max(r.date for r in records),
        claims={},
        notebooks={},
        notebook_seconds={},
    )
    for r in records:
        merged.claims |= r.claims
        merged.notebooks |= r.notebooks
        merged.notebook_seconds |= r.notebook_seconds
    merged.claims = dict(sorted(merged.claims.items()))
    merged.notebooks = dict(sorted(merged.notebooks.items()))
    return merged


@dataclass
class RunStatus:
    """Whether a run record verified the site being built, and if not, why not."""

    verified: bool
    stale: bool
    summary: str
    problems: list[str]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def status(run: RunRecord, site: Site, root: Path) -> RunStatus:
    """Compare the record with what is built: every checkable claim passed in a strict run, on
    notebooks with the digests being built and snippets as they are now."""
    checkable = [c.id for c in site.claims if c.verdict != UNVERIFIABLE]
    outcomes = {i: run.claims.get(i, "not run") for i in checkable}
    passed = sum(o == "passed" for o in outcomes.values())
    problems = []
    for outcome in ("failed", "skipped", "not run"):
        if ids := [i for i, o in outcomes.items() if o == outcome]:
            problems.append(f"{outcome}: {', '.join(ids)}")
    if run.mode != STRICT:
        problems.append(f"the run was not strict ({run.mode})")
    changed = [
        nb.path.as_posix()
        for nb in site.notebooks
        if nb.path.as_posix() in run.notebooks and run.notebooks[nb.path.as_posix()] != nb.digest
    ]
    if changed:
        problems.append(f"changed since the run: {', '.join(changed)}")
    if run.code not in (UNKNOWN, code_digest(root)):
        problems.append("snippets/ changed since the run")
    stale = bool(changed) or run.code not in (UNKNOWN, code_digest(root))
    summary = f"{passed} of {len(checkable)} checks passed"
    if stale:
        summary += ", on notebooks or code that have changed since: re-run `make test`"
    elif passed < len(checkable):
        summary += ": the site shows claims that this run did not verify"
    summary += f" (commit {run.commit})."
    return RunStatus(not problems, stale, summary, problems)


def differences(a: RunRecord, b: RunRecord) -> list[str]:
    """How two runs of the same checks disagree: claim outcomes, or notebooks verified."""
    found = [
        f"claim {i}: {a.claims.get(i, 'not run')} vs {b.claims.get(i, 'not run')}"
        for i in sorted(set(a.claims) | set(b.claims))
        if a.claims.get(i) != b.claims.get(i)
    ]
    if a.notebooks != b.notebooks:
        found.append("they verified different notebooks (or notebook contents)")
    return found


def main(argv: list[str] | None = None) -> None:
    """``python -m vrn_site.record merge SHARD.json ... --out build/verification.json``, or
    ``python -m vrn_site.record same A.json B.json``: two runs (1 and 2 threads, other kernels,
    or twice in a row) gave the same outcome for every claim, on the same notebooks."""
    import argparse

    parser = argparse.ArgumentParser(description="merge or compare verifying runs' records")
    parser.add_argument("command", choices=["merge", "same"])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_PATH))
    args = parser.parse_args(argv)
    found = []
    for path in args.records:
        if (run := read(path)) is None:
            raise SystemExit(f"{path}: no such run record")
        found.append(run)
    if args.command == "same":
        if len(found) != 2:
            raise SystemExit("`same` compares exactly two records")
        if differ := differences(*found):
            raise SystemExit(
                f"{args.records[0]} and {args.records[1]} disagree:\n  " + "\n  ".join(differ)
            )
        print(f"{args.records[0]} and {args.records[1]}: the same outcome for every claim")
        return
    try:
        write(args.out, merge(found))
    except ValueError as err:
        raise SystemExit(f"cannot merge {', '.join(map(str, args.records))}: {err}") from None
    print(f"{args.out}: merged {len(found)} shard records")


if __name__ == "__main__":
    main()
