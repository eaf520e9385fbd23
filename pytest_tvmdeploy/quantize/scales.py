"""Scales and integer arithmetic of symmetric int8 quantization (zero point 0, values in [-127, 127]).

The requantization functions here are the integer reference of what the quantized Relax graph computes.
"""

from __future__ import annotations

import math

import numpy as np

QMAX = 127
#: The steps of an unsigned activation (stored as int8 with zero point -128).
UMAX = 255
#: The base of a wide (16-bit) value's two int8 digits: ``value = DIGIT * high + low``.
DIGIT = 256
#: The steps of a wide value: the most whose digits both fit int8 (high <= 127, low in [-128, 127]).
WIDE_QMAX = 127 * DIGIT + 127
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
#: Largest right shift of :func:`requantize`: |int32 accumulator * mantissa| < 2**62 stays in int64.
MAX_SHIFT = 62
#: The threshold used in place of a non-positive one, so that no scale is ever 0.
_TINY_THRESHOLD = 1e-8
_ROUNDINGS = ("UPWARD", "TONEAREST")


def power2_round_up(value: float) -> float:
    """``2 ** ceil(log2(value))``, computed exactly: powers of two are returned unchanged."""
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"power2_round_up needs a finite value > 0, got {value!r}")
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return value if mantissa == 0.5 else math.ldexp(1.0, exponent)


def _scale_of(threshold: float, power2: bool, levels: int = QMAX) -> float:
    if not threshold > 0:  # also catches NaN
        threshold = _TINY_THRESHOLD
    return power2_round_up(threshold) / (levels + 1) if power2 else threshold / levels


def activation_scale(threshold: float, *, power2: bool, unsigned: bool = False) -> float:
    """The step size for clipping threshold ``threshold``.

    ``power2``: ``power2_round_up(T) / 128``, a power of two; ``T`` maps into (64, 128], so values
    above 127 steps (less than one step below the power of two) are clipped to 127. Otherwise
    ``T / 127``. ``unsigned`` (values in [0, T]): 255 steps instead of 127 (256 for ``power2``).
    A threshold <= 0 is replaced by a tiny one (1e-8), so the scale is never 0.
    """
    return _scale_of(float(threshold), power2, UMAX if unsigned else QMAX)


#: How far past the calibration's largest value a wide activation reaches: one of its 15 bits
#: keeps inputs unlike the calibration data (up to twice its range) from clipping.
WIDE_HEADROOM = 2.0


def wide_scale(max_abs: float, *, power2: bool) -> float:
    """The step size of a wide (16-bit, two int8 digits) activation whose calibration values reach
    ``max_abs``: ``WIDE_HEADROOM * max_abs / WIDE_QMAX``, or for ``power2`` the power of two
    ``power2_round_up(WIDE_HEADROOM * max_abs) / 2**15`` (the top 0.4% of that range clipped)."""
    if power2:
        return _scale_of(WIDE_HEADROOM * float(max_abs), True, 2**15 - 1)
    return _scale_of(WIDE_HEADROOM * float(max_abs), False, WIDE_QMAX)


def max_magnitudes(weights: np.ndarray, *, per_channel: bool, axis: int = 0, caller: str) -> np.ndarray:
    """``max |w|`` of the whole tensor (shape ``()``) or of each channel along ``axis`` (0 for an
    empty one), in float64; ``caller`` names the function in the errors."""
    magnitudes = np.abs(np.asarray(weights, dtype=np.float64))
    if not np.all(np.isfinite(magnitudes)):
        raise ValueError(f"{caller}: the weights contain NaN or infinity")
    if not per_channel:
        return np.asarray(magnitudes.max() if magnitudes.size else 0.0)
    if magnitudes.ndim == 0:
        raise ValueError(f"{caller}: per-channel scales need weights with at least one axis")
    axis = axis % magnitudes.ndim
    others = tuple(i for i in range(magnitudes.ndim) if i != axis)
    return np.atleast_1d(magnitudes.max(axis=others) if magnitudes.size else np.zeros(magnitudes.shape[axis]))


def weight_scales(weights: np.ndarray, *, power2: bool, per_channel: bool, axis: int = 0) -> np.ndarray:
    """float32 step sizes from ``max |w|``, with the formula of :func:`activation_scale`.

    Per tensor: shape ``()``; per channel: shape ``(weights.shape[axis],)``. A tensor or channel
    that is all zero gets scale 1.0. ``power2`` rounds the max *up* to a power of two ``P`` (as
    TVM's old implementation did; the old tutorial text said "down") and divides by 128: only
    weights above ``127/128 * P`` (such as one exactly at ``P``, which maps to 128) are clipped,
    and they lose less than one step.
    """
    maxima = max_magnitudes(weights, per_channel=per_channel, axis=axis, caller="weight_scales")
    scales = np.array([_scale_of(float(m), power2) if m > 0 else 1.0 for m in maxima.reshape(-1)])
    return scales.reshape(maxima.shape).astype(np.float32)


def shift_weight_scales(weights: np.ndarray, base: float, *, per_channel: bool, axis: int = 0) -> np.ndarray:
    """float64 step sizes ``base * 2**k``, each the finest of that ladder that keeps ``max |w|``
    within 127 steps (per tensor, shape ``()``, or per channel along ``axis``). With ``base =
    output_scale / input_scale``, the requantization ratio ``input * weight / output`` is ``2**k``:
    a shift, whatever the activation scales. An all-zero tensor or channel gets ``base``."""
    if not base > 0 or not math.isfinite(base):
        raise ValueError(f"shift_weight_scales: base must be a finite number > 0, got {base!r}")
    maxima = max_magnitudes(weights, per_channel=per_channel, axis=axis, caller="shift_weight_scales")
    ladder = QMAX * base
    exponents = np.ceil(np.log2(np.where(maxima > 0, maxima, ladder) / ladder))
    return np.ldexp(base, exponents.astype(np.int64))


def broadcast_along(scales: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Per-channel ``scales`` shaped to multiply an array of ``ndim`` axes along ``axis`` (per-tensor
    scales, or ``axis=None``, as they are), in float64."""
    scales = np.asarray(scales, dtype=np.float64)
    if axis is None or scales.ndim == 0:
        return scales
    if scales.ndim != 1:
        raise ValueError(f"per-channel scales must be 1-D, got shape {scales.shape}")
    shape = [1] * ndim
    shape[axis % ndim] = scales.shape[0]
    return scales.reshape(shape)


def round_half_away(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (exact: no ``x + 0.5`` rounding error)."""
    truncated = np.trunc(values)
    fraction = values - truncated  # exact in binary floating point
    return truncated + np.where(np.abs(fraction) >= 0.5, np.sign(values), 0.0)


def quantize_to_int8(values: np.ndarray, scales: np.ndarray, *, axis: int | None = None) -> np.ndarray:
    """int8 of ``values / scale`` rounded half away from zero and clipped to [-127, 127].

    Computed in float64. With ``axis``, 1-D ``scales`` apply along that axis (per channel).
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("quantize_to_int8: the values contain NaN or infinity")
    scaled = values / broadcast_along(scales, values.ndim, axis)
    return np.clip(round_half_away(scaled), -QMAX, QMAX).astype(np.int8)


def quantize_bias(bias: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int32 of ``bias / scales`` rounded half away from zero, clipped to the int32 range.

    ``scales`` is ``input_scale * weight_scales`` (shape ``()`` or one per output channel).
    """
    bias = np.asarray(bias, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    if not np.all(scales > 0):
        raise ValueError("quantize_bias: the scales must be > 0")
    if not np.all(np.isfinite(bias)):
        raise ValueError("quantize_bias: the bias contains NaN or infinity")
    return np.clip(round_half_away(bias / scales), _INT32_MIN, _INT32_MAX).astype(np.int32)


def fixed_point_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mantissa, shift)`` int64 arrays with ``real ≈ mantissa * 2**-shift``.

    ``mantissa`` is in ``[2**30, 2**31)`` (relative error <= 2**-31) and ``shift`` in
    ``[0, 62]``: ``real`` must be in about ``[2**-32, 2**31)``, else ValueError.
    """
    real = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(real)) or not np.all(real > 0):
        raise ValueError(f"fixed_point_multiplier needs finite values > 0, got {real.tolist()!r}")
    fraction, exponent = np.frexp(real)  # real = fraction * 2**exponent, 0.5 <= fraction < 1
    mantissa = np.round(fraction * 2.0**31).astype(np.int64)  # in [2**30, 2**31]
    carry = mantissa == 2**31
    mantissa = np.where(carry, 2**30, mantissa)
    shift = np.asarray(31 - (exponent.astype(np.int64) + carry), dtype=np.int64)
    bad = (shift < 0) | (shift > MAX_SHIFT)
    if np.any(bad):
        value = float(real[bad].reshape(-1)[0])
        raise ValueError(
            f"fixed_point_multiplier: {value!r} needs a shift outside [0, {MAX_SHIFT}] "
            "(multipliers must lie in about [2**-32, 2**31))"
        )
    return mantissa, shift


def _rounding_term(values: np.ndarray, shift: np.ndarray, rounding: str) -> np.ndarray:
    """What to add before an arithmetic right shift by ``shift`` (>= 1) so that it rounds."""
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is not one of {', '.join(map(repr, _ROUNDINGS))}")
    half = np.left_shift(np.int64(1), np.maximum(shift - 1, 0))
    if rounding == "TONEAREST":
        half = half - (values < 0).astype(np.int64)
    return np.where(shift > 0, half, 0)


def _clip_int8(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -QMAX, QMAX).astype(np.int8)


def requantize(acc: np.ndarray, mantissa: np.ndarray, shift: np.ndarray, *, rounding: str) -> np.ndarray:
    """int8 of ``acc * mantissa * 2**-shift``: the integer reference of the graph's requantization.

    In int64: ``p = acc * mantissa``, then ``(p + r) >> shift`` (arithmetic shift) with
    ``r = 2**(shift-1)`` for ``UPWARD`` (halves go towards +inf) and, for ``TONEAREST``, ``r =
    2**(shift-1) - 1`` when ``p < 0`` (halves go away from zero); ``r = 0`` when ``shift == 0``.
    Then clip to [-127, 127]. ``mantissa``/``shift`` broadcast against ``acc`` with numpy rules
    (reshape per-channel values to e.g. ``(1, C, 1, 1)`` first).
    """
    acc = np.asarray(acc).astype(np.int64)
    mantissa = np.asarray(mantissa, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any((shift < 0) | (shift > MAX_SHIFT)):
        raise ValueError(f"requantize: shifts must be in [0, {MAX_SHIFT}], got {shift!r}")
    if np.any((mantissa < 0) | (mantissa >= 2**31)) or np.any((acc < _INT32_MIN) | (acc > _INT32_MAX)):
        raise ValueError("requantize: needs int32 accumulators and mantissas in [0, 2**31)")
    product = acc * mantissa
    return _clip_int8(np.right_shift(product + _rounding_term(product, shift, rounding), shift))


def shift_requantize(
    acc: np.ndarray, shift: int | np.ndarray, *, rounding: str, round_for_shift: bool
) -> np.ndarray:
    """int8 of ``acc * 2**-shift`` for power-of-two scales (``in_scale / out_scale == 2**-shift``).

    ``shift > 0``: arithmetic right shift, after adding the rounding term of :func:`requantize`
    when ``round_for_shift`` (else it floors). ``shift < 0``: left shift by ``-shift``. Then clip
    to [-127, 127]. Computed in int64 with ``|shift| <= 62``; for left shifts the input is first
    clipped to [-127, 127], which changes no result and cannot overflow.
    """
    acc = np.asarray(acc).astype(np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(np.abs(shift) > MAX_SHIFT):
        raise ValueError(f"shift_requantize: shifts must be in [-{MAX_SHIFT}, {MAX_SHIFT}], got {shift!r}")
    right = np.maximum(shift, 0)
    term = _rounding_term(acc, right, rounding) if round_for_shift else np.int64(0)
    if not round_for_shift and rounding not in _ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is not one of {', '.join(map(repr, _ROUNDINGS))}")
    shifted_right = np.right_shift(acc + term, right)
    shifted_left = np.left_shift(np.clip(acc, -QMAX, QMAX), np.maximum(-shift, 0))
    return _clip_int8(np.where(shift >= 0, shifted_right, shifted_left))


def power2_exponent(ratio: float | np.ndarray, *, tolerance: float = 0.0) -> np.ndarray:
    """int64 ``k`` with ``ratio == 2**k`` exactly (within a relative ``tolerance``, for ratios of
    float scales that are powers of two up to rounding); ValueError if a ratio is not one."""
    ratio = np.asarray(ratio, dtype=np.float64)
    if tolerance:
        nearest = np.ldexp(1.0, np.round(np.log2(np.where(ratio > 0, ratio, 1.0))).astype(np.int64))
        ratio = np.where(np.abs(ratio / nearest - 1) <= tolerance, nearest, ratio)
    fraction, exponent = np.frexp(ratio)
    bad = ~((fraction == 0.5) & np.isfinite(ratio))
    if np.any(bad):
        raise ValueError(f"power2_exponent: {float(ratio[bad].reshape(-1)[0])!r} is not an exact power of two")
    return (exponent - 1).astype(np.int64)
