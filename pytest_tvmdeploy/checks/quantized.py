"""Compare a quantized (int8) model's outputs with the fp32 reference by budgeted metrics.

Quantized outputs are off by a few quantization steps everywhere, so an elementwise check at
fp32 tolerances fails every int8 model, and one loose enough to pass hides a broken one.
Instead each output gets metrics a test can set budgets on (:class:`QuantBudget`): cosine
similarity, SQNR, worst error relative to the output's range, the share of elements off by
more than one quantization step and, for classifier outputs, top-k agreement.

>>> verdict = compare_quantized({"logits": ref}, {"logits": out}, QuantBudget(min_sqnr_db=25))  # doctest: +SKIP
>>> bool(verdict), verdict.describe()                                                         # doctest: +SKIP

Integer and bool outputs (class ids, masks) are compared exactly whatever the budget: their
mismatched share is reported as ``outlier_share`` and any mismatch fails. All arithmetic is
done in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_tvmdeploy.checks.elementwise import compare_arrays, paired_outputs
from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.tolerances import Tolerance

#: Largest magnitude of a symmetric int8 value: one quantization step is ``max|ref| / 127``.
INT8_LEVELS = 127


@dataclass(frozen=True)
class QuantMetrics:
    """The metrics of one output against its reference, and which of them missed the budget."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    cosine: float
    sqnr_db: float
    max_abs_error: float
    error_vs_range: float
    outlier_share: float
    top_k_agreement: float | None  # None: not a 2-D (batch, classes) float output
    failed: tuple[str, ...]  # names of the metrics outside the budget
    problem: str | None = None  # shape/dtype mismatch, NaN, missing: metrics not computed (NaN)
    outlier_tolerance: float | None = None  # the absolute error an outlier exceeds (resolved default)
    worst_index: tuple[int, ...] | None = None
    worst_reference: object = None
    worst_actual: object = None

    @property
    def passed(self) -> bool:
        return self.problem is None and not self.failed

    @property
    def exact(self) -> bool:
        """True for integer and bool outputs, which are compared exactly."""
        return np.dtype(self.dtype).kind in "iub"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def describe(self, budget: QuantBudget, actual_name: str) -> str:
        """One line per metric with its budget, ``FAILED`` on those outside it."""
        head = f"{self.name}: {self.dtype} {self.shape}"
        if self.problem is not None:
            return f"{head}\n    {self.problem}"
        lines = [head]
        if self.exact:
            outliers = round(self.outlier_share * self.size)
            lines.append(self._line(f"exact match required (integer output): {outliers} of {self.size} "
                                    f"element(s) differ (outlier_share {self.outlier_share:.4g})", "outlier_share"))
        else:
            lines.append(self._line(f"cosine {self.cosine:.6g} ({_budget('>=', budget.min_cosine)})", "cosine"))
            lines.append(self._line(f"sqnr_db {self.sqnr_db:.2f} dB ({_budget('>=', budget.min_sqnr_db, ' dB')})",
                                    "sqnr_db"))
            lines.append(self._line(f"error_vs_range {self.error_vs_range:.4g} "
                                    f"({_budget('<=', budget.max_error_vs_range)})", "error_vs_range"))
            outliers = round(self.outlier_share * self.size)
            lines.append(self._line(f"outlier_share {self.outlier_share:.4g} "
                                    f"({_budget('<=', budget.max_outlier_share)}; "
                                    f"{outliers} of {self.size} element(s) off by more than "
                                    f"{self.outlier_tolerance:.4g})", "outlier_share"))
            if self.top_k_agreement is not None:
                rows = self.shape[0]
                agreeing = round(self.top_k_agreement * rows)
                lines.append(self._line(f"top_k_agreement {self.top_k_agreement:.4g} "
                                        f"({_budget('>=', budget.min_top_k_agreement)}; reference top-1 within "
                                        f"top-{budget.top_k} in {agreeing} of {rows} row(s))", "top_k_agreement"))
            elif budget.min_top_k_agreement is not None:
                lines.append("    top_k_agreement n/a (not a 2-D (batch, classes) output)")
        if self.worst_index is not None and self.max_abs_error > 0:
            lines.append(f"    max abs error {_num(self.max_abs_error)} at {list(self.worst_index)}: "
                         f"reference={_num(self.worst_reference)}, {actual_name}={_num(self.worst_actual)}")
        return "\n".join(lines)

    def _line(self, text: str, metric: str) -> str:
        return f"    {text}  FAILED" if metric in self.failed else f"    {text}"

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values: floats (``inf`` for identical outputs), ``None`` when not computed."""
        def plain(value: float | None) -> float | None:
            return None if value is None or math.isnan(value) else float(value)

        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "passed": self.passed,
            "failed": list(self.failed),
            "problem": self.problem,
            "cosine": plain(self.cosine),
            "sqnr_db": plain(self.sqnr_db),
            "max_abs_error": plain(self.max_abs_error),
            "error_vs_range": plain(self.error_vs_range),
            "outlier_share": plain(self.outlier_share),
            "outlier_tolerance": plain(self.outlier_tolerance),
            "top_k_agreement": plain(self.top_k_agreement),
        }


@dataclass(frozen=True)
class QuantComparison:
    """The verdict of a quantized model's outputs against the fp32 reference: truthy when all within budget."""

    reference_name: str
    actual_name: str
    budget: QuantBudget
    outputs: tuple[QuantMetrics, ...]

    def __bool__(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def failures(self) -> tuple[QuantMetrics, ...]:
        return tuple(o for o in self.outputs if not o.passed)

    def describe(self) -> str:
        """A pytest-style explanation: every metric of each failing output (or a one-line summary)."""
        pair = f"{self.actual_name} (int8) vs {self.reference_name} (fp32)"
        if self:
            measured = [o for o in self.outputs if not o.exact]
            summary = ""
            if measured:
                summary = (f" (min cosine {min(o.cosine for o in measured):.6g}, "
                           f"min SQNR {min(o.sqnr_db for o in measured):.2f} dB)")
            return f"{pair}: all {len(self.outputs)} output(s) within the quantization budget{summary}"
        header = f"{pair}: {len(self.failures)} of {len(self.outputs)} output(s) outside the quantization budget"
        body = ["  " + o.describe(self.budget, self.actual_name) for o in self.failures]
        passing = [o.name for o in self.outputs if o.passed]
        if passing:
            body.append(f"  within budget: {', '.join(passing)}")
        return "\n".join([header] + body)

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers per output, for reports and JSON."""
        return {
            "reference": self.reference_name,
            "actual": self.actual_name,
            "passed": bool(self),
            "budget": self.budget.to_json(),
            "outputs": [o.as_dict() for o in self.outputs],
        }


def compare_quantized(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    budget: QuantBudget = QuantBudget(),
    *,
    reference_name: str = "reference",
    actual_name: str = "tvm",
) -> QuantComparison:
    """Measure ``actual`` (quantized) against ``reference`` (fp32) output by output (matched by position)."""
    results = []
    for index, name, ref, act in paired_outputs(reference, actual):
        if ref is None:
            results.append(_problem(name, act, f"unexpected: {reference_name} has only {index} output(s)"))
        elif act is None:
            results.append(_problem(name, ref, f"missing: {actual_name} produced only {index} output(s)"))
        else:
            results.append(quant_metrics(name, ref, act, budget, index=index))
    return QuantComparison(reference_name, actual_name, budget, tuple(results))


def quant_metrics(name: str, reference: np.ndarray, actual: np.ndarray, budget: QuantBudget, *,
                  index: int = 0) -> QuantMetrics:
    """The metrics of one output and the budgets it misses."""
    if reference.shape != actual.shape:
        return _problem(name, reference, f"shape differs: reference {reference.shape}, actual {actual.shape}")
    if reference.dtype != actual.dtype:
        return _problem(name, reference, f"dtype differs: reference {reference.dtype}, actual {actual.dtype}")
    # ml_dtypes' bfloat16 / float8 types have kind "V" but convert to float64 like any float
    if reference.dtype.kind not in "fiub" and not reference.dtype.name.startswith(("bfloat", "float")):
        return _problem(name, reference, f"unsupported dtype {reference.dtype}: expected float, integer or bool")
    exact = reference.dtype.kind in "iub"
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    for label, values in (("actual", act), ("reference", ref)):
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if nan or inf:
            found = " and ".join(f"{count} {what}" for count, what in ((nan, "NaN"), (inf, "infinite")) if count)
            return _problem(name, reference, f"{label} has {found} value(s) of {values.size}")

    peak = float(np.abs(ref).max()) if ref.size else 0.0
    if exact:
        tolerance = 0.0
    elif budget.outlier_tolerance is not None:
        tolerance = budget.outlier_tolerance
    else:
        tolerance = peak / INT8_LEVELS
    elementwise = compare_arrays(name, index, reference, actual, Tolerance(rtol=0.0, atol=tolerance))
    outlier_share = elementwise.mismatched_share
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    span = span or peak or 1.0
    metrics = dict(
        cosine=_cosine(ref, act),
        sqnr_db=_sqnr_db(ref, act),
        max_abs_error=elementwise.max_abs_error,
        error_vs_range=elementwise.max_abs_error / span,
        outlier_share=outlier_share,
        top_k_agreement=None if exact else _top_k_agreement(ref, act, budget.top_k),
    )
    if exact:
        failed = ("outlier_share",) if elementwise.mismatched else ()
    else:
        failed = tuple(metric for metric, bad in (
            ("cosine", budget.min_cosine is not None and metrics["cosine"] < budget.min_cosine),
            ("sqnr_db", budget.min_sqnr_db is not None and metrics["sqnr_db"] < budget.min_sqnr_db),
            ("error_vs_range",
             budget.max_error_vs_range is not None and metrics["error_vs_range"] > budget.max_error_vs_range),
            ("outlier_share", budget.max_outlier_share is not None and outlier_share > budget.max_outlier_share),
            ("top_k_agreement", budget.min_top_k_agreement is not None and metrics["top_k_agreement"] is not None
             and metrics["top_k_agreement"] < budget.min_top_k_agreement),
        ) if bad)
    return QuantMetrics(
        name=name, shape=tuple(reference.shape), dtype=str(reference.dtype), failed=failed,
        outlier_tolerance=tolerance, worst_index=elementwise.worst_index,
        worst_reference=elementwise.worst_reference, worst_actual=elementwise.worst_actual,
        **metrics,
    )


def _cosine(ref: np.ndarray, act: np.ndarray) -> float:
    """Cosine similarity of the flattened arrays: 1 if both are zero, 0 if only one is."""
    ref_peak, act_peak = np.abs(ref).max(initial=0.0), np.abs(act).max(initial=0.0)
    if ref_peak == 0 and act_peak == 0:
        return 1.0
    if ref_peak == 0 or act_peak == 0:
        return 0.0
    r, a = (ref / ref_peak).ravel(), (act / act_peak).ravel()  # scaled: no overflow in the sums
    return float(np.clip(np.dot(r, a) / (np.linalg.norm(r) * np.linalg.norm(a)), -1.0, 1.0))


def _sqnr_db(ref: np.ndarray, act: np.ndarray) -> float:
    """``10*log10(sum(ref^2) / sum((ref-act)^2))``: inf when identical, -inf for a zero reference."""
    error = act - ref
    scale = max(np.abs(ref).max(initial=0.0), np.abs(error).max(initial=0.0))
    if scale == 0:
        return math.inf
    signal, noise = float(np.sum((ref / scale) ** 2)), float(np.sum((error / scale) ** 2))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _top_k_agreement(ref: np.ndarray, act: np.ndarray, k: int) -> float | None:
    """Share of rows whose reference top-1 class is among the ``k`` largest of ``act``.

    Ties in ``act`` (common in dequantized int8 values) count in favour: the class is in the
    top-k when fewer than ``k`` classes score strictly higher. ``None`` unless 2-D with >= 2 columns.
    """
    if ref.ndim != 2 or ref.shape[1] < 2 or ref.shape[0] == 0:
        return None
    best = np.argmax(ref, axis=1)
    score = act[np.arange(act.shape[0]), best]
    higher = (act > score[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def _budget(op: str, value: float | None, unit: str = "") -> str:
    return "no budget" if value is None else f"budget {op} {value:g}{unit}"


def _num(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def _problem(name: str, array: np.ndarray, problem: str) -> QuantMetrics:
    nan = math.nan
    return QuantMetrics(name, tuple(array.shape), str(array.dtype), nan, nan, nan, nan, nan, None, (), problem=problem)
