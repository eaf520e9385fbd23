"""The Relax quantizer computes in integers, exactly as the integer reference says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from models import ConvReluPoolConv, TinyConvNet, seeded
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize import QuantConfig, quantize
from pytest_tvmdeploy.quantize.graph import emit_float, find_sites, is_constant, main_block, prepare
from pytest_tvmdeploy.quantize.scales import (
    fixed_point_multiplier,
    power2_exponent,
    quantize_bias,
    quantize_to_int8,
    requantize,
    shift_requantize,
    shift_weight_scales,
    weight_scales,
)

ALL_LAYERS = {"skip_conv_layers": [], "skip_dense_layer": False}


def relax_of(model: torch.nn.Module, shape: tuple[int, ...]) -> tvm.IRModule:
    return from_exported_program(torch.export.export(model, (torch.zeros(shape),)))


def run(module: tvm.IRModule, *arrays: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(module, target=tvm.target.Target("llvm")), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays])[0].numpy()


def calls(module: tvm.IRModule, op: str) -> list[relax.Call]:
    _, bindings = main_block(module)
    return [b.value for b in bindings
            if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == f"relax.{op}"]


def test_quantized_convs_and_matmuls_are_int8_with_int32_accumulation() -> None:
    result = quantize(relax_of(seeded(TinyConvNet()), (1, 3, 16, 16)), {"calibrate_mode": "global_scale", **ALL_LAYERS})
    (conv,) = calls(result.module, "nn.conv2d")
    (matmul,) = calls(result.module, "matmul")
    for call in (conv, matmul):
        assert call.args[0].ty.dtype == "int8" and call.args[1].ty.dtype == "int8"
        assert call.ty.dtype == "int32"
    assert result.quantized_sites == 2
    assert not calls(result.module, "right_shift")  # both results feed float ops: dequantized from int32


def test_int8_results_read_by_int8_ops_are_requantized_in_integers() -> None:
    result = quantize(relax_of(seeded(ConvReluPoolConv()), (1, 3, 8, 8)), {"weight_scale": "max", **ALL_LAYERS})
    (requantized,) = calls(result.module, "right_shift")  # conv 1 -> relu -> pool -> conv 2 stays int8
    assert requantized.ty.dtype == "int64"
    assert [c.args[0].ty.dtype for c in calls(result.module, "nn.conv2d")] == ["int8", "int8"]


def test_old_defaults_skip_the_first_conv_and_dense_layers() -> None:
    result = quantize(relax_of(seeded(ConvReluPoolConv()), (1, 3, 8, 8)), "int8")
    assert [s["quantized"] for s in result.sites] == [False, True]
    assert [c.args[0].ty.dtype for c in calls(result.module, "nn.conv2d")] == ["float32", "int8"]


def test_int8_flows_through_relu_and_pooling_without_dequantizing() -> None:
    result = quantize(relax_of(seeded(ConvReluPoolConv()), (1, 3, 8, 8)), {**ALL_LAYERS})
    to_float = [c for c in calls(result.module, "astype") if c.ty.dtype == "float32"]
    assert len(to_float) == 1  # only the model's output is dequantized
    assert [c.args[0].ty.dtype for c in calls(result.module, "nn.max_pool2d")] == ["int8"]


def test_folding_batch_norm_into_the_weights_keeps_the_float_model() -> None:
    module = relax_of(seeded(TinyConvNet()), (1, 3, 16, 16))
    prepared = prepare(module)
    sites = find_sites(prepared)
    assert [len(s.chain) for s in sites] == [6, 1]  # bias add, 4 batch-norm steps, relu; then the bias
    assert not calls(emit_float(prepared, sites), "subtract")  # the batch norm is gone
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    np.testing.assert_allclose(run(emit_float(prepared, sites), x), run(module, x), rtol=1e-5, atol=1e-6)


def _integer_reference(model: ConvReluPoolConv, x: np.ndarray, config: QuantConfig,
                       calibration: list[dict[str, np.ndarray]] | None) -> np.ndarray:
    """The whole int8 pipeline of the two convs in numpy integers, dequantized at the end."""
    module = relax_of(model, x.shape)
    result = quantize(module, config, calibration=calibration)
    sites = find_sites(prepare(module))
    scales = [(s["input_scale"], s["output_scale"]) for s in result.sites]
    data = quantize_to_int8(x.astype(np.float64), np.float64(scales[0][0]))
    input_scale = scales[0][0]
    for site, (_, output_scale) in zip(sites, scales):
        axis = 0
        if config.weight_scale == "shift":  # each weight scale 2**k * output / input scale
            w_scales = shift_weight_scales(site.weight, output_scale / input_scale, per_channel=config.per_channel)
        else:
            w_scales = weight_scales(site.weight, power2=config.power2, per_channel=config.per_channel, axis=axis)
        weights = quantize_to_int8(site.weight, w_scales, axis=axis if config.per_channel else None)
        groups = site.call.attrs.groups
        acc = torch.nn.functional.conv2d(torch.from_numpy(data.astype(np.float64)),
                                         torch.from_numpy(weights.astype(np.float64)),
                                         padding=1, groups=groups).numpy().astype(np.int64)
        acc_scales = input_scale * np.broadcast_to(w_scales.astype(np.float64), (weights.shape[0],))
        acc = acc + quantize_bias(site.bias, acc_scales).reshape(1, -1, 1, 1)
        ratio = (acc_scales / output_scale).reshape(1, -1, 1, 1)
        if config.shift_only:
            out = shift_requantize(acc, -power2_exponent(ratio, tolerance=1e-9), rounding=config.rounding,
                                   round_for_shift=config.round_for_shift)
        else:
            mantissa, shift = fixed_point_multiplier(ratio)
            out = requantize(acc, mantissa, shift, rounding=config.rounding)
        if site.index == 1:  # read by the model's output only: dequantized from int32, relu6 in float
            dequantized = acc.astype(np.float32) * acc_scales.astype(np.float32).reshape(1, -1, 1, 1)
            return np.clip(dequantized, np.float32(0), np.float32(6))
        out = np.clip(out, 0, 127).astype(np.int8)  # the absorbed relu
        out = torch.nn.functional.max_pool2d(torch.from_numpy(out.astype(np.float64)), 2).numpy().astype(np.int8)
        data, input_scale = out, output_scale
    raise AssertionError("unreachable")


@pytest.mark.parametrize("weight_scale", ["power2", "max", "shift"])
@pytest.mark.parametrize("rounding", ["UPWARD", "TONEAREST"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_pipeline_matches_the_integer_reference_bit_for_bit(weight_scale: str, rounding: str,
                                                                 per_channel: bool) -> None:
    model = seeded(ConvReluPoolConv(), 3)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype("float32")
    # "shift" with calibrated scales: the input and output scales differ and are no powers of two
    calibration = [{"x": x}] if weight_scale == "shift" else None
    config = QuantConfig(weight_scale=weight_scale, rounding=rounding, per_channel=per_channel, global_scale=16.0,
                         calibrate_mode="max" if calibration else "global_scale", **ALL_LAYERS)
    expected = _integer_reference(model, x, config, calibration)
    result = quantize(relax_of(model, x.shape), config, calibration=calibration)
    actual = run(result.module, x)
    fixed_point = [c for c in calls(result.module, "multiply")  # by a 31-bit mantissa
                   if c.ty.dtype == "int64" and is_constant(c.args[1]) and c.args[1].value.numpy().max() >= 2 ** 30]
    assert calls(result.module, "right_shift") and bool(fixed_point) == (weight_scale == "max")
    np.testing.assert_array_equal(actual, expected)
    reference = model(torch.from_numpy(x)).detach().numpy()
    assert np.linalg.norm(actual - reference) / np.linalg.norm(reference) < 0.2  # and near the float model


def test_calibration_modes_need_data_and_say_so() -> None:
    module = relax_of(seeded(TinyConvNet()), (1, 3, 16, 16))
    with pytest.raises(ConfigError, match="calibrate_mode='kl_divergence' needs calibration data"):
        quantize(module, "kl_divergence")
    with pytest.raises(ConfigError, match="calibration data is empty"):
        quantize(module, "max", calibration=[])
    with pytest.raises(ConfigError, match=r"calibration sample 0: missing input\(s\) \['x'\]"):
        quantize(module, "max", calibration=[{"image": np.zeros((1, 3, 16, 16), "float32")}])


@pytest.mark.parametrize("mode", ["kl_divergence", "max", "percentile", "mse"])
def test_calibrated_scales_beat_a_bad_global_scale(mode: str) -> None:
    model = seeded(TinyConvNet())
    module = relax_of(model, (1, 3, 16, 16))
    rng = np.random.default_rng(2)
    calibration = [{"x": rng.standard_normal((1, 3, 16, 16)).astype("float32")} for _ in range(6)]
    x = rng.standard_normal((1, 3, 16, 16)).astype("float32")
    reference = model(torch.from_numpy(x)).detach().numpy()
    sqnr = lambda out: 10 * np.log10((reference ** 2).sum() / ((reference - out) ** 2).sum())  # noqa: E731
    calibrated = run(quantize(module, {"calibrate_mode": mode, **ALL_LAYERS}, calibration=calibration).module, x)
    crude = run(quantize(module, {"global_scale": 64.0, **ALL_LAYERS}).module, x)
    assert sqnr(calibrated) > 25 and sqnr(calibrated) > sqnr(crude) + 10
