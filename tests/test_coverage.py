"""Operator coverage: which operators each frontend saw, and how the tests using them ended."""

from __future__ import annotations

import json

import pytest

from pytest_tvmdeploy.report.coverage import main as coverage_main

SUITE = """
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from models import TinyConvNet, seeded

node = helper.make_node("IsInf", ["x"], ["y"], detect_positive=0)
graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.BOOL, [4])])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "isinf.onnx")

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")}, cpp="off")
def test_convnet(tvm_deployment):
    pass

@pytest.mark.tvm_model(model="isinf.onnx", inputs={"x": np.array([1, np.inf, -np.inf, 0], np.float32)}, cpp="off")
def test_isinf(tvm_deployment):
    pass

class Amax(torch.nn.Module):
    def forward(self, x):
        return torch.amax(torch.relu(x), dim=1)

@pytest.mark.tvm_model(model=Amax(), inputs={"x": ((2, 3), "float32")}, cpp="off")
def test_amax(tvm_deployment):
    pass
"""


def test_the_coverage_table_names_each_operator_and_how_its_tests_ended(
        project: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest_subprocess("--tvm-coverage=on", "--tvm-cache-dir=cache", "--tvm-report=out",
                                          "--tvm-bisect=off")
    result.assert_outcomes(passed=1, failed=1, errors=1)  # amax fails at import: a setup error
    lines = result.stdout.lines
    start = lines.index(next(line for line in lines if "tvmdeploy operator coverage" in line))
    assert lines[start + 1].split()[:3] == ["operator", "frontend", "models"]
    table = {row[0]: row for row in (line.split() for line in lines[start + 2:]) if len(row) == 9}
    # operator, frontend, models, tests, passed, cannot import, in failed build, first diverging, other
    assert table["IsInf"][1:] == ["onnx", "1", "1", "0", "-", "-", "1", "-"]
    assert table["aten.amax.default"][1:] == ["torch", "1", "1", "0", "1", "-", "-", "-"]
    assert table["aten.relu.default"][1:] == ["torch", "2", "2", "1", "-", "-", "-", "1"]
    assert table["aten.conv2d.default"][1:] == ["torch", "1", "1", "1", "-", "-", "-", "-"]
    result.stdout.fnmatch_lines(["onnx: 1 operators, 0 passing in every test that uses them",
                                 "torch: * operators, * passing in every test that uses them"])
    report = json.loads((project.path / "out" / "report.json").read_text())
    convnet = next(t for t in report["tests"] if t["test"].endswith("test_convnet"))
    assert convnet["operators"]["aten.conv2d.default"] == 1
    amax = next(t for t in report["tests"] if t["test"].endswith("test_amax"))
    assert amax["stage"] == "import" and amax["unsupported"] == ["amax.default"]
    assert amax["source"] == "torch"  # known from the opened model, although TVM failed
    assert "<h2>Operator coverage</h2>" in (project.path / "out" / "report.html").read_text()

    capsys.readouterr()
    assert coverage_main([str(project.path / "out" / "report.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["operator", "frontend", "models"]
    assert "aten.amax.default" in printed and "IsInf" in printed
    assert coverage_main([str(project.path / "missing.json")]) == 2
