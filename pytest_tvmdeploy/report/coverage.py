"""Operator coverage: every operator the frontends saw in a run, and how the tests using it ended.

Read from the test records (``--tvm-coverage`` fills their ``operators``): per operator, the
models using it, the tests that passed, and of the others whether the frontend named the
operator as one it cannot import, the build failed, the operator was the first to diverge, or
the test failed elsewhere. ``tvmdeploy-coverage report.json`` prints it for any report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_tvmdeploy.report.record import TestRecord

COLUMNS = ("operator", "frontend", "models", "tests", "passed", "cannot import", "in failed build",
           "first diverging", "other failures")
#: Test outcomes that count as passing.
PASSED = ("passed",)
#: Stages at which a test stops because its artifact could not be built.
BUILD_STAGES = ("build", "tune", "quantize")


@dataclass
class OperatorRow:
    """How one operator of one frontend fared in a run."""

    operator: str
    frontend: str
    models: set[str] = field(default_factory=set)
    tests: int = 0
    passed: int = 0
    unsupported: int = 0
    build_failed: int = 0
    diverging: int = 0
    other_failures: int = 0

    @property
    def cells(self) -> tuple[str, ...]:
        return (self.operator, self.frontend, str(len(self.models)), str(self.tests), str(self.passed),
                _count(self.unsupported), _count(self.build_failed), _count(self.diverging),
                _count(self.other_failures))


def _count(value: int) -> str:
    return str(value) if value else "-"


def frontend_of(record: TestRecord) -> str:
    """``onnx`` for ONNX files, ``torch`` for every form that goes through torch.export."""
    return "onnx" if record.source == "onnx" else "torch"


def operator_coverage(records: Sequence[TestRecord]) -> list[OperatorRow]:
    """One row per (frontend, operator) seen in ``records``, failing operators first, then by name."""
    rows: dict[tuple[str, str], OperatorRow] = {}
    for record in records:
        if not record.operators:
            continue
        frontend = frontend_of(record)
        diverging = (record.divergence or {}).get("op")
        for name in record.operators:
            row = rows.setdefault((frontend, name), OperatorRow(name, frontend))
            row.models.add(record.model_name)
            row.tests += 1
            if record.outcome in PASSED:
                row.passed += 1
            elif any(_names(name, unsupported) for unsupported in record.unsupported or ()):
                row.unsupported += 1
            elif record.stage in BUILD_STAGES:
                row.build_failed += 1
            elif diverging is not None and _names(name, diverging):
                row.diverging += 1
            elif record.outcome in ("failed", "error", "xfailed"):
                row.other_failures += 1
    return sorted(rows.values(), key=lambda r: (r.passed == r.tests, r.frontend, r.operator))


def _names(operator: str, said: str) -> bool:
    """Whether a frontend's or localiser's name ``said`` (``amax.default``, ``IsInf``) is ``operator``."""
    return operator == said or operator.endswith(f".{said}") or operator.split(".")[-2:-1] == [said]


def coverage_lines(records: Sequence[TestRecord]) -> list[str]:
    """The coverage table as aligned text, then a totals line per frontend."""
    rows = operator_coverage(records)
    if not rows:
        return ["no operators recorded (run with --tvm-coverage=on)"]
    table = [COLUMNS] + [r.cells for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    for frontend in sorted({r.frontend for r in rows}):
        mine = [r for r in rows if r.frontend == frontend]
        clean = sum(1 for r in mine if r.passed == r.tests)
        lines.append(f"{frontend}: {len(mine)} operators, {clean} passing in every test that uses them")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``tvmdeploy-coverage REPORT.json``: print the operator coverage of a report."""
    parser = argparse.ArgumentParser(prog="tvmdeploy-coverage", description=main.__doc__)
    parser.add_argument("report", type=Path, help="a report.json written with --tvm-report")
    args = parser.parse_args(argv)
    try:
        tests = json.loads(args.report.read_text())["tests"]
        records = [TestRecord.from_json(test) for test in tests]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"tvmdeploy-coverage: {args.report}: not a readable report ({exc})", file=sys.stderr)
        return 2
    print("\n".join(coverage_lines(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
