"""Unit tests of pytest_tvmdeploy.checks.quantized: metrics on known data, budgets, problems, describe()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.quantized import QuantComparison, QuantMetrics, compare_quantized
from pytest_tvmdeploy.errors import ConfigError

NO_BUDGET = QuantBudget(min_cosine=None, min_sqnr_db=None, max_error_vs_range=None, max_outlier_share=None)


def _one(ref, act, budget: QuantBudget = QuantBudget()) -> QuantMetrics:
    return compare_quantized({"y": np.asarray(ref)}, {"y": np.asarray(act)}, budget).outputs[0]


# A 2-class-row batch whose metrics are worked out by hand (see test_hand_made_logits_metrics).
LOGITS_REF = np.array([[4, 0, -4, 0], [0, 2, 0, -2]], np.float32)
LOGITS_ACT = np.array([[2, 0, -2, 0], [1.5, 1, 0, -1]], np.float32)  # halved, and class 0 wins row 1


# -- identical outputs, known noise ---------------------------------------------------------


def test_identical_outputs_pass_with_perfect_metrics():
    ref = np.linspace(-3, 5, 40, dtype=np.float32).reshape(4, 10)
    verdict = compare_quantized({"logits": ref}, {"out0": ref.copy()})
    assert bool(verdict) is True
    assert verdict.failures == ()
    (out,) = verdict.outputs
    assert out.name == "logits"  # names come from the reference
    assert (out.shape, out.dtype) == ((4, 10), "float32")
    assert out.sqnr_db == math.inf
    assert out.cosine == 1.0
    assert (out.max_abs_error, out.error_vs_range, out.outlier_share) == (0.0, 0.0, 0.0)
    assert out.top_k_agreement == 1.0
    assert out.failed == () and out.problem is None and out.passed
    assert verdict.describe() == (
        "tvm (int8) vs reference (fp32): all 1 output(s) within the quantization budget "
        "(min cosine 1, min SQNR inf dB)"
    )


@pytest.mark.parametrize("target_db", [5.0, 10.0, 20.0, 30.0, 45.0])
def test_gaussian_noise_at_a_chosen_snr(target_db):
    rng = np.random.default_rng(int(target_db))
    ref = (rng.normal(size=(50, 1000)) * 3 + 1).astype(np.float32)
    noise_power = np.mean(ref.astype(np.float64) ** 2) / 10 ** (target_db / 10)
    act = (ref + rng.normal(scale=math.sqrt(noise_power), size=ref.shape)).astype(np.float32)
    out = _one(ref, act)
    assert abs(out.sqnr_db - target_db) < 0.5
    # noise uncorrelated with the signal: cosine = 1 / sqrt(1 + noise/signal)
    assert out.cosine == pytest.approx(1 / math.sqrt(1 + 10 ** (-target_db / 10)), abs=2e-3)
    # the default budget (cosine >= 0.95, SQNR >= 10 dB) draws the line at 10 dB of noise
    assert out.passed is (target_db > 10.5)
    if target_db < 10:
        assert set(out.failed) >= {"cosine", "sqnr_db"}


def test_sqnr_of_a_scale_error_is_exact_while_cosine_is_blind_to_it():
    ref = np.array([1.0, -2.0, 3.0, 0.5])
    out = _one(ref, 0.5 * ref)  # error = ref / 2 -> signal / noise = 4
    assert out.cosine == pytest.approx(1.0, abs=1e-15)
    assert out.sqnr_db == pytest.approx(10 * math.log10(4), rel=1e-12)
    assert out.failed == ("sqnr_db", "error_vs_range")  # 1.5 / 5 = 0.3 > 0.25
    assert out.error_vs_range == pytest.approx(0.3, rel=1e-12)


@pytest.mark.parametrize(("act", "cosine"), [
    ([0.0, 2.0, 0.0, 0.0], 0.0),      # orthogonal
    ([-1.0, 0.0, 3.0, 0.0], -1.0),    # opposite
    ([0.0, 0.0, 0.0, 0.0], 0.0),      # a zero output has no direction
])
def test_cosine_of_constructed_vectors(act, cosine):
    out = _one(np.array([1.0, 0.0, -3.0, 0.0]), np.array(act))
    assert out.cosine == pytest.approx(cosine, abs=1e-15)
    assert "cosine" in out.failed


def test_cosine_of_a_scaled_copy_passes_cosine_but_not_sqnr():
    out = _one(np.array([1.0, 0.0, -3.0, 0.0]), np.array([3.0, 0.0, -9.0, 0.0]))
    assert out.cosine == pytest.approx(1.0, abs=1e-15)
    assert out.sqnr_db == pytest.approx(10 * math.log10(1 / 4), rel=1e-12)  # error = 2 * ref
    assert "cosine" not in out.failed and "sqnr_db" in out.failed


def test_all_zero_outputs_are_identical_and_a_zero_reference_has_no_signal():
    same = _one(np.zeros(3), np.zeros(3))
    assert (same.cosine, same.sqnr_db, same.error_vs_range) == (1.0, math.inf, 0.0)
    assert same.passed
    off = _one(np.zeros(4), np.array([0.0, 0.5, 0.0, 0.0]))
    assert (off.cosine, off.sqnr_db) == (0.0, -math.inf)
    assert off.error_vs_range == 0.5       # range 0 and max|ref| 0: divide by 1
    assert off.outlier_share == 0.25       # quantization step 0: any error is an outlier


def test_metrics_are_computed_in_float64():
    # float16 squares overflow (65504 max); float64 sums do not
    ref = np.array([60000, -60000, 30000, 1000], np.float16)
    act = np.array([59968, -60000, 30000, 1000], np.float16)
    out = _one(ref, act)
    signal = 60000.0**2 * 2 + 30000.0**2 + 1000.0**2
    assert out.sqnr_db == pytest.approx(10 * math.log10(signal / 32.0**2), rel=1e-12)
    assert out.max_abs_error == 32.0
    # and huge float64 values do not overflow either
    big = _one(np.array([1e200, -1e200]), np.array([1e200, -0.5e200]))
    assert big.sqnr_db == pytest.approx(10 * math.log10(8), rel=1e-12)
    assert big.cosine == pytest.approx(3 / math.sqrt(10), rel=1e-12)


# -- top-k agreement ------------------------------------------------------------------------


TOPK_REF = np.array([
    [0.1, 5.0, 0.3, 0.2, 0.0],
    [3.0, 0.0, 1.0, 0.5, 0.2],
    [0.0, 0.0, 0.0, 0.1, 9.0],
    [1.0, 2.0, 4.0, 0.0, 0.5],   # reference top-1: class 2
], np.float32)
TOPK_ACT = np.array([
    [0.2, 4.5, 0.4, 0.1, 0.0],
    [2.5, 0.1, 1.2, 0.4, 0.3],
    [0.1, 0.0, 0.0, 0.2, 8.0],
    [1.0, 3.5, 3.0, 0.0, 0.5],   # quantized: class 1 first, class 2 second
], np.float32)


@pytest.mark.parametrize(("k", "agreement"), [(1, 0.75), (2, 1.0), (5, 1.0), (9, 1.0)])
def test_top_k_agreement_on_a_constructed_batch(k, agreement):
    out = _one(TOPK_REF, TOPK_ACT, QuantBudget(top_k=k, min_top_k_agreement=0.8))
    assert out.top_k_agreement == agreement
    assert ("top_k_agreement" in out.failed) is (agreement < 0.8)


def test_top_k_ties_in_the_quantized_output_count_in_favour():
    ref = np.array([[1.0, 3.0, 2.0]], np.float32)
    tied = np.array([[3.0, 3.0, 1.0]], np.float32)  # classes 0 and 1 tie for first
    assert _one(ref, tied, QuantBudget(top_k=1)).top_k_agreement == 1.0
    beaten = np.array([[3.0, 2.0, 2.0]], np.float32)  # one class strictly above class 1
    assert _one(ref, beaten, QuantBudget(top_k=1)).top_k_agreement == 0.0
    assert _one(ref, beaten, QuantBudget(top_k=2)).top_k_agreement == 1.0


@pytest.mark.parametrize("shape", [(8,), (4, 1), (2, 2, 3), (0, 5)])
def test_top_k_not_applicable_unless_2d_float_with_two_classes(shape):
    ref = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    out = _one(ref, ref, QuantBudget(min_top_k_agreement=1.0))
    assert out.top_k_agreement is None
    assert out.passed  # an inapplicable budget is not a failure


# -- error_vs_range and outlier_share on hand-made arrays ------------------------------------


def test_error_vs_range_and_outlier_share_exact_values():
    ref = np.array([-2.0, 0.0, 1.0, 6.0])                 # range 8, max|ref| 6
    act = ref + np.array([0.5, -0.25, 0.03125, 0.0078125])
    out = _one(ref, act, NO_BUDGET)
    assert out.max_abs_error == 0.5
    assert out.error_vs_range == 0.0625                   # 0.5 / 8
    assert out.outlier_tolerance == 6 / 127               # one int8 step of the output
    assert out.outlier_share == 0.5                       # 0.5 and 0.25 exceed 0.0472; 0.03125 does not
    assert out.worst_index == (0,) and out.worst_reference == -2.0 and out.worst_actual == -1.5


def test_explicit_outlier_tolerance_is_an_exclusive_bound():
    ref = np.array([-2.0, 0.0, 1.0, 6.0])
    act = ref + np.array([0.5, -0.25, 0.03125, 0.0078125])
    out = _one(ref, act, QuantBudget(outlier_tolerance=0.25, max_outlier_share=0.2))
    assert out.outlier_tolerance == 0.25
    assert out.outlier_share == 0.25                      # only 0.5 exceeds 0.25
    assert out.failed == ("outlier_share",)
    assert _one(ref, act, QuantBudget(outlier_tolerance=0.25, max_outlier_share=0.25)).passed


def test_error_vs_range_of_a_constant_reference_uses_max_abs():
    out = _one(np.full(3, -4.0), np.array([-4.0, -3.0, -4.0]), NO_BUDGET)
    assert out.error_vs_range == 0.25                     # 1 / max|ref|


def test_hand_made_logits_metrics():
    out = _one(LOGITS_REF, LOGITS_ACT, NO_BUDGET)
    # <ref, act> = 8 + 8 + 2 + 2 = 20; |ref|^2 = 40; |act|^2 = 4 + 4 + 2.25 + 1 + 1 = 12.25
    assert out.cosine == pytest.approx(20 / (math.sqrt(40) * 3.5), rel=1e-12)
    # error^2: 4 + 4 + 2.25 + 1 + 1 = 12.25
    assert out.sqnr_db == pytest.approx(10 * math.log10(40 / 12.25), rel=1e-12)
    assert out.error_vs_range == 0.25                     # 2 / 8
    assert out.outlier_share == 5 / 8
    assert out.top_k_agreement == 0.5
    assert out.failed == ()


# -- budgets: misses, None, from_value ------------------------------------------------------


def test_budget_boundaries_are_inclusive():
    # error_vs_range is exactly 0.25 and passes the default max_error_vs_range=0.25
    out = _one(LOGITS_REF, LOGITS_ACT)
    assert out.error_vs_range == 0.25
    assert "error_vs_range" not in out.failed
    assert _one(LOGITS_REF, LOGITS_ACT, QuantBudget(max_error_vs_range=0.2499)).failed.count("error_vs_range") == 1


def test_budget_miss_lists_every_metric_and_marks_the_failed_ones():
    budget = QuantBudget(min_top_k_agreement=0.75, max_outlier_share=0.5)
    verdict = compare_quantized({"logits": LOGITS_REF}, {"out": LOGITS_ACT}, budget)
    (out,) = verdict.outputs
    assert out.failed == ("cosine", "sqnr_db", "outlier_share", "top_k_agreement")
    metric_lines = verdict.describe().splitlines()[2:7]
    assert [line.split()[0] for line in metric_lines] == [
        "cosine", "sqnr_db", "error_vs_range", "outlier_share", "top_k_agreement"]
    assert [line.endswith("  FAILED") for line in metric_lines] == [True, True, False, True, True]
    assert all("budget" in line for line in metric_lines)


def test_none_disables_a_metric():
    assert _one(LOGITS_REF, LOGITS_ACT).failed == ("cosine", "sqnr_db")
    assert _one(LOGITS_REF, LOGITS_ACT, QuantBudget(min_cosine=None)).failed == ("sqnr_db",)
    assert _one(LOGITS_REF, LOGITS_ACT, QuantBudget(min_sqnr_db=None)).failed == ("cosine",)
    off = compare_quantized({"y": LOGITS_REF}, {"y": LOGITS_ACT}, NO_BUDGET)
    assert off and off.outputs[0].failed == ()
    # disabled metrics are still measured and reported
    assert off.outputs[0].sqnr_db == pytest.approx(5.139239, abs=1e-6)


def test_disabled_metrics_read_no_budget_in_describe():
    verdict = compare_quantized({"y": LOGITS_REF}, {"y": LOGITS_ACT}, QuantBudget(max_error_vs_range=None))
    lines = verdict.describe().splitlines()
    assert "    error_vs_range 0.25 (no budget)" in lines
    assert "    outlier_share 0.625 (no budget; 5 of 8 element(s) off by more than 0.0315)" in lines
    assert "    top_k_agreement 0.5 (no budget; reference top-1 within top-1 in 1 of 2 row(s))" in lines


def test_from_value_accepts_a_budget_or_a_dict():
    budget = QuantBudget(min_cosine=0.9)
    assert QuantBudget.from_value(budget) is budget
    parsed = QuantBudget.from_value({"min_sqnr_db": 25, "top_k": 5, "min_top_k_agreement": 1})
    assert parsed == QuantBudget(min_sqnr_db=25.0, top_k=5, min_top_k_agreement=1.0)
    assert isinstance(parsed.min_sqnr_db, float)
    assert parsed.min_cosine == QuantBudget().min_cosine  # unset fields keep their defaults
    assert QuantBudget.from_value({"min_cosine": None}).min_cosine is None
    assert QuantBudget.from_value(json.loads(json.dumps(parsed.to_json()))) == parsed


def test_from_value_rejects_unknown_fields_listing_the_known_ones():
    with pytest.raises(ConfigError) as info:
        QuantBudget.from_value({"min_cosine": 0.9, "min_snr": 20})
    message = str(info.value)
    assert "'min_snr'" in message
    for known in ("top_k", "min_top_k_agreement", "min_cosine", "min_sqnr_db", "max_error_vs_range",
                  "max_outlier_share", "outlier_tolerance"):
        assert known in message


@pytest.mark.parametrize("value", [0.99, "min_cosine=0.99", None, [("min_cosine", 0.9)]])
def test_from_value_rejects_other_types(value):
    with pytest.raises(ConfigError, match="expected a QuantBudget or a dict"):
        QuantBudget.from_value(value)


@pytest.mark.parametrize(("field", "value"), [
    ("top_k", 0), ("top_k", 2.0), ("top_k", True),
    ("min_cosine", 1.5), ("min_cosine", -1.01), ("min_cosine", "0.99"), ("min_cosine", math.nan),
    ("min_sqnr_db", "20"), ("max_error_vs_range", -0.1), ("max_outlier_share", 1.2),
    ("min_top_k_agreement", -0.5), ("outlier_tolerance", -1e-3), ("max_outlier_share", True),
])
def test_bad_budget_values_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"quantization budget: {field} must be"):
        QuantBudget.from_value({field: value})


def test_to_json_is_plain():
    assert QuantBudget().to_json() == {
        "top_k": 1, "min_top_k_agreement": None, "min_cosine": 0.95, "min_sqnr_db": 10.0,
        "max_error_vs_range": 0.25, "max_outlier_share": None, "outlier_tolerance": None,
    }


# -- problems: shape, dtype, NaN, missing ----------------------------------------------------


def test_shape_mismatch_is_a_problem_not_a_crash():
    verdict = compare_quantized({"y": np.zeros((2, 3), np.float32)}, {"y": np.zeros((3, 2), np.float32)})
    (out,) = verdict.outputs
    assert not verdict and not out.passed
    assert out.problem == "shape differs: reference (2, 3), actual (3, 2)"
    assert math.isnan(out.cosine) and out.top_k_agreement is None and out.failed == ()
    assert verdict.describe().splitlines() == [
        "tvm (int8) vs reference (fp32): 1 of 1 output(s) outside the quantization budget",
        "  y: float32 (2, 3)",
        "    shape differs: reference (2, 3), actual (3, 2)",
    ]
    assert verdict.as_dict()["outputs"][0]["cosine"] is None


def test_bfloat16_outputs_are_measured():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    ref = np.array([[1.0, -2.0, 4.0]], ml_dtypes.bfloat16)
    out = _one(ref, np.array([[1.0, -2.0, 3.0]], ml_dtypes.bfloat16))
    assert out.problem is None and not out.exact
    assert out.sqnr_db == pytest.approx(10 * math.log10(21), rel=1e-12)
    assert out.top_k_agreement == 1.0 and out.error_vs_range == 1 / 6


def test_complex_outputs_are_a_problem():
    out = _one(np.ones(2, np.complex64), np.ones(2, np.complex64))
    assert out.problem == "unsupported dtype complex64: expected float, integer or bool"


def test_dtype_mismatch_is_a_problem():
    out = _one(np.zeros(3, np.float32), np.zeros(3, np.int8))
    assert out.problem == "dtype differs: reference float32, actual int8"


@pytest.mark.parametrize(("side", "expected"), [
    ("actual", "actual has 2 NaN value(s) of 6"),
    ("reference", "reference has 1 NaN and 1 infinite value(s) of 6"),
])
def test_non_finite_values_are_a_problem(side, expected):
    good = np.arange(6, dtype=np.float32)
    bad = good.copy()
    if side == "actual":
        bad[[1, 4]] = np.nan
        out = _one(good, bad, NO_BUDGET)
    else:
        bad[1], bad[2] = np.nan, np.inf
        out = _one(bad, good, NO_BUDGET)
    assert out.problem == expected
    assert not out.passed  # even with every budget disabled


def test_missing_and_unexpected_outputs():
    one = {"a": np.ones(2, np.float32)}
    two = {"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)}
    missing = compare_quantized(two, one, reference_name="pytorch")
    assert [o.problem for o in missing.outputs] == [None, "missing: tvm produced only 1 output(s)"]
    extra = compare_quantized(one, two, reference_name="pytorch")
    assert extra.outputs[1].name == "b"
    assert extra.outputs[1].problem == "unexpected: pytorch has only 1 output(s)"
    assert not missing and not extra


# -- integer outputs: exact --------------------------------------------------------------------


def test_integer_outputs_are_compared_exactly():
    ids = np.array([3, 1, 4, 1], np.int64)
    same = _one(ids, ids.copy(), NO_BUDGET)
    assert same.passed and same.outlier_share == 0.0 and same.top_k_agreement is None
    off = _one(ids, np.array([3, 1, 5, 1], np.int64), NO_BUDGET)  # off by one, budgets all disabled
    assert off.failed == ("outlier_share",)
    assert off.outlier_share == 0.25
    assert off.max_abs_error == 1.0
    assert off.cosine > 0.99  # would pass a float budget, but integers must match exactly


def test_bool_outputs_are_compared_exactly():
    mask = np.array([[True, False], [False, True]])
    out = _one(mask, np.array([[True, False], [True, True]]))
    assert out.failed == ("outlier_share",) and out.outlier_share == 0.25
    assert out.top_k_agreement is None  # 2-D, but not a float output


# -- describe() and as_dict() ----------------------------------------------------------------


def test_describe_line_by_line():
    budget = QuantBudget(min_top_k_agreement=0.75, max_outlier_share=0.5)
    reference = {"logits": LOGITS_REF, "classes": np.array([0, 1], np.int64)}
    actual = {"out0": LOGITS_ACT, "out1": np.array([0, 1], np.int64)}
    verdict = compare_quantized(reference, actual, budget, reference_name="pytorch", actual_name="tvm")
    assert isinstance(verdict, QuantComparison) and not verdict
    assert verdict.describe().splitlines() == [
        "tvm (int8) vs pytorch (fp32): 1 of 2 output(s) outside the quantization budget",
        "  logits: float32 (2, 4)",
        "    cosine 0.903508 (budget >= 0.95)  FAILED",
        "    sqnr_db 5.14 dB (budget >= 10 dB)  FAILED",
        "    error_vs_range 0.25 (budget <= 0.25)",
        "    outlier_share 0.625 (budget <= 0.5; 5 of 8 element(s) off by more than 0.0315)  FAILED",
        "    top_k_agreement 0.5 (budget >= 0.75; reference top-1 within top-1 in 1 of 2 row(s))  FAILED",
        "    max abs error 2 at [0, 0]: reference=4, tvm=2",
        "  within budget: classes",
    ]


def test_describe_integer_failure_and_passing_summary():
    verdict = compare_quantized({"ids": np.arange(4)}, {"ids": np.array([0, 1, 5, 3])}, actual_name="tvm-cpp")
    assert verdict.describe().splitlines()[1:] == [
        "  ids: int64 (4,)",
        "    exact match required (integer output): 1 of 4 element(s) differ (outlier_share 0.25)  FAILED",
        "    max abs error 3 at [2]: reference=2, tvm-cpp=5",
    ]
    ok = compare_quantized({"y": LOGITS_REF, "ids": np.arange(2)}, {"y": LOGITS_REF * 1.01, "ids": np.arange(2)})
    assert ok.describe() == (
        "tvm (int8) vs reference (fp32): all 2 output(s) within the quantization budget "
        "(min cosine 1, min SQNR 40.00 dB)")  # error = ref / 100


def test_top_k_line_for_an_output_it_does_not_apply_to():
    verdict = compare_quantized({"y": np.array([1.0, 2.0])}, {"y": np.array([2.0, 1.0])},
                                QuantBudget(min_top_k_agreement=0.9))
    assert "    top_k_agreement n/a (not a 2-D (batch, classes) output)" in verdict.describe().splitlines()


def test_as_dict_is_plain_and_json_able():
    verdict = compare_quantized({"y": LOGITS_REF, "same": LOGITS_REF}, {"y": LOGITS_ACT, "same": LOGITS_REF})
    data = json.loads(json.dumps(verdict.as_dict()))
    assert data["reference"] == "reference" and data["actual"] == "tvm" and data["passed"] is False
    assert data["budget"] == QuantBudget().to_json()
    y, same = data["outputs"]
    assert y["name"] == "y" and y["shape"] == [2, 4] and y["dtype"] == "float32"
    assert y["failed"] == ["cosine", "sqnr_db"] and y["passed"] is False and y["problem"] is None
    assert y["error_vs_range"] == 0.25 and y["outlier_share"] == 0.625 and y["top_k_agreement"] == 0.5
    assert all(type(y[key]) is float for key in ("cosine", "sqnr_db", "max_abs_error", "outlier_tolerance"))
    assert same["sqnr_db"] == math.inf and same["passed"] is True
