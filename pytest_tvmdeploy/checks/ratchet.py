"""The error ratchet: a snapshot keeps how far each target's outputs were from the reference, and
a later run whose error grows past a factor of that fails (or warns), even inside tolerance.

The level of one output on one target is its max abs error, max rel error, 99th percentile of the
abs error and how many elements would fail a ten times tighter tolerance. The ratchet compares max
abs and p99 abs error (relative errors of near-zero references are too noisy to ratchet). A level below a
floor counts as the floor, so rounding noise does not count as growth from an exact match: a
hundredth of the tolerance's ``atol`` plus a millionth of the output's largest magnitude.
``--snapshot-update`` records the new level.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import ConfigError

#: What a ratchet does when the error grew: fail the test, warn, or nothing.
MODES = ("fail", "warn", "off")
#: The statistics a ratchet holds, and the one it only records.
RATCHETED = ("max_abs", "p99_abs")


class ErrorRatchetWarning(UserWarning):
    """An output's error grew past the ratchet's factor (``--tvm-ratchet=warn``)."""


def error_levels(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], rules: ToleranceRules,
                 target: str) -> list[dict[str, Any]]:
    """One row per output: ``target``, ``output`` and the error statistics of ``actual``."""
    rows = []
    for index, (name, ref) in enumerate(reference.items()):
        if name not in actual:
            continue
        ref, act = np.asarray(ref), np.asarray(actual[name])
        if ref.shape != act.shape or ref.dtype.kind not in "fiub" or act.dtype.kind not in "fiub":
            continue
        tolerance = rules.for_output(name, index, ref.dtype)
        exact, got = ref.astype(np.float64), act.astype(np.float64)
        error = np.abs(got - exact)
        finite = np.isfinite(error)
        error = np.where(finite, error, 0.0)
        relative = error / np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
        tight = error > (tolerance.atol + tolerance.rtol * np.abs(exact)) / 10
        rows.append({
            "target": target,
            "output": name,
            "dtype": str(ref.dtype),
            "max_abs": float(error.max(initial=0.0)),
            "max_rel": float(np.where(exact == 0, 0.0, relative).max(initial=0.0)),
            "p99_abs": float(np.percentile(error, 99)) if error.size else 0.0,
            "tight_mismatches": int(tight.sum() + (~finite).sum()),
            "elements": int(error.size),
            "scale": float(np.abs(np.where(np.isfinite(exact), exact, 0.0)).max(initial=0.0)),
        })
    return rows


def merged_levels(stored: list[dict[str, Any]] | None, fresh: list[dict[str, Any]],
                  target: str) -> list[dict[str, Any]]:
    """The stored rows of other targets, then ``fresh`` (this target's)."""
    return [row for row in stored or [] if row.get("target") != target] + fresh


def deployment_levels(deployment: Any, rules: ToleranceRules) -> list[dict[str, Any]]:
    """:func:`error_levels` of a deployment's Python VM outputs on its target."""
    return error_levels(deployment.reference, deployment.outputs, rules, deployment.target.label)


@dataclass(frozen=True)
class Ratchet:
    """How error growth is judged: ``mode`` (fail, warn, off) and the ``factor`` it may grow by."""

    mode: str = "fail"
    factor: float = 4.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"error ratchet mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not self.factor > 1:
            raise ConfigError(f"error ratchet factor {self.factor!r}: must be greater than 1")

    def grown(self, stored: list[dict[str, Any]] | None, fresh: list[dict[str, Any]], target: str,
              rules: ToleranceRules) -> list[str]:
        """Why each of ``fresh``'s rows is worse than its stored level (empty: it holds)."""
        if self.mode == "off":
            return []
        before = {row["output"]: row for row in stored or [] if row.get("target") == target}
        reasons = []
        for index, row in enumerate(fresh):
            old = before.get(row["output"])
            if old is None:
                continue
            atol = rules.for_output(row["output"], index, np.dtype(row.get("dtype", "float32"))).atol
            floor = atol / 100 + 1e-6 * float(row.get("scale", 0.0))
            for key in RATCHETED:
                limit = self.factor * max(float(old.get(key, 0.0)), floor)
                if row[key] > limit:
                    reasons.append(f"output {row['output']!r} on {target}: {key.replace('_', ' ')} error "
                                   f"{row[key]:.3g} is {row[key] / max(float(old.get(key, 0.0)), floor):.1f}x "
                                   f"the recorded {float(old.get(key, 0.0)):.3g} (more than {self.factor:g}x)")
        return reasons

    def judge(self, reasons: list[str], update: str) -> list[str]:
        """The failures for ``reasons`` (or, in ``warn`` mode, none: each becomes a warning)."""
        if not reasons:
            return []
        text = ("error ratchet: the error grew, although inside tolerance: " + "; ".join(reasons)
                + f"; if that is expected, record the new level with: {update}")
        if self.mode == "warn":
            warnings.warn(ErrorRatchetWarning(text), stacklevel=2)
            return []
        return [text]
