"""The numeric core of the int8 quantizer: config, scales, integer requantization and calibration."""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.quantize.scales import (
    QMAX,
    activation_scale,
    fixed_point_multiplier,
    power2_exponent,
    power2_round_up,
    quantize_bias,
    quantize_to_int8,
    requantize,
    shift_requantize,
    shift_weight_scales,
    weight_scales,
)
from pytest_tvmdeploy.quantize.thresholds import (
    ActivationObserver,
    kl_divergence_threshold,
    percentile_threshold,
    threshold,
)

# ---------------------------------------------------------------------------------------- config


def test_config_defaults_are_the_old_qconfig_values() -> None:
    config = QuantConfig()
    assert (config.nbit_input, config.nbit_weight, config.nbit_activation) == (8, 8, 32)
    assert (config.dtype_input, config.dtype_weight, config.dtype_activation) == ("int8", "int8", "int32")
    assert config.calibrate_mode == "global_scale" and config.global_scale == 8.0
    assert config.weight_scale == "power2" and config.power2
    assert config.skip_dense_layer is True and config.skip_conv_layers == (0,)
    assert config.round_for_shift is True and config.rounding == "UPWARD"
    assert config.debug_enabled_ops is None and config.per_channel is False
    assert not config.needs_calibration
    assert "do_simulation" not in config.to_json()
    assert "do_simulation" in QuantConfig.__doc__


def test_config_from_value_forms() -> None:
    config = QuantConfig(calibrate_mode="max")
    assert QuantConfig.from_value(config) is config
    assert QuantConfig.from_value("int8") == QuantConfig()
    kl = QuantConfig.from_value("kl_divergence")
    assert kl.calibrate_mode == "kl_divergence" and kl.weight_scale == "power2" and kl.needs_calibration
    combined = QuantConfig.from_value("kl_divergence+max")
    assert (combined.calibrate_mode, combined.weight_scale, combined.power2) == ("kl_divergence", "max", False)
    assert QuantConfig.from_value("percentile+max+per_channel").per_channel
    from_dict = QuantConfig.from_value({"calibrate_mode": "percentile", "percentile": 99.9,
                                        "skip_conv_layers": [2, 1, 2]})
    assert from_dict.percentile == 99.9 and from_dict.skip_conv_layers == (1, 2)
    assert QuantConfig(debug_enabled_ops=["nn.conv2d"]).debug_enabled_ops == ("nn.conv2d",)
    assert QuantConfig(debug_enabled_ops="matmul").debug_enabled_ops == ("matmul",)
    assert QuantConfig(skip_conv_layers=None).skip_conv_layers == ()
    assert QuantConfig(global_scale=4).global_scale == 4.0
    assert isinstance(QuantConfig(global_scale=4).global_scale, float)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"nbit_input": 16}, ("nbit_input=16", "only", "nbit_weight=8")),
        ({"nbit_activation": 16}, ("nbit_activation", "only")),
        ({"dtype_weight": "uint8"}, ("dtype_weight", "int8")),
        ({"dtype_activation": "int16"}, ("dtype_activation", "int32")),
        ({"calibrate_mode": "minmax"}, ("calibrate_mode", "kl_divergence", "percentile")),
        ({"weight_scale": "pow2"}, ("weight_scale", "'power2'", "'max'")),
        ({"rounding": "DOWN"}, ("rounding", "UPWARD", "TONEAREST")),
        ({"percentile": 0}, ("percentile", "(0, 100]")),
        ({"percentile": 100.5}, ("percentile", "(0, 100]")),
        ({"percentile": float("nan")}, ("percentile",)),
        ({"global_scale": 0.0}, ("global_scale", "> 0")),
        ({"global_scale": "8"}, ("global_scale",)),
        ({"skip_conv_layers": (-1,)}, ("skip_conv_layers", ">= 0")),
        ({"skip_conv_layers": (1.5,)}, ("skip_conv_layers",)),
        ({"skip_conv_layers": "0"}, ("skip_conv_layers",)),
        ({"debug_enabled_ops": ("nn.dense",)}, ("debug_enabled_ops", "nn.conv2d", "matmul")),
        ({"debug_enabled_ops": ()}, ("debug_enabled_ops", "None")),
        ({"per_channel": "yes"}, ("per_channel", "True or False")),
        ({"round_for_shift": 1}, ("round_for_shift",)),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("value", ["minmax", "kl_divergence+pow2", "max+max+channels", "+max", "", "int8+max", 42])
def test_config_from_value_rejects_bad_forms(value: object) -> None:
    with pytest.raises(ConfigError, match="quantiz"):
        QuantConfig.from_value(value)


def test_config_from_dict_lists_known_fields() -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_value({"calibrate": "max", "rounding": "UPWARD"})
    message = str(info.value)
    assert "'calibrate'" in message and "calibrate_mode" in message and "skip_conv_layers" in message
    assert "'rounding'" not in message.split("known fields")[0]


def test_config_label_json_and_hash() -> None:
    assert QuantConfig().label == "int8-global_scale-power2"
    assert QuantConfig(calibrate_mode="kl_divergence", weight_scale="max", per_channel=True).label == (
        "int8-kl_divergence-max-perchannel"
    )
    config = QuantConfig(
        calibrate_mode="percentile", percentile=99.5, skip_conv_layers=(3, 0), debug_enabled_ops=("matmul",)
    )
    data = json.loads(json.dumps(config.to_json()))
    assert data["skip_conv_layers"] == [0, 3] and data["debug_enabled_ops"] == ["matmul"]
    assert QuantConfig(**data) == config
    assert hash(QuantConfig(**data)) == hash(config)
    assert QuantConfig(**QuantConfig().to_json()) == QuantConfig()
    assert config != QuantConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rounding = "TONEAREST"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------- scales


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, 1.0), (0.5, 0.5), (8.0, 8.0), (2.0**-40, 2.0**-40), (3.0, 4.0), (5.0, 8.0), (1.0000001, 2.0), (0.3, 0.5)],
)
def test_power2_round_up(value: float, expected: float) -> None:
    assert power2_round_up(value) == expected


def test_power2_round_up_tiny_and_invalid() -> None:
    for value in (1e-300, 5e-324, 1e-8, 7e300):
        result = power2_round_up(value)
        assert value <= result < 2 * value
        assert math.frexp(result)[0] == 0.5
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            power2_round_up(bad)


def test_activation_scale_formulas() -> None:
    assert activation_scale(8.0, power2=True) == 1 / 16
    assert activation_scale(6.0, power2=True) == 8.0 / 128
    assert activation_scale(127.0, power2=False) == 1.0
    assert activation_scale(2.54, power2=False) == pytest.approx(0.02)
    for bad in (0.0, -3.0):
        for power2 in (True, False):
            scale = activation_scale(bad, power2=power2)
            assert 0 < scale < 1e-9
    # a power-of-two scale keeps T within 128 steps
    for t in (0.37, 1.0, 5.5, 1000.0):
        scale = activation_scale(t, power2=True)
        assert math.frexp(scale)[0] == 0.5 and 64 < t / scale <= 128


def test_weight_scales_per_tensor_and_per_channel() -> None:
    w = np.array([[0.5, -0.75, 0.1], [0.0, 0.0, 0.0], [2.0, 1.0, -3.0], [0.01, 0.0, 0.0]], dtype=np.float32)
    per_tensor = weight_scales(w, power2=False, per_channel=False)
    assert per_tensor.shape == () and per_tensor.dtype == np.float32
    assert per_tensor == np.float32(3.0 / 127)
    assert weight_scales(w, power2=True, per_channel=False) == 4.0 / 128
    per_channel = weight_scales(w, power2=True, per_channel=True)
    assert per_channel.shape == (4,) and per_channel.dtype == np.float32
    assert per_channel.tolist() == [1 / 128, 1.0, 4 / 128, 2.0**-6 / 128]
    by_column = weight_scales(w, power2=False, per_channel=True, axis=1)
    np.testing.assert_allclose(by_column, np.array([2.0, 1.0, 3.0]) / 127, rtol=1e-7)
    assert weight_scales(w, power2=False, per_channel=True, axis=-1).tolist() == by_column.tolist()
    conv = np.random.default_rng(0).normal(size=(6, 3, 3, 3))
    conv[4] = 0
    scales = weight_scales(conv, power2=False, per_channel=True)
    assert scales.shape == (6,) and scales[4] == 1.0
    np.testing.assert_allclose(scales[:4], np.abs(conv[:4]).max(axis=(1, 2, 3)) / 127, rtol=1e-6)
    assert weight_scales(np.zeros((2, 2)), power2=True, per_channel=False) == 1.0


def test_power2_weight_scale_rounds_the_max_up() -> None:
    rng = np.random.default_rng(1)
    w = rng.uniform(-0.9, 0.9, size=(8, 50))
    w[0, 0] = 1.0  # exactly a power of two: maps to 128, clipped to 127 (one step lost)
    w[1, 0] = -0.999  # maps to -127.87, clipped to -127
    w[2] = rng.uniform(-0.3, 0.3, size=50)
    w[2, 0] = 0.4  # max 0.4 -> the scale comes from 0.5
    scales = weight_scales(w, power2=True, per_channel=True)
    assert scales[0] == scales[1] == 1 / 128 and scales[2] == 0.5 / 128
    q = quantize_to_int8(w, scales, axis=0)
    assert q[0, 0] == 127 and q[1, 0] == -127 and q[2, 0] == round(0.4 * 256)
    step = scales[:, None].astype(np.float64)
    error = np.abs(q * step - w)
    assert np.all(error <= step * (1 + 1e-9))
    inside = np.abs(w) <= QMAX * step
    assert np.all(error[inside] <= step[np.nonzero(inside)[0], 0] / 2 * (1 + 1e-9))
    assert inside.sum() == w.size - 2


def test_quantize_to_int8_rounds_half_away_from_zero_and_clips() -> None:
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994, -0.49999999999999994, 126.5, 300, -300])
    q = quantize_to_int8(values, np.float32(1.0))
    assert q.dtype == np.int8
    assert q.tolist() == [1, 2, 3, -1, -2, -3, 0, 0, 127, 127, -127]
    assert quantize_to_int8(np.array([0.75, -0.25]), 0.5).tolist() == [2, -1]


def test_quantize_to_int8_per_channel_axis() -> None:
    values = np.array([[[1.0, -3.0]], [[1.0, -3.0]], [[1.0, -3.0]]])  # (3, 1, 2)
    scales = np.array([1.0, 0.5, 0.01], dtype=np.float32)
    assert quantize_to_int8(values, scales, axis=0)[:, 0, :].tolist() == [[1, -3], [2, -6], [100, -127]]
    per_last = quantize_to_int8(values, np.array([1.0, 2.0]), axis=-1)
    assert per_last[:, 0, :].tolist() == [[1, -2]] * 3  # -1.5 -> -2
    with pytest.raises(ValueError):
        quantize_to_int8(np.array([np.nan]), 1.0)


def test_quantize_bias() -> None:
    bias = np.array([0.25, -0.25, 1.0, -1e12, 1e12, 0.0])
    q = quantize_bias(bias, np.float32(0.5) * np.array([1.0, 1.0, 0.25, 1, 1, 1]))
    assert q.dtype == np.int32
    assert q.tolist() == [1, -1, 8, -(2**31), 2**31 - 1, 0]
    with pytest.raises(ValueError):
        quantize_bias(bias, 0.0)


def test_requantize_round_trip_error_is_half_a_step() -> None:
    rng = np.random.default_rng(2)
    for t in (0.3, 1.0, 6.0, 100.0):
        for power2 in (True, False):
            scale = activation_scale(t, power2=power2)
            x = rng.uniform(-QMAX * scale, QMAX * scale, size=5000)
            back = quantize_to_int8(x, scale).astype(np.float64) * scale
            assert np.max(np.abs(back - x)) <= scale / 2 * (1 + 1e-12)
            beyond = quantize_to_int8(np.array([QMAX * scale * 1.5, -QMAX * scale * 9]), scale)
            assert beyond.tolist() == [127, -127]


# ------------------------------------------------------------------------ integer requantization


def test_fixed_point_multiplier_accuracy() -> None:
    rng = np.random.default_rng(3)
    real = np.exp(rng.uniform(math.log(1e-6), math.log(10.0), size=10_000))
    mantissa, shift = fixed_point_multiplier(real)
    assert mantissa.dtype == np.int64 and shift.dtype == np.int64 and mantissa.shape == real.shape
    assert np.all((mantissa >= 2**30) & (mantissa < 2**31))
    assert np.all((shift >= 0) & (shift <= 62))
    approx = mantissa.astype(np.float64) * np.exp2(-shift.astype(np.float64))  # exact: mantissa < 2**53
    assert np.max(np.abs(approx / real - 1)) < 2.0**-30
    for value in (1.0, 0.5, 2.0**-20, 3.0):
        m, s = fixed_point_multiplier(value)
        assert Fraction(int(m), 2 ** int(s)) == Fraction(value)
    m, s = fixed_point_multiplier(np.float64(1 - 2.0**-40))  # rounds up to 2**31: carried into the shift
    assert (int(m), int(s)) == (2**30, 30)
    assert fixed_point_multiplier(2.0**31 - 1)[1] == 0


@pytest.mark.parametrize("bad", [2.0**31, 1e12, 1e-12, 0.0, -0.5, float("nan")])
def test_fixed_point_multiplier_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="fixed_point_multiplier"):
        fixed_point_multiplier(np.array([0.5, bad]))


def _exact_round(value: Fraction, rounding: str) -> int:
    """Round an exact rational: UPWARD halves towards +inf, TONEAREST halves away from zero."""
    if rounding == "UPWARD":
        return math.floor(value + Fraction(1, 2))
    sign = -1 if value < 0 else 1
    return sign * math.floor(abs(value) + Fraction(1, 2))


def _clip(value: int) -> int:
    return max(-QMAX, min(QMAX, value))


def _random_requantize_case(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    real = np.exp(rng.uniform(math.log(1e-5), math.log(4.0), size=size))
    target = rng.uniform(-160, 160, size=size)  # mostly inside the int8 range, some clipped
    acc = np.clip(np.round(target / real), -(2**31), 2**31 - 1).astype(np.int64)
    wide = rng.random(size) < 0.1
    acc[wide] = rng.integers(-(2**31), 2**31, size=int(wide.sum()))
    return acc.astype(np.int32), real


@pytest.mark.parametrize("rounding", ["UPWARD", "TONEAREST"])
def test_requantize_matches_float_and_exact_math(rounding: str) -> None:
    rng = np.random.default_rng(4)
    acc, real = _random_requantize_case(rng, 100_000)
    mantissa, shift = fixed_point_multiplier(real)
    out = requantize(acc, mantissa, shift, rounding=rounding)
    assert out.dtype == np.int8 and out.shape == acc.shape
    float_ref = np.clip(np.round(acc.astype(np.float64) * real), -QMAX, QMAX)
    assert np.max(np.abs(out.astype(np.int64) - float_ref)) <= 1
    assert np.mean(out == float_ref) > 0.99
    for i in rng.choice(acc.size, size=3000, replace=False):
        exact = Fraction(int(acc[i]) * int(mantissa[i]), 2 ** int(shift[i]))
        assert out[i] == _clip(_exact_round(exact, rounding)), (acc[i], mantissa[i], shift[i])


def test_requantize_roundings_differ_exactly_on_negative_halves() -> None:
    acc = np.arange(-1000, 1001, dtype=np.int32)
    for shift in (1, 2, 5, 31):
        mantissa = 2**30 if shift == 31 else 1  # acc * 2**-1 or acc * 2**-shift
        up = requantize(acc, mantissa, shift, rounding="UPWARD").astype(np.int64)
        near = requantize(acc, mantissa, shift, rounding="TONEAREST").astype(np.int64)
        exact = [Fraction(int(a) * mantissa, 2**shift) for a in acc]
        negative_half = np.array([x < 0 and x.denominator == 2 for x in exact])
        inside = np.array([abs(x) < QMAX for x in exact])
        differs = up != near
        assert np.array_equal(differs, negative_half & inside)
        assert np.all(up[differs] - near[differs] == 1)
        assert [int(v) for v in up] == [_clip(_exact_round(x, "UPWARD")) for x in exact]
        assert [int(v) for v in near] == [_clip(_exact_round(x, "TONEAREST")) for x in exact]


def test_requantize_shift_zero_broadcasting_and_errors() -> None:
    acc = np.array([-3, 0, 5, 200], dtype=np.int32)
    assert requantize(acc, 1, 0, rounding="UPWARD").tolist() == [-3, 0, 5, 127]
    rng = np.random.default_rng(5)
    acc = rng.integers(-50_000, 50_000, size=(2, 3, 4)).astype(np.int32)
    mantissa, shift = fixed_point_multiplier(np.array([1e-3, 2e-3, 5e-4]))
    out = requantize(acc, mantissa.reshape(1, 3, 1), shift.reshape(1, 3, 1), rounding="TONEAREST")
    for c in range(3):
        assert np.array_equal(out[:, c], requantize(acc[:, c], mantissa[c], shift[c], rounding="TONEAREST"))
    with pytest.raises(ValueError):
        requantize(acc, 2**30, 63, rounding="UPWARD")
    with pytest.raises(ValueError):
        requantize(acc, 2**30, 3, rounding="DOWN")


def _shift_reference(value: int, shift: int, rounding: str, round_for_shift: bool) -> int:
    exact = Fraction(value) * Fraction(2) ** (-shift)
    if shift <= 0:
        return _clip(int(exact))
    return _clip(_exact_round(exact, rounding) if round_for_shift else math.floor(exact))


@pytest.mark.parametrize("round_for_shift", [True, False])
@pytest.mark.parametrize("rounding", ["UPWARD", "TONEAREST"])
def test_shift_requantize_is_exact(rounding: str, round_for_shift: bool) -> None:
    rng = np.random.default_rng(6)
    acc = np.concatenate(
        [np.arange(-300, 301), rng.integers(-(2**31), 2**31, size=300), [-(2**31), 2**31 - 1]]
    ).astype(np.int32)
    for shift in (-40, -7, -1, 0, 1, 2, 3, 8, 17, 31, 40):
        out = shift_requantize(acc, shift, rounding=rounding, round_for_shift=round_for_shift)
        assert out.dtype == np.int8
        expected = [_shift_reference(int(a), shift, rounding, round_for_shift) for a in acc]
        assert [int(v) for v in out] == expected, shift
    per_channel = shift_requantize(
        acc[:600].reshape(200, 3), np.array([[2, 0, -1]]), rounding=rounding, round_for_shift=round_for_shift
    )
    for c, s in enumerate((2, 0, -1)):
        column = acc[:600].reshape(200, 3)[:, c]
        assert [int(v) for v in per_channel[:, c]] == [
            _shift_reference(int(a), s, rounding, round_for_shift) for a in column
        ]


def test_shift_requantize_examples() -> None:
    acc = np.array([-5, -6, -7, 5, 6, 7], dtype=np.int32)
    assert shift_requantize(acc, 1, rounding="UPWARD", round_for_shift=True).tolist() == [-2, -3, -3, 3, 3, 4]
    assert shift_requantize(acc, 1, rounding="TONEAREST", round_for_shift=True).tolist() == [-3, -3, -4, 3, 3, 4]
    assert shift_requantize(acc, 1, rounding="UPWARD", round_for_shift=False).tolist() == [-3, -3, -4, 2, 3, 3]
    assert shift_requantize(acc, -4, rounding="UPWARD", round_for_shift=True).tolist() == [-80, -96, -112, 80, 96, 112]
    assert shift_requantize(np.array([9, -9]), -4, rounding="UPWARD", round_for_shift=True).tolist() == [127, -127]
    with pytest.raises(ValueError):
        shift_requantize(acc, 63, rounding="UPWARD", round_for_shift=True)


def test_power2_exponent() -> None:
    assert int(power2_exponent(1.0)) == 0
    assert int(power2_exponent(0.25)) == -2
    assert power2_exponent(np.array([2.0**40, 2.0**-70, 8.0])).tolist() == [40, -70, 3]
    assert power2_exponent(np.float32(1 / 16) / np.float32(1 / 128)).dtype == np.int64
    for bad in (3.0, 0.0, -2.0, float("inf"), 1 + 2.0**-30):
        with pytest.raises(ValueError, match="power of two"):
            power2_exponent(bad)


@pytest.mark.parametrize("power2", [True, False])
def test_integer_dense_layer_matches_float(power2: bool) -> None:
    """x, W and b quantized, int32 accumulation, requantized: within one output step of float."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 64))
    w = rng.normal(scale=0.2, size=(10, 64))
    b = rng.normal(size=10)
    s_x = activation_scale(np.abs(x).max(), power2=power2)
    s_w = weight_scales(w, power2=power2, per_channel=True).astype(np.float64)
    xq = quantize_to_int8(x, s_x).astype(np.int64)
    wq = quantize_to_int8(w, s_w, axis=0).astype(np.int64)
    acc = xq @ wq.T + quantize_bias(b, s_x * s_w)
    assert np.all(np.abs(acc) < 2**31)
    y_from_quantized = (xq * s_x) @ (wq * s_w[:, None]).T + b
    s_y = activation_scale(np.abs(y_from_quantized).max(), power2=power2)
    if power2:
        shift = -power2_exponent(s_x * s_w / s_y)
        out = shift_requantize(acc, shift, rounding="UPWARD", round_for_shift=True)
    else:
        mantissa, shift = fixed_point_multiplier(s_x * s_w / s_y)
        out = requantize(acc, mantissa, shift, rounding="UPWARD")
    expected = quantize_to_int8(y_from_quantized, s_y)
    assert np.max(np.abs(out.astype(np.int64) - expected)) <= 1
    float_error = np.abs(out * s_y - (x @ w.T + b))
    assert np.max(float_error) < 0.05 * np.abs(x @ w.T + b).max()


# ------------------------------------------------------------------------------------ calibration


def test_observer_basics() -> None:
    observer = ActivationObserver("relu0", bins=4)
    assert observer.count == 0 and observer.max_abs == 0.0
    observer.update(np.array([], dtype=np.float32))
    observer.update(np.zeros(3))
    observer.update(np.array([0.1]))  # range 0.125: bins of 1/32; 0.1 -> bin 3
    counts, edges = observer.histogram
    assert counts.tolist() == [3, 0, 0, 1] and edges.tolist() == [0, 1 / 32, 2 / 32, 3 / 32, 4 / 32]
    observer.update(np.array([-0.3, 0.125]))  # range 0.5 (4x): the old bins merge into bin 0
    counts, edges = observer.histogram
    assert counts.tolist() == [4, 1, 1, 0] and edges[-1] == 0.5
    assert observer.count == 6 and observer.max_abs == 0.3
    with pytest.raises(ValueError, match="relu0"):
        observer.update(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        ActivationObserver("x", bins=0)


def test_observer_batches_with_growing_ranges_equal_one_pass() -> None:
    rng = np.random.default_rng(8)
    data = rng.standard_normal(300_000) * np.exp(rng.uniform(-3, 3, size=300_000))
    order = np.argsort(np.abs(data))  # every batch widens the range
    whole = ActivationObserver("whole")
    whole.update(data)
    batched = ActivationObserver("batched")
    for part in np.array_split(data[order], 13):
        batched.update(part.reshape(-1, 1))
    assert batched.max_abs == whole.max_abs == np.abs(data).max()
    assert batched.count == whole.count == data.size
    assert np.array_equal(batched.histogram[0], whole.histogram[0])
    assert np.array_equal(batched.histogram[1], whole.histogram[1])
    counts, edges = whole.histogram
    assert counts.sum() == data.size and counts.size == 2048 and edges[0] == 0
    assert edges[-1] > whole.max_abs >= edges[-1] / 2 and math.frexp(edges[-1])[0] == 0.5
    inside = np.histogram(np.abs(data), bins=edges)[0]
    assert np.abs(inside - counts).sum() <= 2  # only float ties at bin edges may differ


def _brute_force_kl_threshold(counts: np.ndarray, edges: np.ndarray, levels: int) -> float:
    """TensorRT's loop written out directly (one candidate at a time)."""
    counts = counts.astype(np.float64)
    end = int(np.flatnonzero(counts)[-1]) + 1
    best, best_kl = None, math.inf
    for kept in range(levels, end + 1):
        p = counts[:kept].copy()
        p[-1] += counts[kept:].sum()
        support = p > 0
        q = np.zeros(kept)
        starts = [j * kept // levels for j in range(levels + 1)]
        for j in range(levels):
            lo, hi = starts[j], starts[j + 1]
            n = support[lo:hi].sum()
            if n:
                q[lo:hi] = np.where(support[lo:hi], counts[lo:hi].sum() / n, 0.0)
        p /= p.sum()
        q = q / q.sum() if q.sum() else q
        q = (1 - 1e-4) * q + 1e-4 * support / support.sum()
        kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
        if kl < best_kl - 1e-12:
            best, best_kl = kept, kl
    return float(edges[best])


def test_kl_threshold_matches_a_direct_implementation() -> None:
    rng = np.random.default_rng(9)
    for trial in range(4):
        data = np.abs(rng.standard_t(df=3 + trial, size=20_000))
        counts, edges = np.histogram(data, bins=300, range=(0, data.max()))
        assert kl_divergence_threshold(counts, edges, levels=16) == _brute_force_kl_threshold(counts, edges, 16)


def test_kl_threshold_on_normal_data() -> None:
    rng = np.random.default_rng(10)
    data = rng.standard_normal(1_000_000)
    observer = ActivationObserver("normal")
    observer.update(data)
    t = threshold(observer, QuantConfig(calibrate_mode="kl_divergence"))
    # A Gaussian's KL optimum is near its end: what clipping there is comes from the sparse tail.
    assert 2.5 <= t <= 5.0
    assert t < observer.max_abs and np.sum(np.abs(data) > t) >= 2
    assert t == kl_divergence_threshold(*observer.histogram)


def test_kl_threshold_clips_heavy_tails_much_more() -> None:
    rng = np.random.default_rng(11)
    observer = ActivationObserver("laplace")
    observer.update(rng.laplace(size=1_000_000))
    t = threshold(observer, QuantConfig(calibrate_mode="kl_divergence"))
    assert 6.0 <= t <= 0.85 * observer.max_abs


def test_kl_threshold_keeps_uniform_data() -> None:
    observer = ActivationObserver("uniform")
    observer.update(np.random.default_rng(12).uniform(-1, 1, size=1_000_000))
    assert threshold(observer, QuantConfig(calibrate_mode="kl_divergence")) >= 0.9


def test_kl_threshold_ignores_a_few_huge_outliers() -> None:
    rng = np.random.default_rng(13)
    data = np.concatenate([rng.standard_normal(1_000_000), np.full(10, 1000.0)])
    # 128 levels can't go below 128 bins: resolving a bulk 1000x smaller than the max needs fine bins
    observer = ActivationObserver("outliers", bins=65536)
    observer.update(data)
    t = threshold(observer, QuantConfig(calibrate_mode="kl_divergence"))
    assert 2.5 < t < 10
    coarse = ActivationObserver("coarse")  # 2048 bins over [0, 1024): the smallest candidate is 64
    coarse.update(data)
    assert kl_divergence_threshold(*coarse.histogram) == 64.0


def test_kl_threshold_with_few_occupied_bins_is_the_data_end() -> None:
    counts = np.array([5, 0, 3, 1] + [0] * 200)
    edges = np.arange(counts.size + 1) / 10
    assert kl_divergence_threshold(counts, edges) == pytest.approx(0.4)
    assert kl_divergence_threshold(np.zeros(10), np.zeros(11)) == 0.0


def test_percentile_threshold() -> None:
    rng = np.random.default_rng(14)
    data = rng.standard_normal(500_000) * 3
    observer = ActivationObserver("p")
    observer.update(data)
    counts, edges = observer.histogram
    width = edges[1]
    assert percentile_threshold(observer, 100) == observer.max_abs
    assert abs(percentile_threshold(observer, 50) - np.median(np.abs(data))) <= width
    assert abs(percentile_threshold(observer, 99.9) - np.percentile(np.abs(data), 99.9)) <= width
    config = QuantConfig(calibrate_mode="percentile", percentile=99.0)
    assert abs(threshold(observer, config) - np.percentile(np.abs(data), 99)) <= width
    for bad in (0, 101):
        with pytest.raises(ValueError):
            percentile_threshold(observer, bad)


def test_threshold_modes() -> None:
    observer = ActivationObserver("t")
    observer.update(np.array([-2.5, 1.0, 0.5]))
    assert threshold(observer, QuantConfig(calibrate_mode="max")) == 2.5
    assert threshold(None, QuantConfig()) == 8.0
    assert threshold(None, QuantConfig(global_scale=3)) == 3.0
    assert threshold(observer, QuantConfig(calibrate_mode="kl_divergence")) <= 2.5
    with pytest.raises(ValueError, match="calibration data"):
        threshold(None, QuantConfig(calibrate_mode="max"))
    with pytest.raises(ValueError, match="'empty'"):
        threshold(ActivationObserver("empty"), QuantConfig(calibrate_mode="percentile"))


@pytest.mark.parametrize("per_channel", [False, True])
def test_shift_weight_scales_make_every_requantization_ratio_a_power_of_two(per_channel: bool) -> None:
    rng = np.random.default_rng(4)
    weights = rng.standard_normal((6, 3, 3, 3)) * rng.uniform(0.01, 3, (6, 1, 1, 1))
    weights[2] = 0.0  # an all-zero channel
    input_scale, output_scale = 0.0123, 0.0871
    scales = shift_weight_scales(weights, output_scale / input_scale, per_channel=per_channel)
    assert scales.shape == ((6,) if per_channel else ())
    exponents = power2_exponent(input_scale * scales / output_scale, tolerance=1e-9)
    np.testing.assert_allclose(input_scale * scales / output_scale, np.ldexp(1.0, exponents), rtol=1e-12)
    magnitudes = np.abs(weights).reshape(6, -1).max(axis=1) if per_channel else np.abs(weights).max()
    steps = magnitudes / scales
    live = steps[steps > 0] if per_channel else np.atleast_1d(steps)
    assert np.all(live <= 127 * (1 + 1e-12)) and np.all(live > 63.5)  # the finest rung that fits max |w|
    with pytest.raises(ValueError, match="NaN or infinity"):
        shift_weight_scales(np.array([np.nan]), 1.0, per_channel=False)
    with pytest.raises(ValueError, match="not an exact power of two"):
        power2_exponent(np.array([1.0 + 1e-6]), tolerance=1e-9)
