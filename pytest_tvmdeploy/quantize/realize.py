"""Rewrite a Relax module to real integer arithmetic at every enabled site.

Each quantized conv2d / matmul reads int8 data (quantized from float at a boundary, or passed on
directly from the previous quantized op), multiplies with int8 weights into an int32
accumulator, adds an int32 bias and requantizes to int8 with integer arithmetic only: a shift
when every scale is a power of two (``weight_scale="power2"``), otherwise a fixed-point
multiply (int64 product with a 31-bit mantissa, then a rounding shift). int8 values flow on
through ops that commute with a positive scale (relu, clip, max pooling, reshapes); any other
op gets float inputs through an explicit dequantize (int8 -> float32, times the scale).
A site with a wide input (``QuantConfig.wide_inputs``) reads it at 16 bits, as two int8 digits
made from its float value, and adds its op's two int32 results in int64: ``256 * high + low``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.quantize.graph import (
    CONV,
    MATMUL,
    Site,
    activation_bounds,
    bias_shape,
    float_site,
    main_block,
    site_call,
    substitute,
    vars_in,
)
from pytest_tvmdeploy.quantize.rounding import gptq_weights, searched_weights
from pytest_tvmdeploy.quantize.scales import (
    DIGIT,
    QMAX,
    UMAX,
    WIDE_QMAX,
    broadcast_along,
    fixed_point_multiplier,
    power2_exponent,
    quantize_bias,
    quantize_to_int8,
    shift_weight_scales,
    weight_scales,
)

#: Ops through which int8 data pass unchanged in meaning (they commute with x -> x * s, s > 0).
INT8_TRANSPARENT = {"nn.relu", "nn.max_pool2d", "reshape", "permute_dims", "squeeze", "expand_dims", "flatten"}


#: Where an unsigned activation's zero sits in int8: ``u8 - 128`` stores 0..255 as -128..127.
UNSIGNED_ZERO_POINT = -128


@dataclass(frozen=True)
class SiteScales:
    """Step sizes of a site's int8 input (used when it arrives as float) and int8 output, their
    zero points (``UNSIGNED_ZERO_POINT`` for an unsigned activation, else 0), and the mean of
    each input channel over the calibration data (for bias correction; None without), and the
    input Hessian of GPTQ rounding (:class:`~pytest_tvmdeploy.quantize.rounding.InputHessian`)."""

    input: float
    output: float
    input_means: np.ndarray | None = field(default=None, compare=False)
    input_zero_point: int = 0
    output_zero_point: int = 0
    input_hessian: np.ndarray | None = field(default=None, compare=False)  # weight_rounding "gptq" / "search"
    input_bits: int = 8  # 16: a wide input (two int8 digits, zero point 0)

    @property
    def input_bounds(self) -> tuple[int, int]:
        """The stored values the input's steps are clipped to."""
        if self.input_bits > 8:
            return -WIDE_QMAX, WIDE_QMAX
        return int8_bounds(-np.inf, np.inf, self.input, self.input_zero_point)


class Int8(NamedTuple):
    """An int8 value of the realized graph: real value = ``scale * (data - zero_point)``."""

    data: relax.Expr
    scale: float
    zero_point: int = 0


def site_enabled(site: Site, config: QuantConfig) -> bool:
    """Whether the config quantizes this site (skip lists, dense switch, debug op filter, sites
    kept in float)."""
    if site.index in config.keep_float:
        return False
    if config.debug_enabled_ops is not None and site.kind not in config.debug_enabled_ops:
        return False
    if site.kind == "matmul":
        return not config.skip_dense_layer
    return site.ordinal not in config.skip_conv_layers


class SiteIntegers(NamedTuple):
    """A quantized site's constants: int8 weights, their scales, the accumulator's scales (input
    scale times weight scales) and the int32 bias in accumulator steps (before the term an input
    zero point adds)."""

    weights: np.ndarray
    weight_scales: np.ndarray
    accumulator_scales: np.ndarray
    bias: np.ndarray

    def dequantized(self, site: Site) -> tuple[np.ndarray, np.ndarray]:
        """The float weights and bias these integers stand for."""
        along = broadcast_along(self.weight_scales, site.weight.ndim, site.channel_axis)
        return (self.weights.astype(np.float64) * along,
                self.bias.astype(np.float64) * np.broadcast_to(self.accumulator_scales, self.bias.shape))


class CalibratedSites:
    """One :func:`~pytest_tvmdeploy.quantize.quantize` call's settings (``config``), calibrated
    ``scales`` and each site's :class:`SiteIntegers`, computed on first use for a site and input
    scale, then kept (GPTQ and searched weights take seconds a site; the gated simulation and every
    module a budget realizes need the same ones). Modules built from one source differ only in the
    sites they keep in float."""

    def __init__(self, config: QuantConfig, scales: dict[int, SiteScales]) -> None:
        self.config = config
        self.scales = scales
        self._known: dict[tuple[int, float], SiteIntegers] = {}

    def config_keeping(self, keep_float: Sequence[int]) -> QuantConfig:
        """The call's config with the sites ``keep_float`` names kept in float besides its own."""
        if not keep_float:
            return self.config
        return replace(self.config, keep_float=(*self.config.keep_float, *keep_float))

    def integers(self, site: Site, input_scale: float) -> SiteIntegers:
        """The int8 weights (rounded to nearest or by GPTQ) and the int32 bias (bias-corrected if
        asked) of ``site`` when its int8 input has ``input_scale``."""
        key = (site.index, float(input_scale))
        if key not in self._known:
            self._known[key] = _site_integers(site, self.scales[site.index], self.config, input_scale)
        return self._known[key]


def _site_integers(site: Site, calibrated: SiteScales, config: QuantConfig, input_scale: float) -> SiteIntegers:
    axis = site.channel_axis
    if config.weight_scale == "shift":
        w_scales = shift_weight_scales(site.weight, calibrated.output / input_scale, per_channel=config.per_channel,
                                       axis=axis)
    else:
        w_scales = weight_scales(site.weight, power2=config.power2, per_channel=config.per_channel, axis=axis)
    if config.weight_rounding == "search" and calibrated.input_hessian is not None:
        weights, w_scales = searched_weights(site, w_scales, calibrated.input_hessian, per_channel=config.per_channel)
    elif config.weight_rounding == "gptq" and calibrated.input_hessian is not None:
        weights = gptq_weights(site, w_scales, calibrated.input_hessian)
    else:
        weights = quantize_to_int8(site.weight, w_scales, axis=axis if config.per_channel else None)
    accumulator_scales = input_scale * np.asarray(w_scales, dtype=np.float64)
    float_bias = site.bias
    if config.bias_correction and calibrated.input_means is not None:
        dequantized = weights.astype(np.float64) * broadcast_along(w_scales, site.weight.ndim, axis)
        float_bias = site.bias - weight_error_on_mean(site, dequantized - site.weight, calibrated.input_means)
    bias = quantize_bias(float_bias, np.broadcast_to(accumulator_scales, site.bias.shape))
    return SiteIntegers(weights, w_scales, accumulator_scales, bias)


def realize(mod: tvm.IRModule, sites: list[Site], source: CalibratedSites,
            keep_float: Sequence[int] = ()) -> tvm.IRModule:
    """The integer module of ``source``'s settings and scales, with the sites ``keep_float`` names
    kept in float besides its config's; ``mod`` must be the prepared module ``sites`` were found in."""
    return _Realizer(mod, sites, source.config_keeping(keep_float), source).run()


class _Realizer:
    def __init__(self, mod: tvm.IRModule, sites: list[Site], config: QuantConfig,
                 source: CalibratedSites) -> None:
        self.source = source
        self.func, self.bindings = main_block(mod)
        self.sites = {site.call: site for site in sites}
        self.replaced = {var for site in sites for var in (*site.chain, site.output)}
        self.scales = source.scales
        self.config = config
        self.int8_readers = _int8_readers(self.bindings, self.func.body.body, self.sites, config, self.scales)
        self.bb = relax.BlockBuilder()
        self.floats: dict[Any, relax.Expr] = {}
        self.int8: dict[Any, Int8] = {}

    def run(self) -> tvm.IRModule:
        bb = self.bb
        with bb.function("main", list(self.func.params)):
            with bb.dataflow():
                for binding in self.bindings:
                    self._visit(binding)
                result = substitute(self.func.body.body, self._float)
                result = bb.emit_output(result) if not isinstance(result, relax.Var) else result
            bb.emit_func_output(result)
        return bb.get()

    def _visit(self, binding: relax.Binding) -> None:
        site = self.sites.get(binding.value)
        if site is not None:
            ndim = site.output.ty.ndim
            if site_enabled(site, self.config):
                quantized = self._quantized_site(site, ndim)
                if quantized is not None:
                    self.int8[site.output] = quantized
            else:
                self.floats[site.output] = self._float_site(site, ndim)
            return
        if binding.var in self.replaced:
            return  # folded into its site
        value = binding.value
        passed_on = self._int8_pass_through(value)
        if passed_on is not None:
            self.int8[binding.var] = passed_on
            return
        emitted = substitute(value, self._float)
        self.floats[binding.var] = (self.bb.emit_output(emitted) if not isinstance(binding.var, relax.DataflowVar)
                                    else self.bb.emit(emitted))

    # -- values in either domain -------------------------------------------------------------

    def _float(self, var: relax.Var) -> relax.Expr:
        """The float value of ``var``, dequantizing it (once) if it only exists as int8."""
        if var in self.floats:
            return self.floats[var]
        if var in self.int8:
            data, scale, zero_point = self.int8[var]
            self.floats[var] = self.bb.emit(from_int8_steps(R.astype(data, "float32"), scale, zero_point))
            return self.floats[var]
        return var

    def _int8_input(self, site: Site) -> Int8:
        data = site.input
        if isinstance(data, relax.Var) and data in self.int8:
            return self.int8[data]
        scales = self.scales[site.index]
        scale, zero_point = scales.input, scales.input_zero_point
        return Int8(self.bb.emit(R.astype(int8_steps(self._float(data), scale, zero_point), "int8")), scale,
                    zero_point)

    # -- sites --------------------------------------------------------------------------------

    def _quantized_site(self, site: Site, ndim: int) -> Int8 | None:
        calibrated = self.scales[site.index]
        wide = calibrated.input_bits > 8
        if wide:
            input_scale, input_zero_point = calibrated.input, 0
        else:
            data, input_scale, input_zero_point = self._int8_input(site)
            if input_zero_point and site.kind == CONV:
                data = self._pad_with(data, input_zero_point, site)
        integers = self.source.integers(site, input_scale)
        weights, accumulator_scales, bias = integers.weights, integers.accumulator_scales, integers.bias
        if wide:
            acc = self._wide_accumulator(site, weights)
        else:
            acc = self.bb.emit(site_call(site, data, weights, "int32", padded=bool(input_zero_point)))
        if input_zero_point:  # sum(w * (q - z)) = sum(w * q) - z * sum(w): the second term joins the bias
            bias = bias - input_zero_point * _weight_sums(weights, site)
        bias_type = "int64" if wide else "int32"
        acc = self.bb.emit(R.add(acc, relax.const(bias.reshape(bias_shape(site, ndim)).astype(bias_type), bias_type)))
        if site.output not in self.int8_readers:
            # Only float ops read this result: dequantize the int32 accumulator itself, which
            # keeps its full precision, instead of rounding it to int8 first.
            out = R.multiply(R.astype(acc, "float32"), _const(accumulator_scales, bias_shape(site, ndim), "float32"))
            if site.activation is not None:
                out = relax.Call(site.activation.op, [self.bb.emit(out), *site.activation.args[1:]],
                                 site.activation.attrs, site.activation.ty_args)
            self.floats[site.output] = self.bb.emit(out)
            return None
        ratio = accumulator_scales / calibrated.output
        low, high = activation_bounds(site.activation) if site.activation is not None else (-np.inf, np.inf)
        bounds = int8_bounds(low, high, calibrated.output, calibrated.output_zero_point)
        requantized = self._requantize(acc, ratio, site, ndim, bounds, calibrated.output_zero_point)
        return Int8(requantized, calibrated.output, calibrated.output_zero_point)

    def _wide_accumulator(self, site: Site, weights: np.ndarray) -> relax.Expr:
        """The site's int64 sums over its wide input: its op on each int8 digit of the input's
        16-bit steps, ``DIGIT * high + low`` (exact: the op is linear and the zero point is 0)."""
        bb, scales = self.bb, self.scales[site.index]
        steps = bb.emit(int8_steps(self._float(site.input), scales.input, bounds=scales.input_bounds))
        high = bb.emit(R.floor(R.divide(R.add(steps, relax.const(DIGIT / 2, "float32")),
                                        relax.const(float(DIGIT), "float32"))))
        low = bb.emit(R.subtract(steps, R.multiply(high, relax.const(float(DIGIT), "float32"))))
        high_sums, low_sums = (bb.emit(R.astype(bb.emit(site_call(site, R.astype(digit, "int8"), weights, "int32")),
                                                "int64")) for digit in (high, low))
        return bb.emit(R.add(R.multiply(high_sums, relax.const(DIGIT, "int64")), low_sums))

    def _pad_with(self, data: relax.Expr, zero_point: int, site: Site) -> relax.Expr:
        """``data`` padded as the site's conv pads it, with the value that means 0 (its zero point)."""
        top, left, bottom, right = (int(p) for p in site.call.attrs.padding)
        if not (top or left or bottom or right):
            return data
        return self.bb.emit(R.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zero_point)))

    def _float_site(self, site: Site, ndim: int) -> relax.Expr:
        return self.bb.emit(float_site(self.bb, site, self._float(site.input)))

    def _requantize(self, acc: relax.Expr, ratio: np.ndarray, site: Site, ndim: int,
                    bounds: tuple[int, int] = (-QMAX, QMAX), zero_point: int = 0) -> relax.Expr:
        """int32 accumulator at scale ``ratio * output`` -> int8 at the output scale (plus its
        ``zero_point``), integers only; ``bounds`` clamp the stored result (an absorbed
        activation's interval in int8 steps)."""
        shape = bias_shape(site, ndim) if np.ndim(ratio) else ()
        # A channel whose ratio is below 2**-31 cannot reach half a step from any int32
        # accumulator: its output is 0. (Per-channel scales of near-empty channels get there.)
        dead = np.asarray(ratio) < 2.0 ** -31
        ratio = np.where(dead, 1.0, ratio)
        wide = self.bb.emit(R.astype(acc, "int64"))
        if self.config.shift_only:  # with "shift" weight scales, powers of two up to float rounding
            exponent = np.asarray(power2_exponent(ratio, tolerance=1e-9), dtype=np.int64)
            left, right = np.maximum(exponent, 0), np.maximum(-exponent, 0)
            if left.any():
                wide = self.bb.emit(R.left_shift(wide, _const(left, shape)))
            rounded = self._rounding_shift(wide, right, shape, enabled=self.config.round_for_shift)
        else:
            mantissa, shift = fixed_point_multiplier(ratio)
            product = self.bb.emit(R.multiply(wide, _const(mantissa, shape)))
            rounded = self._rounding_shift(product, np.asarray(shift, dtype=np.int64), shape, enabled=True)
        if dead.any():
            rounded = self.bb.emit(R.multiply(rounded, _const((~dead).astype(np.int64), shape)))
        if zero_point:
            rounded = self.bb.emit(R.add(rounded, relax.const(zero_point, "int64")))
        return self.bb.emit(R.astype(R.clip(rounded, *bounds), "int8"))

    def _rounding_shift(self, value: relax.Expr, shift: np.ndarray, shape: tuple[int, ...], *,
                        enabled: bool) -> relax.Expr:
        """``value >> shift`` rounding as configured: UPWARD adds half a step (ties go up),
        TONEAREST adds one less for negative values (ties go away from zero)."""
        if not shift.any():
            return value
        if enabled:
            half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
            value = self.bb.emit(R.add(value, _const(half, shape)))
            if self.config.rounding == "TONEAREST":
                negative = R.astype(R.less(value, relax.const(0, "int64")), "int64")
                value = self.bb.emit(R.subtract(value,
                                                R.multiply(negative, _const((shift > 0).astype(np.int64), shape))))
        return self.bb.emit(R.right_shift(value, _const(shift, shape)))

    # -- int8 pass-through ----------------------------------------------------------------------

    def _int8_pass_through(self, value: relax.Expr) -> Int8 | None:
        """Apply an order-preserving op to int8 data directly (None if it does not apply)."""
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or not value.args:
            return None
        data = value.args[0]
        if not (isinstance(data, relax.Var) and data in self.int8):
            return None
        name = value.op.name.removeprefix("relax.")
        quantized, scale, zero_point = self.int8[data]
        if name == "nn.relu" and zero_point:  # the stored value of 0 is the zero point
            return Int8(self.bb.emit(R.maximum(quantized, relax.const(zero_point, "int8"))), scale, zero_point)
        if name in INT8_TRANSPARENT:
            call = relax.Call(value.op, [quantized, *value.args[1:]], value.attrs, value.ty_args)
            return Int8(self.bb.emit(call), scale, zero_point)
        if name == "clip":
            bounds = int8_bounds(*activation_bounds(value), scale, zero_point)
            return Int8(self.bb.emit(R.clip(quantized, *bounds)), scale, zero_point)
        return None


def _int8_readers(bindings: list[relax.Binding], result: relax.Expr, sites: dict[Any, Site],
                  config: QuantConfig, scales: dict[int, SiteScales]) -> set[Any]:
    """Vars every reader of which takes int8: an enabled site's data input, or an int8-transparent
    op whose own result has only such readers. Only these are requantized to int8."""
    readers: dict[Any, list[tuple[str, Any]]] = {}
    for var in vars_in(result):
        readers.setdefault(var, []).append(("float", None))
    for binding in bindings:
        value = binding.value
        site = sites.get(value)
        for index, var in enumerate(vars_in(value)):
            if site is not None and index == 0 and site_enabled(site, config) and var.same_as(site.input) \
                    and scales[site.index].input_bits <= 8:  # a wide input is read in float
                kind = "site"
            elif isinstance(value, relax.Call) and getattr(value.op, "name", "").removeprefix("relax.") in (
                    INT8_TRANSPARENT | {"clip"}) and value.args and var.same_as(value.args[0]):
                kind = "transparent"
            else:
                kind = "float"
            readers.setdefault(var, []).append((kind, binding.var))
    int8: set[Any] = set()
    for binding in reversed(bindings):  # readers come after what they read
        var = sites[binding.value].output if binding.value in sites else binding.var
        uses = readers.get(var, [])
        if uses and all(kind == "site" or (kind == "transparent" and out in int8) for kind, out in uses):
            int8.add(var)
    return int8




def weight_error_on_mean(site: Site, error: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Per output channel, what the weight ``error`` (quantized minus float weights) adds to the
    site's output for an input at its calibration ``means`` (one per input channel): the bias
    shift that bias correction takes away."""
    if site.kind == MATMUL:
        return means @ error  # weight (in, out)
    groups = int(site.call.attrs.groups)
    out_channels, per_group = error.shape[:2]
    grouped_means = means.reshape(groups, per_group)  # input channel g * per_group + i
    summed = error.sum(axis=(2, 3)).reshape(groups, out_channels // groups, per_group)
    return np.einsum("goi,gi->go", summed, grouped_means).reshape(out_channels)


def int8_steps(values: relax.Expr, scale: float, zero_point: int = 0,
               bounds: tuple[int, int] | None = None) -> relax.Expr:
    """Float ``values`` as the int8 values that store them (rounded steps plus the zero point,
    clipped to the stored range, or to ``bounds``), still as float32 (not emitted)."""
    steps = R.round(R.divide(values, relax.const(scale, "float32")))
    if zero_point:
        steps = R.add(steps, relax.const(float(zero_point), "float32"))
    return R.clip(steps, *(bounds or int8_bounds(-np.inf, np.inf, scale, zero_point)))


def from_int8_steps(stored: relax.Expr, scale: float, zero_point: int = 0) -> relax.Expr:
    """The real value of float32 ``stored`` int8 values: ``(stored - zero_point) * scale`` (not emitted)."""
    if zero_point:
        stored = R.subtract(stored, relax.const(float(zero_point), "float32"))
    return R.multiply(stored, relax.const(scale, "float32"))


def int8_bounds(low: float, high: float, scale: float, zero_point: int = 0) -> tuple[int, int]:
    """The stored int8 values inside ``[low, high]`` at ``scale``: within [-127, 127] for a
    signed value (zero point 0), within [0, 255] steps stored as -128..127 for an unsigned one."""
    least, most = (-QMAX, QMAX) if not zero_point else (0, UMAX)
    low_q = least if low == -np.inf else int(np.clip(np.ceil(low / scale), least, most))
    high_q = most if high == np.inf else int(np.clip(np.floor(high / scale), least, most))
    return low_q + zero_point, high_q + zero_point


def _weight_sums(weights: np.ndarray, site: Site) -> np.ndarray:
    """Each output channel's sum of int8 weights (int64): what an input zero point multiplies."""
    wide = weights.astype(np.int64)
    return wide.sum(axis=tuple(range(1, wide.ndim))) if site.kind == CONV else wide.sum(axis=0)


def _const(values: np.ndarray, shape: tuple[int, ...], dtype: str = "int64") -> relax.Expr:
    """A per-channel (reshaped to ``shape``) or scalar constant of ``dtype``."""
    array = np.asarray(values, dtype=dtype)
    return relax.const(array.reshape(shape) if array.ndim else array, dtype)
