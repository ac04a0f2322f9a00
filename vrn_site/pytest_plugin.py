"""pytest plugin: record which claims the notebook checks verified in this run.

nbval turns every notebook cell into a test item. Cells tagged ``claim:<id>`` are the claims' checks;
this plugin notes each one's outcome and, at the end of a run that executed any, writes the run record
(``--ledger-record``, default build/verification.json) that the site's ledger page shows.
Works with pytest-xdist: workers attach the tags to their reports, the controller writes the file.

In nbval's lax mode (a GPU, an ARM machine: stored outputs are not compared) the values that cells
tagged ``publish`` print, which the notes quote, are still compared with the stored ones: text must
match, and each number may differ by ``PUBLISHED_RTOL`` of its stored value or one unit of its last
printed digit, whichever is larger.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vrn_site import record
from vrn_site.ledger import PUBLISH_TAG, VALUE_LINE, claim_ids_in_tags

PUBLISHED_RTOL = 0.10
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.(\d+))?")

_PROPERTY = "vrn_claims"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ledger-record",
        default=record.DEFAULT_PATH,
        help="where to write the verifying run's record (relative to the rootdir)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ClaimRecorder(config), "vrn_claim_recorder")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    cell = getattr(item, "cell", None)  # nbval's items carry their notebook cell
    if cell is not None:
        ids = claim_ids_in_tags(cell.get("metadata", {}).get("tags", []))
        if ids:
            report.user_properties.append((_PROPERTY, ids))


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
    if lax and cell is not None and PUBLISH_TAG in cell.get("metadata", {}).get("tags", []):
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

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, ids in report.user_properties:
            if key != _PROPERTY:
                continue
            for claim_id in ids:
                if report.failed:
                    self.outcomes[claim_id] = "failed"
                elif report.skipped:
                    self.outcomes.setdefault(claim_id, "skipped")
                elif report.when == "call":
                    self.outcomes.setdefault(claim_id, "passed")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput") or not self.outcomes:
            return  # an xdist worker, or a run that checked no claim
        lax = bool(self.config.getoption("nbval_lax", default=False))
        run = record.RunRecord.from_json(
            record.run_environment()
            | {
                "mode": record.LAX if lax else record.STRICT,
                "claims": dict(sorted(self.outcomes.items())),
            }
        )
        record.write(Path(self.config.rootpath, self.config.getoption("ledger_record")), run)
