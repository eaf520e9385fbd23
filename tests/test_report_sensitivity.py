"""The report's int8 sensitivity section: a plot and a table per test whose quantization
measured each site alone, from a real session with a budget and from crafted records."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from test_html_report import assert_png, parse

from pytest_tvmdeploy.report import sensitivity
from pytest_tvmdeploy.report.html import render_html, write_html_report
from pytest_tvmdeploy.report.record import SCHEMA_VERSION, TestRecord


def costs(count: int) -> list[dict]:
    """Sites whose SQNR alone falls with their index modulo 5 (sites 4, 9, 14 are the worst)."""
    return [{"site": i, "op": "nn.conv2d" if i < count - 1 else "matmul", "ordinal": i, "weight_shape": [8, 8, 1, 1],
             "sqnr_db": 40.0 - 3 * (i % 5) - 0.1 * i, "agreement": 1.0 if i % 5 else 0.875,
             **({"input_sqnr_db": 50.0 - i, "weights_sqnr_db": 30.0} if i % 5 == 4 else {})} for i in range(count)]


def record_with(count: int, kept: list[int], budget: dict | None) -> TestRecord:
    return TestRecord(test="test_q.py::test_int8[llvm]", target="llvm", model="block", outcome="passed",
                      quant={"cosine": 0.99, "sqnr_db": 27.0},
                      sensitivity={"samples": 6, "sites": costs(count), "keep_float": kept, "budget": budget})


def test_the_table_lists_the_costliest_sites_first_and_marks_those_kept_float() -> None:
    budget = {"metric": "sqnr_db", "target": 30.0, "keep_float": [14, 9], "sqnr_db": 31.25, "agreement": 1.0,
              "met": True, "simulated_sqnr_db": 31.5, "simulated_agreement": 1.0, "builds": 1}
    plain = TestRecord(test="t::plain", target="llvm")
    report = {"schema": SCHEMA_VERSION, "tvm": "0.27", "targets": [],
              "tests": [record_with(15, [9, 14], budget).to_json(), plain.to_json()]}
    page = render_html(report)
    parser = parse(page, "sensitivity-0")
    header, *rows = parser.rows
    assert header == ["site", "op", "weight shape", "SQNR alone (dB)", "top-1 alone", "its input alone (dB)",
                      "its weights alone (dB)", "in float"]
    assert [row[0] for row in rows[:sensitivity.SHOWN_SITES]] == ["14", "9", "4", "13", "8", "3", "12", "7", "2", "11"]
    assert rows[0] == ["14", "matmul", "8x8x1x1", "26.60", "1.000", "36.00", "30.00", "yes"] and rows[2][-1] == ""
    assert rows[3][5:7] == ["-", "-"]  # site 13: not split
    assert len(rows) == sensitivity.SHOWN_SITES + 1 and "<summary>5 more site(s)</summary>" in page
    assert "sensitivity-1" not in page  # the record without sensitivity has no table
    assert ("budget sqnr_db &gt;= 30: met, sites kept in float: 14, 9 (simulated sqnr_db 31.25 with the rest int8)"
            in page)
    assert len(parse(page).images) == 2  # the int8 metrics and the sensitivity plot


def test_the_plot_draws_one_panel_per_test() -> None:
    one = assert_png(sensitivity.plot([record_with(15, [9], None)]))
    two = assert_png(sensitivity.plot([record_with(15, [9], None), record_with(40, [], None)]))
    assert two[1] > 1.5 * one[1]
    assert sensitivity.plot([TestRecord(test="t", target="llvm")]) is None


MIXED = """
import numpy as np, pytest
from models import separable_block, separable_inputs

@pytest.mark.tvm_model(model=separable_block(), inputs={"x": ((1, 8, 12, 12), "float32")},
                       quantize={"calibrate_mode": "mse", "weight_scale": "max", "skip_conv_layers": [],
                                 "skip_dense_layer": False, "budget": "sqnr_db>=30"},
                       calibration=lambda: [{"x": x} for x in separable_inputs(6, seed=1)],
                       quant_budget={"min_sqnr_db": 25})
def test_mixed(tvm_deployment):
    info = tvm_deployment.quantization
    assert info["keep_float"] == [0] and info["quantized_sites"] == 3
    assert info["budget"]["met"] and info["budget"]["sqnr_db"] >= 30
"""


def test_a_session_with_a_budget_reports_each_sites_cost(project: pytest.Pytester, tmp_path: Path) -> None:
    project.makepyfile(test_q=MIXED)
    project.runpytest(f"--tvm-report={tmp_path}", "--tvm-cpp=off").assert_outcomes(passed=1)
    record = json.loads((tmp_path / "report.json").read_text())["tests"][0]
    sites = record["sensitivity"]["sites"]
    assert [site["site"] for site in sites] == [0, 1, 2, 3] and record["sensitivity"]["samples"] == 6
    assert min(sites, key=lambda site: site["sqnr_db"])["site"] == 0 and record["sensitivity"]["keep_float"] == [0]
    page = write_html_report(tmp_path, json.loads((tmp_path / "report.json").read_text())).read_text()
    header, *rows = parse(page, "sensitivity-0").rows
    assert [row[0] for row in rows][0] == "0" and rows[0][-1] == "yes" and len(rows) == 4
    # four sites, all among the costliest: each one's cost split into its input's and its weights'
    assert all(site["input_sqnr_db"] >= site["sqnr_db"] - 0.5 for site in sites)
    assert rows[0][5] == f"{sites[0]['input_sqnr_db']:.2f}" and rows[0][6] == f"{sites[0]['weights_sqnr_db']:.2f}"
    images = parse(page).images
    assert len(images) == 4  # error histograms, latency, int8 metrics, sensitivity
    assert_png(base64.b64decode(images[-1].split(",", 1)[1]))
