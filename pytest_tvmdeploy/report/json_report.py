"""``report.json``: every marked test's record, for tools and for rewriting expected failures."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any


def write_json_report(folder: Path, records: Sequence[dict[str, Any]], targets: Sequence[Any]) -> Path:
    """Write ``folder/report.json`` atomically; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    report = {
        "tvm": version("apache-tvm"),
        "targets": [{"label": t.label, "target": t.as_dict} for t in targets],
        "tests": list(records),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path
