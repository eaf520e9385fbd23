"""Per-site sensitivity and mixed precision: what each int8 site costs alone, measured in one
gated simulation, and a budget that keeps the costliest sites in float."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int8_runs import int8_run, relax_of, sqnr
from models import separable_block, separable_inputs
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize import QuantConfig, quantize

#: Every site int8, per-tensor weights: the batch-norm-folded 1x1 expand conv then has channels
#: of very different scales sharing one step, which makes it by far the costliest site.
ALL_LAYERS = {"calibrate_mode": "mse", "weight_scale": "max", "skip_conv_layers": [], "skip_dense_layer": False}


@pytest.fixture(scope="module")
def block_data() -> tuple[list[np.ndarray], list[np.ndarray]]:
    return separable_inputs(8, seed=1), separable_inputs(8, seed=2)


def test_each_site_alone_costs_what_the_realized_int8_site_costs(block_data) -> None:
    calibration, held_out = block_data
    model = separable_block()
    _, _, measured = int8_run(model, QuantConfig(sensitivity=True, **ALL_LAYERS), calibration, held_out,
                              evaluation=held_out)
    sensitivity = measured.sensitivity
    assert sensitivity is not None and sensitivity.samples == 8
    assert [cost.site for cost in sensitivity.sites] == [0, 1, 2, 3]
    assert [cost.op for cost in sensitivity.sites] == ["nn.conv2d"] * 3 + ["matmul"]
    assert measured.keep_float == () and measured.quantized_sites == 4  # sensitivity alone changes nothing
    real = {}
    for cost in sensitivity.sites:
        others = [other.site for other in sensitivity.sites if other.site != cost.site]
        outputs, expected, alone = int8_run(model, QuantConfig(keep_float=others, **ALL_LAYERS), calibration, held_out)
        assert alone.quantized_sites == 1 and alone.keep_float == tuple(others)
        real[cost.site] = sqnr(outputs, expected)
        assert cost.sqnr_db == pytest.approx(real[cost.site], abs=0.05), cost
        assert cost.agreement == 1.0
    assert sensitivity.most_damaging() == sorted(real, key=real.get)
    assert real[0] < min(real[1], real[2], real[3]) - 10  # the per-tensor expand conv
    table = sensitivity.table().splitlines()
    assert table[0].split()[:3] == ["site", "op", "weight"] and table[1].split()[:3] == ["0", "nn.conv2d", "24x8x1x1"]


def test_a_budget_keeps_the_costliest_sites_float_until_the_int8_outputs_meet_it(block_data) -> None:
    calibration, _ = block_data
    model = separable_block()
    all_int8, expected, _ = int8_run(model, QuantConfig(**ALL_LAYERS), calibration, calibration)
    assert sqnr(all_int8, expected) < 25
    outputs, expected, result = int8_run(model, QuantConfig(budget="sqnr_db>=30", **ALL_LAYERS), calibration,
                                         calibration)
    choice = result.budget
    assert result.keep_float == (0,) == choice.keep_float == result.kept_float_by_budget
    assert result.quantized_sites == 3 and [s["kept_float"] for s in result.sites] == [True, False, False, False]
    assert choice.met and choice.builds == 1 and choice.metric == "sqnr_db" and choice.target == 30
    # the realized module was measured, not just simulated: it is what quantize returns
    assert sqnr(outputs, expected) == pytest.approx(choice.quality.sqnr_db, abs=0.05)
    assert sqnr(outputs, expected) >= 30
    assert choice.simulated.sqnr_db == pytest.approx(choice.quality.sqnr_db, abs=0.5)
    # a budget all-int8 outputs meet keeps nothing in float; one nothing int8 meets keeps everything
    met = int8_run(model, QuantConfig(budget="agreement>=1", **ALL_LAYERS), calibration, calibration)[2]
    assert met.keep_float == () and met.budget.met and met.budget.quality.agreement == 1.0
    unreachable = int8_run(model, QuantConfig(budget=300, **ALL_LAYERS), calibration, calibration)[2]
    assert unreachable.keep_float == (0, 1, 2, 3) and unreachable.quantized_sites == 0


def test_keep_float_adds_to_the_budgets_choice(block_data) -> None:
    calibration, _ = block_data
    result = int8_run(separable_block(), QuantConfig(keep_float=[3], budget=30, **ALL_LAYERS), calibration,
                      calibration)[2]
    assert result.keep_float == (0, 3) and result.kept_float_by_budget == (0,)
    assert [cost.site for cost in result.sensitivity.sites] == [0, 1, 2]  # a float site has no cost to measure


def test_budget_and_keep_float_are_validated() -> None:
    assert QuantConfig(budget=25).budget == "sqnr_db>=25"
    assert QuantConfig(budget=" agreement >= 0.95 ").budget_target == ("agreement", 0.95)
    assert QuantConfig(keep_float=[4, 1, 4]).keep_float == (1, 4)
    assert QuantConfig(budget="sqnr_db>=25").needs_calibration and QuantConfig(sensitivity=True).needs_calibration
    assert QuantConfig(keep_float=[2], budget=20).label.endswith("-float2-budget[sqnr_db>=20]")
    for bad in ("25", "top5>=0.9", "agreement>=1.5", "sqnr_db>=x", float("nan"), True):
        with pytest.raises(ConfigError, match="budget=.* must be a number of dB"):
            QuantConfig(budget=bad)
    with pytest.raises(ConfigError, match="keep_float has \\[-1\\]: the indices must be ints >= 0"):
        QuantConfig(keep_float=[-1])
    with pytest.raises(ConfigError, match="sensitivity=1 must be True or False"):
        QuantConfig(sensitivity=1)


def test_bad_site_indices_and_missing_data_name_the_cause(block_data) -> None:
    calibration, _ = block_data
    module = relax_of(separable_block(), calibration[0])
    with pytest.raises(ConfigError, match=r"keep_float names site\(s\) \[7\], but the model has 4 quantizable "
                                          r"site\(s\) \(indices 0..3\)"):
        quantize(module, QuantConfig(keep_float=[1, 7]))
    with pytest.raises(ConfigError, match="calibrate_mode='global_scale' with budget='sqnr_db>=20' needs "
                                          "calibration data"):
        quantize(module, QuantConfig(budget=20))
    with pytest.raises(ConfigError, match="needs evaluation inputs: none were given"):
        quantize(module, QuantConfig(sensitivity=True, calibrate_mode="max"),
                 calibration=[{"x": x} for x in calibration], evaluation=[])


class ClassIds(torch.nn.Module):
    """A conv whose only output is the arg-max class per pixel (int64)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).argmax(dim=1)


def test_a_model_without_float_outputs_has_no_sensitivity_to_measure(block_data) -> None:
    calibration, _ = block_data
    module = relax_of(ClassIds().eval(), calibration[0])
    with pytest.raises(ConfigError, match="the model has none \\(only integer or bool outputs\\)"):
        quantize(module, QuantConfig(sensitivity=True, calibrate_mode="max", skip_conv_layers=[]),
                 calibration=[{"x": x} for x in calibration])


@pytest.mark.parametrize("long_runs", [False, True], ids=["short-runs", "long-runs"])
def test_a_simulation_predicted_long_is_rebuilt_with_the_scheduling_compiler(block_data, monkeypatch,
                                                                             long_runs: bool) -> None:
    """The given compiler (here the package's sampled-schedule build) is used only when the runs
    are predicted to take long; the costs it measures are the unscheduled build's."""
    from pytest_tvmdeploy.quantize import sensitivity
    from pytest_tvmdeploy.tuning import sampled_host_build

    calibration, _ = block_data
    module = relax_of(separable_block(), calibration[0])
    samples = [{"x": x} for x in calibration]
    config = QuantConfig(budget="sqnr_db>=30", **ALL_LAYERS)
    plain = quantize(module, config, calibration=samples)
    built: list[int] = []

    def scheduling(relax_module):
        built.append(1)
        return sampled_host_build(relax_module)

    if long_runs:
        monkeypatch.setattr(sensitivity, "SCHEDULE_ABOVE_SECONDS", 0.0)
    scheduled = quantize(module, config, calibration=samples, compiler=scheduling)
    # the gated simulation, then each integer module the budget measured
    assert len(built) == (1 + scheduled.budget.builds if long_runs else 0)
    assert scheduled.keep_float == plain.keep_float
    for ours, theirs in zip(scheduled.sensitivity.sites, plain.sensitivity.sites):
        assert ours.sqnr_db == pytest.approx(theirs.sqnr_db, abs=0.01)
        assert ours.input_sqnr_db == pytest.approx(theirs.input_sqnr_db, abs=0.01)


def test_each_sites_integers_are_computed_once_for_the_simulation_and_every_realized_module(block_data,
                                                                                          monkeypatch) -> None:
    """GPTQ weights take seconds a site on a real network: the gated simulation and each module a
    budget realizes share them, and the module is the one built without sharing."""
    from pytest_tvmdeploy.quantize import realize

    calibration, held_out = block_data
    model = separable_block()
    computed: list[int] = []
    compute = realize._site_integers

    def counted(site, *args):
        computed.append(site.index)
        return compute(site, *args)

    monkeypatch.setattr(realize, "_site_integers", counted)
    shared, _, result = int8_run(model, QuantConfig(budget="sqnr_db>=30", weight_rounding="gptq", **ALL_LAYERS),
                                 calibration, held_out)
    assert result.budget.builds >= 1 and result.keep_float == (0,)
    assert sorted(computed) == [0, 1, 2, 3]  # once each, though simulated and realized
    computed.clear()
    alone, _, _ = int8_run(model, QuantConfig(keep_float=[0], weight_rounding="gptq", **ALL_LAYERS), calibration,
                           held_out)
    assert sorted(computed) == [1, 2, 3]
    np.testing.assert_array_equal(shared, alone)
