"""The report's figures over many tests: distributions instead of one bar or panel per test, so a
run of thousands of cases draws images of a bounded size.

- errors: the pooled |TVM - reference| distribution of each source kind, and how the tests' largest
  errors spread, by outcome;
- latency: TVM's time against the reference's, one point per test, and the spread of their ratio;
- int8: the tests' SQNR and cosine, one point per test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pytest_tvmdeploy.outputs import TVM_PYTHON
from pytest_tvmdeploy.report.plots import (
    COLOURS,
    finite,
    grouped,
    histogram_of,
    new_figure,
    png_bytes,
    positive,
    quant_of,
)
from pytest_tvmdeploy.report.record import TestRecord

#: Outcome colours, as the table's rows.
OUTCOME_COLOURS = {"passed": "#4caf50", "failed": "#e53935", "xfailed": "#fbc02d", "xpassed": "#7e57c2",
                   "error": "#ef6c00", "skipped": "#9e9e9e"}
SOURCE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
#: Half-decade bins of the tests' largest error (log10), as the error histograms'.
MAX_ERROR_EDGES = np.arange(-12.0, 3.01, 0.5)


def error_distribution(records: Sequence[TestRecord]) -> bytes | None:
    """Left: each source kind's errors pooled over its tests (fraction of elements per half
    decade); right: how many tests have their largest error in each half decade, by outcome."""
    with_histogram = [r for r in records if histogram_of(r) is not None]
    with_error = [r for r in records if finite(r.max_abs_error)]
    if not with_histogram and not with_error:
        return None
    figure = new_figure(12, 4.5)
    pooled, spread = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for index, (source, group) in enumerate(_by_source(with_histogram).items()):
        edges = histogram_of(group[0])["log10_edges"]
        counts = np.zeros(len(edges) - 1)
        total = exact = 0
        for record in group:
            histogram = histogram_of(record)
            if histogram["log10_edges"] != edges:
                continue  # another writer's bins: not poolable with these
            counts += histogram["counts"]
            total, exact = total + histogram["total"], exact + histogram.get("exact", 0)
        pooled.stairs(counts / max(total, 1), edges, color=SOURCE_COLOURS[index % len(SOURCE_COLOURS)],
                      label=f"{source}: {len(group)} tests (exact {exact / max(total, 1):.0%})")
    pooled.set_title("errors of every element, pooled per source", fontsize=10)
    pooled.set_xlabel("log10 |TVM - reference|", fontsize=8)
    pooled.set_ylabel("fraction of elements", fontsize=8)
    if with_histogram:
        pooled.legend(fontsize=7, loc="upper left")
    logs = {outcome: [math.log10(max(r.max_abs_error, 1e-12)) for r in with_error if r.outcome == outcome]
            for outcome in OUTCOME_COLOURS}
    shown = {outcome: values for outcome, values in logs.items() if values}
    if shown:
        spread.hist(list(shown.values()), bins=MAX_ERROR_EDGES, stacked=True,
                    color=[OUTCOME_COLOURS[o] for o in shown], label=[f"{o}: {len(v)}" for o, v in shown.items()])
        spread.legend(fontsize=7, loc="upper left")
    spread.set_title("largest error of each test", fontsize=10)
    spread.set_xlabel("log10 max |TVM - reference| (exact outputs at -12)", fontsize=8)
    spread.set_ylabel("tests", fontsize=8)
    return png_bytes(figure)


def latency_spread(records: Sequence[TestRecord]) -> bytes | None:
    """Left: TVM (Python VM) ms against the reference's ms, a point per test, log-log with the
    line of equal time; right: how the ratio TVM / reference spreads."""
    points = [(r, 1000 * r.timings["reference"], 1000 * r.timings["run"]) for r in records
              if positive(r.timings.get("reference")) and positive(r.timings.get("run"))]
    if not points:
        return None
    figure = new_figure(12, 4.5)
    scatter, ratios = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for index, (source, group) in enumerate(_by_source([r for r, _, _ in points]).items()):
        chosen = [(x, y) for r, x, y in points if (r.source or "?") == source]
        scatter.scatter(*zip(*chosen), s=6, alpha=0.6, color=SOURCE_COLOURS[index % len(SOURCE_COLOURS)],
                        label=f"{source}: {len(group)} tests")
    low = min(min(x, y) for _, x, y in points)
    high = max(max(x, y) for _, x, y in points)
    scatter.plot([low, high], [low, high], color="#444", linewidth=0.8, linestyle="--", label="equal time")
    scatter.set_xscale("log")
    scatter.set_yscale("log")
    scatter.set_xlabel("reference ms (log)", fontsize=8)
    scatter.set_ylabel("TVM ms (log)", fontsize=8)
    scatter.set_title("TVM against the framework, one point per test", fontsize=10)
    scatter.legend(fontsize=7, loc="upper left")
    logs = [math.log10(y / x) for _, x, y in points]
    ratios.hist(logs, bins=40, color=COLOURS[TVM_PYTHON])
    ratios.axvline(0.0, color="#444", linewidth=0.8, linestyle="--")
    ratios.set_xlabel("log10 (TVM ms / reference ms): left of 0, TVM is faster", fontsize=8)
    ratios.set_ylabel("tests", fontsize=8)
    ratios.set_title(f"median ratio {10 ** float(np.median(logs)):.3g}x over {len(logs)} tests", fontsize=10)
    return png_bytes(figure)


def quantization_spread(records: Sequence[TestRecord]) -> bytes | None:
    """The int8 tests' SQNR (dB) against their cosine, a point per test, coloured by outcome."""
    rows = [r for r in records if quant_of(r) is not None]
    if not rows:
        return None
    figure = new_figure(9, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    for outcome, colour in OUTCOME_COLOURS.items():
        chosen = [(quant_of(r)["sqnr_db"], quant_of(r)["cosine"]) for r in rows if r.outcome == outcome]
        if chosen:
            axes.scatter(*zip(*chosen), s=8, color=colour, label=f"{outcome}: {len(chosen)}")
    axes.set_xlabel("SQNR (dB)", fontsize=8)
    axes.set_ylabel("cosine similarity", fontsize=8)
    axes.set_title(f"int8 against fp32 over {len(rows)} tests", fontsize=10)
    axes.legend(fontsize=7, loc="lower right")
    return png_bytes(figure)


def _by_source(records: Sequence[TestRecord]) -> dict[str, list[TestRecord]]:
    return grouped(records, lambda record: record.source or "?")
