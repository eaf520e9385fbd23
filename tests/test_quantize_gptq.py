"""GPTQ rounding: the same int8 steps' scales, each weight rounded up or down so that the
site's outputs on the calibration inputs move least."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int8_runs import int8_run, only_site, sqnr
from models import separable_block, separable_inputs
from pytest_tvmdeploy.quantize import QuantConfig
from pytest_tvmdeploy.quantize.rounding import InputHessian, gptq_weights
from pytest_tvmdeploy.quantize.scales import quantize_to_int8, weight_scales


@pytest.mark.parametrize("spec", [
    {"in_channels": 6, "out_channels": 4, "kernel_size": 3, "padding": (1, 2), "stride": 2},
    {"in_channels": 6, "out_channels": 6, "kernel_size": 3, "padding": 2, "dilation": 2, "groups": 3},
    {"in_channels": 6, "out_channels": 6, "kernel_size": 3, "padding": 1, "groups": 6},
], ids=["strided", "dilated-grouped", "depthwise"])
def test_the_input_hessian_sums_the_patches_each_group_of_weights_reads(spec: dict) -> None:
    conv = torch.nn.Conv2d(bias=False, **spec)
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 9))
    hessian = InputHessian(only_site(conv, (1, 6, 9, 9)))
    hessian.update(x)
    groups = spec.get("groups", 1)
    patches = torch.nn.functional.unfold(torch.from_numpy(x), 3, dilation=spec.get("dilation", 1),
                                         padding=spec["padding"], stride=spec.get("stride", 1)).numpy()
    per_group = patches.reshape(2, groups, -1, patches.shape[-1]).transpose(1, 0, 3, 2)
    per_group = per_group.reshape(groups, -1, 6 // groups * 9)
    np.testing.assert_allclose(hessian.total, np.einsum("gnk,gnl->gkl", per_group, per_group), rtol=1e-10)


def test_gptq_rounding_moves_the_outputs_less_than_rounding_to_nearest() -> None:
    rng = np.random.default_rng(1)
    linear = torch.nn.Linear(32, 8, bias=False)
    site = only_site(linear, (4, 32))
    # correlated inputs with a non-zero mean, as activations are
    x = rng.standard_normal((512, 32)) @ rng.standard_normal((32, 32)) * 0.3 + 1.0
    hessian = InputHessian(site)
    hessian.update(x)
    scales = weight_scales(site.weight, power2=False, per_channel=True, axis=1)
    nearest = quantize_to_int8(site.weight, scales, axis=1)
    gptq = gptq_weights(site, scales, hessian.total)
    assert gptq.dtype == np.int8 and np.abs(gptq.astype(int) - nearest).max() <= 2  # the same steps, nearby

    def output_error(steps: np.ndarray) -> float:
        return float(((x @ (steps * scales - site.weight)) ** 2).mean())

    assert output_error(gptq) < 0.65 * output_error(nearest), (output_error(gptq), output_error(nearest))  # ~0.52


def test_gptq_rounding_raises_the_sqnr_of_a_separable_block_with_per_tensor_weights() -> None:
    model = separable_block()
    calibration, held_out = separable_inputs(8, seed=1), separable_inputs(8, seed=2)

    def rounded_sqnr(rounding: str) -> float:
        # per-tensor scales: the narrow channels' weights take few steps, and their rounding matters
        config = QuantConfig(calibrate_mode="mse", weight_scale="max", skip_conv_layers=[], skip_dense_layer=False,
                             unsigned_activations=True, weight_rounding=rounding)
        return sqnr(*int8_run(model, config, calibration, held_out)[:2])

    nearest, gptq = rounded_sqnr("nearest"), rounded_sqnr("gptq")
    assert gptq > nearest + 5, (nearest, gptq)  # 20.6 -> 27.4 dB
