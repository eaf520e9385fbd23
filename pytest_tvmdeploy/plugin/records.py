"""One :class:`TestRecord` per marked test: filled by the other feature modules, attached to the
test's report (so xdist carries it to the controller), shown as the end-of-session table, as JUnit
properties and, with ``--tvm-report``, written as ``report.json`` and ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.plugin.session import SESSION_KEY, add_options
from pytest_tvmdeploy.report.coverage import coverage_lines
from pytest_tvmdeploy.report.html import write_html_report
from pytest_tvmdeploy.report.json_report import report_document, write_json_report
from pytest_tvmdeploy.report.properties import junit_properties
from pytest_tvmdeploy.report.record import TestRecord
from pytest_tvmdeploy.report.terminal import format_table

RECORD_KEY = pytest.StashKey[TestRecord]()
#: Sections other plugin modules add to the report (the kit's ``scoreboard``), by their key.
REPORT_SECTIONS_KEY = pytest.StashKey[dict[str, Any]]()
PROPERTY = "tvmdeploy"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, "report")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SummaryRecorder(), "tvmdeploy-summary")


def record_of(item: pytest.Item, target: str) -> TestRecord:
    """The test's record, made on first use."""
    if RECORD_KEY not in item.stash:
        item.stash[RECORD_KEY] = TestRecord(test=item.nodeid, target=target)
    return item.stash[RECORD_KEY]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    record = item.stash.get(RECORD_KEY, None)
    if record is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        record.outcome = _outcome(report)
        report.user_properties.append((PROPERTY, record.to_json()))
        item.user_properties.extend(junit_properties(record))  # what --junitxml writes
    return report


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed"
    if report.skipped:
        return "skipped"
    if report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
        return "xpassed"  # expected to fail, but every check passed
    return report.outcome if report.when == "call" else "error"


class SummaryRecorder:
    """Collects each marked test's record from its reports (the controller's view under xdist)."""

    def __init__(self) -> None:
        self.records: list[TestRecord] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.records.extend(TestRecord.from_json(value) for name, value in report.user_properties
                            if name == PROPERTY)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        folder = session.config.getoption("tvm_report")
        if folder and not hasattr(session.config, "workerinput"):  # the controller has every record
            report = report_document(self.records, session.config.stash[SESSION_KEY].targets,
                                     session.config.stash.get(REPORT_SECTIONS_KEY, {}))
            write_json_report(Path(folder), report)
            write_html_report(Path(folder), report)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        terminalreporter.write_sep("-", "tvmdeploy")
        for line in format_table(self.records):
            terminalreporter.write_line(line)
        if terminalreporter.config.stash[SESSION_KEY].coverage:
            terminalreporter.write_sep("-", "tvmdeploy operator coverage")
            for line in coverage_lines(self.records):
                terminalreporter.write_line(line)
