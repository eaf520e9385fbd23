"""int8 quantization of Relax modules: the old ``relay.quantize`` rebuilt on Relax.

Usable without pytest::

    from pytest_tvmdeploy.quantize import QuantConfig, quantize

    result = quantize(relax_module, QuantConfig(calibrate_mode="kl_divergence"), calibration=samples)
    int8_module = result.module

Pipeline: ``graph`` (fold batch norm and biases into each conv2d / matmul, find the sites) →
``calibrate`` (observe each site's input and output on calibration data, choose scales) →
``realize`` (rewrite the sites to int8 x int8 -> int32 with integer requantization).
With ``sensitivity`` or a ``budget``, ``sensitivity`` measures what each site costs alone in a
gated simulation, and a budget keeps the costliest sites in float until the outputs meet it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.targets import TargetSpec

if TYPE_CHECKING:  # TVM is imported when a model is quantized, not when the plugin loads
    import tvm

    from pytest_tvmdeploy.quantize.realize import CalibratedSites
    from pytest_tvmdeploy.quantize.sensitivity import BudgetChoice, Compiler, Sensitivity


@dataclass(frozen=True)
class QuantizedModule:
    """The integer module and what was done to each site."""

    module: tvm.IRModule
    config: QuantConfig
    sites: tuple[dict[str, Any], ...]
    calibration_samples: int
    vnni_convs: int = 0  # int8 convs rewritten into the VNNI form (uint8 NCHW16c, packed weights)
    equalized_pairs: int = 0  # (conv, depthwise conv) pairs whose channels were equalized
    keep_float: tuple[int, ...] = ()  # sites left in float: the config's and a budget's choice
    sensitivity: Sensitivity | None = None  # each site's cost alone (with sensitivity or a budget)
    budget: BudgetChoice | None = None  # what the budget chose and the simulated outputs with it

    @property
    def kept_float_by_budget(self) -> tuple[int, ...]:
        """The sites the budget (not the config's ``keep_float``) left in float."""
        return tuple(i for i in self.keep_float if i not in self.config.keep_float)

    @property
    def quantized_sites(self) -> int:
        return sum(1 for site in self.sites if site["quantized"])


def quantize(
    module: tvm.IRModule,
    config: QuantConfig | str | Mapping[str, Any] = "int8",
    *,
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
    evaluation: Iterable[Mapping[str, np.ndarray]] | None = None,
    compiler: Compiler | None = None,
) -> QuantizedModule:
    """Quantize every enabled conv2d / matmul of ``module`` (a frontend's Relax output) to int8.

    Sensitivity and a budget are measured on ``evaluation`` (default: the calibration data), in
    modules built for this CPU by ``compiler`` (default: ``tvm.compile``, functions unscheduled).
    """
    from pytest_tvmdeploy.quantize.calibrate import site_scales
    from pytest_tvmdeploy.quantize.equalize import equalize
    from pytest_tvmdeploy.quantize.graph import find_sites, prepare
    from pytest_tvmdeploy.quantize.realize import CalibratedSites, realize

    config = QuantConfig.from_value(config)
    prepared = prepare(module)
    sites = find_sites(prepared)
    _check_site_indices(config, len(sites))
    if config.measures_sensitivity and evaluation is None and calibration is not None:
        calibration = evaluation = list(calibration)  # read twice: calibration, then evaluation
    equalized = 0
    if config.cross_layer_equalization and calibration is not None:
        calibration = list(calibration)  # read twice: the channels' ranges, then the scales
        equalized = equalize(prepared, sites, calibration)
    scales, samples = site_scales(prepared, sites, config, calibration)
    sensitivity = choice = realized = None
    source = CalibratedSites(config, scales)  # the gated simulation's integers are the realized modules' ones
    if config.measures_sensitivity:
        sensitivity, choice, realized = _mixed_precision(prepared, sites, source, evaluation or (), compiler)
    chosen = choice.keep_float if choice is not None else ()
    used = source.config_keeping(chosen)
    report = tuple(_describe(site, scales[site.index], used) for site in sites)
    realized = realized if realized is not None else realize(prepared, sites, source, chosen)
    return QuantizedModule(realized, config, report, samples, keep_float=used.keep_float, sensitivity=sensitivity,
                           budget=choice, equalized_pairs=equalized)


def _mixed_precision(prepared: tvm.IRModule, sites: list[Any], source: CalibratedSites,
                     evaluation: Iterable[Mapping[str, np.ndarray]], compiler: Compiler | None = None,
                     ) -> tuple[Sensitivity, BudgetChoice | None, tvm.IRModule | None]:
    """Each site's cost alone on ``evaluation`` and, with a budget, its choice of float sites and
    the integer module keeping them (measured)."""
    from pytest_tvmdeploy.quantize.calibrate import positional
    from pytest_tvmdeploy.quantize.realize import realize
    from pytest_tvmdeploy.quantize.sensitivity import GatedModel, fit_budget, site_sensitivity

    config = source.config
    names = [param.name for param in prepared["main"].params]
    inputs = [positional(sample, names, index) for index, sample in enumerate(evaluation)]
    if not inputs:
        raise ConfigError(f"quantize: {config.calibration_purpose} needs evaluation inputs: none were given")
    model = GatedModel(prepared, sites, source, inputs, compiler)
    sensitivity = site_sensitivity(model)
    if config.budget_target is None:
        return sensitivity, None, None
    choice, realized = fit_budget(model, sensitivity, *config.budget_target,
                                  lambda chosen: realize(prepared, sites, source, chosen))
    return sensitivity, choice, realized


def _check_site_indices(config: QuantConfig, count: int) -> None:
    for name in ("keep_float", "wide_inputs"):
        beyond = [index for index in getattr(config, name) if index >= count]
        if beyond:
            raise ConfigError(f"quantize: {name} names site(s) {beyond}, but the model has {count} quantizable "
                              f"site(s) (indices 0..{count - 1})")


def quantize_for_target(
    module: tvm.IRModule,
    config: QuantConfig | str | Mapping[str, Any],
    target: TargetSpec,
    *,
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
    evaluation: Iterable[Mapping[str, np.ndarray]] | None = None,
    compiler: Compiler | None = None,
) -> QuantizedModule:
    """:func:`quantize`, then, on a CPU with VNNI, every int8 conv that fits it rewritten into the
    VNNI form (uint8 NCHW16c activations, packed weights): the same numbers, ~3x faster tuned."""
    from pytest_tvmdeploy.quantize.vnni import target_has_vnni, use_vnni_convs

    result = quantize(module, config, calibration=calibration, evaluation=evaluation, compiler=compiler)
    if not target_has_vnni(target):
        return result
    rewritten, count = use_vnni_convs(result.module)
    return replace(result, module=rewritten, vnni_convs=count)


def _describe(site: Any, scales: Any, config: QuantConfig) -> dict[str, Any]:
    from pytest_tvmdeploy.quantize.realize import site_enabled

    return {
        "site": site.index,
        "op": site.kind,
        "ordinal": site.ordinal,
        "weight_shape": list(site.weight.shape),
        "quantized": site_enabled(site, config),
        "kept_float": site.index in config.keep_float,
        "input_scale": scales.input,
        "output_scale": scales.output,
        "input_zero_point": scales.input_zero_point,
        "input_bits": scales.input_bits,
        "output_zero_point": scales.output_zero_point,
    }


__all__ = ["QuantConfig", "QuantizedModule", "quantize", "quantize_for_target"]
