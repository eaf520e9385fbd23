"""The int8 quantization settings: the old ``relay.quantize.qconfig`` fields that still apply on Relax."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pytest_tvmdeploy.errors import ConfigError

CALIBRATE_MODES = ("global_scale", "kl_divergence", "max", "percentile", "mse")
#: ``power2``: every scale a power of two; ``max``: weights by max |w|, fixed-point requantization;
#: ``shift``: activation scales free, each weight scale a power of two times output / input scale.
WEIGHT_SCALES = ("power2", "max", "shift")
ROUNDINGS = ("UPWARD", "TONEAREST")
#: How weights are rounded to their int8 steps: each to the nearest, or by GPTQ against the inputs.
WEIGHT_ROUNDINGS = ("nearest", "gptq", "search")
#: What a ``budget`` can ask of the quantized model's outputs against float: logits SQNR in dB,
#: or top-1 agreement (the share of inputs whose arg-max class is unchanged).
BUDGET_METRICS = ("sqnr_db", "agreement")
#: Op kinds ``debug_enabled_ops`` may name (the ops the quantizer rewrites).
QUANTIZABLE_OPS = ("nn.conv2d", "matmul")

#: The only bit widths / dtypes implemented: int8 inputs and weights, int32 accumulators.
_SUPPORTED_WIDTHS = {
    "nbit_input": 8,
    "nbit_weight": 8,
    "nbit_activation": 32,
    "dtype_input": "int8",
    "dtype_weight": "int8",
    "dtype_activation": "int32",
}
_SUPPORTED_TEXT = (
    "only nbit_input=8, nbit_weight=8, nbit_activation=32 with dtype_input='int8', "
    "dtype_weight='int8', dtype_activation='int32' are supported"
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class QuantConfig:
    """The old ``relay.quantize`` qconfig fields that still make sense, with their old defaults.

    Differences from the old qconfig: ``do_simulation`` is gone (the quantized graph always
    realizes integer arithmetic, never a simulated float one); ``percentile``, ``per_channel``,
    ``calibrate_mode="mse"`` (the threshold of least expected squared error) and
    ``bias_correction`` (each site's bias corrected by the mean error its int8 weights make on
    the calibration data's mean input) and ``unsigned_activations`` (an activation calibration
    never saw negative, such as a ReLU's, gets 255 steps over [0, T] instead of 127) and
    ``cross_layer_equalization`` (the channels between a conv and the depthwise conv that alone reads
    it scaled to even ranges,
    :mod:`pytest_tvmdeploy.quantize.equalize`) and
    ``weight_rounding="gptq"`` (each weight's rounding error compensated by the weights rounded
    after it, through the statistics of the site's calibration inputs; ``"search"`` also chooses
    each channel's step by that output error, which needs ``weight_scale="max"``) are new; so is mixed
    precision: ``keep_float`` (site indices left in float), ``budget`` (``"sqnr_db>=25"``,
    ``"agreement>=0.95"`` or a number of dB: the sites that cost most stay float until the
    outputs meet it) and ``sensitivity`` (measure what each site costs alone, without a budget);
    so is ``wide_inputs`` (site indices whose input is carried at 16 bits as two int8 digits: the
    site runs its int8 op on each digit and adds the two accumulators, ``256 * high + low``);
    ``weight_scale="power2"`` makes every scale
    (weights and activations) a power of two so each requantization is a shift;
    ``weight_scale="shift"`` (new) also requantizes by shifts only, but leaves the activation
    scales free and puts each weight scale on the ladder ``2**k * output_scale / input_scale``.
    ``skip_conv_layers`` is stored sorted and without duplicates; lists given for tuple fields
    are turned into tuples.
    """

    nbit_input: int = 8
    nbit_weight: int = 8
    nbit_activation: int = 32
    dtype_input: str = "int8"
    dtype_weight: str = "int8"
    dtype_activation: str = "int32"
    calibrate_mode: str = "global_scale"
    global_scale: float = 8.0
    percentile: float = 99.99
    weight_scale: str = "power2"
    per_channel: bool = False
    skip_dense_layer: bool = True
    skip_conv_layers: tuple[int, ...] = (0,)
    round_for_shift: bool = True
    rounding: str = "UPWARD"
    debug_enabled_ops: tuple[str, ...] | None = None
    bias_correction: bool = False
    unsigned_activations: bool = False
    cross_layer_equalization: bool = False
    weight_rounding: str = "nearest"
    keep_float: tuple[int, ...] = ()
    wide_inputs: tuple[int, ...] = ()
    budget: str | None = None
    sensitivity: bool = False

    def __post_init__(self) -> None:
        for name, supported in _SUPPORTED_WIDTHS.items():
            value = getattr(self, name)
            if value != supported or type(value) is not type(supported):
                raise ConfigError(f"quantize: {name}={value!r} is not supported: {_SUPPORTED_TEXT}")
        self._check_choice("calibrate_mode", CALIBRATE_MODES)
        self._check_choice("weight_scale", WEIGHT_SCALES)
        self._check_choice("rounding", ROUNDINGS)
        self._check_choice("weight_rounding", WEIGHT_ROUNDINGS)
        if self.weight_rounding == "search" and self.weight_scale != "max":
            raise ConfigError(f"quantize: weight_rounding='search' chooses each weight scale freely, so it needs "
                              f"weight_scale='max', not {self.weight_scale!r}")
        for name in ("global_scale", "percentile"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise ConfigError(f"quantize: {name}={value!r} must be a finite number")
            object.__setattr__(self, name, float(value))
        if not self.global_scale > 0:
            raise ConfigError(f"quantize: global_scale={self.global_scale!r} must be > 0")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"quantize: percentile={self.percentile!r} must be in (0, 100]")
        for name in ("per_channel", "skip_dense_layer", "round_for_shift", "bias_correction", "unsigned_activations",
                     "cross_layer_equalization", "sensitivity"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"quantize: {name}={value!r} must be True or False")
        object.__setattr__(self, "skip_conv_layers", _indices("skip_conv_layers", self.skip_conv_layers,
                                                              "conv layer indices"))
        object.__setattr__(self, "keep_float", _indices("keep_float", self.keep_float, "site indices"))
        object.__setattr__(self, "wide_inputs", _indices("wide_inputs", self.wide_inputs, "site indices"))
        self._normalise_debug_enabled_ops()
        self._normalise_budget()

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ConfigError(f"quantize: {name}={value!r} is not one of {', '.join(map(repr, allowed))}")

    def _normalise_debug_enabled_ops(self) -> None:
        value = self.debug_enabled_ops
        if value is None:
            return
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(
                f"quantize: debug_enabled_ops={value!r} must be None or a list of op kinds "
                f"from {', '.join(map(repr, QUANTIZABLE_OPS))}"
            )
        bad = [item for item in value if item not in QUANTIZABLE_OPS]
        if bad or not value:
            raise ConfigError(
                f"quantize: debug_enabled_ops={value!r}: allowed op kinds are "
                f"{', '.join(map(repr, QUANTIZABLE_OPS))} (use None to quantize all of them)"
            )
        object.__setattr__(self, "debug_enabled_ops", tuple(dict.fromkeys(value)))

    def _normalise_budget(self) -> None:
        value = self.budget
        if value is None:
            return
        usage = (f"quantize: budget={value!r} must be a number of dB (the outputs' least SQNR against float) "
                 f"or '<metric> >= <value>' with metric in {', '.join(map(repr, BUDGET_METRICS))}, "
                 "e.g. 'sqnr_db>=25' or 'agreement>=0.95'")
        if _is_number(value):
            metric, target = "sqnr_db", float(value)
        elif isinstance(value, str) and ">=" in value:
            metric, _, number = (part.strip() for part in value.partition(">="))
            try:
                target = float(number)
            except ValueError:
                raise ConfigError(usage) from None
        else:
            raise ConfigError(usage)
        if metric not in BUDGET_METRICS or not math.isfinite(target) or (
                metric == "agreement" and not 0 <= target <= 1):
            raise ConfigError(usage + ("; agreement is a share in [0, 1]" if metric == "agreement" else ""))
        object.__setattr__(self, "budget", f"{metric}>={target:g}")

    @property
    def budget_target(self) -> tuple[str, float] | None:
        """``budget`` as ``(metric, least value)``, e.g. ``("sqnr_db", 25.0)``; None without one."""
        if self.budget is None:
            return None
        metric, _, number = self.budget.partition(">=")
        return metric, float(number)

    @property
    def measures_sensitivity(self) -> bool:
        """Whether quantizing measures each site's cost alone (asked for, or needed by a budget)."""
        return self.sensitivity or self.budget is not None

    @property
    def needs_calibration(self) -> bool:
        """Whether calibration data must be run: for activation thresholds, the input means bias
        correction needs, or the signs ``unsigned_activations`` needs."""
        return (self.calibrate_mode != "global_scale" or self.bias_correction or self.unsigned_activations
                or self.cross_layer_equalization or self.rounds_with_hessian or self.measures_sensitivity)

    @property
    def rounds_with_hessian(self) -> bool:
        """Whether the weights are rounded against the calibration inputs' statistics (GPTQ, search)."""
        return self.weight_rounding in ("gptq", "search")

    @property
    def calibration_purpose(self) -> str:
        """What needs calibration data, for messages: ``calibrate_mode='max'``, or
        ``calibrate_mode='global_scale' with bias_correction``."""
        extras = [name for name in ("bias_correction", "unsigned_activations", "cross_layer_equalization")
                  if getattr(self, name)]
        extras += [f"weight_rounding={self.weight_rounding!r}"] * self.rounds_with_hessian
        extras += [f"budget={self.budget!r}"] * (self.budget is not None)
        extras += ["sensitivity"] * (self.sensitivity and self.budget is None)
        return f"calibrate_mode={self.calibrate_mode!r}" + (f" with {', '.join(extras)}" if extras else "")

    @property
    def power2(self) -> bool:
        """Every scale (weights and activations) is a power of two: requantization is a shift."""
        return self.weight_scale == "power2"

    @property
    def shift_only(self) -> bool:
        """Every requantization is a bit shift (``power2`` or ``shift`` weight scales)."""
        return self.weight_scale in ("power2", "shift")

    @classmethod
    def from_value(cls, value: Any) -> QuantConfig:
        """A config from a ``QuantConfig``, a string or a dict of fields.

        Strings: ``"int8"`` (the defaults), a calibrate mode (``"kl_divergence"``), or
        ``"<calibrate_mode>+<weight_scale>"`` (``"kl_divergence+max"``), optionally followed by
        ``"+per_channel"``.
        """
        if isinstance(value, QuantConfig):
            return value
        if isinstance(value, str):
            return cls._from_string(value)
        if isinstance(value, Mapping):
            known = [f.name for f in fields(cls)]
            unknown = [key for key in value if key not in known]
            if unknown:
                raise ConfigError(
                    f"quantize: unknown field(s) {', '.join(map(repr, unknown))}; known fields: {', '.join(known)}"
                )
            return cls(**dict(value))
        raise ConfigError(
            f"quantize: cannot make a quantization config from {type(value).__name__} {value!r}: "
            "give a QuantConfig, a dict of its fields or a string such as 'int8' or 'kl_divergence+max'"
        )

    @classmethod
    def _from_string(cls, text: str) -> QuantConfig:
        usage = (
            f"quantize: {text!r} is not a quantization config: use 'int8', a calibrate_mode "
            f"({', '.join(CALIBRATE_MODES)}) or '<calibrate_mode>+<weight_scale>[+per_channel]' "
            f"with weight_scale in {', '.join(WEIGHT_SCALES)}"
        )
        parts = [part.strip() for part in text.strip().split("+")]
        if parts == ["int8"]:
            return cls()
        if not parts or parts[0] not in CALIBRATE_MODES or len(parts) > 3:
            raise ConfigError(usage)
        kwargs: dict[str, Any] = {"calibrate_mode": parts[0]}
        if len(parts) >= 2:
            if parts[1] not in WEIGHT_SCALES:
                raise ConfigError(usage)
            kwargs["weight_scale"] = parts[1]
        if len(parts) == 3:
            if parts[2] not in ("per_channel", "perchannel"):
                raise ConfigError(usage)
            kwargs["per_channel"] = True
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON values (tuples become lists); ``QuantConfig(**d)`` rebuilds it."""
        result: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            result[f.name] = list(value) if isinstance(value, tuple) else value
        return result

    @property
    def label(self) -> str:
        """A short id such as ``int8-global_scale-power2`` or ``int8-kl_divergence-max-perchannel``."""
        label = f"{self.dtype_input}-{self.calibrate_mode}-{self.weight_scale}"
        rounding = f"-{self.weight_rounding}" if self.rounds_with_hessian else ""
        return (label + "-perchannel" * self.per_channel + "-biascorrected" * self.bias_correction
                + "-unsigned" * self.unsigned_activations + "-equalized" * self.cross_layer_equalization + rounding
                + "".join(f"-float{index}" for index in self.keep_float)
                + "".join(f"-wide{index}" for index in self.wide_inputs)
                + (f"-budget[{self.budget}]" if self.budget is not None else ""))


def _indices(name: str, value: Any, what: str) -> tuple[int, ...]:
    """A list of indices (ints >= 0) as a sorted tuple without duplicates; None means none."""
    if value is None:
        value = ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, set, frozenset)):
        raise ConfigError(f"quantize: {name}={value!r} must be a list of {what} (ints >= 0)")
    bad = [item for item in value if not _is_int(item) or item < 0]
    if bad:
        raise ConfigError(f"quantize: {name} has {bad!r}: the indices must be ints >= 0")
    return tuple(sorted(set(value)))
