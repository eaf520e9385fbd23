"""Dynamic shapes: one artifact built with symbolic dimensions, checked at every declared shape
from Python and C++, snapshotted per shape; sizes outside the declared range are named errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pytest_tvmdeploy.errors import ConfigError, InputSpecError
from pytest_tvmdeploy.settings.marker import marker_shapes
from pytest_tvmdeploy.shapes import InputShape, ShapeSignature, SymbolicDims, parse_shapes, shape_id

#: A test body that checks what every dynamic test must hold: C++ ran and agrees bit for bit.
SAME_BITS = """
def same_bits(d):
    assert d.cpp_outputs is not None, d.cpp_error
    for name in d.outputs:
        assert d.cpp_outputs[name].tobytes() == d.outputs[name].tobytes()
"""


def _records(project: pytest.Pytester) -> list[dict]:
    return json.loads((project.path / "out" / "report.json").read_text())["tests"]


def test_onnx_dynamic_batch_builds_once_and_runs_every_shape(project: pytest.Pytester) -> None:
    project.makepyfile(
        SAME_BITS + """
import pytest

@pytest.mark.tvm_model(model="tiny_convnet_dynamic.onnx", inputs={"x": (("batch", 3, 16, 16), "float32")},
                       shapes=[{"batch": 1}, {"batch": 3}, {"batch": 8}], ranges={"batch": (1, 16)}, cpp="on")
def test_batch(tvm_deployment, tvm_shape):
    assert tvm_deployment.sizes == tvm_shape
    assert tvm_deployment.outputs["logits"].shape == (tvm_shape["batch"], 10)
    same_bits(tvm_deployment)

@pytest.mark.tvm_model(model="tiny_convnet_dynamic.onnx", inputs={"x": (("batch", 3, 16, 16), "float32")},
                       shapes=[{"batch": 40}], ranges={"batch": (1, 16)})
def test_too_large(tvm_deployment):
    pass
"""
    )
    first = project.runpytest("--tvm-report=out", "--tvm-cache-dir=cache")
    first.assert_outcomes(passed=3, errors=1)
    assert ("tiny_convnet_dynamic.onnx: input 'x': dimension 0 ('batch') is 40, outside its declared range [1, 16]"
            in first.stdout.str())
    first.stdout.fnmatch_lines(["artifacts: 1 built, 2 from cache"])
    records = {r["case"]: r for r in _records(project)}
    assert [records[f"batch={b}"]["shape"] for b in (1, 3, 8)] == ["batch=1", "batch=3", "batch=8"]
    assert {records[f"batch={b}"]["cpp"] for b in (1, 3, 8)} == {"bitwise"}
    assert records["batch=1"]["artifact"] == records["batch=8"]["artifact"]  # one .so for every batch
    assert records[None]["stage"] == "inputs" and records[None]["shape"] == "batch=40"

    again = project.runpytest("--tvm-cache-dir=cache", "-k", "test_batch")
    again.assert_outcomes(passed=3)
    again.stdout.fnmatch_lines(["artifacts: 0 built, 3 from cache"])


def test_onnx_named_dimensions_stay_symbolic_unless_bound(project: pytest.Pytester) -> None:
    # A test that gives plain sizes still gets the file's dynamic batch: one artifact for both.
    project.makepyfile(
        """
import pytest

@pytest.mark.tvm_model(model="tiny_convnet_dynamic.onnx", inputs={"x": ((2, 3, 16, 16), "float32")})
def test_two(tvm_deployment):
    assert tvm_deployment.sizes == ({"batch": 2} if tvm_deployment.dynamic else {})

@pytest.mark.tvm_model(model="tiny_convnet_dynamic.onnx", inputs={"x": ((5, 3, 16, 16), "float32")})
def test_five(tvm_deployment):
    assert tvm_deployment.outputs["logits"].shape == (5, 10)
"""
    )
    dynamic = project.runpytest("--tvm-cache-dir=cache")
    dynamic.assert_outcomes(passed=2)
    dynamic.stdout.fnmatch_lines(["*test_two*onnx*batch=2*built*", "*test_five*onnx*batch=5*cached*",
                                  "artifacts: 1 built, 1 from cache"])
    static = project.runpytest("--tvm-cache-dir=static", "--tvm-static-shapes=on")
    static.assert_outcomes(passed=2)
    static.stdout.fnmatch_lines(["artifacts: 2 built, 0 from cache"])


def test_torch_module_and_torchscript_export_with_dim(project: pytest.Pytester) -> None:
    project.makepyfile(
        SAME_BITS + """
import pytest
from models import TinyConvNet, seeded

SPEC = {"x": (("batch", 3, 16, 16), "float32")}
SHAPES = [{"batch": 1}, {"batch": 2}, {"batch": 6}]

@pytest.mark.tvm_model(model=lambda: seeded(TinyConvNet()), inputs=SPEC, shapes=SHAPES, ranges={"batch": (1, 8)},
                       cpp="on")
def test_module(tvm_deployment):
    same_bits(tvm_deployment)

@pytest.mark.tvm_model(model="tiny_convnet.pt", inputs=SPEC, shapes=SHAPES, cpp="on")
def test_torchscript(tvm_deployment):
    same_bits(tvm_deployment)

@pytest.mark.tvm_model(model=TinyConvNet, inputs=SPEC, shapes=SHAPES)  # weights from the plugin's seed
def test_factory(tvm_deployment):
    pass
"""
    )
    result = project.runpytest("--tvm-cache-dir=cache", "--tvm-report=out")
    result.assert_outcomes(passed=9)
    result.stdout.fnmatch_lines(["artifacts: 3 built, 6 from cache"])
    built = {r["test"].split("[")[0]: r for r in _records(project) if r["cache_hit"] is False}
    assert set(built) == {f"test_torch_module_and_torchscript_export_with_dim.py::test_{name}"
                          for name in ("module", "torchscript", "factory")}
    assert {r["shape"] for r in built.values()} == {"batch=1"}  # the first shape builds, the others reuse it
    assert project.runpytest("--tvm-cache-dir=cache").stdout.str().count("cached") == 9


def test_transformer_variable_sequence_length_snapshotted_per_shape(snapshot_project: pytest.Pytester) -> None:
    snapshot_project.makepyfile(
        SAME_BITS + """
import pytest
from models import TinyEncoder, seeded

@pytest.mark.tvm_model(model=lambda: seeded(TinyEncoder()), inputs={"ids": ((2, "seq"), "int64", (0, 50))},
                       shapes=[{"seq": 8}, {"seq": 16}, {"seq": 64}], atol=1e-5, cpp="on")
def test_encoder(tvm_deployment, tvm_shape):
    assert tvm_deployment.outputs[0].shape == (2, tvm_shape["seq"], 32)
    same_bits(tvm_deployment)
"""
    )
    first = snapshot_project.runpytest("--tvm-cache-dir=cache", "--snapshot-update")
    first.assert_outcomes(passed=3)
    first.stdout.fnmatch_lines(["artifacts: 1 built, 2 from cache"])
    stored = sorted(p.name for p in (snapshot_project.path / "__snapshots__").rglob("*.tensors"))
    assert sorted(re.findall(r"seq=\d+", " ".join(stored))) == ["seq=16", "seq=64", "seq=8"]  # one per shape
    again = snapshot_project.runpytest("--tvm-cache-dir=cache")
    again.assert_outcomes(passed=3)
    again.stdout.fnmatch_lines(["artifacts: 0 built, 3 from cache"])


def test_marker_shape_errors_name_the_dimension(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
import pytest
from models import TinyConvNet, seeded

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs=[(("batch", 3, 16, 16), "float32")])
def test_no_shapes(tvm_deployment):
    pass

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs=[(("batch", 3, 16, 16), "float32")],
                       shapes=[{"batch": 2}], ranges={"batch": (4, 1)})
def test_bad_range(tvm_deployment):
    pass
"""
    )
    result = project.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*test_no_shapes*inputs name the dimension(s) 'batch': give shapes= with a size for each*",
        "*test_bad_range*ranges=*'batch': (4, 1) is not a range (low, high)*",
    ])


def test_a_signature_binds_every_name_once_and_within_its_range() -> None:
    signature = ShapeSignature(
        (InputShape("a", ("batch", "seq"), "float32"), InputShape("b", ("batch", 4), "int64")),
        SymbolicDims({"seq": (1, 64)}),
    )
    assert signature.symbols == ("batch", "seq") and signature.is_dynamic
    assert signature.bind({"a": np.zeros((3, 9)), "b": np.zeros((3, 4))}) == {"batch": 3, "seq": 9}
    with pytest.raises(InputSpecError, match=r"input 'b': dimension 0 \('batch'\) is 2, but input 'a' gives "
                                             r"'batch' = 3"):
        signature.bind({"a": np.zeros((3, 9)), "b": np.zeros((2, 4))})
    with pytest.raises(InputSpecError, match=r"dimension 1 \('seq'\) is 65, outside its declared range \[1, 64\]"):
        signature.bind({"a": np.zeros((3, 65)), "b": np.zeros((3, 4))})
    assert ShapeSignature.from_json(json.loads(json.dumps(signature.to_json()))) == signature
    assert not ShapeSignature.of({"x": np.zeros((2, 3))}).is_dynamic


def test_programs_are_exported_at_sizes_torch_does_not_specialise() -> None:
    # torch.export fixes a dimension seen at size 0 or 1: the example is the largest shape run, at least 2
    assert SymbolicDims.declare([{"batch": 1}], {}).example == {"batch": 2}
    assert SymbolicDims.declare([{"batch": 1}, {"batch": 8}], {"batch": (1, 16)}).example == {"batch": 8}
    assert SymbolicDims.declare([{"n": 1}], {"n": (1, 1)}).example == {"n": 1}


def test_shapes_as_ranges_run_at_both_ends() -> None:
    assert parse_shapes({"batch": (1, 32)}, "shapes=") == ([{"batch": 1}, {"batch": 32}], {"batch": (1, 32)})
    assert parse_shapes({"seq": (8, None)}, "shapes=") == ([{"seq": 8}], {"seq": (8, None)})
    assert shape_id({"batch": 1, "seq": 64}) == "batch=1-seq=64"
    with pytest.raises(ConfigError, match=r"each shape must map dimension names to sizes"):
        parse_shapes([{"batch": -1}], "shapes=")
    with pytest.raises(ConfigError, match=r"'seq': give shapes= with a size for each"):
        marker_shapes({"inputs": {"x": (("batch", "seq"), "float32")}, "shapes": [{"batch": 1}]})
    with pytest.raises(ConfigError, match=r"sizes 'batch', which no input of inputs= names"):
        marker_shapes({"inputs": {"x": ((1, 3), "float32")}, "shapes": [{"batch": 1}]})


def test_a_tuned_dynamic_artifact_dispatches_listed_sizes_to_tuned_static_copies(
        tmp_path, cpp_exe, fixtures_dir) -> None:
    from pytest_tvmdeploy import deploy

    dims = SymbolicDims.declare([{"batch": 1}, {"batch": 2}], {"batch": (1, 8)})
    runs = {}
    for batch in (1, 2, 3):  # 3 is not a listed size: the symbolic code runs it
        runs[batch] = deploy(fixtures_dir / "tiny_convnet_dynamic.onnx", {"x": (("batch", 3, 16, 16), "float32")},
                             shape={"batch": batch}, dims=dims, cache_dir=tmp_path / "cache",
                             tuning_dir=tmp_path / "tuning", tune=12, cpp_runner=cpp_exe)
    assert [runs[b].cache_hit for b in (1, 2, 3)] == [False, True, True]  # one artifact
    assert runs[1].tuned and runs[1].artifact.meta["tuned_functions"] >= 2  # schedules of the static copies
    for batch, run in runs.items():
        assert run.outputs["logits"].shape == (batch, 10)
        np.testing.assert_allclose(run.outputs["logits"], run.reference["logits"], rtol=1e-4, atol=1e-5)
        assert run.cpp_outputs["logits"].tobytes() == run.outputs["logits"].tobytes()
