"""pytest plugin: record which claims the notebook checks verified in this run.

nbval turns every notebook cell into a test item ("Cell N", code cells from 0). Cells tagged
``claim:<id>`` are the claims' checks; this plugin
- names the claim, its note and the cell (nbval's "Cell N" and the page's "In [n]") in the report
  of a failing check;
- after a cell fails to import something, skips the rest of its notebook with that reason instead
  of letting each later cell fail with a NameError;
- at the end of a run that executed any check, writes the run record (``--ledger-record``,
  default build/verification.json; vrn_site.record) that the site shows;
- with ``--ledger-require-all``, fails the run unless every checkable claim (of this shard's notes)
  passed: a claim whose check was skipped or not collected is not verified;
- with ``--shard i/n``, keeps only shard i's notes and unit test files (vrn_site.shard).
Works with pytest-xdist: workers attach what they found to their reports, the controller writes.

In nbval's lax mode (a GPU, an ARM machine: stored outputs are not compared) the values that cells
tagged ``publish`` print, which the notes quote, are still compared with the stored ones: text must
match, and each number may differ by ``PUBLISHED_RTOL`` of its stored value or one unit of its last
printed digit, whichever is larger.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vrn_site import record, shard
from vrn_site.ledger import (
    UNVERIFIABLE,
    VALUE_LINE,
    LedgerError,
    cell_label,
    claim_ids_in_tags,
    digest,
    load_site,
)
from vrn_site.values import PUBLISH_TAG

PUBLISHED_RTOL = 0.10
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.(\d+))?")
IMPORT_FAILED = re.compile(r"\b(?:ModuleNotFoundError|ImportError): .*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

_CLAIMS, _NOTEBOOK = "vrn_claims", "vrn_notebook"
_IMPORT_FAILURE = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vrn", "Verified Reading Notes")
    group.addoption(
        "--ledger-record",
        default=record.DEFAULT_PATH,
        help="where to write the verifying run's record (relative to the rootdir)",
    )
    group.addoption(
        "--ledger-require-all",
        action="store_true",
        help="fail unless every checkable claim (of this shard's notes) passed",
    )
    group.addoption("--shard", default=None, help="run shard i of n (i/n): whole notes per shard")


def pytest_configure(config: pytest.Config) -> None:
    shard_option = config.getoption("shard")
    try:
        config.stash[_SHARD] = shard.parse(shard_option) if shard_option else None
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    config.pluginmanager.register(ClaimRecorder(config), "vrn_claim_recorder")


_SHARD = pytest.StashKey[tuple[int, int] | None]()


def _site(config: pytest.Config):
    try:
        return load_site(config.rootpath)
    except LedgerError as err:
        raise pytest.UsageError(str(err)) from None


def _notebook_of(item: pytest.Item) -> str | None:
    cell = getattr(item, "cell", None)  # nbval's items carry their notebook cell
    if cell is None:
        return None
    return Path(str(item.parent.path)).relative_to(item.config.rootpath).as_posix()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not (which := config.stash[_SHARD]):
        return
    site = _site(config)
    notes = shard.notes_of_shard(site, *which)
    test_files = sorted({Path(str(i.path)) for i in items if _notebook_of(i) is None})
    files = shard.test_files_of_shard(test_files, *which)
    kept, dropped = [], []
    for item in items:
        notebook = _notebook_of(item)
        mine = Path(notebook).parent.name in notes if notebook else item.path.name in files
        (kept if mine else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _tags(item: pytest.Item) -> list[str]:
    return (getattr(item, "cell", {}).get("metadata") or {}).get("tags") or []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    notebook = _notebook_of(item)
    if notebook and (failure := item.parent.stash.get(_IMPORT_FAILURE, None)):
        pytest.skip(f"not run: {failure}; fix that first")
    return (yield)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    notebook = _notebook_of(item)
    if notebook is None:
        return
    report.user_properties.append((_NOTEBOOK, notebook))
    ids = claim_ids_in_tags(_tags(item))
    if ids:
        report.user_properties.append((_CLAIMS, ids))
    if not report.failed:
        return
    label = cell_label(item.cell_num, item.cell.get("execution_count"))
    if ids:
        report.sections.append(
            (
                "claim",
                f"{notebook} {label} is the check of claim {', '.join(ids)}: the claim is not "
                "verified until it passes (the page shows this cell at 'In [n]')",
            )
        )
    if call.when == "call" and (failed := IMPORT_FAILED.search(ANSI.sub("", str(report.longrepr)))):
        item.parent.stash[_IMPORT_FAILURE] = f"{notebook} {label} failed: {failed[0].strip()}"


def printed_values(outputs) -> dict[str, str]:
    """``name = value`` lines that a cell printed to stdout."""
    text = "".join(
        "".join(o.get("text", ""))
        for o in outputs
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    return {
        m[1]: m[2].strip() for line in text.splitlines() if (m := VALUE_LINE.match(line.strip()))
    }


def within_tolerance(stored: str, now: str) -> bool:
    """Same text around the numbers, and each number within its tolerance (see the module doc)."""
    if NUMBER.sub("#", stored) != NUMBER.sub("#", now):
        return False
    for old, new in zip(NUMBER.finditer(stored), NUMBER.finditer(now), strict=True):
        a, b = float(old[0].replace(",", "")), float(new[0].replace(",", ""))
        last_digit = 10.0 ** -len(old[1] or "")
        if abs(a - b) > max(PUBLISHED_RTOL * abs(a), last_digit):
            return False
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    cell = getattr(item, "cell", None)
    lax = item.config.getoption("nbval_lax", default=False)
    if lax and cell is not None and PUBLISH_TAG in _tags(item):
        stored, now = printed_values(cell.get("outputs", [])), printed_values(item.test_outputs)
        wrong = [
            f"{name}: stored {value!r}, now {now.get(name)!r}"
            for name, value in stored.items()
            if name not in now or not within_tolerance(value, now[name])
        ]
        if wrong:
            raise AssertionError(
                f"{item.nodeid}: published values beyond tolerance (relative {PUBLISHED_RTOL}):\n  "
                + "\n  ".join(wrong)
            )
    return result


class ClaimRecorder:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.outcomes: dict[str, str] = {}  # claim id -> passed | failed | skipped
        self.seconds: dict[str, float] = {}  # notebook -> seconds over its cells' phases

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if notebook := props.get(_NOTEBOOK):
            self.seconds[notebook] = self.seconds.get(notebook, 0.0) + report.duration
        for claim_id in props.get(_CLAIMS, []):
            if report.failed:
                self.outcomes[claim_id] = "failed"
            elif report.skipped:
                self.outcomes.setdefault(claim_id, "skipped")
            elif report.when == "call":
                self.outcomes.setdefault(claim_id, "passed")

    def _unverified(self) -> list[str]:
        """Checkable claims of this run's notes that did not pass, with their outcome."""
        site = _site(self.config)
        notes = {n.slug for n in site.notes}
        if which := self.config.stash[_SHARD]:
            notes = shard.notes_of_shard(site, *which)
        return [
            f"{c.id} ({self.outcomes.get(c.id, 'not run')}, {site.shown(site.docs_dir / c.note)})"
            for c in site.claims
            if c.verdict != UNVERIFIABLE
            and c.note.stem in notes
            and self.outcomes.get(c.id) != "passed"
        ]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # an xdist worker: the controller records
        if self.config.getoption("ledger_require_all") and (missing := self._unverified()):
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter:
                reporter.write_sep("=", "claims not verified", red=True)
                reporter.write_line(
                    f"{len(missing)} checkable claim(s) did not pass, so the site cannot show "
                    "them as verified:\n  " + "\n  ".join(missing)
                )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if not self.outcomes:
            return  # a run that checked no claim
        root = self.config.rootpath
        lax = bool(self.config.getoption("nbval_lax", default=False))
        run = record.RunRecord.from_json(
            record.run_environment()
            | {
                "mode": record.LAX if lax else record.STRICT,
                "commit": record.commit(root),
                "code": record.code_digest(root),
                "claims": dict(sorted(self.outcomes.items())),
                "notebooks": {nb: digest((root / nb).read_bytes()) for nb in sorted(self.seconds)},
                "notebook_seconds": {nb: round(s, 1) for nb, s in sorted(self.seconds.items())},
            }
        )
        record.write(Path(root, self.config.getoption("ledger_record")), run)
