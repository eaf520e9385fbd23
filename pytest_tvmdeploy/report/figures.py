"""Which figures a report draws: a panel per model or a bar per test while they stay readable, the
distributions of :mod:`~pytest_tvmdeploy.report.overview` beyond that (every image stays under
:data:`MAX_HEIGHT_PX`, whatever the number of tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_tvmdeploy.report import overview, plots, sensitivity
from pytest_tvmdeploy.report.record import TestRecord

#: More models than this with error data: the pooled distributions instead of a panel each.
MAX_PANELS = 12
#: More tests than this with times (or int8 metrics): a point per test instead of a bar each.
MAX_BARS = 30
#: What the per-test figures reach at their limits (12 panels: 4 rows of 3.2 in; 30 bars: 17.7 in), in pixels.
MAX_HEIGHT_PX = 2000

Draw = Callable[[Sequence[TestRecord]], "bytes | None"]


def figures(records: Sequence[TestRecord]) -> list[tuple[str, bytes]]:
    """(title, PNG) of each figure the records have data for, in the report's order."""
    drawn = [(title, draw(records)) for title, draw in choose(records)]
    return [(title, png) for title, png in drawn if png is not None]


def choose(records: Sequence[TestRecord]) -> list[tuple[str, Draw]]:
    """The figures for this many records: per model / per test, or their overviews."""
    models = len(plots.by_model([r for r in records if plots.histogram_of(r) is not None]))
    timed = sum(1 for r in records if plots.positive(r.timings.get("run")))
    quantized = sum(1 for r in records if plots.quant_of(r) is not None)
    return [
        ("Error distribution |TVM − reference| per model", plots.error_histograms) if models <= MAX_PANELS else
        (f"Error distribution |TVM − reference| over {models} models", overview.error_distribution),
        ("Latency per model", plots.latencies) if timed <= MAX_BARS else
        (f"Latency over {timed} tests", overview.latency_spread),
        ("int8 quantization metrics", plots.quantization) if quantized <= MAX_BARS else
        (f"int8 quantization metrics over {quantized} tests", overview.quantization_spread),
        ("int8 sensitivity: each site quantized alone", sensitivity.plot),
    ]
