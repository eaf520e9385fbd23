"""Unit tests of pytest_tvmdeploy.checks.tolerances: dtype defaults, test-wide values, per-output overrides."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_tvmdeploy.checks.elementwise import compare
from pytest_tvmdeploy.checks.tolerances import Tolerance, ToleranceRules
from pytest_tvmdeploy.errors import ConfigError


def _tol(rules: ToleranceRules, dtype: str, name: str = "y", index: int = 0) -> Tolerance:
    return rules.for_output(name, index, np.dtype(dtype))


@pytest.mark.parametrize(
    "dtype, expected",
    [("float16", (1e-2, 1e-2)), ("float32", (1e-4, 1e-5)), ("float64", (1e-7, 1e-9))],
)
def test_float_dtype_defaults(dtype, expected):
    assert _tol(ToleranceRules(), dtype) == Tolerance(*expected)


def test_float16_is_looser_than_float32_is_looser_than_float64():
    rules = ToleranceRules()
    f16, f32, f64 = (_tol(rules, d) for d in ("float16", "float32", "float64"))
    assert f16.rtol > f32.rtol > f64.rtol
    assert f16.atol > f32.atol > f64.atol


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint64", "bool"])
def test_integer_and_bool_defaults_are_exact(dtype):
    tol = _tol(ToleranceRules(), dtype)
    assert tol == Tolerance(0.0, 0.0)
    assert tol.exact
    assert str(tol) == "exact"


def test_tolerance_str():
    assert str(Tolerance(1e-4, 1e-5)) == "rtol=0.0001, atol=1e-05"
    assert str(Tolerance(0.0, 0.5)) == "rtol=0, atol=0.5"
    assert not Tolerance(0.0, 0.5).exact


def test_test_wide_values_apply_to_floats_only():
    rules = ToleranceRules(rtol=0.5, atol=0.25)
    assert _tol(rules, "float16") == Tolerance(0.5, 0.25)
    assert _tol(rules, "float32") == Tolerance(0.5, 0.25)
    assert _tol(rules, "float64") == Tolerance(0.5, 0.25)
    assert _tol(rules, "int32") == Tolerance(0.0, 0.0)
    assert _tol(rules, "bool") == Tolerance(0.0, 0.0)


def test_test_wide_rtol_alone_keeps_dtype_default_atol():
    assert _tol(ToleranceRules(rtol=0.5), "float32") == Tolerance(0.5, 1e-5)
    assert _tol(ToleranceRules(atol=0.5), "float16") == Tolerance(1e-2, 0.5)


def test_per_output_override_by_name():
    rules = ToleranceRules(rtol=0.5, atol=0.25, per_output={"y": {"rtol": 0.125}})
    assert _tol(rules, "float32", "y", 0) == Tolerance(0.125, 0.25)  # atol still test-wide
    assert _tol(rules, "float32", "z", 1) == Tolerance(0.5, 0.25)


def test_per_output_override_by_index():
    rules = ToleranceRules(per_output={1: {"atol": 2}})
    assert _tol(rules, "float32", "z", 1) == Tolerance(1e-4, 2.0)
    assert _tol(rules, "float32", "y", 0) == Tolerance(1e-4, 1e-5)


def test_name_wins_over_index():
    rules = ToleranceRules(per_output={"y": {"rtol": 0.1, "atol": 0.2}, 0: {"rtol": 0.9, "atol": 0.8}})
    assert _tol(rules, "float32", "y", 0) == Tolerance(0.1, 0.2)
    # another output at the same index is matched by its index
    assert _tol(rules, "float32", "z", 0) == Tolerance(0.9, 0.8)


def test_per_output_override_makes_integers_inexact():
    rules = ToleranceRules(rtol=0.5, per_output={"ids": {"atol": 1}})
    assert _tol(rules, "int64", "ids", 0) == Tolerance(0.0, 1.0)
    assert _tol(rules, "int64", "other", 1) == Tolerance(0.0, 0.0)


def test_unknown_override_key_is_a_config_error():
    rules = ToleranceRules(per_output={"y": {"rtl": 0.1, "atol": 0.1}})
    with pytest.raises(ConfigError, match=r"tolerances\['y'\].*rtl"):
        _tol(rules, "float32", "y", 0)


def test_check_names_accepts_valid_keys():
    ToleranceRules(per_output={"y": {"rtol": 1}, 1: {"atol": 1}}).check_names(["y", "z"])


@pytest.mark.parametrize(
    "key, message",
    [
        ("w", r"no output named 'w' \(outputs: y, z\)"),
        (2, r"output index 2 out of range \(model has 2 outputs\)"),
        (-1, r"output index -1 out of range"),
    ],
)
def test_check_names_rejects_bad_keys(key, message):
    with pytest.raises(ConfigError, match=message):
        ToleranceRules(per_output={key: {"rtol": 1}}).check_names(["y", "z"])


def test_rules_drive_compare():
    # an error of 5e-3 at |ref| = 1 is within the float16 default but not the float32 one
    ref16, ref32 = np.ones(4, np.float16), np.ones(4, np.float32)
    act16, act32 = ref16.copy(), ref32.copy()
    act16[2] = np.float16(1.005)
    act32[2] = np.float32(1.005)
    assert compare({"y": ref16}, {"y": act16})
    verdict = compare({"y": ref32}, {"y": act32})
    assert not verdict and verdict.outputs[0].mismatched == 1
    assert compare({"y": ref32}, {"y": act32}, ToleranceRules(per_output={0: {"atol": 0.01}}))
