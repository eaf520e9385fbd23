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
    expected.write_text(json.dumps({"llvm": {"failures": {"gru/torch": "import: stale entry",
                                                          "resnet18/onnx": "build: not run now"},
                                             "crashes": {"gru/onnx": "import: SIGSEGV: stale crash"}}}))
    report = tmp_path / "report"
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-models=gru",
                                f"--tvm-kit-expected={expected}",
                                f"--tvm-report={report}", "-k", "not torchscript and not pt2")
    # gru/torch now passes (strict XPASS); gru/onnx, listed as a crash, fails in import: a plain error
    result.assert_outcomes(failed=1, errors=1)
    from pytest_tvmdeploy.kit.update_expected import read_records

    onnx = next(r for r in read_records(report / "report.json") if r.case == "gru-onnx")
    assert onnx.stage == "import" and "cannot import operator(s) GRU" in onnx.reason
    rewrite = subprocess.run([sys.executable, "-m", "pytest_tvmdeploy.kit.update_expected", str(report / "report.json"),
                              "--file", str(expected)], capture_output=True, text=True, timeout=120)
    assert rewrite.returncode == 0, rewrite.stderr
    assert "2 -> 2 expected failure(s), 1 -> 0 expected crash(es)" in rewrite.stdout
    listing = json.loads(expected.read_text())["llvm"]
    assert listing == {"failures": {  # gru/torch passes now: dropped; resnet18/onnx not run: kept as it was
        "gru/onnx": "import: gru.onnx: TVM's onnx frontend cannot import operator(s) GRU",  # moved from crashes
        "resnet18/onnx": "build: not run now"}, "crashes": {}}


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
    # the .pt2 holds the network and weights of the module form: its artifact is the same one
    result.stdout.fnmatch_lines(["artifacts: 2 built, 1 from cache"])
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
    assert updated(expected, records) == {"llvm": {
        "failures": {"vit/onnx": "compare: differs",
                     "vit/onnx_qdq": "import: vit.qdq.onnx: TVM's ONNX frontend failed"},
        "crashes": {}}}


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
        "llvm": {"failures": {"squeezenet1_1/onnx": "import: kept",
                              "squeezenet1_1/onnx_qdq": "compare: int8 cosine 0.9 < 0.999"}, "crashes": {}},
        "llvm-znver4": {"failures": {}, "crashes": {}}}


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
    expected = {"llvm": {"failures": {"gru/onnx": "import: kept"}, "crashes": {"gru/pt2": "run: SIGSEGV: kept"}}}
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
    assert json.loads(expected.read_text()) == {"llvm": {"failures": {"gru/onnx": "import: listed words",
                                                                      "lstm/onnx": "import: lstm.onnx: no LSTM"},
                                                         "crashes": {}}}


def test_a_crash_is_listed_apart_from_the_failures() -> None:
    """A crash goes to the crashes with its cause, leaving the failures; a failure the other way round."""
    from pytest_tvmdeploy.kit.update_expected import updated

    records = [
        kit_record("vit-pt2", "error", stage="run", crash="SIGSEGV",
                   reason="/home/ci/.cache/kit-models/vit.pt2: TVM worker crashed in stage run: killed by SIGSEGV"),
        kit_record("vit-onnx", "error", stage="build", crash="timeout",
                   reason="TVM worker timed out in stage build after 600 s (--tvm-timeout); it was killed"),
        kit_record("gru-onnx", "failed", stage="compare", reason="differs"),
        kit_record("gru-pt2", "passed"),
        kit_record("lstm-onnx", "xpassed"),
    ]
    expected = {"llvm": {"failures": {"vit/onnx": "import: was failing", "lstm/onnx": "import: no LSTM"},
                         "crashes": {"gru/onnx": "run: SIGFPE: was crashing", "gru/pt2": "run: SIGSEGV: was crashing"}}}
    assert updated(expected, records) == {"llvm": {
        "failures": {"gru/onnx": "compare: differs"},
        "crashes": {"vit/onnx": "build: timeout: TVM worker timed out in stage build after 600 s (--tvm-timeout); "
                                "it was killed",
                    "vit/pt2": "run: SIGSEGV: vit.pt2: TVM worker crashed in stage run: killed by SIGSEGV"}}}


def test_an_expected_failure_or_crash_keeps_its_set_and_listed_reason() -> None:
    """xfailed: the case stays where it was listed, whatever it died of; an unlisted one goes by its crash."""
    from pytest_tvmdeploy.kit.update_expected import updated

    records = [
        kit_record("vit-pt2", "xfailed", stage="run", crash="SIGABRT", reason="new words"),
        kit_record("vit-onnx", "xfailed", stage="run", crash="SIGSEGV", reason="a crash this time"),
        kit_record("gru-onnx", "xfailed", target="llvm-znver4", stage="run", crash="memory-limit", reason="too big"),
    ]
    expected = {"llvm": {"failures": {"vit/onnx": "import: listed failure"},
                         "crashes": {"vit/pt2": "run: SIGSEGV: listed crash"}}}
    assert updated(expected, records) == {  # llvm's sets unchanged
        **expected, "llvm-znver4": {"failures": {}, "crashes": {"gru/onnx": "run: memory-limit: too big"}}}


def test_the_flat_format_still_reads_as_failures_only(tmp_path: Path) -> None:
    from pytest_tvmdeploy.kit.expected import dump_expected, parse_expected, read_expected

    flat = {"llvm": {"gru/onnx": "import: no GRU"}, "cuda": {}}
    assert parse_expected(flat) == {"llvm": {"failures": {"gru/onnx": "import: no GRU"}, "crashes": {}},
                                    "cuda": {"failures": {}, "crashes": {}}}
    mixed = tmp_path / "expected.json"  # one target rewritten already, one not
    mixed.write_text(json.dumps({"llvm": {"crashes": {"vit/pt2": "run: SIGSEGV: x"}},
                                 "cuda": {"gru/onnx": "build: y"}}))
    assert json.loads(dump_expected(read_expected(mixed))) == {
        "cuda": {"failures": {"gru/onnx": "build: y"}, "crashes": {}},
        "llvm": {"failures": {}, "crashes": {"vit/pt2": "run: SIGSEGV: x"}}}


def test_the_bundled_file_is_in_the_split_format_with_failures_only() -> None:
    from pytest_tvmdeploy.kit.expected import EXPECTED_FAILURES, read_expected

    data = json.loads(EXPECTED_FAILURES.read_text())
    assert list(data["llvm"]) == ["failures", "crashes"] and data["llvm"]["crashes"] == {}
    assert data["llvm"]["failures"]["gru/onnx"] == "import: TVM's ONNX frontend has no converter for GRU"
    assert read_expected(EXPECTED_FAILURES) == data


@pytest.mark.parametrize(("data", "message"), [
    ({"llvm": {"failures": {"gru/onnx": "a"}, "crashes": {"gru/onnx": "b"}}},
     "['gru/onnx'] listed both as failures and as crashes"),
    ({"llvm": ["gru/onnx"]}, "a mapping of cases, not ['gru/onnx']"),
])
def test_an_expected_failures_file_that_cannot_be_meant_is_refused(data: dict, message: str) -> None:
    from pytest_tvmdeploy.kit.expected import parse_expected

    with pytest.raises(ValueError) as error:
        parse_expected(data)
    assert str(error.value) == f"expected failures of 'llvm': {message}"


def _fake_deploy(model: Any, inputs: Any, config: Any, **kwargs: Any) -> None:
    """Each gru form fails its own way at once (no TVM work): three crash, pt2 fails to load."""
    from pytest_tvmdeploy.errors import ModelSourceError, SandboxError

    source = model.args[1]  # the kit's model factory: partial(_model, entry, source, folder)
    if source == "pt2":
        raise ModelSourceError("gru.pt2: not an ExportedProgram")
    cause = {"onnx": "SIGSEGV", "torchscript": "SIGFPE", "torch": "timeout"}[source]
    raise SandboxError(f"TVM worker crashed in stage run: {cause}", stage="run", cause=cause)


def test_a_listed_crash_expects_a_crash_and_nothing_else(pytester: pytest.Pytester, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the kit, the fixture and the report, with deployments that fail at once."""
    from pytest_tvmdeploy.kit.update_expected import main

    monkeypatch.setattr("pytest_tvmdeploy.plugin.deployment.deploy", _fake_deploy)
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"llvm": {"failures": {"gru/torchscript": "import: listed failure"},
                                             "crashes": {"gru/onnx": "run: SIGSEGV: listed crash",
                                                         "gru/pt2": "run: SIGSEGV: listed crash"}}}))
    report = tmp_path / "report"
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-models=gru", "--tvm-cpp=off",
                                f"--tvm-kit-expected={expected}", f"--tvm-report={report}", "-rxE")
    # onnx crashes as listed; torchscript, a listed failure, crashes: any failure will do for it;
    # pt2, a listed crash, fails otherwise; torch crashes unlisted
    result.assert_outcomes(xfailed=2, errors=2)
    result.stdout.fnmatch_lines_random([
        "XFAIL at setup of test_kit.py::test_model[[]gru-onnx[]] - llvm: crash: run: SIGSEGV: listed crash",
        "XFAIL at setup of test_kit.py::test_model[[]gru-torchscript[]] - llvm: import: listed failure",
        "test_kit.py::test_model[[]gru-pt2[]]: gru.pt2: not an ExportedProgram",  # as the fixture says it
        "test_kit.py::test_model[[]gru-torch[]]: TVM worker crashed in stage run: timeout",
    ])
    assert main([str(report / "report.json"), "--file", str(expected)]) == 0
    assert json.loads(expected.read_text()) == {"llvm": {
        "failures": {"gru/pt2": "import: gru.pt2: not an ExportedProgram",
                     "gru/torchscript": "import: listed failure"},
        "crashes": {"gru/onnx": "run: SIGSEGV: listed crash",
                    "gru/torch": "run: timeout: TVM worker crashed in stage run: timeout"}}}
