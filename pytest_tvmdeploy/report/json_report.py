"""``report.json``: every marked test's record, for tools and for rewriting expected failures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.report.record import SCHEMA_VERSION, TestRecord


def report_document(records: Sequence[TestRecord], targets: Sequence[Any],
                    sections: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The session's report as plain JSON values (what ``report.json`` holds and the HTML page shows),
    with the ``sections`` other parts of the plugin add (the kit's ``scoreboard``)."""
    report = {
        "schema": SCHEMA_VERSION,  # readers of report.json check it before trusting the records' keys
        "tvm": version("apache-tvm"),
        "targets": [{"label": t.label, "target": t.as_dict} for t in targets],
        "tests": [r.to_json() for r in records],
        **(sections or {}),
    }
    # default=str: a value that is not JSON (a Path, a numpy scalar) is written as its text
    return json.loads(json.dumps(report, default=str))


def write_json_report(folder: Path, report: Mapping[str, Any]) -> Path:
    """Write ``folder/report.json`` atomically; returns its path."""
    path = folder / "report.json"
    write_atomic(path, json.dumps(report, indent=2, sort_keys=True))
    return path
