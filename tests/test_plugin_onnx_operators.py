"""Single ONNX operators through the plugin, as an operator-level suite checks them: 0-d inputs,
shape and scalar outputs, a model ONNX Runtime cannot run (ONNX's reference evaluator stands in
and the table says so), and a disagreement between TVM and ONNX Runtime (the failure names the
side ONNX's reference evaluator takes)."""

from __future__ import annotations

import pytest

#: Writes the operator models next to the test file, at collection.
MODELS = """
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, save

HERE = Path(__file__).parent


def write(name, nodes, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(HERE / f"{name}.onnx"))
    return f"{name}.onnx"


F, I64, I16 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT16
RANGE = write("range", [helper.make_node("Range", ["start", "limit", "delta"], ["y"])],
              [("start", F, []), ("limit", F, []), ("delta", F, [])], [("y", F, ["n"])], opset=11)
SHAPE_SIZE = write("shape_size",
                   [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Size", ["x"], ["size"])],
                   [("x", F, [3, 4, 5])], [("shape", I64, [3]), ("size", I64, [])])
MAX_INT16 = write("max_int16", [helper.make_node("Max", ["a", "b"], ["y"])],
                  [("a", I16, [2, 3]), ("b", I16, [2, 3])], [("y", I16, [2, 3])], opset=13)
SLICE = write("slice", [helper.make_node("Slice", ["x", "starts", "ends"], ["y"])],
              [("x", F, [6, 8]), ("starts", I64, [2]), ("ends", I64, [2])], [("y", F, ["a", "b"])])
NONZERO = write("nonzero", [helper.make_node("NonZero", ["x"], ["y"])], [("x", F, [2, 3])], [("y", I64, [2, "n"])],
                opset=13)
RELU = write("relu", [helper.make_node("Relu", ["x"], ["y"])], [("x", F, [4, 8])], [("y", F, [4, 8])])
"""


@pytest.fixture
def operators(project: pytest.Pytester) -> pytest.Pytester:
    project.makepyfile(operator_models=MODELS)
    return project


def test_zero_dim_inputs_shape_and_scalar_outputs_and_blockless_functions_pass(operators: pytest.Pytester) -> None:
    """Also a Slice with computed bounds: TOPI writes it as plain loops, without the blocks a
    sampled schedule needs, so it builds unscheduled instead of failing the build."""
    operators.makepyfile(
        """
        import numpy as np, pytest
        from operator_models import RANGE, SHAPE_SIZE, SLICE

        SCALARS = {name: np.array(value, "float32") for name, value in (("start", 1.0), ("limit", 7.5), ("delta", 2.0))}

        @pytest.mark.tvm_model(model=RANGE, inputs=SCALARS)
        def test_range(tvm_deployment):
            assert tvm_deployment.inputs["start"].shape == ()
            np.testing.assert_array_equal(tvm_deployment.outputs["y"], [1.0, 3.0, 5.0, 7.0])

        @pytest.mark.tvm_model(model=SHAPE_SIZE, inputs={"x": ((3, 4, 5), "float32")})
        def test_shape_and_size(tvm_deployment):
            assert tvm_deployment.outputs["shape"].tolist() == [3, 4, 5]
            assert tvm_deployment.outputs["size"].shape == () and int(tvm_deployment.outputs["size"]) == 60

        X = np.arange(48, dtype="float32").reshape(6, 8)

        @pytest.mark.tvm_model(model=SLICE, inputs={"x": X, "starts": np.array([1, 2]), "ends": np.array([5, -1])})
        def test_slice(tvm_deployment):
            np.testing.assert_array_equal(tvm_deployment.outputs["y"], X[1:5, 2:-1])
        """
    )
    result = operators.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_range*onnx*passed", "*test_shape_and_size*onnx*passed",
                                 "*test_slice*onnx*passed"])


def test_a_model_onnx_runtime_cannot_run_is_checked_against_the_onnx_reference(operators: pytest.Pytester) -> None:
    operators.makepyfile(
        """
        import numpy as np, pytest
        from operator_models import MAX_INT16

        A = np.array([[1, -7, 300], [0, 5, -2]], "int16")
        B = np.array([[2, -9, 299], [1, 4, -1]], "int16")

        @pytest.mark.tvm_model(model=MAX_INT16, inputs={"a": A, "b": B})
        def test_max(tvm_deployment):
            assert tvm_deployment.reference_name == "onnx-reference"
            assert "NOT_IMPLEMENTED" in tvm_deployment.reference_note or "Max" in tvm_deployment.reference_note
            np.testing.assert_array_equal(tvm_deployment.outputs["y"], np.maximum(A, B))
        """
    )
    result = operators.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["reference stand-in: *test_max: ONNX Runtime cannot load the model: "
                                 "NotImplemented: *Max*; the reference is onnx-reference"])


PLANTED_ORT = """
import onnxruntime

_run = onnxruntime.InferenceSession.run


def _wrong(self, names, feed, *args, **kwargs):
    return [value * 1.5 for value in _run(self, names, feed, *args, **kwargs)]


onnxruntime.InferenceSession.run = _wrong
"""


@pytest.mark.parametrize(("wrong", "sides_with"), [("tvm", "onnxruntime"), ("onnxruntime", "tvm")])
def test_a_disagreement_names_the_side_the_onnx_reference_takes(operators: pytest.Pytester, wrong: str,
                                                                sides_with: str) -> None:
    """A fault planted in TVM's build (the ReLU's output scaled, in the sandbox worker) or in ONNX
    Runtime's outputs (in the pytest process, where references run); each run in its own process."""
    if wrong == "tvm":
        operators.makepyfile(plant="from faults import plant_relax_rewrite\nplant_relax_rewrite('relax.nn.relu')\n")
    else:
        operators.makeconftest(PLANTED_ORT)
    operators.makepyfile(
        """
        import pytest
        from operator_models import RELU

        @pytest.mark.tvm_model(model=RELU, inputs={"x": ((4, 8), "float32")})
        def test_relu(tvm_deployment):
            pass
        """
    )
    setup = ["--tvm-setup=plant"] if wrong == "tvm" else []
    result = operators.runpytest_subprocess("-p", "no:randomly", *setup, "--tvm-localize=off", "--tvm-bisect=off",
                                            "--tvm-report=report")
    result.assert_outcomes(failed=1)
    other = "tvm" if sides_with == "onnxruntime" else "onnxruntime"
    result.stdout.fnmatch_lines([f"*onnx-reference sides with {sides_with}: its outputs are within tolerance of "
                                 f"{sides_with}'s, not of {other}'s*"])
    import json

    records = json.loads((operators.path / "report" / "report.json").read_text())["tests"]
    assert records[0]["arbitration"] == {"arbiter": "onnx-reference", "sides_with": sides_with}


def test_a_module_that_needs_tvms_python_package_says_so_when_cpp_cannot_load_it(operators: pytest.Pytester) -> None:
    """NonZero runs through relax.run.nonzero, NumPy code TVM's Python package registers: the Python
    VM has it, a C++ program linked to libtvm_runtime does not."""
    operators.makepyfile(
        """
        import numpy as np, pytest
        from operator_models import NONZERO

        @pytest.mark.tvm_model(model=NONZERO, inputs={"x": np.array([[0, 1, 2], [3, 0, 0]], "float32")}, cpp="on")
        def test_nonzero(tvm_deployment):
            pass
        """
    )
    result = operators.runpytest("-p", "no:randomly", "--tvm-localize=off", "--tvm-bisect=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*C++ runner failed with exit code 4 (module load error) running *model.so: the "
                                 "module calls relax.run.nonzero, which TVM's Python package registers (NumPy "
                                 "code), not libtvm_runtime: it runs only where Python and TVM are*"])
