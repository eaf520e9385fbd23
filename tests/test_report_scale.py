"""report.html at the size of an op-level suite: 2,000 tests stay a few MB with images of bounded
size (distributions instead of a panel or bar each), the tests table sorts and filters in a real
browser from the page's address, and a kit run's scoreboard is a section of its own."""

from __future__ import annotations

import base64
import random
import re
from pathlib import Path
from typing import Any

import pytest
from test_html_report import assert_png, chromium, parse, run_chromium  # noqa: F401  (chromium: a fixture)

from pytest_tvmdeploy.report import figures, overview, plots
from pytest_tvmdeploy.report.html import render_html, write_html_report
from pytest_tvmdeploy.report.record import SCHEMA_VERSION, TestRecord

EDGES = [e / 2 for e in range(-24, 7)]
OUTCOMES = ("passed", "passed", "passed", "xfailed", "xfailed", "failed")


def many_records(count: int, seed: int = 0) -> list[TestRecord]:
    """``count`` kit-like tests, each its own model (as ONNX's node cases are), every kind of data."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        outcome = OUTCOMES[index % len(OUTCOMES)]
        counts = [0] * (len(EDGES) - 1)
        counts[rng.randrange(len(counts))] = 90
        records.append(TestRecord(
            test=f"pytest_tvmdeploy/kit/test_kit.py::test_model[test_case_{index:04d}-onnx-node-llvm]",
            target="llvm", case=f"test_case_{index:04d}-onnx-node", model=f"test_case_{index:04d}",
            source=("onnx", "torch")[index % 2], outcome=outcome, reference_name="onnxruntime",
            stage=None if outcome == "passed" else "import",
            reason=None if outcome == "passed" else f"OpNotImplemented: no converter for Op{index % 37} at opset 19",
            cache_hit=False, artifact=f"/cache/{index:040x}/model.so", cpp="bitwise",
            # what stops at import has no run times
            timings={"import": 0.1} if outcome != "passed" else
            {"import": 0.1, "compile": 0.4, "run": rng.uniform(1e-5, 1e-2), "cpp_run": 1e-4,
             "reference": rng.uniform(1e-5, 1e-3)},
            max_abs_error=10 ** rng.uniform(-9, -2),
            error_histogram={"log10_edges": EDGES, "counts": counts, "exact": 10, "total": 100},
            quant={"cosine": rng.uniform(0.9, 1.0), "sqnr_db": rng.uniform(10, 40)} if index % 3 == 0 else None,
        ))
    return records


def report_of(records: list[TestRecord], **sections: Any) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "tvm": "0.27.0.post1", "targets": [{"label": "llvm", "target": {"kind": "llvm"}}],
            "tests": [r.to_json() for r in records], **sections}


def png_sizes(page: str) -> list[tuple[int, int]]:
    return [assert_png(base64.b64decode(src.split(",", 1)[1])) for src in parse(page).images]


@pytest.fixture(scope="module")
def big_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_html_report(tmp_path_factory.mktemp("big"), report_of(many_records(2000)))


def test_a_2000_test_report_is_a_few_mb_with_every_image_under_2000_px(big_page: Path) -> None:
    page = big_page.read_text()
    assert big_page.stat().st_size < 5_000_000
    assert len(parse(page).rows) == 2001  # the head and every test
    sizes = png_sizes(page)
    assert len(sizes) == 3 and all(width < 2000 and height < 2000 for width, height in sizes), sizes
    titles = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert titles == ["Error distribution |TVM − reference| over 2000 models", "Latency over 1001 tests",
                      "int8 quantization metrics over 667 tests"]


def test_the_figures_give_way_to_distributions_past_their_limits() -> None:
    records = many_records(figures.MAX_PANELS + 1)
    per_model = [draw for _, draw in figures.choose(records[:figures.MAX_PANELS])]
    assert per_model[:3] == [plots.error_histograms, plots.latencies, plots.quantization]
    assert [draw for _, draw in figures.choose(records)][0] is overview.error_distribution
    timed = [r for r in many_records(4 * figures.MAX_BARS) if "run" in r.timings][:figures.MAX_BARS + 1]
    assert [draw for _, draw in figures.choose(timed)][1] is overview.latency_spread
    # at their limits the per-test figures are still under the bound
    heights = [assert_png(plots.error_histograms(records[:figures.MAX_PANELS]))[1],
               assert_png(plots.latencies(timed[:figures.MAX_BARS]))[1],
               assert_png(plots.quantization([r for r in many_records(3 * figures.MAX_BARS) if r.quant]))[1]]
    assert max(heights) < figures.MAX_HEIGHT_PX, heights


def test_the_overview_pools_each_source_and_counts_every_test() -> None:
    records = many_records(300)
    assert assert_png(overview.error_distribution(records))[1] < 2000
    assert assert_png(overview.latency_spread(records))[1] < 2000
    assert assert_png(overview.quantization_spread(records))[1] < 2000
    no_data = [TestRecord(test="t.py::test_x", target="llvm", outcome="error")]
    assert [overview.error_distribution(no_data), overview.latency_spread(no_data),
            overview.quantization_spread(no_data)] == [None, None, None]


def test_the_address_filters_and_sorts_the_tests_in_a_browser(chromium: str, big_page: Path,  # noqa: F811
                                                             tmp_path: Path) -> None:
    dom = run_chromium(chromium, tmp_path, "--dump-dom", f"{big_page.as_uri()}#outcome=failed&filter=Op3%20opset")
    rows = _rows(dom)
    assert len(rows) == 2000
    shown = [(outcome, cells) for outcome, hidden, cells in rows if not hidden]
    expected = [r for r in many_records(2000) if r.outcome == "failed" and re.search(r"Op3\d? at opset", r.reason)]
    assert len(shown) == len(expected) > 0 and {outcome for outcome, _ in shown} == {"failed"}
    assert re.search(r'id="shown-count">(\d+)<', dom).group(1) == str(len(expected))


def test_the_address_sorts_slowest_first_with_tests_without_a_time_last(chromium: str, big_page: Path,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    column = 9  # TVM ms
    address = f"{big_page.as_uri()}#filter=test_case_00&sort={column}&desc=1"
    dom = run_chromium(chromium, tmp_path, "--dump-dom", address)
    table = re.search(r'<table id="tests"[^>]*>', dom).group(0)
    assert 'data-sort-column="9"' in table and 'data-sort-descending="1"' in table
    times = [re.findall(r"<td[^>]*>(.*?)</td>", cells)[column] for _, hidden, cells in _rows(dom) if not hidden]
    assert len(times) == 100  # test_case_0000 ... test_case_0099
    timed = [float(t) for t in times if t != "-"]
    expected = [round(1000 * r.timings["run"], 2) for r in many_records(100) if "run" in r.timings]
    assert times == [f"{t:.2f}" for t in timed] + ["-"] * (100 - len(timed))  # numbers first, "-" last
    assert timed == sorted(expected, reverse=True)


def _rows(dom: str) -> list[tuple[str, str, str]]:
    """(outcome, hidden, cells) of each row of the tests table in a browser's DOM dump."""
    found = re.findall(r'<tr class="(\w+)" data-test="[^"]*"( hidden="")?>(.*?)</tr>', dom, flags=re.S)
    return [(outcome, hidden, cells) for outcome, hidden, cells in found]


def test_the_scoreboard_section_shows_rates_units_and_changes() -> None:
    board = {"suite": "onnx-node", "unit": "operator", "total": 5, "passed": 3,
             "categories": {"passed": 3, "import": 1, "differs": 1},
             "operators": {"Abs": {"passed": 2}, "Gru<x>": {"import": 1}, "Add": {"passed": 1, "differs": 1}},
             "changes": {"baseline": "old/report.json", "newly_passing": [f"test_{i}" for i in range(60)],
                         "newly_failing": ["test_gru"], "newly_passing_units": [], "newly_failing_units": ["Gru<x>"]}}
    page = render_html(report_of(many_records(2), scoreboard=board))
    assert "<b>3/5 cases passed (60.0%)</b>; import 1, differs 1" in page
    rows = parse(page, "scoreboard").rows
    assert rows[0][:4] == ["operator", "cases", "passed", "pass rate"]
    assert [row[:4] for row in rows[1:]] == [["Gru<x>", "1", "0", "0%"], ["Add", "2", "1", "50%"],
                                             ["Abs", "2", "2", "100%"]]  # worst first
    assert "Gru&lt;x&gt;" in page and "Gru<x>" not in page
    assert "<summary>per operator: 3, 1 pass every case, 1 pass none" in page
    assert "against <code>old/report.json</code>: 60 case(s) newly passing, 1 newly failing" in page
    assert "<summary>10 more</summary>" in page  # the first 50 listed, the rest folded
    assert render_html(report_of(many_records(2))).count('id="scoreboard"') == 0
