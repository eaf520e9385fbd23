"""Compare named outputs with a reference and explain every difference.

>>> verdict = compare({"y": ref}, {"y": out}, ToleranceRules(rtol=1e-5))   # doctest: +SKIP
>>> bool(verdict), verdict.describe()                                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from pytest_tvmdeploy.checks.tolerances import Tolerance, ToleranceRules


@dataclass(frozen=True)
class OutputComparison:
    """The statistics of one output against its reference."""

    name: str
    index: int
    tolerance: Tolerance
    shape: tuple[int, ...]
    dtype: str
    problem: str | None = None  # shape/dtype/missing: elementwise statistics not computed
    mismatched: int = 0
    total: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    worst_index: tuple[int, ...] | None = None
    worst_reference: object = None
    worst_actual: object = None

    @property
    def passed(self) -> bool:
        return self.problem is None and self.mismatched == 0

    @property
    def mismatched_share(self) -> float:
        return self.mismatched / self.total if self.total else 0.0

    def describe(self, actual_name: str) -> str:
        head = f"{self.name}: {self.dtype} {self.shape}"
        if self.problem is not None:
            return f"{head}\n    {self.problem}"
        lines = [
            head,
            f"    mismatched elements: {self.mismatched} / {self.total} "
            f"({100 * self.mismatched_share:.3g}%) outside {self.tolerance}",
            f"    max abs error: {self.max_abs_error:.6g}    max rel error: {self.max_rel_error:.6g}",
        ]
        if self.worst_index is not None:
            lines.append(
                f"    worst element {list(self.worst_index)}: reference={self.worst_reference!r}, "
                f"{actual_name}={self.worst_actual!r}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """The verdict of one runner's outputs against a reference: truthy when all matched."""

    reference_name: str
    actual_name: str
    outputs: tuple[OutputComparison, ...]

    def __bool__(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def failures(self) -> tuple[OutputComparison, ...]:
        return tuple(o for o in self.outputs if not o.passed)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs if o.problem is None), default=0.0)

    def describe(self) -> str:
        """A pytest-style explanation listing every failing output (or a one-line summary)."""
        if self:
            return (
                f"{self.actual_name} matches {self.reference_name} on all {len(self.outputs)} "
                f"output(s) (max abs error {self.max_abs_error:.3g})"
            )
        header = (
            f"{self.actual_name} output differs from {self.reference_name}: "
            f"{len(self.failures)} of {len(self.outputs)} output(s) outside tolerance"
        )
        return "\n".join([header] + ["  " + o.describe(self.actual_name) for o in self.failures])


def compare(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    rules: ToleranceRules = ToleranceRules(),
    *,
    reference_name: str = "reference",
    actual_name: str = "tvm",
) -> Comparison:
    """Compare ``actual`` with ``reference`` output by output (matched by position)."""
    results = []
    for index, name, ref, act in paired_outputs(reference, actual):
        if ref is None:
            results.append(_problem(name, index, Tolerance(0, 0), act,
                                    f"unexpected: {reference_name} has only {index} output(s)"))
            continue
        tolerance = rules.for_output(name, index, ref.dtype)
        if act is None:
            results.append(_problem(name, index, tolerance, ref,
                                    f"missing: {actual_name} produced only {index} output(s)"))
        else:
            results.append(compare_arrays(name, index, ref, act, tolerance))
    return Comparison(reference_name, actual_name, tuple(results))


def in_reference_layout(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """``actual`` in the reference's layout where only the representation differs
    (a scalar as ``[1]``, int32 for int64): such differences are the importer's, not errors."""
    actual = np.asarray(actual)
    if actual.shape != reference.shape and actual.size == reference.size:
        actual = actual.reshape(reference.shape)
    if actual.dtype != reference.dtype and actual.shape == reference.shape:
        actual = actual.astype(reference.dtype)
    return actual


def paired_outputs(
    reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]
) -> Iterator[tuple[int, str, np.ndarray | None, np.ndarray | None]]:
    """``(index, name, reference, actual)`` matched by position; ``None`` where one side has no
    output at that position. The name is the reference's, or the actual one's for extras."""
    ref_items, act_items = list(reference.items()), list(actual.items())
    for index in range(max(len(ref_items), len(act_items))):
        ref = np.asarray(ref_items[index][1]) if index < len(ref_items) else None
        act = np.asarray(act_items[index][1]) if index < len(act_items) else None
        name = ref_items[index][0] if index < len(ref_items) else act_items[index][0]
        yield index, name, ref, act


def compare_arrays(name: str, index: int, reference: np.ndarray, actual: np.ndarray,
                   tolerance: Tolerance) -> OutputComparison:
    """Elementwise statistics of one output; NaNs in the same places count as equal."""
    if reference.shape != actual.shape:
        return _problem(name, index, tolerance, reference,
                        f"shape differs: reference {reference.shape}, actual {actual.shape}")
    if reference.dtype != actual.dtype:
        return _problem(name, index, tolerance, reference,
                        f"dtype differs: reference {reference.dtype}, actual {actual.dtype}")
    total = int(reference.size)
    if total == 0:
        return OutputComparison(name, index, tolerance, reference.shape, str(reference.dtype))
    wide = np.float64 if reference.dtype.kind in "fc" or reference.dtype.itemsize < 8 else np.longdouble
    ref = reference.astype(wide)
    act = actual.astype(wide)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        error = np.abs(act - ref)
        both_nan = np.isnan(ref) & np.isnan(act)
        same_inf = np.isinf(ref) & (ref == act)
        error = np.where(both_nan | same_inf, 0.0, error)
        error = np.where(np.isnan(error), np.inf, error)
        allowed = tolerance.atol + tolerance.rtol * np.abs(np.where(np.isfinite(ref), ref, 0.0))
        bad = error > allowed
        nonzero = (ref != 0) & np.isfinite(ref)
        rel = np.where(nonzero, error / np.where(nonzero, np.abs(ref), 1.0), np.where(error > 0, np.inf, 0.0))
    # Point at the worst violation when there is one, else at the largest error.
    flat_worst = int(np.argmax(np.where(bad, error - allowed, -np.inf) if bad.any() else error))
    worst = tuple(int(i) for i in np.unravel_index(flat_worst, reference.shape))
    return OutputComparison(
        name=name, index=index, tolerance=tolerance,
        shape=tuple(reference.shape), dtype=str(reference.dtype),
        mismatched=int(bad.sum()), total=total,
        max_abs_error=float(error.max()), max_rel_error=float(rel.max()),
        worst_index=worst,
        worst_reference=reference[worst].item(), worst_actual=actual[worst].item(),
    )


def _problem(name: str, index: int, tolerance: Tolerance, array: np.ndarray, problem: str) -> OutputComparison:
    return OutputComparison(name, index, tolerance, tuple(array.shape), str(array.dtype), problem=problem)


def first_bitwise_difference(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], *, expected_name: str, actual_name: str
) -> str | None:
    """``None`` if both runners produced the same outputs bit for bit, else the first difference.

    Outputs are matched by position; names come from ``expected``.
    """
    expected_items, actual_values = list(expected.items()), list(actual.values())
    if len(expected_items) != len(actual_values):
        return f"{expected_name} produced {len(expected_items)} output(s), {actual_name} {len(actual_values)}"
    for (name, a), b in zip(expected_items, actual_values):
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return (f"{name}: {expected_name} gives {a.dtype}{list(a.shape)}, "
                    f"{actual_name} gives {b.dtype}{list(b.shape)}")
        if a.tobytes() == b.tobytes():
            continue
        unit = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else None
        if unit is None:
            return f"{name}: bytes differ"
        differs = a.view(unit) != b.view(unit)
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(differs)), a.shape))
        return (f"{name}: {int(differs.sum())} of {a.size} element(s) differ bitwise; first at "
                f"{list(index)}: {expected_name}={a[index].item()!r}, {actual_name}={b[index].item()!r}")
    return None
