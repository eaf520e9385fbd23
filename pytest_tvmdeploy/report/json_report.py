"""``report.json``: every marked test's record, for tools and for rewriting expected failures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.files import write_atomic


def report_document(records: Sequence[dict[str, Any]], targets: Sequence[Any]) -> dict[str, Any]:
    """The session's report as plain JSON values (what ``report.json`` holds and the HTML page shows)."""
    report = {
        "tvm": version("apache-tvm"),
        "targets": [{"label": t.label, "target": t.as_dict} for t in targets],
        "tests": list(records),
    }
    return json.loads(json.dumps(report, default=str))


def write_json_report(folder: Path, report: Mapping[str, Any]) -> Path:
    """Write ``folder/report.json`` atomically; returns its path."""
    path = folder / "report.json"
    write_atomic(path, json.dumps(report, indent=2, sort_keys=True))
    return path
