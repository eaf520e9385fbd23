"""Tuned builds run convolutions in NCHW16c: the outputs stay PyTorch's, the layout changes only at
the model's edges, each kind of convolution gets its blocked task (or stays plain when it has no
blocked form), and the weights packed with NumPy are the bits TVM's FoldConstant computes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from models import seeded
from pytest_tvmdeploy import parse_target
from pytest_tvmdeploy.build.passes import build_pipeline
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources import open_source
from relax_constants import constants

SHAPE = (1, 3, 20, 20)


class EveryConv(nn.Module):
    """A stem conv (3 channels: stays plain), ordinary and depthwise (stride 2) convs in blocks of
    16 channels, max pooling, ReLU6, a residual add and a 10-channel head (stays plain); with
    ``grouped``, a grouped conv in the middle (no blocked form)."""

    def __init__(self, grouped: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.ordinary = nn.Conv2d(32, 32, 3, padding=1)
        self.depthwise = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32)
        self.middle = nn.Conv2d(32, 32, 3, padding=1, groups=4 if grouped else 1)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.stem(x)))
        x = x + torch.relu(self.ordinary(x))
        x = nn.functional.relu6(self.depthwise(x))
        return self.head(torch.relu(self.middle(x))).mean(dim=(2, 3))


class Network(NamedTuple):
    module: Any  # the Relax module
    x: np.ndarray
    expected: np.ndarray  # PyTorch's float32 outputs
    exact: np.ndarray  # the same computed in float64: what every float32 order of summation approximates


@pytest.fixture(scope="module")
def network() -> Network:
    model = seeded(EveryConv())
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    module = open_source(model).to_relax(ShapeSignature.of({"x": x}))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
        exact = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    return Network(module, x, expected, exact)


def _prepared(module, pipeline):
    target = parse_target("llvm").to_tvm()
    with target:
        return pipeline.prepare(module), target


def _layout_changes(prepared) -> list[tuple[int, int]]:
    """The (input rank, output rank) of every layout change left in ``main`` (weights are folded)."""
    from tvm import relax

    found: list[tuple[int, int]] = []

    @relax.expr_functor.visitor
    class Changes(relax.PyExprVisitor):
        def visit_call_(self, call) -> None:
            super().visit_call_(call)
            if getattr(call.op, "name", "") == "relax.call_tir" and "layout_transform" in call.args[0].name_hint:
                found.append((len(call.args[1][0].ty.shape.values), len(call.ty.shape.values)))

    Changes().visit_expr(prepared["main"])
    return found


def test_a_tuned_build_blocks_every_convolution_with_a_blocked_form(network) -> None:
    from pytest_tvmdeploy.tuning.tasks import extract_tasks, prepare_module

    module = network.module
    target = parse_target("llvm").to_tvm()
    blocked = sorted(task.name for task in extract_tasks(prepare_module(module, target), target))
    plain = sorted(task.name for task in extract_tasks(_prepared(module, build_pipeline())[0], target))
    conv_tasks = [name for name in blocked if "conv2d" in name]
    assert sum("depthwise_conv2d_NCHWc" in name for name in conv_tasks) == 1
    assert sum("conv2d_NCHWc" in name and "depthwise" not in name for name in conv_tasks) == 2
    assert len(conv_tasks) == 5  # stem and head stay plain convolutions
    assert not any("NCHWc" in name for name in plain)
    # into the blocked layout after the pool (once, though two operators use it; and through
    # ReLU6), out of it before the head
    assert _layout_changes(_prepared(module, build_pipeline(blocked=True))[0]) == [(4, 5), (5, 4)]


class TwoConvs(nn.Module):
    """A stem conv (stays plain) and a blocked one, then ``head``."""

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Conv2d(32, 32, 3, padding=1)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))))


@pytest.mark.parametrize("model", [
    EveryConv(grouped=True),  # a grouped conv inside: changes layout around it
    TwoConvs(lambda y: torch.split(y, 16, dim=1)[0]),  # ConvertLayout's rule for split fails a check
], ids=["grouped", "split"])
def test_a_network_that_cannot_be_blocked_at_its_edges_stays_plain(model: nn.Module) -> None:
    from pytest_tvmdeploy.build.block_layout import block_convolutions

    module = open_source(seeded(model)).to_relax(ShapeSignature.of({"x": np.zeros(SHAPE, "float32")}))
    with parse_target("llvm").to_tvm():
        kept = block_convolutions()(module)
    assert kept["main"].script() == module["main"].script()


def test_a_negative_squeeze_axis_does_not_stop_the_blocked_layout() -> None:
    """TVM's layout rule for squeeze indexes a string with the axis as given: a negative one made
    ConvertLayout fail with std::bad_alloc, so the blocked (tuned) build of such a model failed."""
    from pytest_tvmdeploy.tuning.tasks import extract_tasks, prepare_module

    squeezed = TwoConvs(lambda y: nn.functional.adaptive_avg_pool2d(y, 1).squeeze(-1).squeeze(-1))
    module = open_source(seeded(squeezed)).to_relax(ShapeSignature.of({"x": np.zeros(SHAPE, "float32")}))
    assert "axis=[-1]" in module["main"].script()
    target = parse_target("llvm").to_tvm()
    names = [task.name for task in extract_tasks(prepare_module(module, target), target)]
    assert sum("conv2d_NCHWc" in name for name in names) == 1, names  # the body; the 3-channel stem stays plain


def test_a_value_nobody_reads_does_not_stop_the_blocked_layout() -> None:
    """PyTorch's max pooling comes with a zeros_like of its result (for the indices it does not
    return); converted back to NCHW although nobody reads it, it made SqueezeNet's pools in the
    blocked part change layout twice more, so SqueezeNet stayed plain."""
    from pytest_tvmdeploy.build.block_layout import block_convolutions, layout_changes

    pooled = TwoConvs(lambda y: nn.functional.max_pool2d(y, 2))
    module = open_source(seeded(pooled)).to_relax(ShapeSignature.of({"x": np.zeros(SHAPE, "float32")}))
    assert "zeros_like" in module["main"].script()
    with parse_target("llvm").to_tvm():
        blocked = block_convolutions()(module)
    assert "NCHW16c" in blocked["main"].script()
    assert layout_changes(blocked) == 2  # in after the stem, out at the output


def test_blocked_convolutions_compute_what_pytorch_does(network, tmp_path: Path) -> None:
    from pytest_tvmdeploy.tuning.apply import build_with_records
    from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors

    module, x, expected, exact_outputs = network
    outputs = {}
    for blocked in (True, False):
        built = build_with_records(module, parse_target("llvm"), None, build_pipeline(blocked=blocked), sampled=True)
        (outputs[blocked],) = flatten_outputs(relax_vm(built.executable)["main"](*tvm_tensors([x])))
    # float32 sums in any order stray from the exact (float64) outputs; the blocked build may stray
    # no further than PyTorch's or the plain build's own order does (within a factor for the
    # orders' luck), whatever the host's vector width; a wrong layout is off by the values themselves
    error = {name: float(np.abs(values - exact_outputs).max())
             for name, values in (("pytorch", expected), ("plain", outputs[False]), ("blocked", outputs[True]))}
    assert 0 < error["blocked"] <= 4 * max(error["pytorch"], error["plain"]), error
    assert np.abs(exact_outputs).max() > 0.1 and error["pytorch"] < 1e-5 * np.abs(exact_outputs).max()


def test_weights_packed_with_numpy_are_the_bits_foldconstant_computes(network) -> None:
    module = network.module
    blocked = build_pipeline(blocked=True)
    numpy_packed, tvm_packed = (constants(_prepared(module, pipeline)[0])
                                for pipeline in (blocked, blocked.without(["FoldConstantArithmetic"])))
    assert numpy_packed == tvm_packed and len(numpy_packed) >= 8
