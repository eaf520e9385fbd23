"""Run the float model on calibration data and turn what each site sees into int8 scales."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.quantize.graph import CONV, Site, emit_float
from pytest_tvmdeploy.quantize.realize import UNSIGNED_ZERO_POINT, SiteScales
from pytest_tvmdeploy.quantize.rounding import InputHessian
from pytest_tvmdeploy.quantize.scales import QMAX, UMAX, activation_scale, wide_scale
from pytest_tvmdeploy.quantize.thresholds import ActivationObserver, threshold
from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors


def site_scales(
    prepared: tvm.IRModule,
    sites: list[Site],
    config: QuantConfig,
    calibration: Iterable[Mapping[str, np.ndarray]] | None,
) -> tuple[dict[int, SiteScales], int]:
    """Scales for every site, and how many calibration samples were used.

    ``global_scale`` needs no data (unless bias correction asks for the input means); the other
    modes run the float module (with every site's input and output as extra results) on each
    sample and observe them.
    """
    if not config.needs_calibration:
        scale = activation_scale(config.global_scale, power2=config.power2)
        wide = wide_scale(config.global_scale, power2=config.power2)
        return {site.index: SiteScales(wide, scale, input_bits=16) if site.index in config.wide_inputs
                else SiteScales(scale, scale) for site in sites}, 0
    if calibration is None:
        raise ConfigError(
            f"{config.calibration_purpose} needs calibration data: pass calibration= (an iterable of input "
            f"dicts, or a callable returning one) or use calibrate_mode='global_scale'"
        )
    observers = [(ActivationObserver(f"site{s.index}.input"), ActivationObserver(f"site{s.index}.output"))
                 for s in sites]
    means = [ChannelMeans(site.kind) for site in sites] if config.bias_correction else None
    hessians = [InputHessian(site) for site in sites] if config.rounds_with_hessian else None
    count = 0
    for watched in watch_sites(prepared, sites, calibration):
        for index, ((seen_in, seen_out), values_in, values_out) in enumerate(
                zip(observers, watched[0::2], watched[1::2])):
            seen_in.update(values_in)
            seen_out.update(values_out)
            if means is not None:
                means[index].update(values_in)
            if hessians is not None:
                hessians[index].update(values_in)
        count += 1
    if count == 0:
        raise ConfigError("calibration data is empty: it yielded no samples")
    scales = {}
    for i, (site, (seen_in, seen_out)) in enumerate(zip(sites, observers)):
        wide = site.index in config.wide_inputs  # 16 bits: no clipping, the whole range seen
        (input_scale, input_zero) = (wide_scale(seen_in.max_abs, power2=config.power2), 0) if wide \
            else _scale(seen_in, config)
        output_scale, output_zero = _scale(seen_out, config)
        scales[site.index] = SiteScales(input_scale, output_scale, means[i].value if means is not None else None,
                                        input_zero, output_zero,
                                        hessians[i].total if hessians is not None else None,
                                        input_bits=16 if wide else 8)
    return scales, count


def watch_sites(prepared: tvm.IRModule, sites: list[Site], calibration: Iterable[Mapping[str, np.ndarray]],
                values: Sequence[relax.Expr] | None = None) -> Iterator[list[np.ndarray]]:
    """For each calibration sample, what the float module's sites see:
    ``[site0 input, site0 output, site1 input, ...]``, or only ``values`` (in their order)."""
    if values is None:
        values = [value for site in sites for value in (site.input, site.output)]
    observed = emit_float(prepared, sites, observe=values)
    vm = relax_vm(tvm.compile(observed, target=tvm.target.Target("llvm")))
    names = [param.name for param in prepared["main"].params]
    for index, sample in enumerate(calibration):
        yield flatten_outputs(vm["main"](*tvm_tensors(positional(sample, names, index)))[1])


def _scale(observer: ActivationObserver, config: QuantConfig) -> tuple[float, int]:
    """An activation's step size and zero point: unsigned (255 steps over [0, T], zero point
    -128) if the config asks for it and calibration never saw the activation negative."""
    unsigned = config.unsigned_activations and observer.count > 0 and observer.minimum >= 0
    levels = UMAX if unsigned else QMAX
    global_scale = config.calibrate_mode == "global_scale"
    limit = config.global_scale if global_scale else threshold(observer, config, levels=levels)
    return (activation_scale(limit, power2=config.power2, unsigned=unsigned),
            UNSIGNED_ZERO_POINT if unsigned else 0)


class ChannelMeans:
    """The running mean of each input channel of a site (axis 1 of a conv's NCHW data, the last
    axis of a matmul's)."""

    def __init__(self, kind: str) -> None:
        self.axis = 1 if kind == CONV else -1
        self.total: np.ndarray | None = None
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        values = np.moveaxis(np.asarray(values, dtype=np.float64), self.axis, -1)
        flat = values.reshape(-1, values.shape[-1])
        self.total = flat.sum(axis=0) + (0 if self.total is None else self.total)
        self.count += flat.shape[0]

    @property
    def value(self) -> np.ndarray | None:
        return None if self.total is None else self.total / self.count


def positional(sample: Any, names: list[str], index: int) -> list[np.ndarray]:
    """A sample (a dict by input name, a list in input order, or one array) as ``main``'s arguments."""
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
