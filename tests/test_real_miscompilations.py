"""Real TVM 0.27 miscompilations, as a user meets them: the stage is named and the generated
upstream script reproduces the divergence without this package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Runs a script as a fresh environment would: ``import pytest_tvmdeploy`` fails inside it.
WITHOUT_PLUGIN = ("import runpy, sys; sys.modules['pytest_tvmdeploy'] = None; "
                  "runpy.run_path(sys.argv[1], run_name='__main__')")

NEGATIVE_INDEX = """
import pytest
import torch

class LastColumn(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x)[:, -1]

@pytest.mark.tvm_model(model=LastColumn(), inputs={"x": ((3, 4), "float32")}, cpp="off")
def test_last_column(tvm_deployment):
    pass
"""

ONNX_ISINF = """
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

node = helper.make_node("IsInf", ["x"], ["y"], detect_positive=0)  # only -inf is inf here
graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
                          [helper.make_tensor_value_info("y", TensorProto.BOOL, [6])])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "isinf.onnx")
x = np.array([1.0, np.inf, -np.inf, 0.0, np.inf, -2.0], dtype=np.float32)

@pytest.mark.tvm_model(model="isinf.onnx", inputs={"x": x}, cpp="off")
def test_isinf(tvm_deployment):
    pass
"""


def _upstream(project: pytest.Pytester, result: pytest.RunResult) -> Path:
    line = next(line for line in result.stdout.lines if "upstream reproducer of" in line)
    return Path(line.rsplit("python ", 1)[1].strip())


def _run_standalone(script: Path) -> subprocess.CompletedProcess[str]:
    assert len(script.read_text().splitlines()) < 60
    return subprocess.run([sys.executable, "-c", WITHOUT_PLUGIN, str(script)], capture_output=True, text=True,
                          cwd=script.parent.parent.parent, timeout=600)


def test_a_negative_index_is_a_frontend_fault_with_a_standalone_reproducer(project: pytest.Pytester) -> None:
    project.makepyfile(test_model=NEGATIVE_INDEX)
    result = project.runpytest_subprocess("--tvm-cache-dir=cache", "--tvm-report=out")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*first diverging operator: select (aten.select.int*the operator itself computes differently in TVM.",
        "*compiler stage: wrong already with only the required passes: the frontend's import, an operator's "
        "legalization or the code TVM always generates for it*",
        "*upstream reproducer of aten.select.int (needs only torch, numpy and tvm): python */upstream/repro.py",
    ])
    (record,) = json.loads((project.path / "out" / "report.json").read_text())["tests"]
    assert record["compiler_stage"]["stage"] == "import or legalization"
    assert record["divergence"]["upstream"] == "aten.select.int"
    standalone = _run_standalone(_upstream(project, result))
    assert standalone.returncode != 0
    assert "AssertionError" in standalone.stderr and "TVM's result differs from PyTorch's" in standalone.stderr
    assert "Mismatched elements: 3 / 3" in standalone.stderr  # every row's last column is another element


def test_onnx_isinf_ignoring_detect_positive_is_reproduced_from_onnx_alone(project: pytest.Pytester) -> None:
    project.makepyfile(test_model=ONNX_ISINF)
    result = project.runpytest_subprocess("--tvm-cache-dir=cache")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*first diverging operator: * (IsInf)*",
                                 "*compiler stage: wrong already with only the required passes*",
                                 "*upstream reproducer of IsInf (needs only onnx, numpy and tvm): python *"])
    script = _upstream(project, result)
    assert (script.parent / "operator.onnx").exists() and (script.parent / "expected_0.npy").exists()
    standalone = _run_standalone(script)
    assert standalone.returncode != 0 and "TVM's result differs from ONNX Runtime's" in standalone.stderr


def test_nan_self_comparison_breaks_in_stmt_simplify_after_fusion(project: pytest.Pytester) -> None:
    """``x == x`` is false for NaN; fused into one function, TVM's simplifier folds it to true."""
    import numpy as np
    import torch

    from faults import write_records
    from pytest_tvmdeploy.shapes import ShapeSignature
    from pytest_tvmdeploy.sources import open_source
    from pytest_tvmdeploy.targets import parse_target

    project.makepyfile(test_model="""
        import numpy as np
        import pytest
        import torch

        class IsNumber(torch.nn.Module):
            def forward(self, x):
                return (x == x).to(torch.int32)

        X = np.array([1.0, np.nan, 2.0, np.inf], dtype=np.float32)

        @pytest.mark.tvm_model(model=IsNumber(), inputs={"x": X}, cpp="off")
        def test_is_number(tvm_deployment):
            pass
    """)

    class IsNumber(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x == x).to(torch.int32)

    shapes = ShapeSignature.of({"x": np.zeros(4, np.float32)})
    # records that change no schedule: the tuned build fuses, as every tuned build does
    write_records(open_source(IsNumber()).to_relax(shapes), parse_target("llvm"), project.path / "tuning" / "llvm")
    result = project.runpytest_subprocess("--tvm-cache-dir=cache", "--tvm-tuning-dir=tuning", "--tvm-report=out")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*compiler stage: correct through *, wrong after StmtSimplify (TIR passes)*"
                                 "it breaks in combination with FuseTIR*"])
    (record,) = json.loads((project.path / "out" / "report.json").read_text())["tests"]
    stage = record["compiler_stage"]
    assert (stage["culprit"], stage["partner"], stage["alone"]) == ("StmtSimplify", "FuseTIR", False)
    # no operator is wrong in an unfused build: the upstream script is the (small) whole model, fused
    result.stdout.fnmatch_lines(["*no intermediate result leaves tolerance in an instrumented (unfused, untuned)*",
                                 "*upstream reproducer of the whole model (* operators) (needs only torch, numpy "
                                 "and tvm): python *"])
    script = _upstream(project, result)
    assert "'FuseOps', 'FuseTIR'" in script.read_text()
    standalone = _run_standalone(script)
    assert standalone.returncode != 0 and "TVM's result differs from PyTorch's" in standalone.stderr


def test_a_crash_is_cut_down_to_the_smallest_prefix_that_still_crashes(project: pytest.Pytester) -> None:
    """TVM's compiled floor division traps (SIGFPE) on INT64_MIN // -1, which PyTorch wraps."""
    project.makepyfile(test_model="""
        import numpy as np
        import pytest
        import torch

        class Arithmetic(torch.nn.Module):
            def forward(self, x, y):
                shifted = (x + 1) - 1
                return (shifted // y) * 2 + 3

        X, Y = np.array([7, np.iinfo(np.int64).min]), np.array([2, -1])

        @pytest.mark.tvm_model(model=Arithmetic(), inputs={"x": X, "y": Y}, cpp="off")
        def test_arithmetic(tvm_deployment):
            pass
    """)
    result = project.runpytest_subprocess("--tvm-cache-dir=cache")
    result.assert_outcomes(errors=1)  # the deployment fixture crashed
    result.stdout.fnmatch_lines(["*TVM worker crashed in stage run: killed by SIGFPE*",
                                 "*smallest crashing prefix: the graph up to floor_divide (aten.floor_divide.default)"
                                 ", value 3 of 5, crashes on its own*",
                                 "*upstream reproducer of the graph up to floor_divide (3 operators): python *"])
    script = _upstream(project, result)
    assert "floor_divide" in script.read_text() and "mul" not in script.read_text()
    assert _run_standalone(script).returncode == -8  # SIGFPE, without this package
