"""Rewrite the kit's expected failures from a run's report:
``python -m pytest_tvmdeploy.kit.update_expected REPORT_JSON [--file expected_failures.json]``.

For every kit case the report ran on a target: failing or erroring cases are listed with their
stage and reason, passing ones are removed. Cases and targets the run did not cover stay as
they were, so a partial run (``--tvm-kit-models=...``) updates just its part.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.kit.catalogue import QDQ, SOURCES
from pytest_tvmdeploy.kit.test_kit import EXPECTED_FAILURES
from pytest_tvmdeploy.report.record import TestRecord

#: The file the kit's tests live in (a record from another file is not a kit case).
KIT_FILE = "test_kit.py"
#: Every source form a kit case can have.
KIT_SOURCES = frozenset((*SOURCES, QDQ))


def updated(expected: dict[str, dict[str, str]], records: Sequence[TestRecord]) -> dict[str, dict[str, str]]:
    """``expected`` with the outcomes of ``records`` applied."""
    result = {target: dict(cases) for target, cases in expected.items()}
    for record in records:
        case = kit_case(record)
        if case is None:
            continue
        cases = result.setdefault(record.target, {})
        if record.outcome in ("passed", "xpassed"):
            cases.pop(case, None)
        elif record.outcome in ("failed", "error", "xfailed"):
            reason = _reason(record)
            # An expected failure keeps the reason it was listed with; a new failure records its own.
            cases[case] = cases.get(case, reason) if record.outcome == "xfailed" else reason
    return {target: dict(sorted(cases.items())) for target, cases in sorted(result.items())}


def kit_case(record: TestRecord) -> str | None:
    """``"<model>/<source>"`` of a kit test's record, or ``None`` for any other test."""
    if not record.case or not record.model or not _in_kit_file(record.test):
        return None
    prefix = f"{record.model}-"
    if not record.case.startswith(prefix):
        return None
    source = record.case[len(prefix):]
    return f"{record.model}/{source}" if source in KIT_SOURCES else None


def _in_kit_file(node_id: str) -> bool:
    """Whether the node id's file part (before the first ``::``) is the kit's test file."""
    return PurePosixPath(node_id.split("::", 1)[0]).name == KIT_FILE


def _reason(record: TestRecord) -> str:
    """``"<stage>: <reason>"``, with folders cut from paths: they differ per machine."""
    text = re.sub(r"/\S*/([^/\s:]+)", r"\1", record.reason or "failed")
    return f"{record.stage or 'setup'}: {text}"


def read_records(report: Path) -> list[TestRecord]:
    """The test records of a ``report.json``."""
    return [TestRecord.from_json(test) for test in json.loads(report.read_text())["tests"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_tvmdeploy.kit.update_expected", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="report.json written by --tvm-report")
    parser.add_argument("--file", type=Path, default=EXPECTED_FAILURES, help="the expected-failures file to rewrite")
    args = parser.parse_args(argv)
    records = read_records(args.report)
    expected = json.loads(args.file.read_text()) if args.file.exists() else {}
    new = updated(expected, records)
    write_atomic(args.file, json.dumps(new, indent=2) + "\n")
    before = sum(len(c) for c in expected.values())
    after = sum(len(c) for c in new.values())
    print(f"{args.file}: {before} -> {after} expected failure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
