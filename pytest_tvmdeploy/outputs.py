"""The result every runner returns: named outputs plus how long loading and calls took.

Runner names are spelled once, here: the Python VM is ``tvm``, the C++ program ``tvm-cpp``,
a remote device ``rpc:<device>``; the reference runners are ``pytorch`` and ``onnxruntime``, and
ONNX's own reference evaluator ``onnx-reference`` where ONNX Runtime cannot run a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

#: The Relax VM in Python, on this machine.
TVM_PYTHON = "tvm"
#: The C++ program linked to libtvm_runtime (cpp_check/).
TVM_CPP = "tvm-cpp"
#: ONNX Runtime, the reference of ONNX files.
ONNXRUNTIME = "onnxruntime"
#: ONNX's reference evaluator (``onnx.reference``): NumPy code written from the operator specifications.
ONNX_REFERENCE = "onnx-reference"


@dataclass(frozen=True)
class RunResult:
    """Outputs of one runner on one set of inputs.

    ``outputs`` maps output name to array, in the model's output order (nested
    outputs flattened). ``load_seconds`` covers loading the artifact and creating
    the VM; ``call_seconds`` holds one entry per timed call of ``main``. ``note`` says why this
    runner stood in for another (a reference ONNX Runtime could not give), else it is empty.
    """

    runner: str
    outputs: dict[str, np.ndarray]
    load_seconds: float = 0.0
    call_seconds: tuple[float, ...] = field(default_factory=tuple)
    note: str = ""

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


class NamedArrays(Mapping[str, np.ndarray]):
    """Outputs by name, in model order; ``outputs[0]`` also works (position)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = dict(arrays)
        self._names = list(self._arrays)

    def __getitem__(self, key: str | int) -> np.ndarray:
        if isinstance(key, int):
            return self._arrays[self._names[key]]
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in self._arrays.items())
        return f"NamedArrays({shapes})"


def named_like(reference: RunResult, result: RunResult) -> NamedArrays:
    """A runner's outputs under the reference's names (kept as they are if the counts differ:
    the comparison then reports the count mismatch)."""
    if len(result.outputs) != len(reference.outputs):
        return NamedArrays(result.outputs)
    return NamedArrays(dict(zip(reference.outputs, result.outputs.values())))
