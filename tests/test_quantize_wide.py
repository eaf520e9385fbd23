"""Wide inputs: a site reading its input at 16 bits as two int8 digits computes what the float site
does on the input rounded to 16-bit steps, and gains where the 8-bit input's rounding dominates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int8_runs import int8_run, relax_of, sqnr
from models import seeded
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize import QuantConfig, quantize
from pytest_tvmdeploy.quantize.calibrate import site_scales
from pytest_tvmdeploy.quantize.graph import find_sites, prepare
from pytest_tvmdeploy.quantize.realize import CalibratedSites
from pytest_tvmdeploy.quantize.scales import WIDE_HEADROOM, WIDE_QMAX
from pytest_tvmdeploy.quantize.sensitivity import GatedModel, host_compile
from pytest_tvmdeploy.vm import relax_vm, tvm_tensors

ALL_LAYERS = {"skip_conv_layers": [], "per_channel": True, "weight_scale": "max", "calibrate_mode": "max",
              "skip_dense_layer": False}


class EdgeDetector(torch.nn.Module):
    """stem conv -> ReLU6 -> depthwise conv with zero-sum 3x3 kernels and a large gain -> 1x1 conv:
    on smooth images the depthwise sums nearly cancel, so the rounding of its input is amplified
    where the signal is not (the first depthwise conv of EfficientNet-Lite behaves so)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.project = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.depthwise(torch.nn.functional.relu6(self.stem(x))))


def edge_detector() -> EdgeDetector:
    """Each depthwise kernel the difference of two neighbours, times 20: zero-sum and exact in
    int8 (+-127 steps), so what the site loses is its input's rounding alone."""
    model = seeded(EdgeDetector())
    with torch.no_grad():
        model.depthwise.weight.zero_()
        for channel in range(8):
            row, column = divmod(channel % 4, 2)
            model.depthwise.weight[channel, 0, 1, 1] = 20.0
            model.depthwise.weight[channel, 0, row * 2, column * 2] = -20.0
    return model


def smooth_images(count: int, seed: int) -> list[np.ndarray]:
    """Low-frequency images (bilinear ramps plus a little noise), where edges are rare."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    images = []
    for _ in range(count):
        slopes = rng.uniform(-1.0, 1.0, (3, 2)).astype(np.float32)
        ramp = slopes[:, :1, None] * grid[None, :, None] + slopes[:, 1:, None] * grid[None, None, :]
        images.append((ramp + rng.normal(0.0, 0.01, ramp.shape)).astype(np.float32)[None])
    return images


@pytest.mark.parametrize("others", ["float", "int8"])
def test_wide_input_gains_where_the_input_rounding_is_amplified(others: str) -> None:
    """The depthwise site alone: its error was its 8-bit input's (its weights are exact), so 16
    bits take it far below; with the 1x1 conv int8 too, what is left is that conv's."""
    model = edge_detector()
    calibration, held_out = smooth_images(8, seed=1), smooth_images(8, seed=2)
    config = {**ALL_LAYERS, "keep_float": [0, 2] if others == "float" else [0]}
    plain, expected, _ = int8_run(model, config, calibration, held_out)
    wide, _, result = int8_run(model, {**config, "wide_inputs": [1]}, calibration, held_out)
    assert [site["input_bits"] for site in result.sites] == [8, 16, 8]
    gained = sqnr(wide, expected) - sqnr(plain, expected)
    assert gained > (30 if others == "float" else 3), (sqnr(plain, expected), sqnr(wide, expected))


def test_several_wide_inputs_the_models_own_among_them_each_read_16_bits() -> None:
    """Every site's input wide, the image itself (site 0) too: each site reads 16-bit steps, and the
    1x1 conv's 8-bit input, the error left with the depthwise input alone wide, is gone."""
    model = edge_detector()
    calibration, held_out = smooth_images(8, seed=1), smooth_images(8, seed=2)
    one, expected, _ = int8_run(model, {**ALL_LAYERS, "wide_inputs": [1]}, calibration, held_out)
    every, _, result = int8_run(model, {**ALL_LAYERS, "wide_inputs": [0, 1, 2]}, calibration, held_out)
    assert [site["input_bits"] for site in result.sites] == [16, 16, 16]
    assert result.quantized_sites == 3 and result.keep_float == ()
    assert sqnr(every, expected) > sqnr(one, expected) + 3, (sqnr(one, expected), sqnr(every, expected))


def test_wide_site_computes_the_float_site_on_16_bit_steps() -> None:
    """Only the wide site quantized: its integer result equals the gated simulation (input
    rounded to ``WIDE_HEADROOM * max / WIDE_QMAX`` steps, weights and bias dequantized) up to float rounding."""
    model = edge_detector()
    calibration = [{"x": x} for x in smooth_images(4, seed=1)]
    module = relax_of(model, calibration[0]["x"])
    config = QuantConfig(**{**ALL_LAYERS, "wide_inputs": [1], "keep_float": [0, 2]})
    result = quantize(module, config, calibration=calibration)
    prepared = prepare(module)
    sites = find_sites(prepared)
    scales, _ = site_scales(prepared, sites, config, calibration)
    assert scales[1].input_bits == 16 and scales[1].input_zero_point == 0
    seen_max = max(float(np.abs(watched).max()) for watched in _depthwise_inputs(model, calibration))
    assert scales[1].input == pytest.approx(WIDE_HEADROOM * seen_max / WIDE_QMAX, rel=1e-6)
    simulated = GatedModel(prepared, sites, CalibratedSites(config, scales), [[s["x"]] for s in calibration])
    simulated = simulated.outputs([1])
    vm = relax_vm(host_compile(result.module))
    for sample, expected in zip(calibration, simulated):
        actual = vm["main"](*tvm_tensors([sample["x"]]))[0].numpy()
        np.testing.assert_allclose(actual, expected[0], rtol=1e-4, atol=1e-4 * np.abs(expected[0]).max())


@pytest.mark.parametrize("wide", [False, True], ids=["int8", "wide"])
def test_sensitivity_splits_the_costliest_sites_cost_into_input_and_weights(wide: bool) -> None:
    """The depthwise site's weights are exact in int8: its cost is its input's, which a wide
    input takes away; the split shows both."""
    model = edge_detector()
    calibration = [{"x": x} for x in smooth_images(4, seed=1)]
    config = {**ALL_LAYERS, "sensitivity": True, "wide_inputs": [1] if wide else []}
    result = quantize(relax_of(model, calibration[0]["x"]), config, calibration=calibration)
    costs = {cost.site: cost for cost in result.sensitivity.sites}
    depthwise = costs[1]
    assert depthwise.weights_sqnr_db > 60  # only the bias rounds
    if wide:
        assert depthwise.input_sqnr_db > 60 and depthwise.sqnr_db > 60
    else:
        assert depthwise.input_sqnr_db < 40 and abs(depthwise.sqnr_db - depthwise.input_sqnr_db) < 0.5
    for cost in costs.values():  # the split of site 0 and 2: each part costs less than both together
        assert cost.input_sqnr_db >= cost.sqnr_db - 0.5 and cost.weights_sqnr_db >= cost.sqnr_db - 0.5
    header, *rows = result.sensitivity.table().splitlines()
    assert header.split()[-4:] == ["input", "dB", "weights", "dB"]
    row = next(row.split() for row in rows if row.split()[0] == "1")
    assert row[-2:] == [f"{depthwise.input_sqnr_db:.2f}", f"{depthwise.weights_sqnr_db:.2f}"]


def _depthwise_inputs(model: EdgeDetector, calibration: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    with torch.no_grad():
        return [torch.nn.functional.relu6(model.stem(torch.from_numpy(s["x"]))).numpy() for s in calibration]


def test_wide_inputs_name_existing_sites() -> None:
    model = edge_detector()
    calibration = [{"x": x} for x in smooth_images(2, seed=1)]
    with pytest.raises(ConfigError, match=r"wide_inputs names site\(s\) \[7\], but the model has 3"):
        quantize(relax_of(model, calibration[0]["x"]), {**ALL_LAYERS, "wide_inputs": [7]}, calibration=calibration)
    assert QuantConfig(wide_inputs=[1]).label.endswith("-wide1")
    with pytest.raises(ConfigError, match="wide_inputs"):
        QuantConfig(wide_inputs=[-1])
