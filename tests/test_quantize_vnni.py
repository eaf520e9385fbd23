"""int8 convs in the x86 VNNI form: the same integers, and MetaSchedule tensorizes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.relax import op as R

from pytest_tvmdeploy import deploy, parse_target
from pytest_tvmdeploy.build.compile import compile_module
from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.quantized import compare_quantized
from pytest_tvmdeploy.quantize.vnni import input_block, pack_weights, target_has_vnni, use_vnni_convs

VNNI_TARGET = parse_target("llvm -mcpu=cascadelake")  # the oldest VNNI CPU: its code runs on all later ones


def _cpu_has_vnni() -> bool:
    try:
        return "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


needs_vnni_cpu = pytest.mark.skipif(not _cpu_has_vnni(), reason="this CPU has no AVX-512 VNNI to run the code on")


class BlockNet(torch.nn.Module):
    """Two convs with 16-channel multiples after a 3-channel one (which the quantizer skips)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.down = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.wide = torch.nn.Conv2d(32, 32, 3, padding=2, dilation=2)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x))
        x = torch.relu(self.wide(x))
        return self.head(x.mean(dim=(2, 3)))


def int8_module(convs: list[dict], channels: int = 32) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """``main(x)`` applying int8 convs (``weight``, conv2d keyword arguments) to the same input."""
    rng = np.random.default_rng(0)
    x = relax.Var("x", relax.TensorType((1, channels, 11, 11), "int8"))
    weights = [rng.integers(-127, 128, spec.pop("weight_shape")).astype("int8") for spec in convs]
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            outs = [bb.emit(R.nn.conv2d(x, relax.const(w), out_dtype="int32", **spec))
                    for w, spec in zip(weights, convs)]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get(), weights


@pytest.mark.parametrize("shape, in_block", [((32, 48, 3, 2), 16), ((24, 40, 1, 1), 16), ((16, 3, 7, 7), 4),
                                             ((16, 6, 1, 1), 8)])
def test_packed_weights_follow_the_blocked_layout(shape: tuple[int, ...], in_block: int) -> None:
    assert input_block(shape[1]) == in_block  # an RGB stem: 3 channels and a zero one, not 13 zeros
    weights = np.random.default_rng(1).integers(-127, 128, shape).astype("int8")
    packed = pack_weights(weights)
    assert packed.shape == (-(-shape[0] // 16), -(-shape[1] // in_block), *shape[2:], in_block // 4, 16, 4)
    for o, i, y, x, j, ob, k in np.ndindex(*packed.shape):
        out, into = 16 * o + ob, in_block * i + 4 * j + k
        real = out < shape[0] and into < shape[1]  # the rest pads the channels to whole blocks
        assert packed[o, i, y, x, j, ob, k] == (weights[out, into, y, x] if real else 0)


def test_plain_int8_convs_are_rewritten_and_grouped_ones_kept() -> None:
    module, _ = int8_module([
        {"weight_shape": (16, 32, 3, 3), "padding": (1, 1, 1, 1)},  # eligible
        {"weight_shape": (32, 1, 3, 3), "groups": 32},  # depthwise
        {"weight_shape": (8, 32, 1, 1)},  # 8 output channels: padded to a block
    ])
    rewritten, count = use_vnni_convs(module)
    assert count == 2
    text = rewritten.script()
    assert "conv2d_nchw16c_u8i8" in text and text.count("R.nn.conv2d(") == 1
    narrow, _ = int8_module([{"weight_shape": (16, 3, 7, 7)}], channels=3)
    rewritten, count = use_vnni_convs(narrow)
    (call,) = [b.value for b in rewritten["main"].body.blocks[0].bindings
               if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"]
    kernel_shape = list(call.args[1][1].value.shape)
    assert count == 1 and kernel_shape == [1, 1, 7, 7, 1, 16, 4]  # one block of 4 input channels: 3 and a zero one


def test_which_targets_have_vnni() -> None:
    assert target_has_vnni(VNNI_TARGET) and target_has_vnni(parse_target("llvm -mcpu=znver4"))
    assert target_has_vnni(parse_target("llvm -mcpu=sapphirerapids"))
    assert not target_has_vnni(parse_target("llvm -mcpu=x86-64-v4"))
    assert not target_has_vnni(parse_target("llvm"))


@needs_vnni_cpu
@pytest.mark.parametrize("channels, outputs", [(32, (48, 32)), (24, (24, 40)), (3, (16, 24))],
                         ids=["blocks", "padded", "rgb-stem"])
def test_the_vnni_form_computes_the_same_integers(channels: int, outputs: tuple[int, int]) -> None:
    module, weights = int8_module([
        {"weight_shape": (outputs[0], channels, 3, 3), "strides": (2, 2), "padding": (1, 0, 2, 1)},
        {"weight_shape": (outputs[1], channels, 3, 3), "padding": (2, 2, 2, 2), "dilation": (2, 2)},
    ], channels)
    x = np.random.default_rng(2).integers(-128, 128, (1, channels, 11, 11)).astype("int8")
    rewritten, count = use_vnni_convs(module)
    assert count == 2
    results = []
    for candidate in (module, rewritten):
        vm = relax.VirtualMachine(compile_module(candidate, VNNI_TARGET), tvm.cpu())
        results.append([out.numpy() for out in vm["main"](tvm.runtime.tensor(x))])
    expected = [
        torch.nn.functional.conv2d(torch.from_numpy(np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 2), (0, 1)))),
                                   torch.from_numpy(weights[0].astype(np.float64)), stride=2),
        torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                   torch.from_numpy(weights[1].astype(np.float64)),
                                   padding=2, dilation=2),
    ]
    for plain, vnni, exact in zip(*results, expected):
        np.testing.assert_array_equal(vnni, plain)
        np.testing.assert_array_equal(vnni, exact.numpy().astype(np.int64))


@needs_vnni_cpu
@pytest.mark.parametrize("unsigned, stem", [(False, False), (True, False), (True, True)],
                         ids=["signed", "unsigned", "unsigned-with-stem"])
def test_an_int8_deployment_for_a_vnni_cpu_uses_the_vnni_form(tmp_path: Path, unsigned: bool, stem: bool) -> None:
    # unsigned: the relu'd activations carry a zero point, and the convs read them padded with it;
    # stem: the first conv (3 input channels, signed image values) is quantized too
    rng = np.random.default_rng(3)
    calibration = [{"x": rng.standard_normal((1, 3, 16, 16)).astype("float32")} for _ in range(4)]
    deployment = deploy(BlockNet().eval(), {"x": ((1, 3, 16, 16), "float32")}, target=VNNI_TARGET,
                        quantize={"calibrate_mode": "max", "weight_scale": "max", "unsigned_activations": unsigned,
                                  "skip_conv_layers": () if stem else (0,)},
                        calibration=calibration, cache_dir=tmp_path / "cache")
    zero_points = [site["input_zero_point"] for site in deployment.quantization["sites"] if site["quantized"]]
    assert zero_points == [0] * stem + ([-128, -128] if unsigned else [0, 0])
    # down and wide (and the stem if asked): the head is skipped
    assert deployment.quantization["quantized_sites"] == deployment.quantization["vnni_convs"] == 2 + stem
    verdict = compare_quantized(deployment.reference, deployment.outputs, QuantBudget(min_cosine=0.99, min_sqnr_db=15))
    assert verdict, verdict.describe()


@needs_vnni_cpu
@pytest.mark.parametrize("conv, channels", [({"weight_shape": (32, 32, 3, 3), "padding": (1, 1, 1, 1)}, 32),
                                           ({"weight_shape": (16, 3, 7, 7), "strides": (2, 2), "padding": (3, 3)}, 3)],
                         ids=["blocks", "rgb-stem"])
def test_tuning_tensorizes_the_vnni_form(tmp_path: Path, conv: dict, channels: int) -> None:
    from pytest_tvmdeploy.tuning import tune

    module, _ = int8_module([dict(conv)], channels)
    rewritten, _ = use_vnni_convs(module)
    tune(rewritten, VNNI_TARGET, tmp_path / "db", max_trials=16, max_trials_per_task=8)
    records = (tmp_path / "db" / "database_tuning_record.json").read_text().splitlines()
    assert any("dot_16x4_vnni" in line for line in records)
