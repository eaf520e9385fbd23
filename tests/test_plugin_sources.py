"""Every model source and input/output shape passes through the plugin, as a user writes it."""

from __future__ import annotations

import re

import pytest


def test_each_model_source_passes(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet, seeded

        SPEC = {"x": ((1, 3, 16, 16), "float32")}

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs=SPEC)
        def test_module(tvm_deployment):
            assert tvm_deployment.source_kind == "torch"
            assert tvm_deployment.outputs[0].shape == (1, 10)

        @pytest.mark.tvm_model(model=lambda: seeded(TinyConvNet()), inputs=SPEC)
        def test_factory(tvm_deployment):
            assert tvm_deployment.reference_name == "pytorch"

        @pytest.mark.tvm_model(model="tiny_convnet.pt", inputs=SPEC)
        def test_torchscript(tvm_deployment):
            assert tvm_deployment.source_kind == "torchscript"

        @pytest.mark.tvm_model(model="tiny_convnet.pt2", inputs=SPEC)
        def test_exported_program(tvm_deployment):
            assert tvm_deployment.source_kind == "exported_program"

        @pytest.mark.tvm_model(model="tiny_convnet.onnx", inputs=SPEC)
        def test_onnx(tvm_deployment):
            assert tvm_deployment.reference_name == "onnxruntime"
            assert list(tvm_deployment.outputs) == ["logits"]
        """
    )
    result = project.runpytest("-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*tvmdeploy*", "*test_onnx*llvm*onnx*built*passed*"])


def test_same_weights_give_same_outputs_across_sources(project: pytest.Pytester) -> None:
    # The three files hold the same seeded network: their TVM outputs must agree closely.
    project.makepyfile(
        """
        import numpy as np, pytest
        from models import TinyConvNet, seeded
        SPEC = {"x": ((1, 3, 16, 16), "float32")}
        OUT = {}

        @pytest.mark.parametrize("path", ["tiny_convnet.pt", "tiny_convnet.pt2", "tiny_convnet.onnx"])
        def test_source(path, request):
            from pytest_tvmdeploy import deploy
            d = deploy(path, SPEC, base_dir=request.path.parent, seed=7)
            OUT[path] = d.outputs[0]

        def test_agree():
            a, b, c = OUT.values()
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
        """
    )
    project.runpytest("-p", "no:randomly").assert_outcomes(passed=4)


def test_multiple_inputs_and_nested_outputs(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import numpy as np, pytest
        from models import TwoInThreeOut

        @pytest.mark.tvm_model(model=TwoInThreeOut(), inputs={"a": ((2, 4), "float32"), "b": ((3, 4), "float32")})
        def test_named(tvm_deployment):
            assert [o.shape for o in tvm_deployment.outputs.values()] == [(2, 4), (2, 3), (2,)]
            assert list(tvm_deployment.inputs) == ["a", "b"]

        @pytest.mark.tvm_model(model=TwoInThreeOut(), inputs=[((2, 4), "float32"), np.ones((3, 4), "float32")])
        def test_positional(tvm_deployment):
            assert list(tvm_deployment.inputs) == ["a", "b"]
            np.testing.assert_array_equal(tvm_deployment.inputs["b"], 1)

        @pytest.mark.tvm_model(model=TwoInThreeOut(), inputs={"b": ((3, 4), "float32"), "a": ((2, 4), "float32")})
        def test_dict_order_does_not_matter(tvm_deployment):
            assert tvm_deployment.outputs[1].shape == (2, 3)
        """
    )
    project.runpytest().assert_outcomes(passed=3)


def test_input_and_output_dtypes(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import MixedDtypes, seeded

        SPEC = {"ids": ((2, 5), "int64"), "counts": ((3,), "int32"), "small": ((4,), "int8"),
                "mask": ((2, 2), "bool"), "half": ((3, 3), "float16")}

        @pytest.mark.tvm_model(model=seeded(MixedDtypes()), inputs=SPEC)
        def test_dtypes(tvm_deployment):
            dtypes = [str(a.dtype) for a in tvm_deployment.outputs.values()]
            assert dtypes == ["float32", "int32", "int8", "bool", "float16", "int64"]
            assert [str(a.dtype) for a in tvm_deployment.inputs.values()] == [
                "int64", "int32", "int8", "bool", "float16"]
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_seeded_inputs_are_reproducible_per_test_id(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import json, pytest
        from models import TinyConvNet

        @pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_a(tvm_deployment):
            print("SUM", repr(float(tvm_deployment.inputs["x"].sum())))

        @pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_b(tvm_deployment):
            print("SUM", repr(float(tvm_deployment.inputs["x"].sum())))
        """
    )
    first = project.runpytest("-s")
    second = project.runpytest("-s")
    sums = lambda r: re.findall(r"SUM (\S+)", r.stdout.str())  # noqa: E731
    assert sums(first) == sums(second)
    assert len(set(sums(first))) == 2  # different tests get different data

