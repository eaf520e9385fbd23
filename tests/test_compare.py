"""Unit tests of pytest_tvmdeploy.checks.elementwise: statistics, special values, problems, describe()."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_tvmdeploy.checks.elementwise import Comparison, compare, compare_arrays
from pytest_tvmdeploy.checks.tolerances import Tolerance, ToleranceRules

F32_DEFAULT = Tolerance(1e-4, 1e-5)


def _one(ref, act, tolerance=Tolerance(0.0, 0.0)):
    return compare_arrays("y", 0, np.asarray(ref), np.asarray(act), tolerance)


# -- exact match and a known perturbation -------------------------------------------------


def test_exact_match_passes_with_zero_statistics():
    ref = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    verdict = compare({"y": ref}, {"y": ref.copy()})
    assert bool(verdict) is True
    assert verdict.failures == ()
    (out,) = verdict.outputs
    assert out.passed
    assert (out.mismatched, out.total) == (0, 24)
    assert out.max_abs_error == 0.0
    assert out.max_rel_error == 0.0
    assert out.shape == (2, 3, 4)
    assert out.dtype == "float32"
    assert out.tolerance == F32_DEFAULT


def test_known_perturbation_gives_exact_statistics():
    ref = (np.arange(12, dtype=np.float32) + 1).reshape(3, 4)  # 1 .. 12
    act = ref.copy()
    act[1, 2] += 0.5    # 7 -> 7.5   : abs 0.5,  rel 0.5/7
    act[2, 3] -= 0.25   # 12 -> 11.75: abs 0.25, rel 0.25/12
    act[0, 1] += 1e-5   # 2 -> 2.00001: within rtol=1e-4 * 2 + 1e-5
    out = compare({"y": ref}, {"y": act}).outputs[0]
    assert out.tolerance == F32_DEFAULT
    assert out.mismatched == 2
    assert out.total == 12
    assert out.mismatched_share == pytest.approx(2 / 12)
    assert out.max_abs_error == 0.5
    assert out.max_rel_error == pytest.approx(0.5 / 7, rel=1e-12)
    assert out.worst_index == (1, 2)
    assert out.worst_reference == 7.0
    assert out.worst_actual == 7.5
    assert not out.passed


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_tolerance_boundary_is_inclusive(sign):
    # allowed = atol + rtol * |ref| = 0.5 + 0.25 * 2 = 1.0 (all exactly representable)
    tol = Tolerance(rtol=0.25, atol=0.5)
    ref = np.array([sign * 2.0])
    at_edge = _one(ref, np.array([sign * 3.0]), tol)
    assert at_edge.passed and at_edge.max_abs_error == 1.0
    beyond = _one(ref, np.array([np.nextafter(sign * 3.0, sign * np.inf)]), tol)
    assert not beyond.passed and beyond.mismatched == 1
    # rtol uses |reference|, not |actual|: ref 3 -> allowed 1.25, so an error of 1.2 passes
    assert _one(np.array([sign * 3.0]), np.array([sign * 1.8]), tol).passed


def test_zero_reference_uses_atol_only_and_infinite_rel_error():
    out = _one(np.array([0.0, 1.0]), np.array([0.5, 1.0]), Tolerance(rtol=10.0, atol=0.25))
    assert out.mismatched == 1
    assert out.max_abs_error == 0.5
    assert out.max_rel_error == math.inf
    assert out.worst_index == (0,)


def test_worst_element_of_a_failing_output_is_a_mismatched_one():
    # element 0: error 0.05 <= 1e-5 + 1e-4 * 1000 -> passes; element 1: error 1e-3 > 1e-5 -> fails.
    # The "worst element" of a failure report must point at an element that actually failed.
    out = _one(np.array([1000.0, 0.0]), np.array([1000.05, 0.001]), F32_DEFAULT)
    assert out.mismatched == 1
    assert out.worst_index == (1,)
    assert (out.worst_reference, out.worst_actual) == (0.0, 0.001)


# -- NaN / inf ---------------------------------------------------------------------------


def test_nan_in_same_places_is_equal():
    ref = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    out = _one(ref, ref.copy(), F32_DEFAULT)
    assert out.passed
    assert out.max_abs_error == 0.0 and out.max_rel_error == 0.0


@pytest.mark.parametrize(
    "ref, act",
    [([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0])],
    ids=["nan-in-reference", "nan-in-actual"],
)
def test_nan_in_one_side_only_is_a_mismatch(ref, act):
    out = _one(np.array(ref, np.float32), np.array(act, np.float32), Tolerance(1.0, 1.0))
    assert out.mismatched == 1
    assert out.max_abs_error == math.inf
    assert out.worst_index == (1,)
    assert math.isnan(out.worst_reference) != math.isnan(out.worst_actual)


def test_same_infinities_are_equal():
    ref = np.array([np.inf, -np.inf, 1.0])
    out = _one(ref, ref.copy(), F32_DEFAULT)
    assert out.passed and out.max_abs_error == 0.0


@pytest.mark.parametrize(
    "ref, act",
    [([np.inf], [-np.inf]), ([-np.inf], [np.inf]), ([np.inf], [1e300]), ([1.0], [np.inf])],
)
def test_different_infinities_are_a_mismatch(ref, act):
    out = _one(np.array(ref), np.array(act), Tolerance(1.0, 1.0))
    assert out.mismatched == 1
    assert out.max_abs_error == math.inf
    assert (out.worst_reference, out.worst_actual) == (ref[0], act[0])


# -- integers and bool ---------------------------------------------------------------------


def test_integer_outputs_are_exact_by_default():
    ref = np.array([10, 20, 30], dtype=np.int32)
    act = np.array([10, 21, 30], dtype=np.int32)
    verdict = compare({"ids": ref}, {"ids": act}, ToleranceRules(rtol=0.5, atol=5.0))
    out = verdict.outputs[0]
    assert out.tolerance.exact
    assert out.mismatched == 1 and out.max_abs_error == 1.0
    assert (out.worst_index, out.worst_reference, out.worst_actual) == ((1,), 20, 21)


@pytest.mark.parametrize("dtype, base", [(np.int64, 2**60), (np.int64, -(2**62)), (np.uint64, 2**64 - 2)])
def test_large_64bit_integers_differing_by_one_are_detected(dtype, base):
    assert base + 1 != base and float(base + 1) == float(base)  # float64 alone would miss it
    ref = np.array([base, 7], dtype=dtype)
    act = np.array([base + 1, 7], dtype=dtype)
    out = _one(ref, act)
    assert out.mismatched == 1
    assert out.max_abs_error == 1.0
    assert (out.worst_reference, out.worst_actual) == (base, base + 1)
    assert _one(ref, ref.copy()).passed


@pytest.mark.parametrize("dtype, lo, hi", [(np.uint8, 0, 255), (np.int8, -128, 127)])
def test_small_integer_difference_does_not_wrap(dtype, lo, hi):
    out = _one(np.array([lo], dtype), np.array([hi], dtype))
    assert out.max_abs_error == 255.0 and out.mismatched == 1


def test_integer_output_with_per_output_tolerance():
    ref = np.array([100, 200], dtype=np.int32)
    act = np.array([101, 200], dtype=np.int32)
    assert compare({"ids": ref}, {"ids": act}, ToleranceRules(per_output={"ids": {"atol": 1}}))
    assert not compare({"ids": ref}, {"ids": act}, ToleranceRules(per_output={"ids": {"atol": 0.5}}))


def test_bool_outputs_are_exact():
    ref = np.array([[True, False], [False, True]])
    act = np.array([[True, False], [True, True]])
    out = compare({"mask": ref}, {"mask": act}, ToleranceRules(rtol=1.0, atol=1.0)).outputs[0]
    assert out.tolerance.exact
    assert out.dtype == "bool"
    assert out.mismatched == 1 and out.max_abs_error == 1.0
    assert out.worst_index == (1, 0)
    assert (out.worst_reference, out.worst_actual) == (False, True)
    assert compare({"mask": ref}, {"mask": ref.copy()})


# -- problems: shape, dtype, missing, extra, empty ------------------------------------------


def test_shape_mismatch_is_a_problem_not_a_crash():
    verdict = compare({"y": np.zeros((2, 3), np.float32)}, {"y": np.zeros((3, 2), np.float32)})
    out = verdict.outputs[0]
    assert not verdict and not out.passed
    assert out.problem == "shape differs: reference (2, 3), actual (3, 2)"
    assert out.mismatched == 0 and out.worst_index is None
    assert "shape differs: reference (2, 3), actual (3, 2)" in verdict.describe()


def test_dtype_mismatch_is_a_problem_not_a_crash():
    verdict = compare({"y": np.zeros(3, np.float32)}, {"y": np.zeros(3, np.float64)})
    out = verdict.outputs[0]
    assert not verdict
    assert out.problem == "dtype differs: reference float32, actual float64"
    assert verdict.max_abs_error == 0.0  # problem outputs contribute no statistics


def test_missing_output():
    ref = {"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)}
    verdict = compare(ref, {"a": np.ones(2, np.float32)}, actual_name="cpp")
    assert not verdict
    assert verdict.outputs[0].passed
    missing = verdict.outputs[1]
    assert (missing.name, missing.index, missing.shape) == ("b", 1, (3,))
    assert missing.problem == "missing: cpp produced only 1 output(s)"
    assert verdict.failures == (missing,)


def test_extra_output():
    verdict = compare({"a": np.ones(2)}, {"a": np.ones(2), "b": np.zeros((4, 1), np.int32)},
                      reference_name="torch")
    assert not verdict
    assert len(verdict.outputs) == 2
    extra = verdict.outputs[1]
    assert extra.index == 1 and extra.shape == (4, 1) and extra.dtype == "int32"
    assert extra.problem == "unexpected: torch has only 1 output(s)"


def test_outputs_are_matched_by_position_not_name():
    verdict = compare({"logits": np.array([1.0, 2.0])}, {"output0": np.array([1.0, 2.0])})
    assert verdict and verdict.outputs[0].name == "logits"


def test_empty_arrays_match():
    out = compare({"y": np.zeros((0, 3), np.float32)}, {"y": np.zeros((0, 3), np.float32)}).outputs[0]
    assert out.passed
    assert (out.total, out.mismatched, out.mismatched_share) == (0, 0, 0.0)
    assert out.worst_index is None
    assert out.shape == (0, 3)


def test_empty_arrays_with_different_shapes_are_a_problem():
    out = compare({"y": np.zeros((0, 3))}, {"y": np.zeros((0, 4))}).outputs[0]
    assert out.problem == "shape differs: reference (0, 3), actual (0, 4)"


def test_zero_dim_arrays():
    out = _one(np.float64(1.0), np.float64(1.5), Tolerance(0.0, 0.25))
    assert out.mismatched == 1 and out.total == 1
    assert out.worst_index == ()
    assert (out.worst_reference, out.worst_actual) == (1.0, 1.5)


# -- Comparison: bool, failures, describe -------------------------------------------------


def _two_output_verdict() -> Comparison:
    ref = {"y": (np.arange(12, dtype=np.float32) + 1).reshape(3, 4), "ids": np.array([1, 2, 3], np.int64)}
    act = {"y": ref["y"].copy(), "ids": np.array([1, 5, 3], np.int64)}
    act["y"][1, 2] += 0.5
    return compare(ref, act, reference_name="torch", actual_name="tvm-cpp")


def test_comparison_bool_and_failures():
    verdict = _two_output_verdict()
    assert bool(verdict) is False
    assert [o.name for o in verdict.failures] == ["y", "ids"]
    assert verdict.max_abs_error == 3.0
    one_bad = compare({"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2), "b": np.array([1.0, 2.0])})
    assert [o.name for o in one_bad.failures] == ["b"]
    assert compare({}, {}) and compare({}, {}).failures == ()


def test_describe_failure_lists_header_and_each_failing_output():
    text = _two_output_verdict().describe()
    lines = text.splitlines()
    assert lines[0] == "tvm-cpp output differs from torch: 2 of 2 output(s) outside tolerance"
    assert "  y: float32 (3, 4)" in lines
    assert "    mismatched elements: 1 / 12 (8.33%) outside rtol=0.0001, atol=1e-05" in lines
    assert "    max abs error: 0.5    max rel error: 0.0714286" in lines
    assert "    worst element [1, 2]: reference=7.0, tvm-cpp=7.5" in lines
    assert "  ids: int64 (3,)" in lines
    assert "    mismatched elements: 1 / 3 (33.3%) outside exact" in lines
    assert "    worst element [1]: reference=2, tvm-cpp=5" in lines


def test_describe_only_lists_failing_outputs():
    ref = {"good": np.ones(2), "bad": np.zeros(2)}
    text = compare(ref, {"good": np.ones(2), "bad": np.array([0.0, 1.0])}).describe()
    assert text.splitlines()[0] == "tvm output differs from reference: 1 of 2 output(s) outside tolerance"
    assert "bad: float64 (2,)" in text
    assert "good" not in text


def test_describe_success_summary():
    verdict = compare({"a": np.array([2.0]), "b": np.array([1, 2])},
                      {"a": np.array([2.0625]), "b": np.array([1, 2])}, ToleranceRules(rtol=0.1))
    assert verdict
    assert verdict.describe() == "tvm matches reference on all 2 output(s) (max abs error 0.0625)"


def test_error_histogram_counts_every_element_once():
    from pytest_tvmdeploy.checks.histogram import LOG10_EDGES, error_histogram

    reference = {"a": np.zeros((2, 5), np.float32), "ids": np.arange(3)}
    actual = {"a": np.array([[0, 1e-7, 1e-7, 3e-3, 1e-20], [0, 0, np.nan, 5e4, 1.5e-5]], np.float32),
              "ids": np.arange(3)}
    histogram = error_histogram(reference, actual)
    assert histogram["total"] == 10 and histogram["exact"] == 3 and histogram["nonfinite"] == 1
    counts = dict(zip(LOG10_EDGES, histogram["counts"]))
    assert counts[-7.0] == 2 and counts[-3.0] == 1 and counts[-5.0] == 1
    assert counts[-12.0] == 1 and counts[2.5] == 1  # below and above the range: clipped into the end bins
    assert sum(histogram["counts"]) + histogram["exact"] + histogram["nonfinite"] == histogram["total"]
    assert error_histogram({"ids": np.arange(3)}, {"ids": np.arange(3)}) is None  # integers only
