"""The result every runner returns: named outputs plus how long loading and calls took."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np


@dataclass(frozen=True)
class RunResult:
    """Outputs of one runner on one set of inputs.

    ``outputs`` maps output name to array, in the model's output order (nested
    outputs flattened). ``load_seconds`` covers loading the artifact and creating
    the VM; ``call_seconds`` holds one entry per timed call of ``main``.
    """

    runner: str
    outputs: dict[str, np.ndarray]
    load_seconds: float = 0.0
    call_seconds: tuple[float, ...] = field(default_factory=tuple)

    @property
    def median_call_seconds(self) -> float:
        """Median of the timed calls (0.0 if none were timed)."""
        return float(np.median(self.call_seconds)) if self.call_seconds else 0.0


T = TypeVar("T")


def timed_calls(call: Callable[[], T], repeat: int) -> tuple[T, tuple[float, ...]]:
    """Call ``call`` ``max(1, repeat)`` times; its last result and the seconds each call took."""
    seconds = []
    result: Any = None
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return result, tuple(seconds)
