"""How the absolute errors of a deployment are spread: counts per decade, for reports and plots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pytest_tvmdeploy.checks.elementwise import paired_outputs

#: Bin edges in log10 of the absolute error: half decades from 1e-12 to 1e+3. Errors outside
#: fall into the first or last bin; exact matches are counted apart.
LOG10_EDGES = tuple(float(e) for e in np.arange(-12.0, 3.01, 0.5))


def error_histogram(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """``{"log10_edges", "counts", "exact", "nonfinite", "total"}`` over every floating output pair
    of the same shape, or ``None`` when there is none."""
    errors = [_abs_errors(ref, act) for _, _, ref, act in paired_outputs(reference, actual)
              if ref is not None and act is not None and ref.shape == act.shape and ref.dtype.kind == "f"]
    if not errors:
        return None
    error = np.concatenate(errors)
    finite = np.isfinite(error)
    nonzero = error[finite & (error > 0)]
    logs = np.clip(np.log10(nonzero), LOG10_EDGES[0], LOG10_EDGES[-1])
    counts, _ = np.histogram(logs, bins=np.asarray(LOG10_EDGES))
    return {
        "log10_edges": list(LOG10_EDGES),
        "counts": [int(c) for c in counts],
        "exact": int(np.count_nonzero(finite & (error == 0))),
        "nonfinite": int(np.count_nonzero(~finite)),
        "total": int(error.size),
    }


def _abs_errors(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    ref, act = reference.astype(np.float64).ravel(), actual.astype(np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(act - ref)
    same = (np.isnan(ref) & np.isnan(act)) | (np.isinf(ref) & (ref == act))
    return np.where(same, 0.0, error)
