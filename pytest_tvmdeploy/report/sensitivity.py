"""The report's int8 sensitivity section: what each quantized site costs alone, per test, as a
plot and a table, with the sites a budget kept in float."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_tvmdeploy.report import markup
from pytest_tvmdeploy.report.plots import case_label, new_figure, png_bytes
from pytest_tvmdeploy.report.record import TestRecord

#: Sites listed before the rest of a test's table folds away.
SHOWN_SITES = 10
#: Tests drawn in the plot (one panel each); the table lists them all.
PLOTTED_TESTS = 6


def site_costs(quantization: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a record keeps of a deployment's quantization: the sensitivity, the sites left in
    float and the budget's choice; None when sensitivity was not measured."""
    if not quantization or "sensitivity" not in quantization:
        return None
    return {"samples": quantization["sensitivity"].get("samples"), "sites": quantization["sensitivity"].get("sites"),
            "keep_float": quantization.get("keep_float", []), "budget": quantization.get("budget")}


def with_sensitivity(records: Sequence[TestRecord]) -> list[TestRecord]:
    return [r for r in records if r.sensitivity and r.sensitivity.get("sites")]


def plot(records: Sequence[TestRecord]) -> bytes | None:
    """Per test, each site's SQNR when it alone is int8 (bars in site order; orange: kept in
    float), with the budget's line; None without data."""
    shown = with_sensitivity(records)[:PLOTTED_TESTS]
    if not shown:
        return None
    canvas = new_figure(9, 2.6 * len(shown))
    for index, record in enumerate(shown):
        axes = canvas.add_subplot(len(shown), 1, index + 1)
        costs = sorted(record.sensitivity["sites"], key=lambda cost: cost["site"])
        kept = set(record.sensitivity.get("keep_float") or ())
        values = [_finite_or(cost["sqnr_db"], 99.0) for cost in costs]
        colours = ["#ff7f0e" if cost["site"] in kept else "#9467bd" for cost in costs]
        axes.bar(range(len(costs)), values, color=colours, width=0.8)
        axes.set_xticks(range(len(costs)))
        axes.set_xticklabels([str(cost["site"]) for cost in costs], fontsize=6, rotation=90 if len(costs) > 30 else 0)
        budget = record.sensitivity.get("budget") or {}
        if budget.get("metric") == "sqnr_db":
            axes.axhline(budget["target"], color="#d62728", linewidth=1, linestyle="--",
                         label=f"budget {budget['target']:g} dB (all sites)")
            axes.legend(fontsize=7, loc="lower right")
        axes.set_ylabel("SQNR alone (dB)", fontsize=8)
        axes.set_title(case_label(record), fontsize=9)
        axes.tick_params(axis="y", labelsize=7)
    axes.set_xlabel("site (conv2d / matmul, in program order); orange: kept in float", fontsize=8)
    return png_bytes(canvas)


def section(records: Sequence[TestRecord]) -> str:
    """The sensitivity tables (most damaging site first), one per test; empty without data."""
    shown = with_sensitivity(records)
    if not shown:
        return ""
    tables = [_test_table(record, index) for index, record in enumerate(shown)]
    return "<h2>int8 sensitivity per site</h2>\n" + "\n".join(tables)


def _test_table(record: TestRecord, index: int) -> str:
    data = record.sensitivity
    kept = set(data.get("keep_float") or ())
    costs = sorted(data["sites"], key=lambda cost: (_finite_or(cost["sqnr_db"], math.inf), cost["site"]))
    rows = [_row(cost, cost["site"] in kept) for cost in costs]
    head = "".join(f"<th>{c}</th>" for c in ("site", "op", "weight shape", "SQNR alone (dB)", "top-1 alone",
                                             "its input alone (dB)", "its weights alone (dB)", "in float"))
    folded = ""
    if len(rows) > SHOWN_SITES:
        folded = (f"<tr><td colspan=\"8\"><details><summary>{len(rows) - SHOWN_SITES} more site(s)</summary>"
                  f"<table><tbody>{''.join(rows[SHOWN_SITES:])}</tbody></table></details></td></tr>")
    return (f"<h3>{markup.text(case_label(record))}</h3>\n<p class=\"meta\">{markup.text(_summary(data))}</p>\n"
            f"<table class=\"sensitivity\" id=\"sensitivity-{index}\" data-test=\"{markup.text(record.test)}\">\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>{''.join(rows[:SHOWN_SITES])}{folded}</tbody>\n</table>")


def _row(cost: Mapping[str, Any], kept: bool) -> str:
    agreement = cost.get("agreement")
    cells = [str(cost["site"]), cost["op"], "x".join(map(str, cost["weight_shape"])), f"{cost['sqnr_db']:.2f}",
             "-" if agreement is None else f"{agreement:.3f}", _db(cost.get("input_sqnr_db")),
             _db(cost.get("weights_sqnr_db")), "yes" if kept else ""]
    tds = "".join(f"<td>{markup.text(c)}</td>" for c in cells)
    return f"<tr class=\"{'xfailed' if kept else ''}\">{tds}</tr>"


def _db(value: Any) -> str:
    """A split part's SQNR (measured for the costliest sites only: ``-`` for the others)."""
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _summary(data: Mapping[str, Any]) -> str:
    """One line: the samples, and what the budget kept in float and reached."""
    text = (f"each site quantized alone, on {data.get('samples', '?')} evaluation input(s); for the costliest, "
            "also its input alone and its weights alone (a site whose input costs most gains from a wide input)")
    budget = data.get("budget")
    if budget:
        reached = budget["sqnr_db"] if budget["metric"] == "sqnr_db" else budget["agreement"]
        kept = ", ".join(map(str, budget["keep_float"])) or "none"
        verdict = "met" if budget["met"] else "NOT met with every site in float"
        text += (f"; budget {budget['metric']} >= {budget['target']:g}: {verdict}, sites kept in float: {kept} "
                 f"(simulated {budget['metric']} {reached:.4g} with the rest int8)")
    return text


def _finite_or(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else default

