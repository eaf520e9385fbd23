"""``report.html``: the ``report.json`` dict as one self-contained page (inline CSS, plots as data URIs)."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.report import plots, sensitivity
from pytest_tvmdeploy.report.coverage import COLUMNS as COVERAGE_COLUMNS
from pytest_tvmdeploy.report.coverage import operator_coverage
from pytest_tvmdeploy.report.record import OUTCOMES, TestRecord
from pytest_tvmdeploy.report.speed import ratio_text

COLUMNS = ("model / test", "source", "shape", "target", "outcome", "stage: reason", "artifact", "import s", "compile s",
           "TVM ms", "C++ ms", "reference ms", "TVM ÷ reference",
           "C++ check", "max abs error", "int8 cos / SQNR", "first diverging op / compiler stage")
FIGURES: tuple[tuple[str, Callable[[Sequence[TestRecord]], bytes | None]], ...] = (
    ("Error distribution |TVM − reference| per model", plots.error_histograms),
    ("Latency per model", plots.latencies),
    ("int8 quantization metrics", plots.quantization),
    ("int8 sensitivity: each site quantized alone", sensitivity.plot),
)

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
    figures = [(title, png) for title, draw in FIGURES if (png := draw(records)) is not None]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>pytest-tvmdeploy report</title>\n"
        f"<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n"
        f"<body data-images-total=\"{len(figures)}\">\n"
        f"{header(report, records)}\n{table(records)}\n{figures_html(figures)}\n{sensitivity.section(records)}\n"
        f"{coverage_html(records)}\n"
        "</body>\n</html>\n"
    )


def header(report: Mapping[str, Any], records: Sequence[TestRecord]) -> str:
    """Title, TVM version, targets and the count of each outcome."""
    targets = ", ".join(f"{_text(t.get('label'))} <code>{_text(json.dumps(t.get('target'), sort_keys=True))}</code>"
                        for t in report.get("targets") or [])
    counts = Counter(r.outcome or "" for r in records)
    shown = [o for o in OUTCOMES if o != "skipped" or counts[o]]
    badges = "".join(f'<span class="{o}" data-outcome="{o}">{o}: {counts[o]}</span>' for o in shown)
    return (f"<h1>pytest-tvmdeploy report</h1>\n<p class=\"meta\">TVM {_text(report.get('tvm', '?'))}"
            f" &middot; {len(records)} test(s)</p>\n<p class=\"meta\">targets: {targets or '-'}</p>\n"
            f"<p class=\"counts\">{badges}</p>")


def table(records: Sequence[TestRecord]) -> str:
    """One row per test, coloured by outcome."""
    head = "".join(f"<th>{_text(c)}</th>" for c in COLUMNS)
    body = "\n".join(row(r) for r in records)
    return f"<h2>Tests</h2>\n<table id=\"tests\">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def row(record: TestRecord) -> str:
    """One ``<tr>``: the cells of :func:`cells`, text already escaped."""
    tds = "".join(f'<td class="{kind}">{content}</td>' for kind, content in cells(record))
    return f'<tr class="{_text(record.outcome or "")}" data-test="{_text(record.test)}">{tds}</tr>'


def cells(record: TestRecord) -> list[tuple[str, str]]:
    """(CSS class, escaped HTML) of each column of one record; missing values show as ``-``."""
    timings = record.timings
    reference = record.reference_name
    return [
        ("name", _name(record)),
        ("text", _text(record.source or "-")),
        ("text", _text(record.shape or "-")),
        ("text", _text(record.target or "-")),
        ("text", _text(record.outcome or "-")),
        ("reason", _reason(record)),
        ("text", _artifact(record)),
        ("num", _number(timings.get("import"), "{:.2f}")),
        ("num", _number(timings.get("compile"), "{:.2f}")),
        ("num", _number(timings.get("run"), "{:.2f}", 1000.0)),
        ("num", _number(timings.get("cpp_run"), "{:.2f}", 1000.0) if record.ran_cpp else "-"),
        ("num", _number(timings.get("reference"), "{:.2f}", 1000.0)
         + (f"<div class=\"test\">({_text(reference)})</div>" if reference else "")),
        ("num", ratio_text(record)),
        ("text", _cpp(record)),
        ("num", _number(record.max_abs_error, "{:.2e}")),
        ("num", _quant(record.quant)),
        ("detail", _divergence(record.divergence) + _compiler_stage(record.compiler_stage)),
    ]


def _name(record: TestRecord) -> str:
    test = f"<div class=\"test\">{_text(record.test)}</div>" if record.model else ""
    return f"<b>{_text(record.model_name)}</b>{test}"


def _reason(record: TestRecord) -> str:
    if not record.stage and not record.reason:
        return ""
    crash = f" <b>crashed ({_text(record.crash)})</b>" if record.crash else ""
    return f"<b>{_text(record.stage or '?')}</b>{crash}: {_text(record.reason or '')}"


def _cpp(record: TestRecord) -> str:
    """The C++ check's state, and on a line of its own why it was skipped or failed."""
    note = f"<div class=\"test\">{_text(record.cpp_note)}</div>" if record.cpp_note else ""
    return _text(record.cpp or "-") + note


def _artifact(record: TestRecord) -> str:
    if record.cache_hit is None:
        return "-"
    state = ("cached" if record.cache_hit else "built") + (", tuned" if record.tuned else "")
    return f'<span title="{_text(record.artifact or "")}">{state}</span>'


def _quant(quant: Mapping[str, Any] | None) -> str:
    if not quant or quant.get("cosine") is None:
        return "-"
    return f"{_number(quant['cosine'], '{:.4f}')} / {_number(quant.get('sqnr_db'), '{:.1f}')} dB"


def _divergence(divergence: Mapping[str, Any] | None) -> str:
    if not divergence:
        return "-"
    where = f"<b>{_text(divergence.get('op', '?'))}</b> at {_text(divergence.get('node', '?'))}"
    error = f" (max abs error {_number(divergence.get('max_abs_error'), '{:.2e}')})"
    summary = divergence.get("summary")
    return where + error + (f"<div class=\"test\">{_text(summary)}</div>" if summary else "")


def _compiler_stage(stage: Mapping[str, Any] | None) -> str:
    if not stage:
        return ""
    text = stage.get("summary") or f"not bisected: {stage.get('error', '?')}"
    return f"<div class=\"stage\"><b>compiler stage</b>: {_text(text)}</div>"


def coverage_html(records: Sequence[TestRecord]) -> str:
    """The operator coverage table, when the run recorded operators."""
    rows = operator_coverage(records)
    if not rows:
        return ""
    head = "".join(f"<th>{_text(c)}</th>" for c in COVERAGE_COLUMNS)
    body = "\n".join("<tr class=\"{}\">{}</tr>".format("passed" if r.passed == r.tests else "failed",
                                                      "".join(f"<td>{_text(c)}</td>" for c in r.cells)) for r in rows)
    return (f"<h2>Operator coverage</h2>\n<table id=\"coverage\">\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>")


def figures_html(figures: Sequence[tuple[str, bytes]]) -> str:
    """Each plot as an ``<img>`` with its PNG inline."""
    if not figures:
        return "<h2>Plots</h2>\n<p>no plot data in this report</p>"
    items = "\n".join(
        f'<figure><figcaption>{_text(title)}</figcaption>'
        f'<img alt="{_text(title)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>'
        for title, png in figures)
    return f"<h2>Plots</h2>\n{items}"


def _number(value: Any, spec: str, scale: float = 1.0) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return spec.format(value * scale)


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)
