"""Searched weights (``weight_rounding="search"``): each channel's step and rounding chosen for the
least output error on the calibration inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from int8_runs import int8_run, only_site, sqnr
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize import QuantConfig
from pytest_tvmdeploy.quantize.rounding import InputHessian, gptq_weights, searched_weights
from pytest_tvmdeploy.quantize.scales import quantize_to_int8, weight_scales


def depthwise_case(seed: int = 0):
    """A 3x3 depthwise conv with edge-detector-like weights (they nearly cancel on smooth inputs,
    as the first depthwise conv of an EfficientNet does) and smooth positive inputs."""
    rng = np.random.default_rng(seed)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    edges = rng.standard_normal((6, 1, 3, 3))
    conv.weight.data = torch.from_numpy(edges - edges.mean(axis=(2, 3), keepdims=True)).float()
    site = only_site(conv, (1, 6, 10, 10))
    smooth = rng.random((4, 6, 5, 5)).repeat(2, axis=2).repeat(2, axis=3) + 1.0  # positive, locally flat
    hessian = InputHessian(site)
    hessian.update(smooth)
    return site, hessian.total


def output_error(site, steps: np.ndarray, scales: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Per channel, ``d^T H d`` of the weight error ``d`` of a depthwise site."""
    error = (steps * scales.reshape(-1, 1, 1, 1) - site.weight).reshape(len(scales), -1)
    return np.einsum("ck,ckl,cl->c", error, hessian, error)


def test_searched_weights_move_every_channels_outputs_no_more_than_gptq_and_less_in_all() -> None:
    site, hessian = depthwise_case()
    scales = weight_scales(site.weight, power2=False, per_channel=True, axis=0)
    nearest = quantize_to_int8(site.weight, scales, axis=0)
    gptq = gptq_weights(site, scales, hessian)
    searched, searched_scales = searched_weights(site, scales, hessian, per_channel=True)
    assert searched.dtype == np.int8 and np.abs(searched.astype(int)).max() <= 127
    assert searched_scales.dtype == np.float32 and searched_scales.shape == scales.shape
    assert np.all(searched_scales >= scales) and np.all(searched_scales <= scales * 1.26)  # never finer
    base = output_error(site, nearest, scales, hessian)
    found = output_error(site, searched, searched_scales, hessian)
    assert np.all(found <= output_error(site, gptq, scales, hessian) * (1 + 1e-9))
    assert found.sum() < 0.5 * base.sum(), (found.sum(), base.sum())


def test_a_small_row_gets_the_best_of_all_its_roundings_at_the_chosen_step() -> None:
    site, hessian = depthwise_case(seed=1)
    scales = weight_scales(site.weight, power2=False, per_channel=True, axis=0)
    searched, chosen = searched_weights(site, scales, hessian, per_channel=True)
    weights = site.weight.reshape(6, 9).astype(np.float64)
    for channel in range(6):
        step = float(chosen[channel])
        floors = np.floor(weights[channel] / step)
        costs = []
        for ups in itertools.product((0, 1), repeat=9):
            error = weights[channel] - (floors + ups) * step
            costs.append(error @ hessian[channel] @ error)
        found = weights[channel] - searched[channel].reshape(-1) * step
        # the search's Hessian is damped by 1 %: its choice is within that of the undamped best
        assert found @ hessian[channel] @ found <= min(costs) * 1.02 + 1e-12


def test_per_tensor_search_keeps_one_scale() -> None:
    site, hessian = depthwise_case()
    scale = weight_scales(site.weight, power2=False, per_channel=False)
    searched, chosen = searched_weights(site, scale, hessian, per_channel=False)
    assert chosen.shape == () and float(chosen) >= float(scale)
    np.testing.assert_array_equal(searched, np.clip(searched, -127, 127))


@pytest.mark.parametrize("weight_scale", ["power2", "shift"])
def test_search_needs_free_weight_scales(weight_scale: str) -> None:
    with pytest.raises(ConfigError, match="weight_rounding='search'.*weight_scale='max'"):
        QuantConfig(weight_scale=weight_scale, weight_rounding="search")


class CancellingDepthwise(torch.nn.Module):
    """Stem conv, ReLU6, then a depthwise conv whose zero-sum 3x3 kernels nearly cancel on smooth
    inputs, its BatchNorm scaling the small result back up (the first depthwise conv of an
    EfficientNet-Lite, in small), a pointwise conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        kernels = torch.randn(16, 1, 3, 3, generator=generator)
        self.depthwise.weight.data = kernels - kernels.mean(dim=(2, 3), keepdim=True)
        self.norm = torch.nn.BatchNorm2d(16)
        self.norm.running_var.data = torch.rand(16, generator=generator) * 0.01 + 1e-3
        self.pointwise = torch.nn.Conv2d(16, 24, 1)
        self.head = torch.nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu6(self.stem(x))
        x = torch.relu(self.pointwise(torch.relu(self.norm(self.depthwise(x)))))
        return self.head(x.mean(dim=(2, 3)))


def smooth_images(count: int, seed: int) -> list[np.ndarray]:
    """Images whose neighbouring pixels are alike (4x4 blocks of a random 4x4 picture, blurred)."""
    rng = np.random.default_rng(seed)
    images = rng.random((count, 1, 3, 4, 4)).repeat(4, axis=3).repeat(4, axis=4)
    for axis in (3, 4):
        images = (images + np.roll(images, 1, axis=axis) + np.roll(images, -1, axis=axis)) / 3
    return [image.astype("float32") for image in images]


def test_searched_weights_raise_the_sqnr_of_a_cancelling_depthwise_conv_above_gptq() -> None:
    torch.manual_seed(0)
    model = CancellingDepthwise().eval()
    calibration, held_out = smooth_images(8, seed=1), smooth_images(8, seed=2)

    def rounded_sqnr(rounding: str) -> float:
        config = QuantConfig(calibrate_mode="max", weight_scale="max", per_channel=True, skip_conv_layers=[],
                             skip_dense_layer=False, unsigned_activations=True, weight_rounding=rounding)
        return sqnr(*int8_run(model, config, calibration, held_out)[:2])

    nearest, gptq, searched = rounded_sqnr("nearest"), rounded_sqnr("gptq"), rounded_sqnr("search")
    assert searched > gptq > nearest, (nearest, gptq, searched)
