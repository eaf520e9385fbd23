"""Unsigned activations: an activation calibration never saw negative gets 255 steps over
[0, T], stored as int8 with zero point -128, and the int8 graph keeps that meaning everywhere."""

from __future__ import annotations

import copy

import numpy as np
import torch

from int8_runs import int8_run, sqnr
from models import ConvReluPoolConv, seeded
from pytest_tvmdeploy.quantize import QuantConfig
from pytest_tvmdeploy.quantize.scales import quantize_to_int8, weight_scales

ALL_LAYERS = {"skip_conv_layers": [], "skip_dense_layer": False, "per_channel": True, "weight_scale": "max"}


class ReluAfterPool(torch.nn.Module):
    """conv -> relu -> max-pool -> relu -> conv: the second relu runs on int8 data with a zero point."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.second = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(torch.nn.functional.max_pool2d(torch.relu(self.first(x)), 2)))


def images(count: int, seed: int, low: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, 2.0, (1, 3, 16, 16)).astype("float32") for _ in range(count)]


def with_int8_weights(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each conv's weights rounded as the quantizer rounds them (per channel, max):
    against it, what is left of the error is the activations'."""
    rounded = copy.deepcopy(model)
    for conv in (m for m in rounded.modules() if isinstance(m, torch.nn.Conv2d)):
        weights = conv.weight.detach().numpy().astype(np.float64)
        scales = weight_scales(weights, power2=False, per_channel=True)
        steps = quantize_to_int8(weights, scales, axis=0).astype(np.float64)
        conv.weight.data = torch.from_numpy((steps * scales.reshape(-1, 1, 1, 1)).astype("float32"))
    return rounded


def test_unsigned_activations_halve_the_step_and_pad_with_their_zero_point() -> None:
    model = seeded(ConvReluPoolConv())
    calibration, held_out = images(8, seed=1), images(8, seed=2)
    with torch.no_grad():
        expected = np.concatenate([with_int8_weights(model)(torch.from_numpy(x)).numpy() for x in held_out])
    signed_out, _, signed_result = int8_run(model, QuantConfig(calibrate_mode="max", **ALL_LAYERS),
                                                calibration, held_out)
    unsigned_out, _, unsigned_result = int8_run(
        model, QuantConfig(calibrate_mode="max", unsigned_activations=True, **ALL_LAYERS), calibration, held_out)
    sites, signed_sites = unsigned_result.sites, signed_result.sites
    # the photo-like input, the relu'd conv and the pooled values it feeds are all unsigned
    assert [(s["input_zero_point"], s["output_zero_point"]) for s in sites] == [(-128, -128), (-128, -128)]
    assert [(s["input_zero_point"], s["output_zero_point"]) for s in signed_sites] == [(0, 0), (0, 0)]
    assert sites[0]["input_scale"] < 0.51 * signed_sites[0]["input_scale"]  # 2/255 against 2/127
    gained = sqnr(unsigned_out, expected) - sqnr(signed_out, expected)
    assert gained > 4.5, (sqnr(signed_out, expected), sqnr(unsigned_out, expected))  # one more bit: ~6 dB
    # both convs pad: a zero-padded border would read 128 steps where the input is 0
    border = np.ones(expected.shape[2:], bool)
    border[1:-1, 1:-1] = False
    assert sqnr(unsigned_out[..., border], expected[..., border]) > sqnr(unsigned_out, expected) - 3


def test_a_relu_on_unsigned_int8_keeps_the_values_at_the_zero_point() -> None:
    model = seeded(ReluAfterPool(), seed=4)
    calibration, held_out = images(8, seed=1), images(8, seed=2)
    outputs, expected, result = int8_run(
        model, QuantConfig(calibrate_mode="max", unsigned_activations=True, **ALL_LAYERS), calibration, held_out)
    assert result.sites[1]["input_zero_point"] == -128
    assert sqnr(outputs, expected) > 30  # a plain relu on the stored values would zero half the steps


def test_an_activation_seen_negative_stays_signed() -> None:
    model = seeded(ConvReluPoolConv())
    calibration, held_out = images(8, seed=1, low=-1.0), images(4, seed=2, low=-1.0)
    outputs, expected, result = int8_run(
        model, QuantConfig(calibrate_mode="max", unsigned_activations=True, **ALL_LAYERS), calibration, held_out)
    assert result.sites[0]["input_zero_point"] == 0 and result.sites[1]["input_zero_point"] == -128
    assert sqnr(outputs, expected) > 30
