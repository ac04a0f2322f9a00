"""pytest plugin: record which claims the notebook checks verified in this run.

nbval turns every notebook cell into a test item. Cells tagged ``claim:<id>`` are the claims' checks;
this plugin notes each one's outcome and, at the end of a run that executed any, writes the run record
(``--ledger-record``, default build/verification.json) that the site's ledger page shows.
Works with pytest-xdist: workers attach the tags to their reports, the controller writes the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vrn_site import record
from vrn_site.ledger import claim_ids_in_tags

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
