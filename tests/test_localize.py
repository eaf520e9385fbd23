"""Localising a divergence: real TVM builds of tiny models, with faults injected into Relax."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from faults import drop_nth, scale_nth
from models import ConvReluPoolConv, TinyConvNet, seeded
from pytest_tvmdeploy.checks.localize import Divergence, LocalizationError, localize_divergence, search
from pytest_tvmdeploy.checks.localize.graph import GraphNode
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.sources import open_source
from pytest_tvmdeploy.targets import parse_target

LLVM = parse_target("llvm")
INPUTS = {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}


class ConvBnInplaceReluConv(nn.Module):
    """conv → batchnorm → ReLU(inplace) → conv: the relu overwrites the batchnorm's output."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.second = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.act(self.bn(self.first(x))))


def inject(monkeypatch: pytest.MonkeyPatch, rewrite: Callable[[Any], Any]) -> None:
    """Make every probe TVM builds compute wrongly: apply ``rewrite`` to its Relax module first."""
    original = search.build_probe
    monkeypatch.setattr(search, "build_probe", lambda module, target: original(rewrite(module), target))


def localize(model: Any, rules: ToleranceRules = ToleranceRules(), **options: Any) -> Divergence | None:
    return localize_divergence(open_source(model), INPUTS, LLVM, rules, **options)


def test_a_matching_conv_net_has_no_divergence() -> None:
    assert localize(seeded(ConvReluPoolConv())) is None


def test_names_the_conv_that_tvm_computes_wrongly(monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, scale_nth("relax.nn.conv2d", 2, 1.01))

    divergence = localize(seeded(ConvReluPoolConv()))

    assert divergence is not None
    assert (divergence.node, divergence.op, divergence.module_path) == ("conv2d_1", "aten.conv2d.default", "second")
    assert (divergence.index, divergence.total, divergence.compared_before) == (3, 5, 3)
    assert (divergence.previous_node, divergence.previous_op) == ("max_pool2d", "aten.max_pool2d.default")
    assert divergence.previous_max_abs_error < 1e-5
    assert divergence.max_rel_error > 1e-3 and divergence.max_abs_error > 1e-3  # the 1 % scaling
    assert divergence.mismatched > 0 and divergence.elements == 6 * 8 * 8
    assert divergence.own_within_tolerance is False and divergence.first_own_node == "conv2d_1"
    text = divergence.describe()
    assert text.startswith("first diverging operator: conv2d_1 (aten.conv2d.default, second), intermediate 4 of 5")
    assert "Everything before it is within tolerance (last compared: max_pool2d" in text
    assert "the operator itself computes differently in TVM" in text


def test_an_operator_dropped_by_tvm_is_named_not_its_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, drop_nth("relax.nn.relu", 1))

    divergence = localize(seeded(TinyConvNet()))

    assert divergence is not None
    assert (divergence.node, divergence.op, divergence.previous_node) == ("relu", "aten.relu.default", "batch_norm")


def test_values_overwritten_in_place_are_compared_as_produced() -> None:
    # ReLU(inplace=True) overwrites the batchnorm's output: TVM's functional program must
    # still return the batchnorm's own value, as PyTorch produced it, not the relu's.
    assert localize(seeded(ConvBnInplaceReluConv())) is None


def test_in_place_operators_are_named_when_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, drop_nth("relax.nn.relu", 1))

    divergence = localize(seeded(ConvBnInplaceReluConv()))

    assert divergence is not None
    assert (divergence.node, divergence.op, divergence.module_path) == ("relu_", "aten.relu_.default", "act")
    assert divergence.previous_node == "batch_norm"
    assert divergence.own_within_tolerance is False


def test_an_onnx_operator_computed_wrongly_is_named(monkeypatch: pytest.MonkeyPatch, fixtures_dir: Path) -> None:
    inject(monkeypatch, drop_nth("relax.nn.relu", 1))

    divergence = localize(fixtures_dir / "tiny_convnet.onnx")

    assert divergence is not None
    assert (divergence.node, divergence.op, divergence.tensor) == ("/Relu", "Relu", "/Relu_output_0")
    assert (divergence.index, divergence.total, divergence.previous_node) == (1, 5, "/conv/Conv")
    assert divergence.reference_name == "onnxruntime"
    assert divergence.own_within_tolerance is False and divergence.first_own_node == "/Relu"
    assert "ONNX Runtime's values of its inputs" in divergence.describe()


def test_a_matching_onnx_model_has_no_divergence(fixtures_dir: Path) -> None:
    assert localize(fixtures_dir / "tiny_convnet.onnx") is None


def test_with_exact_tolerance_the_first_conv_shows_its_rounding() -> None:
    divergence = localize(seeded(ConvReluPoolConv()), ToleranceRules(rtol=0, atol=0))

    assert divergence is not None
    assert (divergence.node, divergence.index, divergence.tolerance) == ("conv2d", 0, "exact")
    assert 0 < divergence.max_abs_error < 1e-4 and 0 < divergence.max_rel_error < 1e-2
    assert 0 < divergence.mismatched <= divergence.elements
    assert divergence.worst_reference != divergence.worst_actual
    assert divergence.own_within_tolerance is False
    assert "outside exact" in divergence.describe()


def test_large_graphs_are_narrowed_over_several_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, scale_nth("relax.nn.conv2d", 2, 1.01))
    builds = []
    counted = search.build_probe
    monkeypatch.setattr(search, "build_probe", lambda m, t: builds.append(1) or counted(m, t))

    divergence = localize(seeded(ConvReluPoolConv()), max_outputs=2)

    # 5 intermediates, 2 per build: [relu, relu6] → [max_pool2d, relu6] → [conv2d_1, relu6],
    # then the own-inputs check.
    assert divergence is not None and divergence.node == "conv2d_1"
    assert len(builds) == 4
    assert (divergence.index, divergence.compared_before, divergence.previous_node) == (3, 2, "max_pool2d")
    assert "The 2 intermediates compared before it (of 3) are within tolerance" in divergence.describe()


def test_report_record_is_plain_json(monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, scale_nth("relax.nn.conv2d", 1, 1.01))

    divergence = localize(seeded(ConvReluPoolConv()), check_own=False)

    record = json.loads(json.dumps(divergence.to_json()))
    assert record["node"] == "conv2d" and record["op"] == "aten.conv2d.default"
    assert record["max_abs_error"] == divergence.max_abs_error
    assert record["summary"].startswith("first diverging operator: conv2d (aten.conv2d.default, first): max abs error")
    assert record["own_within_tolerance"] is None and record["own_unchecked_reason"] == "check_own=False"


def test_a_failing_own_inputs_check_still_reports_the_divergence(monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, scale_nth("relax.nn.conv2d", 2, 1.01))
    from pytest_tvmdeploy.checks.localize.torch_graph import ExportedProgramGraph

    def refuse(self: Any, values: Any) -> Any:
        raise RuntimeError("no isolation today")

    monkeypatch.setattr(ExportedProgramGraph, "isolated_probe", refuse)

    divergence = localize(seeded(ConvReluPoolConv()))

    assert divergence is not None and divergence.node == "conv2d_1"
    assert divergence.own_within_tolerance is None
    assert divergence.own_unchecked_reason == "RuntimeError: no isolation today"
    assert "Not checked on PyTorch's values of its inputs" in divergence.describe()


def test_a_failing_build_raises_a_localization_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: Any, target: Any) -> Any:
        raise RuntimeError("out of registers")

    monkeypatch.setattr(search, "build_probe", broken)

    with pytest.raises(LocalizationError,
                       match=r"TinyConvNet: comparing intermediates: RuntimeError: out of registers"):
        localize(seeded(TinyConvNet()))
    assert issubclass(LocalizationError, TvmDeployError)


def test_only_cpu_targets_can_be_probed() -> None:
    with pytest.raises(LocalizationError, match="only llvm"):
        localize_divergence(open_source(seeded(TinyConvNet())), INPUTS, parse_target("cuda"), ToleranceRules())


def test_per_output_tolerances_reach_only_the_node_that_is_that_output() -> None:
    rules = ToleranceRules(rtol=0.5, per_output={"out0": {"atol": 3.0}, 0: {"atol": 7.0}})
    inner = GraphNode(name="conv2d", op="aten.conv2d.default", value="conv2d")
    output = GraphNode(name="linear", op="aten.linear.default", value="linear", output_name="out0", output_index=0)

    assert (search._tolerance(inner, np.dtype("float32"), rules).rtol,
            search._tolerance(inner, np.dtype("float32"), rules).atol) == (0.5, 1e-5)
    assert search._tolerance(output, np.dtype("float32"), rules).atol == 3.0
    assert search._tolerance(inner, np.dtype("int64"), rules).exact
