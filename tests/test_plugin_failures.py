"""Mismatches fail with diagnostics and a reproducer; bad input errors clearly; the session goes on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_mismatch_is_a_failure_with_diagnostics_and_a_reproducer(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_exact="""
        import pytest
        from models import TinyConvNet, seeded

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")},
                               rtol=0, atol=0)
        def test_exact(tvm_deployment):
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)  # a failure in the call phase, not a setup error
    result.stdout.fnmatch_lines([
        "*tvm output differs from pytorch: 1 of 1 output(s) outside tolerance",
        "*out0: float32 (1, 10)",
        "*mismatched elements: * / 10 (*%) outside exact",
        "*max abs error: *    max rel error: *",
        "*worst element [[]0, *[]]: reference=*, tvm=*",
        "tvm-cpp: bitwise identical to the Python VM's outputs (same differences)",
        "*target: {\"kind\": \"llvm\"}",
        "*reproducer: *",
    ])
    folder = Path(re.search(r"reproducer: (\S+)", result.stdout.str()).group(1))
    # the first operator is wrong on its own (exact tolerance, other rounding): it gets an upstream script
    assert sorted(p.name for p in folder.iterdir()) == ["inputs", "model.so", "reference", "reproducer.json", "tvm",
                                                        "tvm-cpp", "upstream"]
    result.stdout.fnmatch_lines(["compiler stage: *", "*upstream reproducer of aten.conv2d.default *"])
    # The reproducer replays outside pytest and reaches the same verdict.
    replay = subprocess.run([sys.executable, "-m", "pytest_tvmdeploy.replay", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert replay.returncode == 1, replay.stderr
    assert "mismatched elements" in replay.stdout
    assert "outside exact" in replay.stdout


def test_mismatch_reports_every_failing_output(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TwoInThreeOut

        @pytest.mark.tvm_model(model=TwoInThreeOut(), inputs={"a": ((64, 64), "float32"), "b": ((64, 64), "float32")},
                               tolerances={"out0": {"atol": 1e-3}, 1: {"rtol": 0, "atol": 0},
                                           2: {"rtol": 0, "atol": 0}})
        def test_outputs(tvm_deployment):
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "out0:" not in output.split("short test summary")[0].split("differs")[1]  # loosened: passes
    assert "out1: float32 (64, 64)" in output and "out2: float32 (64,)" in output


BAD_INPUTS = """
import pytest
from models import TinyConvNet, UnsupportedOp

SPEC = {"x": ((1, 3, 16, 16), "float32")}

@pytest.mark.tvm_model(model="missing.onnx", inputs=SPEC)
def test_missing_file(tvm_deployment): pass

@pytest.mark.tvm_model(model="corrupt.onnx", inputs=SPEC)
def test_corrupt_onnx(tvm_deployment): pass

@pytest.mark.tvm_model(model="garbage.pt", inputs=SPEC)
def test_corrupt_torchscript(tvm_deployment): pass

@pytest.mark.tvm_model(model="tiny_convnet.onnx", inputs={"x": ((1, 5, 16, 16), "float32")})
def test_wrong_shape_onnx(tvm_deployment): pass

@pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 5, 16, 16), "float32")})
def test_wrong_shape_torch(tvm_deployment): pass

@pytest.mark.tvm_model(model=TinyConvNet(), inputs={"image": ((1, 3, 16, 16), "float32")})
def test_wrong_name(tvm_deployment): pass

@pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "complex64")})
def test_bad_dtype(tvm_deployment): pass

@pytest.mark.tvm_model(model=UnsupportedOp(), inputs={"x": ((4,), "float32")})
def test_unsupported_op(tvm_deployment): pass

@pytest.mark.tvm_model(model=TinyConvNet(), inputs=SPEC, rtl=1e-3)
def test_unknown_marker_argument(tvm_deployment): pass

@pytest.mark.tvm_model(model=TinyConvNet(), inputs=SPEC)
def test_good_one_still_runs(tvm_deployment):
    assert tvm_deployment.outputs[0].shape == (1, 10)
"""


def test_bad_input_gives_clear_errors_and_the_session_goes_on(project: pytest.Pytester) -> None:
    (project.path / "garbage.pt").write_bytes(b"PK\x03\x04 definitely not a zip archive" * 4)
    project.makepyfile(test_bad=BAD_INPUTS)
    result = project.runpytest("-rE")
    result.assert_outcomes(passed=1, errors=9)
    result.stdout.fnmatch_lines_random([
        "test_bad.py::test_missing_file: */missing.onnx: model file not found",
        "test_bad.py::test_corrupt_onnx: */corrupt.onnx: not a valid ONNX model: *",
        "test_bad.py::test_corrupt_torchscript: */garbage.pt: not a loadable TorchScript file: *",
        "test_bad.py::test_wrong_shape_onnx: */tiny_convnet.onnx: the inputs [[]('x', (1, 5, 16, 16), 'float32')[]]"
        " do not fit the model; ONNX Runtime raised *",
        "test_bad.py::test_wrong_shape_torch: nn.Module TinyConvNet: the inputs [[]('x', (1, 5, 16, 16), 'float32')[]]"
        " do not fit the model; PyTorch raised RuntimeError: *expected input[[]1, 5, 16, 16[]] to have 3 channels*",
        "test_bad.py::test_wrong_name: nn.Module TinyConvNet: inputs [[]'image'[]] do not match "
        "the model's inputs [[]'x'[]]",
        "test_bad.py::test_bad_dtype: nn.Module TinyConvNet: input 'x': unsupported dtype 'complex64'*",
        "test_bad.py::test_unsupported_op: nn.Module UnsupportedOp: TVM's torch frontend cannot import operator(s)"
        " special_i0e.default",
        "test_bad.py::test_unknown_marker_argument: @pytest.mark.tvm_model: unknown argument(s) rtl;"
        " known: model, inputs, shapes, ranges, static_shapes, rtol, atol, tolerances, cpp, snapshot, quantize,"
        " calibration, quant_budget, name, tune",
    ])
    assert "During handling of the above exception" not in result.stdout.str()


def test_unknown_target_is_reported_per_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet

        @pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_model(tvm_deployment): pass

        def test_plain(): pass
        """
    )
    result = project.runpytest('--tvm-target={"kind": "nonsense"}', "-rE")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(['*test_model*target {"kind": "nonsense"}: TVM rejects it: *nonsense*'])


def test_invalid_target_syntax_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--tvm-target={kind: llvm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-tvmdeploy: target '{kind: llvm': invalid JSON*"])


def test_damaged_cache_entry_is_set_aside_and_rebuilt(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet, seeded

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_model(tvm_deployment): pass
        """
    )
    # Subprocess runs: a shared library loaded in this process must not change under it.
    cache = project.path / "cache"
    project.runpytest_subprocess(f"--tvm-cache-dir={cache}").assert_outcomes(passed=1)
    (so_path,) = cache.glob("*/*/model.so")
    data = bytearray(so_path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    so_path.write_bytes(bytes(data))
    result = project.runpytest_subprocess(f"--tvm-cache-dir={cache}", "-W", "always")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*cache entry * is damaged (*sha256*corrupted); moved to *damaged* and rebuilding*",
                                 "artifacts: 1 built, 0 from cache"])
    assert len(list((cache / "damaged").iterdir())) == 1  # the damaged entry is kept for inspection


FAULTY_RELU_CONFTEST = """
import pytest
from faults import drop_nth
import pytest_tvmdeploy.deployment.relax_module as deployment
from pytest_tvmdeploy.checks.localize import search

@pytest.fixture(autouse=True)
def tvm_drops_the_second_relu(monkeypatch):
    # The fault: TVM computes the first relu as identity, in the deployed .so and in every probe.
    rewrite = drop_nth("relax.nn.relu", 1)
    for module, name in ((deployment, "build_with_records"), (search, "build_probe")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda mod, target, *args, original=original, **kwargs:
                            original(rewrite(mod), target, *args, **kwargs))
"""


def test_a_diverging_model_names_the_first_wrong_operator(project: pytest.Pytester, fixtures_dir: Path) -> None:
    import json

    shutil.copy(fixtures_dir / "faults.py", project.path / "faults.py")
    project.makeconftest(FAULTY_RELU_CONFTEST)
    project.makepyfile(test_relu="""
        import pytest
        from models import ConvReluPoolConv, seeded

        @pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_model(tvm_deployment): pass
    """)
    # the fault is injected in this process, so TVM runs here too, not in the sandbox worker
    result = project.runpytest("--tvm-report=out", "--tvm-cache-dir=cache", "--tvm-isolate=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tvm output differs from pytorch*",
                                 "*first diverging operator: relu (aten.relu.default*"])
    (record,) = json.loads((project.path / "out" / "report.json").read_text())["tests"]
    assert record["divergence"]["node"] == "relu" and record["divergence"]["max_abs_error"] > 0.01
    assert record["divergence"]["previous_node"] is not None
    off = project.runpytest("--tvm-localize=off", "--tvm-cache-dir=cache", "--tvm-isolate=off")
    off.assert_outcomes(failed=1)
    assert "diverging operator" not in off.stdout.str()


def test_op_level_faults_end_in_a_stage_or_pass(project: pytest.Pytester) -> None:
    """Three faults the op-level suites met: a model whose output torch.export cannot save (a named
    tuple) stops at import naming the cause; a model that writes into its input leaves the test's
    arrays alone; an integer ``isnan`` (nothing for the cost model to rank) builds and passes."""
    project.makepyfile(
        """
        import numpy as np, pytest, torch

        class TopK(torch.nn.Module):
            def forward(self, x):
                return x.topk(3)  # torch.return_types.topk: torch.export.save has no name for it

        class AddInPlace(torch.nn.Module):
            def forward(self, x):
                return x.add_(1.0)

        class IsNan(torch.nn.Module):
            def forward(self, x):
                return torch.isnan(x)

        ZEROS = np.zeros((4,), dtype="float32")

        @pytest.mark.tvm_model(model=TopK(), inputs={"x": np.arange(8, dtype="float32")})
        def test_topk(tvm_deployment):
            pass

        @pytest.mark.tvm_model(model=AddInPlace(), inputs={"x": ZEROS}, snapshot=False)
        def test_in_place(tvm_deployment):
            assert not ZEROS.any(), ZEROS

        @pytest.mark.tvm_model(model=IsNan(), inputs={"x": np.arange(6, dtype="int64")}, snapshot=False)
        def test_isnan_int64(tvm_deployment):
            pass
        """
    )
    result = project.runpytest("-p", "no:randomly", "--tvm-report=report")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*torch.export.save cannot write the exported program*NotImplementedError*topk*"])
    records = {r["test"].rsplit("::", 1)[1]: r for r in json.loads((project.path / "report" / "report.json")
                                                                     .read_text())["tests"]}
    assert records["test_topk"]["stage"] == "import"
    assert records["test_in_place"]["outcome"] == records["test_isnan_int64"]["outcome"] == "passed"
