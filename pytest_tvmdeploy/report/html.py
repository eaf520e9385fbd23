"""``report.html``: the ``report.json`` dict as one self-contained page (inline CSS, plots as data URIs)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.report import interactive, markup, scoreboard_section, sensitivity
from pytest_tvmdeploy.report.coverage import COLUMNS as COVERAGE_COLUMNS
from pytest_tvmdeploy.report.coverage import operator_coverage
from pytest_tvmdeploy.report.figures import figures
from pytest_tvmdeploy.report.record import OUTCOMES, TestRecord
from pytest_tvmdeploy.report.speed import ratio_text

COLUMNS = ("model / test", "source", "shape", "target", "outcome", "stage: reason", "artifact", "import s", "compile s",
           "TVM ms", "C++ ms", "reference ms", "TVM ÷ reference",
           "C++ check", "max abs error", "int8 cos / SQNR", "first diverging op / compiler stage")
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin: 1.5em 0 .5em; }
.meta { margin: 0 0 .3em; } .counts span { margin-right: 1em; padding: .1em .5em; border-radius: 3px; }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
th, td { border: 1px solid #bbb; padding: 3px 5px; vertical-align: top; text-align: left; }
th { background: #333; color: #fff; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.reason { min-width: 12em; max-width: 26em; overflow-wrap: break-word; }
td.detail { min-width: 9em; max-width: 18em; overflow-wrap: break-word; }
td.name { max-width: 14em; } td.text { overflow-wrap: anywhere; }
.test { color: #555; font-size: 11px; overflow-wrap: anywhere; }
.passed { background: #e3f4e1; } .failed { background: #fbdcdc; } .error { background: #f9c9a8; }
.xfailed { background: #fff5c2; } .xpassed { background: #e4dcf7; } .skipped { background: #eee; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-weight: bold; margin-bottom: .3em; }
"""

# Counts the images that really decoded, so a headless browser's DOM dump can prove it.
SCRIPT = """window.addEventListener("load", function () {
  var decoded = Array.prototype.filter.call(document.images, function (img) { return img.naturalWidth > 0; });
  document.body.dataset.imagesLoaded = String(decoded.length);
});"""


def write_html_report(folder: Path, report: Mapping[str, Any]) -> Path:
    """Write ``folder/report.html`` atomically from the dict written to ``report.json``; returns its path."""
    path = Path(folder) / "report.html"
    write_atomic(path, render_html(report))
    return path


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page as a string (a record of a newer schema than this reader's raises ValueError)."""
    records = [TestRecord.from_json(test) for test in report.get("tests") or []]
    drawn = figures(records)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>pytest-tvmdeploy report</title>\n"
        f"<style>{STYLE}{interactive.STYLE}{scoreboard_section.STYLE}</style>\n<script>{SCRIPT}{interactive.SCRIPT}</script>\n</head>\n"
        f"<body data-images-total=\"{len(drawn)}\">\n"
        f"{header(report, records)}\n{scoreboard_section.section(report.get('scoreboard'))}\n{table(records)}\n"
        f"{figures_html(drawn)}\n{sensitivity.section(records)}\n{coverage_html(records)}\n"
        "</body>\n</html>\n"
    )


def header(report: Mapping[str, Any], records: Sequence[TestRecord]) -> str:
    """Title, TVM version, targets and the count of each outcome."""
    targets = ", ".join(
        f"{markup.text(t.get('label'))} <code>{markup.text(json.dumps(t.get('target'), sort_keys=True))}</code>"
        for t in report.get("targets") or [])
    counts = Counter(r.outcome or "" for r in records)
    shown = [o for o in OUTCOMES if o != "skipped" or counts[o]]
    badges = "".join(f'<span class="{o}" data-outcome="{o}">{o}: {counts[o]}</span>' for o in shown)
    return (f"<h1>pytest-tvmdeploy report</h1>\n<p class=\"meta\">TVM {markup.text(report.get('tvm', '?'))}"
            f" &middot; {len(records)} test(s)</p>\n<p class=\"meta\">targets: {targets or '-'}</p>\n"
            f"<p class=\"counts\">{badges}</p>")


def table(records: Sequence[TestRecord]) -> str:
    """One row per test, coloured by outcome."""
    head = "".join(f"<th>{markup.text(c)}</th>" for c in COLUMNS)
    body = "\n".join(row(r) for r in records)
    return (f"<h2>Tests</h2>\n{interactive.controls(OUTCOMES, len(records))}\n"
            f"<table id=\"tests\" class=\"sortable\">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n"
            "</table>")


def row(record: TestRecord) -> str:
    """One ``<tr>``: the cells of :func:`cells`, text already escaped."""
    tds = "".join(f'<td class="{kind}">{content}</td>' for kind, content in cells(record))
    return f'<tr class="{markup.text(record.outcome or "")}" data-test="{markup.text(record.test)}">{tds}</tr>'


def cells(record: TestRecord) -> list[tuple[str, str]]:
    """(CSS class, escaped HTML) of each column of one record; missing values show as ``-``."""
    timings = record.timings
    reference = record.reference_name
    return [
        ("name", _name(record)),
        ("text", markup.text(record.source or "-")),
        ("text", markup.text(record.shape or "-")),
        ("text", markup.text(record.target or "-")),
        ("text", markup.text(record.outcome or "-")),
        ("reason", _reason(record)),
        ("text", _artifact(record)),
        ("num", markup.number(timings.get("import"), "{:.2f}")),
        ("num", markup.number(timings.get("compile"), "{:.2f}")),
        ("num", markup.number(timings.get("run"), "{:.2f}", 1000.0)),
        ("num", markup.number(timings.get("cpp_run"), "{:.2f}", 1000.0) if record.ran_cpp else "-"),
        ("num", markup.number(timings.get("reference"), "{:.2f}", 1000.0)
         + (f"<div class=\"test\">({markup.text(reference)})</div>" if reference else "")),
        ("num", ratio_text(record)),
        ("text", _cpp(record)),
        ("num", markup.number(record.max_abs_error, "{:.2e}")),
        ("num", _quant(record.quant)),
        ("detail", _divergence(record.divergence) + _compiler_stage(record.compiler_stage)),
    ]


def _name(record: TestRecord) -> str:
    test = f"<div class=\"test\">{markup.text(record.test)}</div>" if record.model else ""
    return f"<b>{markup.text(record.model_name)}</b>{test}"


def _reason(record: TestRecord) -> str:
    if not record.stage and not record.reason:
        return ""
    crash = f" <b>crashed ({markup.text(record.crash)})</b>" if record.crash else ""
    return f"<b>{markup.text(record.stage or '?')}</b>{crash}: {markup.text(record.reason or '')}"


def _cpp(record: TestRecord) -> str:
    """The C++ check's state, and on a line of its own why it was skipped or failed."""
    note = f"<div class=\"test\">{markup.text(record.cpp_note)}</div>" if record.cpp_note else ""
    return markup.text(record.cpp or "-") + note


def _artifact(record: TestRecord) -> str:
    if record.cache_hit is None:
        return "-"
    state = ("cached" if record.cache_hit else "built") + (", tuned" if record.tuned else "")
    return f'<span title="{markup.text(record.artifact or "")}">{state}</span>'


def _quant(quant: Mapping[str, Any] | None) -> str:
    if not quant or quant.get("cosine") is None:
        return "-"
    return f"{markup.number(quant['cosine'], '{:.4f}')} / {markup.number(quant.get('sqnr_db'), '{:.1f}')} dB"


def _divergence(divergence: Mapping[str, Any] | None) -> str:
    if not divergence:
        return "-"
    where = f"<b>{markup.text(divergence.get('op', '?'))}</b> at {markup.text(divergence.get('node', '?'))}"
    error = f" (max abs error {markup.number(divergence.get('max_abs_error'), '{:.2e}')})"
    summary = divergence.get("summary")
    return where + error + (f"<div class=\"test\">{markup.text(summary)}</div>" if summary else "")


def _compiler_stage(stage: Mapping[str, Any] | None) -> str:
    if not stage:
        return ""
    text = stage.get("summary") or f"not bisected: {stage.get('error', '?')}"
    return f"<div class=\"stage\"><b>compiler stage</b>: {markup.text(text)}</div>"


def coverage_html(records: Sequence[TestRecord]) -> str:
    """The operator coverage table, when the run recorded operators."""
    rows = operator_coverage(records)
    if not rows:
        return ""
    head = "".join(f"<th>{markup.text(c)}</th>" for c in COVERAGE_COLUMNS)
    body = "\n".join("<tr class=\"{}\">{}</tr>".format(
        "passed" if r.passed == r.tests else "failed", "".join(f"<td>{markup.text(c)}</td>" for c in r.cells))
        for r in rows)
    return (f"<h2>Operator coverage</h2>\n<table id=\"coverage\" class=\"sortable\">\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")


def figures_html(figures: Sequence[tuple[str, bytes]]) -> str:
    """Each plot as an ``<img>`` with its PNG inline."""
    if not figures:
        return "<h2>Plots</h2>\n<p>no plot data in this report</p>"
    items = "\n".join(
        f'<figure><figcaption>{markup.text(title)}</figcaption>'
        f'<img alt="{markup.text(title)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>'
        for title, png in figures)
    return f"<h2>Plots</h2>\n{items}"

