"""The conformance kit runs from the installed package and keeps its expected failures honest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.report.record import SCHEMA_VERSION, TestRecord


def test_kit_runs_a_model_through_every_source_with_its_expected_failure(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-models=gru", "-v", "-rx")
    result.assert_outcomes(passed=3, xfailed=1)
    result.stdout.fnmatch_lines_random([
        "*test_model[[]gru-torch[]] *PASSED*", "*test_model[[]gru-torchscript[]] *PASSED*",
        "*test_model[[]gru-pt2[]] *PASSED*",
        "XFAIL at setup of test_kit.py::test_model[[]gru-onnx[]] - llvm: import: "
        "TVM's ONNX frontend has no converter for GRU",
        "*test_model[[]gru-onnx[]] *xfailed (import)",
    ])


def test_a_model_that_starts_passing_is_noticed(pytester: pytest.Pytester, tmp_path: Path) -> None:
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"llvm": {"gru/torch": "import: pretend it failed"}}))
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-models=gru",
                                f"--tvm-kit-expected={expected}",
                                "-k", "torch and not torchscript")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*XPASS(strict)*pretend it failed*"])


def test_unknown_kit_model_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_tvmdeploy.kit", "--tvm-kit-models=nope"],
                            capture_output=True, text=True, cwd=pytester.path, timeout=300)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown model(s) ['nope']" in result.stderr


def test_the_report_rewrites_the_expected_failures(pytester: pytest.Pytester, tmp_path: Path) -> None:
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"llvm": {"gru/torch": "import: stale entry",
                                             "resnet18/onnx": "build: not run now"}}))
    report = tmp_path / "report"
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-models=gru",
                                f"--tvm-kit-expected={expected}",
                                f"--tvm-report={report}", "-k", "not torchscript and not pt2")
    result.assert_outcomes(failed=1, errors=1)  # gru/torch now passes (strict XPASS), gru/onnx is not listed
    from pytest_tvmdeploy.kit.update_expected import read_records

    onnx = next(r for r in read_records(report / "report.json") if r.case == "gru-onnx")
    assert onnx.stage == "import" and "cannot import operator(s) GRU" in onnx.reason
    rewrite = subprocess.run([sys.executable, "-m", "pytest_tvmdeploy.kit.update_expected", str(report / "report.json"),
                              "--file", str(expected)], capture_output=True, text=True, timeout=120)
    assert rewrite.returncode == 0, rewrite.stderr
    cases = json.loads(expected.read_text())["llvm"]
    assert "gru/torch" not in cases                              # it passes now: dropped
    assert cases["gru/onnx"] == "import: gru.onnx: TVM's onnx frontend cannot import operator(s) GRU"
    assert cases["resnet18/onnx"] == "build: not run now"        # not run: kept as it was


def test_onnx_runtime_qdq_model_is_judged_against_onnx_runtimes_int8_run(pytester: pytest.Pytester,
                                                                         tmp_path: Path) -> None:
    import onnx

    report = tmp_path / "report"
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-models=squeezenet1_1", "-k", "onnx_qdq",
                                f"--tvm-report={report}", "--tvm-cache-dir=cache")
    result.assert_outcomes(passed=1)
    qdq = onnx.load(str(pytester.path / "cache" / "kit-models" / "squeezenet1_1.qdq.onnx"))
    op_types = {node.op_type for node in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types
    weights = [i for i in qdq.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 26  # every conv's weights stored as int8 (per channel)
    from pytest_tvmdeploy.kit.update_expected import read_records

    (record,) = read_records(report / "report.json")
    assert record.reference_name == "onnxruntime" and record.model == "squeezenet1_1"
    assert record.case == "squeezenet1_1-onnx_qdq"
    assert record.quant["cosine"] >= 0.999 and record.quant["sqnr_db"] >= 25
    assert 0 < record.max_abs_error  # ORT's fused integer kernels round differently from TVM


def test_kit_under_xdist_merges_every_workers_records(pytester: pytest.Pytester, tmp_path: Path) -> None:
    report = tmp_path / "report"
    # A target with an -mcpu has no list of its own: the llvm kind's expected failures apply.
    result = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", "--pyargs", "pytest_tvmdeploy.kit",
                                           "--tvm-kit-models=gru",
                                           f"--tvm-report={report}", "--tvm-cache-dir=cache",
                                           "--tvm-target=llvm -mcpu=x86-64-v2")
    result.assert_outcomes(passed=3, xfailed=1)
    result.stdout.fnmatch_lines(["artifacts: 3 built, 0 from cache"])
    from pytest_tvmdeploy.kit.update_expected import read_records

    records = read_records(report / "report.json")
    outcomes = sorted((r.case, r.outcome) for r in records)
    assert outcomes == [("gru-onnx", "xfailed"), ("gru-pt2", "passed"), ("gru-torch", "passed"),
                        ("gru-torchscript", "passed")]
    assert all(r.model == "gru" for r in records)
    page = (report / "report.html").read_text()
    assert page.count('<tr class="passed"') == 3 and page.count('<tr class="xfailed"') == 1


def kit_record(case: str, outcome: str, target: str = "llvm", **fields: Any) -> TestRecord:
    """The record the plugin writes for the kit case ``case`` ("<model>-<source>") on ``target``."""
    model = case.rsplit("-", 1)[0]
    return TestRecord(test=f"test_kit.py::test_model[{case}]", target=target, case=case, model=model,
                      outcome=outcome, **fields)


def test_expected_failures_name_each_source_form_including_qdq() -> None:
    from pytest_tvmdeploy.kit.update_expected import updated

    records = [
        kit_record("vit-onnx_qdq", "error", stage="import",
                   reason="/home/ci/.cache/vit.qdq.onnx: TVM's ONNX frontend failed"),
        kit_record("vit-torchscript", "passed"),
        kit_record("vit-onnx", "failed", stage="compare", reason="differs"),
    ]
    expected = {"llvm": {"vit/torchscript": "import: was failing"}}
    assert updated(expected, records) == {"llvm": {"vit/onnx": "compare: differs",
                                                   "vit/onnx_qdq": "import: vit.qdq.onnx: TVM's ONNX frontend failed"}}


def test_a_kit_case_is_found_from_case_and_model_with_the_target_in_the_id() -> None:
    from pytest_tvmdeploy.kit.update_expected import kit_case, updated

    record = TestRecord(test="pytest_tvmdeploy/kit/test_kit.py::test_model[llvm-squeezenet1_1-onnx_qdq]",
                        target="llvm", case="squeezenet1_1-onnx_qdq", model="squeezenet1_1", outcome="failed",
                        stage="compare", reason="int8 cosine 0.9 < 0.999")
    assert kit_case(record) == "squeezenet1_1/onnx_qdq"
    other = TestRecord(test="site-packages/pytest_tvmdeploy/kit/test_kit.py::test_model[llvm-znver4-gru-onnx]",
                       target="llvm-znver4", case="gru-onnx", model="gru", outcome="passed")
    assert kit_case(other) == "gru/onnx"  # a target label with a dash of its own
    expected = {"llvm": {"squeezenet1_1/onnx": "import: kept"}, "llvm-znver4": {"gru/onnx": "import: fixed now"}}
    assert updated(expected, [record, other]) == {
        "llvm": {"squeezenet1_1/onnx": "import: kept", "squeezenet1_1/onnx_qdq": "compare: int8 cosine 0.9 < 0.999"},
        "llvm-znver4": {}}


@pytest.mark.parametrize("record", [
    pytest.param(TestRecord(test="tests/test_models.py::test_model[llvm-gru-onnx]", target="llvm", case="gru-onnx",
                            model="gru", outcome="failed"), id="another file"),
    pytest.param(TestRecord(test="tests/my_test_kit.py::test_model[gru-onnx]", target="llvm", case="gru-onnx",
                            model="gru", outcome="failed"), id="a file name ending like the kit's"),
    pytest.param(TestRecord(test="test_kit.py::test_model[gru-onnx]", target="llvm", model="gru", outcome="failed"),
                 id="no case"),
    pytest.param(TestRecord(test="test_kit.py::test_model[gru-onnx]", target="llvm", case="gru-onnx",
                            outcome="failed"), id="no model"),
    pytest.param(TestRecord(test="test_kit.py::test_model[gru-onnx]", target="llvm", case="gru-onnx",
                            model="lstm", outcome="failed"), id="case of another model"),
    pytest.param(TestRecord(test="test_kit.py::test_model[gru-tflite]", target="llvm", case="gru-tflite",
                            model="gru", outcome="failed"), id="unknown source form"),
])
def test_records_that_are_not_kit_cases_leave_the_expected_failures_alone(record: TestRecord) -> None:
    from pytest_tvmdeploy.kit.update_expected import kit_case, updated

    assert kit_case(record) is None
    expected = {"llvm": {"gru/onnx": "import: kept"}}
    assert updated(expected, [record]) == expected


def test_an_expected_failure_keeps_its_listed_reason(tmp_path: Path) -> None:
    """xfailed: the listed reason stays; a case not listed yet that xfails is added with its own."""
    from pytest_tvmdeploy.kit.update_expected import main

    report = tmp_path / "report.json"
    records = [kit_record("gru-onnx", "xfailed", stage="import", reason="new words"),
               kit_record("lstm-onnx", "xfailed", stage="import", reason="/tmp/x/lstm.onnx: no LSTM")]
    report.write_text(json.dumps({"schema": SCHEMA_VERSION, "tests": [r.to_json() for r in records]}))
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"llvm": {"gru/onnx": "import: listed words"}}))
    assert main([str(report), "--file", str(expected)]) == 0
    assert json.loads(expected.read_text()) == {"llvm": {"gru/onnx": "import: listed words",
                                                         "lstm/onnx": "import: lstm.onnx: no LSTM"}}
