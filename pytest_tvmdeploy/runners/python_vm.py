"""Run an exported ``.so`` in-process with the Relax VM."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import RunnerError, brief
from pytest_tvmdeploy.runners.base import RunResult, timed_calls

RUNNER_NAME = "tvm-python"


def run_python_vm(module_path: Path, inputs: Mapping[str, np.ndarray], *, repeat: int = 1) -> RunResult:
    """Load ``module_path`` into a Relax VM on the CPU and call ``main`` ``repeat`` times.

    Inputs are passed positionally in the mapping's order; outputs are flattened
    and named ``output_0``, ``output_1``, ... (callers rename them).
    """
    import tvm

    start = time.perf_counter()
    try:
        vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(module_path)), tvm.cpu())
        args = tvm_tensors(inputs.values())
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"{module_path}: loading into the Relax VM failed: {brief(exc)}") from exc
    load_seconds = time.perf_counter() - start
    try:
        result, calls = timed_calls(lambda: vm["main"](*args), repeat)
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"{module_path}: main({', '.join(inputs)}) failed: {brief(exc)}") from exc
    arrays = flatten_tvm_outputs(result)
    return RunResult(
        RUNNER_NAME,
        {f"output_{i}": a for i, a in enumerate(arrays)},
        load_seconds=load_seconds,
        call_seconds=calls,
    )


def tvm_tensors(arrays: Iterable[np.ndarray], device: Any = None) -> list[Any]:
    """The arrays as TVM tensors on ``device`` (default: this machine's CPU), for a VM call."""
    import tvm

    return [tvm.runtime.tensor(np.ascontiguousarray(a), device if device is not None else tvm.cpu()) for a in arrays]


def flatten_tvm_outputs(value: Any) -> list[np.ndarray]:
    """Depth-first list of the tensors in a VM result (a tensor or nested arrays of them)."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    arrays: list[np.ndarray] = []
    for item in value:
        arrays.extend(flatten_tvm_outputs(item))
    return arrays
