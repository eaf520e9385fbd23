"""Run the float model on calibration data and turn what each site sees into int8 scales."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tvm

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.quantize.graph import Site, emit_float
from pytest_tvmdeploy.quantize.realize import SiteScales
from pytest_tvmdeploy.quantize.scales import activation_scale
from pytest_tvmdeploy.quantize.thresholds import ActivationObserver, threshold
from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors


def site_scales(
    prepared: tvm.IRModule,
    sites: list[Site],
    config: QuantConfig,
    calibration: Iterable[Mapping[str, np.ndarray]] | None,
) -> tuple[dict[int, SiteScales], int]:
    """Scales for every site, and how many calibration samples were used.

    ``global_scale`` needs no data; the other modes run the float module (with every site's
    input and output as extra results) on each sample and observe them.
    """
    if not config.needs_calibration:
        scale = activation_scale(config.global_scale, power2=config.power2)
        return {site.index: SiteScales(scale, scale) for site in sites}, 0
    if calibration is None:
        raise ConfigError(
            f"calibrate_mode={config.calibrate_mode!r} needs calibration data: pass calibration= "
            f"(an iterable of input dicts, or a callable returning one) or use calibrate_mode='global_scale'"
        )
    observers = [(ActivationObserver(f"site{s.index}.input"), ActivationObserver(f"site{s.index}.output"))
                 for s in sites]
    observed = emit_float(prepared, sites, observe=True)
    vm = relax_vm(tvm.compile(observed, target=tvm.target.Target("llvm")))
    names = [param.name for param in prepared["main"].params]
    count = 0
    for sample in calibration:
        args = _positional(sample, names, count)
        watched = flatten_outputs(vm["main"](*tvm_tensors(args))[1])
        for (seen_in, seen_out), values_in, values_out in zip(observers, watched[0::2], watched[1::2]):
            seen_in.update(values_in)
            seen_out.update(values_out)
        count += 1
    if count == 0:
        raise ConfigError("calibration data is empty: it yielded no samples")
    power2 = config.power2
    scales = {
        site.index: SiteScales(
            activation_scale(threshold(seen_in, config), power2=power2),
            activation_scale(threshold(seen_out, config), power2=power2),
        )
        for site, (seen_in, seen_out) in zip(sites, observers)
    }
    return scales, count


def _positional(sample: Any, names: list[str], index: int) -> list[np.ndarray]:
    if isinstance(sample, Mapping):
        missing = [n for n in names if n not in sample]
        if missing:
            raise ConfigError(
                f"calibration sample {index}: missing input(s) {missing}; the model takes {names}, "
                f"the sample has {sorted(map(str, sample))}"
            )
        return [np.asarray(sample[n]) for n in names]
    values = list(sample) if isinstance(sample, (list, tuple)) else [sample]
    if len(values) != len(names):
        raise ConfigError(f"calibration sample {index}: {len(values)} value(s), the model takes {names}")
    return [np.asarray(v) for v in values]
