"""Run an exported ``.so`` in-process with the Relax VM."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pytest_tvmdeploy.errors import RunnerError, brief
from pytest_tvmdeploy.outputs import TVM_PYTHON, RunResult, timed_calls
from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors

RUNNER_NAME = TVM_PYTHON


def run_python_vm(module_path: Path, inputs: Mapping[str, np.ndarray], *, repeat: int = 1) -> RunResult:
    """Load ``module_path`` into a Relax VM on the CPU and call ``main`` ``repeat`` times.

    Inputs are passed positionally in the mapping's order; outputs are flattened
    and named ``output_0``, ``output_1``, ... (callers rename them).
    """
    import tvm

    start = time.perf_counter()
    try:
        vm = relax_vm(tvm.runtime.load_module(str(module_path)))
        args = tvm_tensors(inputs.values())
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"{module_path}: loading into the Relax VM failed: {brief(exc)}") from exc
    load_seconds = time.perf_counter() - start
    try:
        result, calls = timed_calls(lambda: vm["main"](*args), repeat)
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"{module_path}: main({', '.join(inputs)}) failed: {brief(exc)}") from exc
    arrays = flatten_outputs(result)
    return RunResult(
        RUNNER_NAME,
        {f"output_{i}": a for i, a in enumerate(arrays)},
        load_seconds=load_seconds,
        call_seconds=calls,
    )
