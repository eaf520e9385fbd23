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
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.kit.catalogue import QDQ, SOURCES
from pytest_tvmdeploy.kit.test_kit import EXPECTED_FAILURES

_CASE = re.compile(r"test_kit\.py::test_model\[(?P<case>[^\]]+)\]")
_SOURCES = sorted((*SOURCES, QDQ), key=len, reverse=True)  # "onnx_qdq" before "onnx", "torchscript" before "torch"


def updated(expected: dict[str, dict[str, str]], records: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """``expected`` with the outcomes of ``records`` applied."""
    result = {target: dict(cases) for target, cases in expected.items()}
    for record in records:
        case = _kit_case(record)
        if case is None:
            continue
        cases = result.setdefault(record.get("target", "llvm"), {})
        if record.get("outcome") in ("passed", "xpassed"):
            cases.pop(case, None)
        elif record.get("outcome") in ("failed", "error", "xfailed"):
            # Folders differ per machine: keep only the file name of any path in the reason.
            text = re.sub(r"/\S*/([^/\s:]+)", r"\1", record.get("reason", "failed"))
            reason = f"{record.get('stage', 'setup')}: {text}"
            cases[case] = cases.get(case, reason) if record.get("outcome") == "xfailed" else reason
    return {target: dict(sorted(cases.items())) for target, cases in sorted(result.items())}


def _kit_case(record: dict[str, Any]) -> str | None:
    match = _CASE.search(record.get("test", ""))
    if match is None:
        return None
    label = re.escape(record.get("target", ""))
    case = re.sub(rf"-{label}$|^{label}-", "", match.group("case")) if label else match.group("case")
    for source in _SOURCES:
        if case.endswith(f"-{source}"):
            return f"{case[: -len(source) - 1]}/{source}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_tvmdeploy.kit.update_expected", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="report.json written by --tvm-report")
    parser.add_argument("--file", type=Path, default=EXPECTED_FAILURES, help="the expected-failures file to rewrite")
    args = parser.parse_args(argv)
    records = json.loads(args.report.read_text())["tests"]
    expected = json.loads(args.file.read_text()) if args.file.exists() else {}
    new = updated(expected, records)
    write_atomic(args.file, json.dumps(new, indent=2) + "\n")
    before = sum(len(c) for c in expected.values())
    after = sum(len(c) for c in new.values())
    print(f"{args.file}: {before} -> {after} expected failure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
