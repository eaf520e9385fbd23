"""Cross-layer equalization: even out the channels of the activation between a conv and the
depthwise conv that reads it.

A conv's output channels can span very different ranges (after an EfficientNet stem, one channel
reaches 6 and another 0.05), and one int8 scale per tensor leaves the narrow ones a few steps.
Where a conv's output is read only by a depthwise conv (through its absorbed ReLU / ReLU6 and a
zero padding, as TF-style "same" convs pad), channel ``c`` can be scaled by ``s_c`` in the first
conv (its weights and bias) and by ``1 / s_c`` in filter ``c`` of the depthwise one, which reads
channel ``c`` alone and has a weight scale of its own, so its int8 weights lose nothing. The
float model computes what it did: ReLU commutes with a positive scale, and behind ReLU6 ``s_c``
stays >= 1 and keeps the channel's calibrated max under the clip. ``s_c`` stretches each
channel to 1 / :data:`HEADROOM` of the widest channel's calibrated max, within :data:`MAX_SCALE`.

An ordinary conv reading the channels would need each weight column scaled by ``1 / s_c``, which
costs the column steps under per-output-channel weight scales; with Nagel et al.'s balance between
the two (``s_c = sqrt(R / r_c * w_c / W)``) EfficientNet-Lite0 lost 3-4 dB, so only depthwise
consumers are equalized.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import tvm
from tvm import relax

from pytest_tvmdeploy.quantize.graph import CONV, Site, activation_bounds, main_block, use_counts

#: The largest channel scale (and 1 / the smallest): a channel that barely fires in calibration is
#: not blown up to the full range on its noise.
MAX_SCALE = 32.0
#: Channels are stretched to this fraction of the widest one's range, leaving held-out inputs
#: headroom above the calibration's max before the int8 activation saturates.
HEADROOM = 2.0


def equalize(prepared: tvm.IRModule, sites: list[Site], calibration: Iterable[Mapping[str, np.ndarray]]) -> int:
    """Equalize every conv in ``sites`` whose output only a depthwise conv reads (both convs'
    ``weight`` / ``bias`` change in place) from the channels' ranges on ``calibration``; returns how
    many pairs."""
    from pytest_tvmdeploy.quantize.calibrate import watch_sites

    func, bindings = main_block(prepared)
    pairs = _pairs(sites, bindings, use_counts(bindings, func.body.body))
    if not pairs:
        return 0
    ranges: dict[int, np.ndarray] = {}
    for watched in watch_sites(prepared, sites, calibration, [producer.output for producer, _ in pairs]):
        for (producer, _), output in zip(pairs, watched):
            seen = np.abs(np.asarray(output, dtype=np.float64)).max(axis=(0, 2, 3))
            ranges[producer.index] = np.maximum(ranges.get(producer.index, seen), seen)
    for producer, consumer in pairs:
        scales = channel_scales(ranges[producer.index], clipped=_clipped(producer))
        producer.weight = producer.weight * scales.reshape(-1, 1, 1, 1)
        producer.bias = producer.bias * scales
        consumer.weight = consumer.weight / scales.reshape(-1, 1, 1, 1)  # filter c reads channel c alone
    return len(pairs)


def channel_scales(ranges: np.ndarray, *, clipped: bool = False) -> np.ndarray:
    """Each channel's scale from its calibrated ``ranges``: up to :data:`HEADROOM` below the widest
    channel's, within :data:`MAX_SCALE` (and at least 1 behind a clip); 1 for a channel that never fired."""
    stretch = np.divide(ranges.max() / HEADROOM, ranges, out=np.ones_like(ranges), where=ranges > 0)
    return np.clip(stretch, 1.0 if clipped else 1.0 / MAX_SCALE, MAX_SCALE)


def depthwise(site: Site) -> bool:
    """A conv whose every output channel reads one input channel of its own."""
    groups = int(site.call.attrs.groups)
    return groups > 1 and site.weight.shape[1] == 1 and site.weight.shape[0] == groups


def _pairs(sites: list[Site], bindings: list[relax.Binding], uses: Mapping[relax.Var, int]) -> list[tuple[Site, Site]]:
    """(producer, consumer): a conv whose output nothing but the next conv reads (``uses``: how
    often each variable is read), through nothing but its absorbed activation (one that commutes
    with positive scales) and a zero padding; the consumer depthwise."""
    bound = {binding.var: binding.value for binding in bindings}
    by_output = {site.output: site for site in sites if site.kind == CONV}
    pairs = []
    for consumer in sites:
        if consumer.kind != CONV or not depthwise(consumer):
            continue
        source = consumer.input
        if _zero_padding(bound.get(source)) and uses.get(source, 0) == 1:
            source = bound[source].args[0]  # TF-style "same" convs pad first: zeros scale as they are
        producer = by_output.get(source)
        if producer is not None and uses.get(source, 0) == 1 and _scalable(producer):
            pairs.append((producer, consumer))
    return pairs


def _zero_padding(value: relax.Expr | None) -> bool:
    return (isinstance(value, relax.Call) and getattr(value.op, "name", None) == "relax.nn.pad"
            and str(value.attrs.pad_mode) == "constant" and float(value.attrs.pad_value) == 0.0)


def _scalable(site: Site) -> bool:
    """Its activation commutes with a positive scale: none, ReLU, or a clip from 0."""
    return site.activation is None or activation_bounds(site.activation)[0] == 0.0


def _clipped(site: Site) -> bool:
    return site.activation is not None and np.isfinite(activation_bounds(site.activation)[1])
