"""Bias correction takes away the mean error int8 weights add to each output channel, and the
``mse`` threshold is the one of least squared error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tvm.relax.frontend.torch import from_exported_program

from int8_runs import int8_run, sqnr
from models import separable_block, separable_inputs
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize import QuantConfig, quantize
from pytest_tvmdeploy.quantize.graph import find_sites, prepare
from pytest_tvmdeploy.quantize.realize import weight_error_on_mean
from pytest_tvmdeploy.quantize.thresholds import ActivationObserver, mse_threshold


def test_the_weight_error_on_the_mean_input_is_what_the_layer_adds_to_a_constant_input() -> None:
    rng = np.random.default_rng(0)
    means = rng.random(24)
    constant = torch.from_numpy(np.broadcast_to(means[None, :, None, None], (1, 24, 5, 5)).copy())
    for groups, out_channels in ((1, 16), (24, 24), (4, 8)):
        error = rng.standard_normal((out_channels, 24 // groups, 3, 3))
        seen = torch.nn.functional.conv2d(constant, torch.from_numpy(error), groups=groups)[0, :, 0, 0].numpy()
        conv = torch.nn.Conv2d(24, out_channels, 3, groups=groups, bias=False)
        module = from_exported_program(torch.export.export(conv.eval(), (torch.zeros(1, 24, 5, 5),)))
        (site,) = find_sites(prepare(module))
        np.testing.assert_allclose(weight_error_on_mean(site, error, means), seen, rtol=1e-10)
    matmul_error = rng.standard_normal((24, 6))
    linear = torch.nn.Linear(24, 6).eval()
    (site,) = find_sites(prepare(from_exported_program(torch.export.export(linear, (torch.zeros(2, 24),)))))
    np.testing.assert_allclose(weight_error_on_mean(site, matmul_error, means), means @ matmul_error, rtol=1e-10)


def test_bias_correction_removes_most_of_the_mean_error_of_int8_weights() -> None:
    model = separable_block()
    calibration, held_out = separable_inputs(8, seed=1), separable_inputs(8, seed=2)

    def errors(bias_correction: bool) -> tuple[float, float]:
        """The mean over channels of |mean error| of each logit, and the SQNR in dB."""
        # per-tensor weight scales: the narrow channels' weights round coarsely, and that error
        # adds up into a shift of each output channel (11x the corrected one on this block)
        config = QuantConfig(calibrate_mode="max", weight_scale="max", skip_conv_layers=[], skip_dense_layer=False,
                             bias_correction=bias_correction)
        outputs, expected, result = int8_run(model, config, calibration, held_out)
        assert result.quantized_sites == 4
        return float(np.abs((outputs - expected).mean(axis=0)).mean()), sqnr(outputs, expected)

    (plain_shift, plain_sqnr), (corrected_shift, corrected_sqnr) = errors(False), errors(True)
    assert corrected_shift < 0.25 * plain_shift, (plain_shift, corrected_shift)
    assert corrected_sqnr > plain_sqnr + 10, (plain_sqnr, corrected_sqnr)  # 20.2 -> 35.5 dB


def test_bias_correction_needs_calibration_data_even_with_a_global_scale() -> None:
    module = from_exported_program(torch.export.export(separable_block(), (torch.zeros(1, 8, 12, 12),)))
    config = QuantConfig(calibrate_mode="global_scale", bias_correction=True)
    assert config.needs_calibration and config.label == "int8-global_scale-power2-biascorrected"
    with pytest.raises(ConfigError, match="calibrate_mode='global_scale' with bias_correction needs calibration data"):
        quantize(module, config)


@pytest.mark.parametrize("draw", ["laplace", "normal", "relu6"])
def test_the_mse_threshold_has_the_least_squared_error_of_the_candidates(draw: str) -> None:
    rng = np.random.default_rng(0)
    data = {"laplace": rng.laplace(size=100_000), "normal": rng.normal(size=100_000),
            "relu6": np.clip(rng.normal(1, 2, 100_000), 0, 6)}[draw]
    observer = ActivationObserver(draw)
    observer.update(data)
    counts, edges = observer.histogram
    counts[0] -= observer.zeros

    def squared_error(threshold: float) -> float:
        step = threshold / 127
        return float(((np.clip(np.round(data / step), -127, 127) * step - data) ** 2).mean())

    chosen = mse_threshold(counts, edges)
    best = min(squared_error(t) for t in edges[1:][::4])
    assert squared_error(chosen) <= best * 1.002
    if draw == "laplace":  # a long tail: clipping part of it pays
        assert chosen < 0.85 * observer.max_abs


def test_the_power_of_two_mse_threshold_is_the_best_power_of_two() -> None:
    rng = np.random.default_rng(1)
    data = rng.laplace(size=50_000) * 3.0
    observer = ActivationObserver("laplace")
    observer.update(data)
    counts, edges = observer.histogram

    def squared_error(threshold: float) -> float:
        step = threshold / 127
        return float(((np.clip(np.round(data / step), -127, 127) * step - data) ** 2).mean())

    chosen = mse_threshold(counts, edges, power2=True)
    assert math.frexp(chosen)[0] == 0.5  # a power of two
    powers = [2.0 ** k for k in range(-6, 8)]
    assert chosen == min(powers, key=squared_error)
    assert chosen < observer.max_abs  # rounding the max up to a power of two would clip nothing and lose a bit
