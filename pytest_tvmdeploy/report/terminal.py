"""The end-of-session table: one row per deployed model test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_tvmdeploy.report.record import TestRecord
from pytest_tvmdeploy.report.speed import ratio_text

COLUMNS = ("test", "target", "source", "shape", "artifact", "import s", "compile s", "tvm ms", "cpp ms", "torch ms",
           "ort ms", "tvm/ref", "cpp", "max abs err", "int8 cos/sqnr", "result")
#: Which latency column the reference's time goes to.
REFERENCE_COLUMNS = {"pytorch": "torch ms", "onnxruntime": "ort ms"}


def summary_row(record: TestRecord) -> tuple[str, ...]:
    """Format one test's record as the table's cells."""
    timings = record.timings
    return (
        record.test,
        record.target,
        record.source or "",
        record.shape or "-",
        _artifact_cell(record),
        f"{timings.get('import', 0.0):.2f}",
        f"{timings.get('compile', 0.0):.2f}",
        f"{1000 * timings.get('run', 0.0):.1f}",
        f"{1000 * timings.get('cpp_run', 0.0):.1f}" if record.ran_cpp else "-",
        *(_reference_cell(record, column) for column in REFERENCE_COLUMNS.values()),
        ratio_text(record),
        record.cpp or "-",
        "-" if record.max_abs_error is None else f"{record.max_abs_error:.2e}",
        _quant_cell(record.quant),
        _result_cell(record),
    )


def _artifact_cell(record: TestRecord) -> str:
    if record.cache_hit is None:
        return "-"
    return ("cached" if record.cache_hit else "built") + ("+tuned" if record.tuned else "")


def _reference_cell(record: TestRecord, column: str) -> str:
    if REFERENCE_COLUMNS.get(record.reference_name or "") != column or "reference" not in record.timings:
        return "-"
    return f"{1000 * record.timings['reference']:.1f}"


def _result_cell(record: TestRecord) -> str:
    """The outcome, and for a test that did not pass, the stage that stopped it (and for a TVM
    worker that died, hung or ran out of memory, the signal or limit)."""
    outcome = record.outcome or ""
    if record.crash and outcome in ("failed", "error"):
        return f"crashed ({record.stage}, {record.crash})"
    return f"{outcome} ({record.stage})" if record.stage and outcome != "passed" else outcome


def _quant_cell(quant: Mapping[str, float | None] | None) -> str:
    if not quant or quant.get("cosine") is None:
        return "-"
    return f"{quant['cosine']:.4f}/{quant['sqnr_db']:.1f}dB"


#: Above this many tests the table lists only those that did not pass (the report has them all).
MAX_TABLE_ROWS = 100


def format_table(records: Sequence[TestRecord]) -> list[str]:
    """Lines of an aligned text table (of the tests that did not pass, when there are more than
    :data:`MAX_TABLE_ROWS`), a totals line and why the C++ check was skipped."""
    shown = records if len(records) <= MAX_TABLE_ROWS else [r for r in records if r.outcome != "passed"]
    rows = [COLUMNS] + [summary_row(r) for r in shown]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    built = sum(1 for r in records if r.cache_hit is False)
    cached = sum(1 for r in records if r.cache_hit is True)
    if len(shown) < len(records):
        lines.append(f"{len(records) - len(shown)} passing test(s) not listed ({len(records)} in all)")
    lines.append(f"artifacts: {built} built, {cached} from cache")
    return lines + skip_lines(records) + stand_in_lines(records)


def skip_lines(records: Sequence[TestRecord]) -> list[str]:
    """One line per distinct reason the C++ check was skipped, sorted (not one per test)."""
    notes = sorted({r.cpp_note or "" for r in records if r.cpp == "skipped"})
    return [f"C++ check skipped: {note}" if note else "C++ check skipped" for note in notes]


def stand_in_lines(records: Sequence[TestRecord], limit: int = 10) -> list[str]:
    """One line per test whose reference came from a stand-in (ONNX Runtime could not run the
    model), the first ``limit`` of them, and how many more."""
    notes = [f"{r.test}: {r.reference_note}" for r in records if r.reference_note]
    more = [f"... and {len(notes) - limit} more stand-in reference(s)"] if len(notes) > limit else []
    return [f"reference stand-in: {note}" for note in notes[:limit]] + more
