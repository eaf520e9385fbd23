"""int8 quantization of Relax modules: the old ``relay.quantize`` rebuilt on Relax.

Usable without pytest::

    from pytest_tvmdeploy.quantize import QuantConfig, quantize

    result = quantize(relax_module, QuantConfig(calibrate_mode="kl_divergence"), calibration=samples)
    int8_module = result.module

Pipeline: ``graph`` (fold batch norm and biases into each conv2d / matmul, find the sites) →
``calibrate`` (observe each site's input and output on calibration data, choose scales) →
``realize`` (rewrite the sites to int8 x int8 -> int32 with integer requantization).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.targets import TargetSpec

if TYPE_CHECKING:  # TVM is imported when a model is quantized, not when the plugin loads
    import tvm


@dataclass(frozen=True)
class QuantizedModule:
    """The integer module and what was done to each site."""

    module: tvm.IRModule
    config: QuantConfig
    sites: tuple[dict[str, Any], ...]
    calibration_samples: int
    vnni_convs: int = 0  # int8 convs rewritten into the VNNI form (uint8 NCHW16c, packed weights)

    @property
    def quantized_sites(self) -> int:
        return sum(1 for site in self.sites if site["quantized"])


def quantize(
    module: tvm.IRModule,
    config: QuantConfig | str | Mapping[str, Any] = "int8",
    *,
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
) -> QuantizedModule:
    """Quantize every enabled conv2d / matmul of ``module`` (a frontend's Relax output) to int8."""
    from pytest_tvmdeploy.quantize.calibrate import site_scales
    from pytest_tvmdeploy.quantize.graph import find_sites, prepare
    from pytest_tvmdeploy.quantize.realize import realize

    config = QuantConfig.from_value(config)
    prepared = prepare(module)
    sites = find_sites(prepared)
    scales, samples = site_scales(prepared, sites, config, calibration)
    report = tuple(_describe(site, scales[site.index], config) for site in sites)
    return QuantizedModule(realize(prepared, sites, scales, config), config, report, samples)


def quantize_for_target(
    module: tvm.IRModule,
    config: QuantConfig | str | Mapping[str, Any],
    target: TargetSpec,
    *,
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
) -> QuantizedModule:
    """:func:`quantize`, then, on a CPU with VNNI, every int8 conv that fits it rewritten into the
    VNNI form (uint8 NCHW16c activations, packed weights): the same numbers, ~3x faster tuned."""
    from pytest_tvmdeploy.quantize.vnni import target_has_vnni, use_vnni_convs

    result = quantize(module, config, calibration=calibration)
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
        "input_scale": scales.input,
        "output_scale": scales.output,
        "input_zero_point": scales.input_zero_point,
        "output_zero_point": scales.output_zero_point,
    }


__all__ = ["QuantConfig", "QuantizedModule", "quantize", "quantize_for_target"]
