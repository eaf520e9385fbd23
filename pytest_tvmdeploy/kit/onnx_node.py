"""The ``onnx-node`` suite: ONNX's backend node tests, as the installed ``onnx`` package ships them.

Each case is one operator (or its function expansion, ``*_expanded``) at one opset, with its
inputs and the outputs ONNX's reference implementation gave for them. The kit runs every case
whose inputs and outputs are arrays of numbers or booleans through the plugin like any ONNX file:
TVM against ONNX Runtime; where ONNX Runtime cannot run a case, and to settle a disagreement,
the case's own expected outputs decide (:class:`NodeCaseSource`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.outputs import RunResult
from pytest_tvmdeploy.sources.onnx_file import OnnxSource

SUITE = "onnx-node"
#: The runner name of a case's shipped outputs when they stand in or arbitrate.
ONNX_EXPECTED = "onnx-expected"


@dataclass(frozen=True)
class NodeCase:
    """One backend node case: its model, inputs and expected outputs, and what it tests."""

    name: str                     # the case's name in onnx: test_abs
    operator: str                 # the operator under test: Abs (ai.onnx.ml.TreeEnsemble for other domains)
    opset: int                    # the default domain's opset the model imports
    expanded: bool                # the operator's function body instead of the operator itself
    model: Any                    # onnx.ModelProto
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    rtol: float
    atol: float

    def write(self, folder: Path) -> Path:
        """The model as ``folder/<name>.onnx`` (written once; an interrupted write leaves nothing)."""
        from pytest_tvmdeploy.files import write_atomic

        path = folder / f"{self.name}.onnx"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, self.model.SerializeToString())
        return path


@cache
def node_cases() -> tuple[NodeCase, ...]:
    """Every eligible case of the installed onnx: one data set, and numeric or boolean arrays
    in and out (sequences, optionals, strings and 8-bit or 16-bit brain floats are left out)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the case generators cast out of range on purpose
        warnings.simplefilter("ignore")
        collected = collect_testcases(None)
    single_ops = {case.name: _op_name(case.model.graph.node[0]) for case in collected
                  if len(case.model.graph.node) == 1}
    cases = []
    for case in collected:
        if len(case.data_sets) != 1:
            continue
        inputs, outputs = case.data_sets[0]
        names = [i.name for i in case.model.graph.input]
        if not all(_plain_array(a) for a in (*inputs, *outputs)) or len(names) != len(inputs) or not all(names):
            continue
        expanded = "_expanded" in case.name
        twin = case.name.replace("_expanded", "", 1)
        operator = single_ops.get(twin) if expanded else None
        cases.append(NodeCase(
            name=case.name, operator=operator or _op_name(case.model.graph.node[-1]), opset=_opset(case.model),
            expanded=expanded, model=case.model, inputs=dict(zip(names, inputs)),
            expected={o.name: np.asarray(a) for o, a in zip(case.model.graph.output, outputs)},
            rtol=float(case.rtol), atol=float(case.atol),
        ))
    return tuple(cases)


def _plain_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"


def _op_name(node: Any) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class NodeCaseSource(OnnxSource):
    """A node case's model file whose third reference is the case's own expected outputs (ONNX's
    reference implementation made them when it wrote the case)."""

    arbiter_name = ONNX_EXPECTED
    arbiter_max_nodes = None  # the shipped outputs cost nothing to consult

    def __init__(self, case: NodeCase, path: Path) -> None:
        super().__init__(path)
        self.case = case

    def _third_reference(self, inputs: Mapping[str, np.ndarray], repeat: int, note: str = "") -> RunResult:
        return RunResult(ONNX_EXPECTED, dict(self.case.expected), note=note)
