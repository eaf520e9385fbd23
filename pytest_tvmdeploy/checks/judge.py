"""Which comparison judges a deployment's outputs: tolerances for float models, budgets for int8."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pytest_tvmdeploy.checks.elementwise import Comparison, compare
from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.quantized import QuantComparison, compare_quantized
from pytest_tvmdeploy.checks.tolerances import ToleranceRules

Verdict = Comparison | QuantComparison
Judge = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray], str, str], Verdict]


def output_judge(rules: ToleranceRules, budget: QuantBudget | None) -> Judge:
    """``judge(reference, actual, reference_name, actual_name)``: elementwise within ``rules``,
    or, for a quantized model (``budget`` given), the quantization metrics within ``budget``."""
    if budget is None:
        return lambda ref, act, ref_name, act_name: compare(
            ref, act, rules, reference_name=ref_name, actual_name=act_name
        )
    return lambda ref, act, ref_name, act_name: compare_quantized(
        ref, act, budget, reference_name=ref_name, actual_name=act_name
    )


def verdict_summary(verdict: Verdict) -> dict[str, Any]:
    """The numbers of a verdict that go into the summary table and the test's properties."""
    if isinstance(verdict, QuantComparison):
        metrics = [o for o in verdict.outputs if o.problem is None]
        return {
            "max_abs_error": max((o.max_abs_error for o in metrics), default=None),
            "quant": {
                "cosine": min((o.cosine for o in metrics), default=None),
                "sqnr_db": min((o.sqnr_db for o in metrics), default=None),
            },
        }
    return {"max_abs_error": verdict.max_abs_error}
