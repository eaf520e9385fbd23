"""Cross-layer equalization: the float model computes what it did, the int8 one gains where a
conv's output channels span very different ranges, and only pairs it can scale are touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int8_runs import int8_run, relax_of, sqnr
from models import seeded
from pytest_tvmdeploy.quantize.calibrate import watch_sites
from pytest_tvmdeploy.quantize.equalize import HEADROOM, MAX_SCALE, channel_scales, equalize
from pytest_tvmdeploy.quantize.graph import find_sites, prepare

ALL_LAYERS = {"skip_conv_layers": [], "per_channel": True, "weight_scale": "max", "calibrate_mode": "max"}


class Separable(torch.nn.Module):
    """stem conv -> ReLU6 -> (zero padding) depthwise -> ReLU -> 1x1 conv (+ a residual branch):
    a MobileNet-like chain; with ``same_padding`` the depthwise conv pads first, as TF-style
    "same" convs (EfficientNet-Lite's) do."""

    def __init__(self, residual: bool = False, same_padding: bool = False) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=0 if same_padding else 1, groups=16)
        self.project = torch.nn.Conv2d(16, 8, 1)
        self.residual, self.same_padding = residual, same_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.relu6(self.stem(x))
        padded = torch.nn.functional.pad(y, (1, 1, 1, 1)) if self.same_padding else y
        z = torch.relu(self.depthwise(padded))
        return self.project(z) + (y[:, :8] if self.residual else 0)


def narrow_stem(model: Separable) -> Separable:
    """Half the stem's channels 10x narrower and the depthwise filters that read them 10x larger
    (as trained networks have them: the float function as wide as before, its int8 steps not)."""
    with torch.no_grad():
        model.stem.weight[8:] *= 0.1
        model.stem.bias[8:] *= 0.1
        model.depthwise.weight[8:] *= 10
    return model


def images(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, 1.0, (1, 3, 12, 12)).astype("float32") for _ in range(count)]


@pytest.mark.parametrize("same_padding", [False, True], ids=["conv-pads", "pad-first"])
def test_equalized_float_model_computes_what_it_did(same_padding: bool) -> None:
    model = narrow_stem(seeded(Separable(same_padding=same_padding)))
    calibration = images(6, seed=1)
    prepared = prepare(relax_of(model, calibration[0]))
    sites = find_sites(prepared)
    before = [s.weight.copy() for s in sites]
    assert equalize(prepared, sites, [{"x": x} for x in calibration]) == 1  # stem -> depthwise
    assert [not np.allclose(s.weight, w) for s, w in zip(sites, before)] == [True, True, False]
    stem_ranges = np.zeros(16)
    for x, watched in zip(calibration, watch_sites(prepared, sites, [{"x": x} for x in calibration])):
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(watched[-1], expected, rtol=1e-4, atol=1e-5)  # the model's output
        stem_ranges = np.maximum(stem_ranges, watched[1].max(axis=(0, 2, 3)))
    # the narrow channels stretched to half the widest's range; the wide ones kept (behind ReLU6, never shrunk)
    assert stem_ranges[8:].min() >= stem_ranges.max() / HEADROOM * (1 - 1e-5)
    assert stem_ranges[8:].max() < 0.75 * stem_ranges.max()


def test_equalization_gains_int8_accuracy_where_channels_are_uneven() -> None:
    model = narrow_stem(seeded(Separable()))
    calibration, held_out = images(8, seed=1), images(8, seed=2)
    plain, expected, _ = int8_run(model, ALL_LAYERS, calibration, held_out)
    equalized, _, result = int8_run(model, {**ALL_LAYERS, "cross_layer_equalization": True}, calibration, held_out)
    assert result.equalized_pairs == 1
    gained = sqnr(equalized, expected) - sqnr(plain, expected)
    assert gained > 4, (sqnr(plain, expected), sqnr(equalized, expected))


def test_a_conv_whose_output_is_also_read_elsewhere_is_not_scaled() -> None:
    model = narrow_stem(seeded(Separable(residual=True)))
    calibration = images(4, seed=1)
    prepared = prepare(relax_of(model, calibration[0]))
    sites = find_sites(prepared)
    before = [s.weight.copy() for s in sites]
    assert equalize(prepared, sites, [{"x": x} for x in calibration]) == 0  # the residual reads the stem too
    for site, weight in zip(sites, before):
        np.testing.assert_array_equal(site.weight, weight)


@pytest.mark.parametrize("clipped", [False, True])
def test_channel_scales(clipped: bool) -> None:
    ranges = np.array([6.0, 3.0, 1.5, 0.03, 0.0])
    expected = [1.0 if clipped else 0.5, 1.0, 2.0, MAX_SCALE, 1.0]  # to half the widest; capped; silent stays
    np.testing.assert_allclose(channel_scales(ranges, clipped=clipped), expected)
