"""QuantBudget: the budgets a quantized model's outputs must meet against fp32, validated.

:func:`pytest_tvmdeploy.checks.quantized.compare_quantized` measures outputs against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import ConfigError

#: ``(field, lowest, highest)`` of each float budget; ``None`` bounds are open.
_RANGES: tuple[tuple[str, float | None, float | None], ...] = (
    ("min_top_k_agreement", 0.0, 1.0),
    ("min_cosine", -1.0, 1.0),
    ("min_sqnr_db", None, None),
    ("max_error_vs_range", 0.0, None),
    ("max_outlier_share", 0.0, 1.0),
    ("outlier_tolerance", 0.0, None),
)


@dataclass(frozen=True)
class QuantBudget:
    """Budgets for a quantized model's outputs against the fp32 reference. ``None`` disables a metric.

    The defaults pass an int8 classifier with decent calibration and fail a broken one, on a
    single input as well as on a batch. They come from fake-int8 EfficientNet-lite0 logits on
    96 photo crops (per-channel int8 weights, uint8 activations with min/max ranges):

    =====================================  ========  =========  ==============
    outputs                                cosine    SQNR (dB)  error_vs_range
    =====================================  ========  =========  ==============
    decent int8, whole batch               0.988     16         0.15
    decent int8, worst single image        0.96      9.3        0.23
    broken, whole batch (1)                <= 0.88   <= 6.2     >= 0.25
    broken, median single image (1)        <= 0.90   <= 7       n/a
    decent int8 with output scale x0.5     0.988     5.9        0.38
    =====================================  ========  =========  ==============

    (1) calibration on 4 texture images, on inputs in [0, 1] instead of [-1, 1] or on one gray
    image; ranges clipped at the 99th percentile; per-tensor weights (depthwise convolutions);
    4-bit weights.

    * ``min_cosine=0.95``: the shape of the output. Blind to a uniform scale error.
    * ``min_sqnr_db=10``: error power at most a tenth of the signal's; catches what cosine
      misses, a wrong output scale or offset. (Uncorrelated noise at 10 dB gives cosine 0.95.)
      About 1% of single images of the decent model fell just below; a 20% scale error
      (12.5 dB) passes: use ``min_sqnr_db=14`` on a batch to catch that.
    * ``max_error_vs_range=0.25``: no element off by a quarter of the output's range.
    * ``max_outlier_share=None``: off, because errors of a few output steps are normal after
      dozens of int8 layers (over half the logits above were more than one step off). Set it,
      with ``outlier_tolerance``, for shallow models or single layers.
    * ``min_top_k_agreement=None``: off, because one input decides it on a small test batch
      (one row of four is 25%), and a sound int8 model swaps near-tied classes (top-1 agreed on
      85-93% of the crops above, top-5 on all). For a batch of real inputs, try
      ``top_k=5, min_top_k_agreement=0.95``.
    """

    top_k: int = 1
    min_top_k_agreement: float | None = None
    min_cosine: float | None = 0.95
    min_sqnr_db: float | None = 10.0
    max_error_vs_range: float | None = 0.25
    max_outlier_share: float | None = None
    outlier_tolerance: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 1:
            raise ConfigError(f"quantization budget: top_k must be an integer >= 1, got {self.top_k!r}")
        object.__setattr__(self, "top_k", int(self.top_k))
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or math.isnan(value) or (low is not None and value < low) or (high is not None and value > high):
                raise ConfigError(f"quantization budget: {name} must be {_bounds(low, high)} or None, got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_value(cls, value: QuantBudget | Mapping[str, Any]) -> QuantBudget:
        """A budget from itself or from a dict of its fields (missing ones keep their defaults)."""
        if isinstance(value, QuantBudget):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"quantization budget: expected a QuantBudget or a dict of its fields, got {value!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(key) for key in value if key not in known)
        if unknown:
            raise ConfigError(f"quantization budget: unknown field(s) {unknown}; known: {', '.join(known)}")
        return cls(**value)

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (``from_value`` reads it back)."""
        return asdict(self)


def _bounds(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return "a number"
    if high is None:
        return f"a number >= {low:g}"
    return f"a number in [{low:g}, {high:g}]"
