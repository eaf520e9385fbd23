"""The kit's ``onnx-node`` suite: ONNX's backend node tests through the plugin, with a scoreboard
per operator and opset, compared with the previous run's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pytest_tvmdeploy.kit.onnx_node import node_cases
from pytest_tvmdeploy.kit.scoreboard import change_lines, changes, scoreboard, scoreboard_lines
from pytest_tvmdeploy.report.record import TestRecord


def test_the_cases_are_the_installed_onnx_cases_with_array_inputs_and_outputs() -> None:
    cases = {case.name: case for case in node_cases()}
    assert len(cases) > 1000
    for case in cases.values():
        assert list(case.inputs) == [i.name for i in case.model.graph.input]
        assert all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in case.inputs.values())
        assert list(case.expected) == [o.name for o in case.model.graph.output]
    assert (cases["test_abs"].operator, cases["test_abs"].expanded) == ("Abs", False)
    expanded = cases["test_layer_normalization_2d_axis0_expanded"]
    assert (expanded.operator, expanded.expanded) == ("LayerNormalization", True)
    assert len(expanded.model.graph.node) > 1
    assert cases["test_max_int16"].opset == 13
    assert "test_sequence_map_identity_1_sequence" not in cases  # a sequence input: not an array


def _record(case: str, outcome: str, stage: str | None = None, crash: str | None = None) -> TestRecord:
    return TestRecord(test=f"test_kit.py::test_model[{case}-onnx-node-llvm]", target="llvm",
                      case=f"{case}-onnx-node", model=case, outcome=outcome, stage=stage, crash=crash)


def test_the_scoreboard_counts_cases_per_operator_opset_and_category() -> None:
    units = {"test_a": ("Abs", 13), "test_b": ("Abs", 6), "test_c": ("Gru", 14), "test_d": ("Gru", 14),
             "test_e": ("Relu", 14)}
    records = [_record("test_a", "passed"), _record("test_b", "xfailed", "compare"),
               _record("test_c", "failed", "import"), _record("test_d", "failed", "run", crash="SIGSEGV"),
               _record("test_e", "passed"), _record("not_a_case", "failed", "build")]
    board = scoreboard("onnx-node", records, units.get)
    lines = scoreboard_lines(board)
    assert lines[0] == "onnx-node: 2/5 (40.0%) cases passed; import 1, crash 1, differs 1"
    assert lines[1] == "operators: 3, 1 pass every case, 1 pass none"
    assert lines[2] == "  Gru: 0/2 (import 1, crash 1)"
    assert lines[3] == "  Abs: 1/2 (differs 1) [opset 6: 0/1, opset 13: 1/1]"
    after = scoreboard("onnx-node", [_record("test_a", "failed", "build"), _record("test_b", "passed"),
                                     _record("test_c", "passed"), _record("test_d", "failed", "run"),
                                     _record("test_e", "passed"), _record("test_f", "failed", "import")], units.get)
    change = changes(board, after)  # test_f: only in the new run, not compared
    assert change == {"newly_passing": ["test_b/onnx-node", "test_c/onnx-node"], "newly_failing": ["test_a/onnx-node"],
                      "newly_passing_units": [], "newly_failing_units": []}
    assert change_lines(change, after, "old/report.json") == [
        "against old/report.json: 2 case(s) newly passing, 1 newly failing",
        "  newly failing: test_a/onnx-node (build)"]
    units["test_f"] = ("Relu", 14)
    relu_broke = changes(board, scoreboard("onnx-node", [_record("test_b", "passed"), _record("test_e", "passed"),
                                                         _record("test_f", "failed", "import")], units.get))
    assert relu_broke["newly_failing_units"] == ["Relu"] and relu_broke["newly_passing_units"] == ["Abs"]


def test_the_suite_runs_node_cases_with_their_stand_in_reference_and_prints_the_scoreboard(
        pytester: pytest.Pytester) -> None:
    report = pytester.path / "report"
    report.mkdir()
    # an earlier run's report in the same folder, in which Abs differed and Size passed
    (report / "report.json").write_text(json.dumps({"tests": [
        _record("test_abs", "failed", "compare").to_json(), _record("test_size", "passed").to_json()]}))
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-suite=onnx-node", "-p", "no:randomly",
                                "-k", "test_abs- or test_max_int16- or test_size-", f"--tvm-report={report}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "reference stand-in: *test_max_int16*ONNX Runtime cannot load the model: NotImplemented*; "
        "the reference is onnx-expected",
        "*tvmdeploy kit scoreboard*",
        "onnx-node: 3/3 (100.0%) cases passed; no failures",
        "operators: 3, 3 pass every case, 0 pass none",
        f"against {report / 'report.json'}: 1 case(s) newly passing, 0 newly failing",
        "  newly passing operator: Abs",
    ])
    stored = json.loads((report / "report.json").read_text())["scoreboard"]
    assert stored["cases"] == {f"{case}/onnx-node": "passed" for case in ("test_abs", "test_max_int16", "test_size")}
    assert stored["changes"]["newly_passing"] == ["test_abs/onnx-node"]
    assert stored["changes"]["newly_passing_units"] == ["Abs"]
    page = (report / "report.html").read_text()
    assert "<b>3/3 cases passed (100.0%)</b>" in page
    assert '<p class="meta" data-changes="newly_passing_units"><b>newly passing operators</b> (1): Abs</p>' in page


def test_an_explicit_baseline_that_is_not_a_report_stops_the_run_naming_it(pytester: pytest.Pytester) -> None:
    broken = pytester.path / "old.json"
    broken.write_text("{not json")
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-suite=onnx-node",
                                f"--tvm-kit-baseline={broken}", "-k", "test_abs-")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--tvm-kit-baseline: cannot read {broken} as a report.json: JSONDecodeError*"])


def test_the_catalogue_scoreboard_compares_each_source_form_of_a_model_apart() -> None:
    """gru through ONNX breaks while gru through torch still passes: the change is the ONNX form's,
    and the model is newly failing (not every form passes)."""
    def form(source: str, outcome: str, stage: str | None = None) -> TestRecord:
        return TestRecord(test=f"test_kit.py::test_model[gru-{source}-llvm]", target="llvm", case=f"gru-{source}",
                          model="gru", outcome=outcome, stage=stage)

    def board(*records: TestRecord):
        return scoreboard("models", records, lambda model: (model, 0), "model")

    before = board(form("torch", "passed"), form("onnx", "passed"))
    after = board(form("torch", "passed"), form("onnx", "failed", "import"))
    assert after.outcomes == {"gru/torch": "passed", "gru/onnx": "import"}
    assert changes(before, after) == {"newly_passing": [], "newly_failing": ["gru/onnx"],
                                      "newly_passing_units": [], "newly_failing_units": ["gru"]}
