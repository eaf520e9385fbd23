"""The report's figures as PNG bytes: error histograms, latencies and int8 metrics per model.

Matplotlib is imported inside the functions (the plugin starts without it) and drawn on an Agg
canvas of its own, never through pyplot, so the user's backend and figure state stay untouched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.outputs import TVM_CPP, TVM_PYTHON
from pytest_tvmdeploy.report.record import TestRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: One colour per runner, and one per reference framework (the legend names which one ran).
COLOURS = {TVM_PYTHON: "#1f77b4", TVM_CPP: "#17becf", "pytorch": "#ee4c2c", "onnxruntime": "#7f7f7f"}
FRAMEWORKS = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}
DPI = 100


def case_label(record: TestRecord) -> str:
    """A short name for one test: its function and case (the parametrization without the target),
    then the target; a record without a case shows its node id without the file."""
    if record.case:
        function = record.test.split("[", 1)[0].rsplit("::", 1)[-1]  # params may hold "::", the name cannot
        return f"{function}[{record.case}] @ {record.target}"
    name = record.test.rsplit("::", 1)[-1]
    return name if not record.target or f"[{record.target}]" in name else f"{name} @ {record.target}"


def by_model(records: Sequence[TestRecord]) -> dict[str, list[TestRecord]]:
    """Records grouped by model name, in first-seen order."""
    return grouped(records, lambda record: record.model_name)


def grouped(records: Sequence[TestRecord], key: Callable[[TestRecord], str]) -> dict[str, list[TestRecord]]:
    """Records grouped by ``key``, in first-seen order."""
    groups: dict[str, list[TestRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def error_histograms(records: Sequence[TestRecord]) -> bytes | None:
    """One panel per model with one |TVM - reference| distribution per test; None without data."""
    groups = by_model([r for r in records if histogram_of(r) is not None])
    if not groups:
        return None
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = new_figure(4.2 * columns, 3.2 * rows)
    for index, (model, group) in enumerate(groups.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        for record in group:
            _draw_histogram(axes, record)
        axes.set_title(model, fontsize=10)
        axes.set_xlabel("log10 |TVM - reference|", fontsize=8)
        axes.set_ylabel("fraction of elements", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=6, loc="upper left")
    return png_bytes(figure)


def histogram_of(record: TestRecord) -> Mapping[str, Any] | None:
    """The record's error histogram when it is drawable (counts, and one more edge than counts)."""
    histogram = record.error_histogram
    if not histogram or not histogram.get("total") or len(histogram.get("counts", ())) == 0:
        return None
    if len(histogram.get("log10_edges", ())) != len(histogram["counts"]) + 1:
        return None
    return histogram


def _draw_histogram(axes: Axes, record: TestRecord) -> None:
    histogram = histogram_of(record)
    total = histogram["total"]
    fractions = [count / total for count in histogram["counts"]]
    exact = histogram.get("exact", 0) / total
    axes.stairs(fractions, histogram["log10_edges"], label=f"{case_label(record)} (exact {exact:.0%})")


def latencies(records: Sequence[TestRecord]) -> bytes | None:
    """Horizontal bars per test, grouped by model: TVM VM, TVM C++ and the reference, in ms (log scale)."""
    rows = [(r, _latency_bars(r)) for group in by_model(records).values() for r in group]
    rows = [(r, bars) for r, bars in rows if bars]
    if not rows:
        return None
    figure = new_figure(9, 1.2 + 0.55 * len(rows))
    axes = figure.add_subplot(1, 1, 1)
    seen: set[str] = set()
    for y, (_, bars) in enumerate(rows):
        _draw_latency_row(axes, y, bars, seen)
    _label_rows(axes, [f"{r.model_name}\n{case_label(r)}" for r, _ in rows])
    _log_ms_axis(axes, [ms for _, bars in rows for *_, ms in bars])
    axes.set_title("Latency per run: TVM and the framework reference", fontsize=10)
    figure.legend(loc="outside upper center", ncols=4, fontsize=8)
    return png_bytes(figure)


def _draw_latency_row(axes: Axes, y: int, bars: list[tuple[int, str, str, float]], seen: set[str]) -> None:
    """Up to three bars around ``y``, each labelled with its ms; a legend entry the first time a runner shows."""
    height = 0.8 / 3
    for slot, key, label, ms in bars:
        position = y + (slot - 1) * height
        axes.barh(position, ms, height=height, color=COLOURS[key], label=None if label in seen else label)
        axes.annotate(f"{ms:.3g}", (ms, position), xytext=(3, 0), textcoords="offset points", va="center", fontsize=6)
        seen.add(label)


def _log_ms_axis(axes: Axes, values: list[float]) -> None:
    """Whole decades around the values, labelled in plain ms (bars on a log axis start at its left edge)."""
    from matplotlib.ticker import FuncFormatter

    axes.set_xscale("log")
    axes.set_xlim(10 ** math.floor(math.log10(min(values))), 10 ** math.ceil(math.log10(max(values) * 1.5)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlabel("ms (log scale)")


def _latency_bars(record: TestRecord) -> list[tuple[int, str, str, float]]:
    """(slot, colour key, legend label, ms) of each runner with a positive time (a log axis has no 0)."""
    timings = record.timings
    reference = record.reference_name or "pytorch"
    candidates = [(TVM_PYTHON, "TVM (Python VM)", timings.get("run")),
                  # as the table: C++ times of a check that did not run mean nothing
                  (TVM_CPP, "TVM (C++)", timings.get("cpp_run") if record.ran_cpp else None),
                  (reference if reference in COLOURS else "pytorch", FRAMEWORKS.get(reference, reference),
                   timings.get("reference"))]
    return [(slot, key, label, 1000.0 * seconds)
            for slot, (key, label, seconds) in enumerate(candidates) if positive(seconds)]


def quantization(records: Sequence[TestRecord]) -> bytes | None:
    """Cosine similarity and SQNR (dB) of the int8 outputs against fp32, one bar per test; None without data."""
    rows = [r for group in by_model(records).values() for r in group if quant_of(r) is not None]
    if not rows:
        return None
    figure = new_figure(9, 2.0 + 0.45 * len(rows))
    labels = [f"{r.model_name}\n{case_label(r)}" for r in rows]
    for column, (key, title, colour) in enumerate((("cosine", "cosine similarity", "#2ca02c"),
                                                   ("sqnr_db", "SQNR (dB)", "#9467bd"))):
        axes = figure.add_subplot(1, 2, column + 1)
        values = [float(quant_of(r)[key]) for r in rows]
        axes.barh(range(len(rows)), values, color=colour, height=0.6)
        for y, value in enumerate(values):
            axes.annotate(f"{value:.4g}", (value, y), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=7)
        _label_rows(axes, labels if column == 0 else [""] * len(rows))
        axes.set_xlabel(title)
        if key == "cosine":
            axes.set_xlim(*_cosine_range(values))
        else:
            axes.margins(x=0.15)  # room for the value labels
    figure.suptitle("int8 against fp32")
    return png_bytes(figure)


def _cosine_range(values: list[float]) -> tuple[float, float]:
    """Zoom in near 1, where int8 cosines live, leaving room for the value labels."""
    low = min(values)
    left = min(low, 0.0) if low < 0.5 else max(0.0, 1.0 - 2.0 * (1.0 - low) - 1e-3)
    return left, 1.0 + 0.15 * (1.0 - left)


def quant_of(record: TestRecord) -> Mapping[str, Any] | None:
    """The record's int8 metrics when both cosine and SQNR are finite numbers."""
    quant = record.quant
    if not quant or not all(finite(quant.get(key)) for key in ("cosine", "sqnr_db")):
        return None
    return quant


def _label_rows(axes: Axes, labels: list[str]) -> None:
    axes.set_yticks(range(len(labels)))
    axes.set_yticklabels(labels, fontsize=7)
    axes.invert_yaxis()  # first test on top, as in the table


def positive(value: Any) -> bool:
    """Whether ``value`` is a finite number above 0 (what a log axis can show)."""
    return finite(value) and value > 0


def finite(value: Any) -> bool:
    """Whether ``value`` is a real number (not a bool, not NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
