"""The end-of-session table: one row per deployed model test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_tvmdeploy.report.speed import ratio_text

COLUMNS = ("test", "target", "source", "artifact", "import s", "compile s", "tvm ms", "cpp ms", "torch ms",
           "ort ms", "tvm/ref", "cpp", "max abs err", "int8 cos/sqnr", "result")
#: Which latency column the reference's time goes to.
REFERENCE_COLUMNS = {"pytorch": "torch ms", "onnxruntime": "ort ms"}


def summary_row(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Format one test's record (as stored in the report's user properties)."""
    timings = record.get("timings", {})
    cached = record.get("cache_hit")
    return (
        record["test"],
        record.get("target", ""),
        record.get("source", ""),
        "-" if cached is None else ("cached" if cached else "built") + ("+tuned" if record.get("tuned") else ""),
        f"{timings.get('import', 0.0):.2f}",
        f"{timings.get('compile', 0.0):.2f}",
        f"{1000 * timings.get('run', 0.0):.1f}",
        f"{1000 * timings.get('cpp_run', 0.0):.1f}" if record.get("cpp") in ("bitwise", "differs") else "-",
        *(_reference_cell(record, column) for column in REFERENCE_COLUMNS.values()),
        ratio_text(record),
        record.get("cpp", "-").split(":")[0],
        "-" if record.get("max_abs_error") is None else f"{record['max_abs_error']:.2e}",
        _quant_cell(record.get("quant")),
        _result_cell(record),
    )


def _reference_cell(record: Mapping[str, Any], column: str) -> str:
    if REFERENCE_COLUMNS.get(record.get("reference_name", "")) != column or "timings" not in record:
        return "-"
    return f"{1000 * record['timings'].get('reference', 0.0):.1f}"


def _result_cell(record: Mapping[str, Any]) -> str:
    """The outcome, and for a test that did not pass, the stage that stopped it."""
    outcome = record.get("outcome", "")
    stage = record.get("stage")
    return f"{outcome} ({stage})" if stage and outcome != "passed" else outcome


def _quant_cell(quant: Mapping[str, Any] | None) -> str:
    if not quant or quant.get("cosine") is None:
        return "-"
    return f"{quant['cosine']:.4f}/{quant['sqnr_db']:.1f}dB"


def format_table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines of an aligned text table plus a totals line."""
    rows = [COLUMNS] + [summary_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    built = sum(1 for r in records if r.get("cache_hit") is False)
    cached = sum(1 for r in records if r.get("cache_hit") is True)
    lines.append(f"artifacts: {built} built, {cached} from cache")
    skipped = sorted({r["cpp"] for r in records if str(r.get("cpp", "")).startswith("skipped")})
    lines.extend(f"C++ check {reason}" for reason in skipped)
    return lines
