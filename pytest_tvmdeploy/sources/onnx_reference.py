"""ONNX's own reference evaluator (``onnx.reference.ReferenceEvaluator``) as a runner.

It is NumPy code written from the operator specifications, independent of ONNX Runtime and of
TVM: the reference of an ONNX file that ONNX Runtime cannot run (an operator or type it does not
implement), and the third opinion when TVM and ONNX Runtime disagree. It is slow (a CNN takes
minutes), so as a third opinion it is asked only about graphs of at most :data:`MAX_ARBITER_NODES`
nodes: the single operators and small subgraphs a conformance suite checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import brief
from pytest_tvmdeploy.outputs import ONNX_REFERENCE, RunResult, timed_calls

#: The largest graph (nodes, subgraphs included) the evaluator is asked to settle a disagreement on.
MAX_ARBITER_NODES = 64


class EvaluatorFailed(Exception):
    """The reference evaluator could not run the model on these inputs (the reason is the text)."""


def evaluate(model: Any, inputs: Mapping[str, np.ndarray], *, repeat: int = 1, note: str = "") -> RunResult:
    """The outputs of ``model`` (an ``onnx.ModelProto``) on ``inputs``, named as its graph names them."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(model)
        values, seconds = timed_calls(lambda: evaluator.run(None, dict(inputs)), repeat)
    except Exception as exc:  # noqa: BLE001 - any failure means this reference is missing too
        raise EvaluatorFailed(f"{type(exc).__name__}: {brief(exc)[:300]}") from exc
    names = [output.name for output in model.graph.output]
    return RunResult(ONNX_REFERENCE, {name: np.asarray(value) for name, value in zip(names, values)},
                     call_seconds=seconds, note=note)

