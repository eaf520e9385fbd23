"""Tolerance rules: dtype defaults, test-wide ``rtol``/``atol`` and per-output overrides.

Precedence, strongest first: ``tolerances={output: {...}}`` → the test-wide values
(marker, else ``--tvm-rtol``/``--tvm-atol``, else the ini options) → the dtype default.
Integer and bool outputs are compared exactly unless ``tolerances=`` names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import ConfigError

#: Default ``(rtol, atol)`` per floating dtype. Integer and bool outputs default to exact.
DTYPE_DEFAULTS: dict[str, tuple[float, float]] = {
    "float16": (1e-2, 1e-2),
    "bfloat16": (2e-2, 2e-2),
    "float32": (1e-4, 1e-5),
    "float64": (1e-7, 1e-9),
}
_FALLBACK = DTYPE_DEFAULTS["float32"]


@dataclass(frozen=True)
class Tolerance:
    """``|actual - reference| <= atol + rtol * |reference|`` elementwise (as ``numpy.isclose``)."""

    rtol: float
    atol: float

    @property
    def exact(self) -> bool:
        return self.rtol == 0 and self.atol == 0

    def __str__(self) -> str:
        return "exact" if self.exact else f"rtol={self.rtol:g}, atol={self.atol:g}"


@dataclass(frozen=True)
class ToleranceRules:
    """Everything a test says about tolerances; :meth:`for_output` resolves one output's."""

    rtol: float | None = None
    atol: float | None = None
    per_output: Mapping[str | int, Mapping[str, float]] = field(default_factory=dict)

    def for_output(self, name: str, index: int, dtype: np.dtype) -> Tolerance:
        """The tolerance that applies to output ``name`` (position ``index``) of ``dtype``."""
        override = self.per_output.get(name, self.per_output.get(index))
        kind = np.dtype(dtype).kind
        if kind in "iub" and override is None:
            return Tolerance(0.0, 0.0)
        base_rtol, base_atol = (0.0, 0.0) if kind in "iub" else DTYPE_DEFAULTS.get(str(dtype), _FALLBACK)
        rtol = self.rtol if self.rtol is not None and kind not in "iub" else base_rtol
        atol = self.atol if self.atol is not None and kind not in "iub" else base_atol
        if override is not None:
            unknown = set(override) - {"rtol", "atol"}
            if unknown:
                raise ConfigError(f"tolerances[{name!r}]: unknown key(s) {sorted(unknown)}; use rtol/atol")
            rtol = float(override.get("rtol", rtol))
            atol = float(override.get("atol", atol))
        return Tolerance(float(rtol), float(atol))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (integer output keys survive, unlike JSON object keys)."""
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "per_output": [[key, dict(value)] for key, value in self.per_output.items()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToleranceRules:
        return cls(
            rtol=data.get("rtol"),
            atol=data.get("atol"),
            per_output={key: value for key, value in data.get("per_output", [])},
        )

    def check_names(self, names: list[str]) -> None:
        """Reject overrides naming an output the model does not have."""
        for key in self.per_output:
            if isinstance(key, int):
                if not 0 <= key < len(names):
                    raise ConfigError(f"tolerances: output index {key} out of range (model has {len(names)} outputs)")
            elif key not in names:
                raise ConfigError(f"tolerances: no output named {key!r} (outputs: {', '.join(names)})")
