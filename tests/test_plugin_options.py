"""Targets, tolerances, the cache and xdist, driven from the command line and ini files."""

from __future__ import annotations

import pytest

TWO_MODELS = """
import pytest
from models import TinyConvNet, TwoInThreeOut, seeded

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")})
def test_convnet(tvm_deployment):
    assert tvm_deployment.outputs[0].shape == (1, 10)

@pytest.mark.tvm_model(model="tiny_convnet.onnx", inputs={"x": ((1, 3, 16, 16), "float32")})
def test_onnx(tvm_deployment):
    pass
"""


def test_second_run_recompiles_nothing(project: pytest.Pytester) -> None:
    project.makepyfile(test_two=TWO_MODELS)
    first = project.runpytest("-v")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*test_convnet*torch*built*passed", "artifacts: 2 built, 0 from cache"])
    second = project.runpytest("-v")
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines([
        "*test_convnet  *llvm*torch*cached*0.00*0.00*passed",
        "*test_onnx  *llvm*onnx*cached*0.00*0.00*passed",
        "artifacts: 0 built, 2 from cache",
    ])


def test_changed_weights_rebuild(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(test_seed="""
        import os, pytest
        from models import TinyConvNet, seeded
        @pytest.mark.tvm_model(model=seeded(TinyConvNet(), int(os.environ["SEED"])),
                               inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_model(tvm_deployment): pass
    """)
    monkeypatch.setenv("SEED", "1")
    project.runpytest().stdout.fnmatch_lines(["artifacts: 1 built, 0 from cache"])
    monkeypatch.setenv("SEED", "2")
    project.runpytest().stdout.fnmatch_lines(["artifacts: 1 built, 0 from cache"])
    monkeypatch.setenv("SEED", "1")
    project.runpytest().stdout.fnmatch_lines(["artifacts: 0 built, 1 from cache"])


def test_several_targets_run_each_test_per_target(project: pytest.Pytester) -> None:
    project.makepyfile(test_two=TWO_MODELS)
    result = project.runpytest(
        "-v", "--tvm-target=llvm", '--tvm-target={"kind": "llvm", "mcpu": "x86-64-v2"}'
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random([
        "*test_convnet[[]llvm[]] *PASSED*",
        "*test_convnet[[]llvm-x86-64-v2[]] *PASSED*",
        "*test_onnx[[]llvm[]] *PASSED*",
        "*test_onnx[[]llvm-x86-64-v2[]] *PASSED*",
        "artifacts: 4 built, 0 from cache",
    ])


def test_target_from_ini_and_same_inputs_for_every_target(project: pytest.Pytester) -> None:
    project.makeini(
        """
        [pytest]
        tvm_snapshot = off
        tvm_target =
            llvm
            llvm -mcpu=x86-64-v2
        """
    )
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet

        @pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_model(tvm_deployment, tvm_target):
            print("TARGET", tvm_target.label, "SUM", float(tvm_deployment.inputs["x"].sum()))
        """
    )
    result = project.runpytest("-s", "-v")
    result.assert_outcomes(passed=2)
    sums = {line.split("SUM")[1] for line in result.outlines if "TARGET" in line}
    assert len(sums) == 1, result.outlines  # the target does not change the seeded data


def test_tolerances_from_cli_and_ini_and_marker_precedence(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet, seeded
        SPEC = {"x": ((1, 3, 16, 16), "float32")}

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs=SPEC)
        def test_defaults(tvm_deployment): pass

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs=SPEC, rtol=1e-3, atol=1e-3)
        def test_marker_wins(tvm_deployment): pass
        """
    )
    project.runpytest().assert_outcomes(passed=2)
    strict = project.runpytest("--tvm-rtol=0", "--tvm-atol=0")
    strict.assert_outcomes(passed=1, failed=1)
    strict.stdout.fnmatch_lines(["*test_defaults*", "*outside exact*"])
    project.makeini("[pytest]\ntvm_snapshot = off\ntvm_rtol = 0\ntvm_atol = 0\n")
    project.runpytest().assert_outcomes(passed=1, failed=1)
    project.runpytest("--tvm-rtol=1e-3", "--tvm-atol=1e-3").assert_outcomes(passed=2)  # CLI beats ini


def test_unknown_output_in_tolerances_fails_clearly(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet
        @pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "float32")},
                               tolerances={"logits": {"atol": 1}})
        def test_model(tvm_deployment): pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tolerances: no output named 'logits' (outputs: out0)"])


def test_marked_test_without_the_fixture_is_still_checked(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet, seeded
        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")}, rtol=0, atol=0)
        def test_no_fixture(): pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tvm output differs from pytorch*"])


def test_no_marked_tests_changes_nothing(project: pytest.Pytester) -> None:
    project.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = project.runpytest("--tvm-target=llvm", "--strict-markers")
    result.assert_outcomes(passed=1)
    assert "- tvmdeploy -" not in result.stdout.str()
    assert not (project.path / ".pytest_cache" / "d" / "tvmdeploy").exists()


def test_marker_is_registered_and_options_documented(pytester: pytest.Pytester) -> None:
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.tvm_model(model=, inputs=, shapes=, ranges=, static_shapes=, rtol=, "
                                  "atol=, tolerances=, cpp=, snapshot=, quantize=, calibration=, quant_budget=, "
                                  "name=, tune=)*"])
    helptext = pytester.runpytest("--help")
    helptext.stdout.fnmatch_lines(["*--tvm-target=TARGET*", "*--tvm-rtol=R*", "*--tvm-atol=A*",
                                   "*--tvm-cache-dir=DIR*", "*--tvm-repeat=N*", "*--tvm-cpp=*auto,on,off*",
                                   "*--tvm-cpp-runner=PATH*", "*--tvm-cpp-timeout=SECONDS*",
                                   "*tvm_target (linelist)*"])


def test_xdist_workers_share_the_cache_and_build_once(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet, seeded
        SPEC = {"x": ((1, 3, 16, 16), "float32")}

        @pytest.mark.parametrize("copy", range(4))
        @pytest.mark.tvm_model(model="tiny_convnet.pt", inputs=SPEC)
        def test_same_model(tvm_deployment, copy): pass
        """
    )
    result = project.runpytest_subprocess("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=4)
    # Inputs differ per test id but the artifact depends only on their signature: built once.
    result.stdout.fnmatch_lines(["artifacts: 1 built, 3 from cache"])


def test_junit_xml_carries_each_tests_numbers_as_properties(project: pytest.Pytester) -> None:
    import xml.etree.ElementTree as ElementTree

    project.makepyfile(test_two=TWO_MODELS)
    project.runpytest("--junitxml=report.xml").assert_outcomes(passed=2)
    cases = ElementTree.parse(project.path / "report.xml").getroot().iter("testcase")
    by_test = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")} for c in cases}
    convnet = by_test["test_convnet"]
    assert convnet["tvm_target"] == "llvm" and convnet["tvm_source"] == "torch" and convnet["tvm_artifact"] == "built"
    assert float(convnet["tvm_compile_s"]) > 0 and float(convnet["tvm_run_ms"]) > 0
    assert convnet["tvm_cpp"] == "bitwise" and float(convnet["tvm_max_abs_error"]) < 1e-4
    assert by_test["test_onnx"]["tvm_source"] == "onnx"


def test_verbose_shows_the_phase_and_the_report_names_models_and_frameworks(project: pytest.Pytester) -> None:
    import json

    project.makepyfile(test_two=TWO_MODELS.replace('inputs={"x": ((1, 3, 16, 16), "float32")})\ndef test_convnet',
                                                   'inputs={"x": ((1, 3, 16, 16), "float32")}, name="tiny-net")'
                                                   '\ndef test_convnet'))
    first = project.runpytest("-v", "--tvm-report=out", "--tvm-repeat=3")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*::test_convnet load… reference… import… compile… run… cpp… PASSED*"])
    first.stdout.fnmatch_lines(["test *tvm ms*cpp ms*torch ms*ort ms*tvm/ref*",
                                 "*test_convnet *torch *built *[0-9] *- *[0-9].[0-9][0-9]x *bitwise*"])
    records = {r["test"].rsplit("::", 1)[1]: r
               for r in json.loads((project.path / "out" / "report.json").read_text())["tests"]}
    assert records["test_convnet"]["model"] == "tiny-net" and records["test_convnet"]["reference_name"] == "pytorch"
    assert records["test_onnx"]["model"] == "tiny_convnet" and records["test_onnx"]["reference_name"] == "onnxruntime"
    for record in records.values():
        histogram = record["error_histogram"]
        assert histogram["total"] == 10 and sum(histogram["counts"]) + histogram["exact"] == 10
    second = project.runpytest("-v")
    second.stdout.fnmatch_lines(["*::test_convnet load… reference… run… cpp… PASSED*"])
    quiet = project.runpytest()
    assert "reference…" not in quiet.stdout.str()


def test_bad_repeat_count_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--tvm-repeat=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tvm-repeat / tvm_repeat: '0' is not a positive whole number*"])


def test_tvm_test_targets_supplies_targets_when_no_option_is_given(pytester: pytest.Pytester,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("""
        def test_target(tvm_target): pass
    """)
    monkeypatch.setenv("TVM_TEST_TARGETS", 'llvm; {"kind": "llvm", "mcpu": "x86-64-v3"}')
    listed = pytester.runpytest("--collect-only")
    listed.stdout.fnmatch_lines(["*test_target[[]llvm[]]*", "*test_target[[]llvm-x86-64-v3[]]*"])
    assert "tvmdeploy targets: llvm, llvm-x86-64-v3" in listed.stdout.str()
    given = pytester.runpytest("--collect-only", "--tvm-target=llvm -mcpu=znver4")
    given.stdout.fnmatch_lines(["*test_target*"])
    assert "tvmdeploy targets: llvm-znver4" in given.stdout.str()  # the command line wins


def test_header_names_the_versions_in_use(pytester: pytest.Pytester) -> None:
    from importlib.metadata import version

    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines([f"tvmdeploy: TVM {version('apache-tvm')}*torch {version('torch')}*"])
