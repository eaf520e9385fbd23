"""The ONNX form's graph: every node output, probed by making it a graph output (or input).

ONNX Runtime and TVM's ONNX frontend both read the edited model, so value *i* names the
same tensor on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.checks.localize.graph import GraphNode, InstrumentedGraph, IsolatedProbe, LocalizationError
from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase
from pytest_tvmdeploy.sources.onnx_file import OnnxSource

if TYPE_CHECKING:
    import onnx
    import tvm

#: Operators whose outputs are not worth comparing: they only hold constants.
_SKIPPED_OPS = frozenset({"Constant"})


class OnnxGraph(InstrumentedGraph):
    """The top-level graph of ``source.model`` (subgraphs of If/Loop/Scan are not entered)."""

    reference_name = "onnxruntime"

    def __init__(self, source: OnnxSource, inputs: Mapping[str, np.ndarray]) -> None:
        self.model = source.model
        self.inputs = {name: inputs[name] for name in source.input_names() or ()}
        self._types = _value_types(self.model)
        self._recorded: dict[str, np.ndarray] = {}  # ONNX Runtime values computed so far
        super().__init__(_graph_nodes(self.model, self._types), list(self.inputs.values()))

    def reference_values(self, values: Sequence[str]) -> list[np.ndarray]:
        missing = [name for name in dict.fromkeys(values) if name not in self._recorded]
        if missing:
            self._recorded.update(zip(missing, self._run_onnxruntime(missing)))
        return [self._recorded[name] for name in values]

    def _run_onnxruntime(self, values: list[str]) -> list[np.ndarray]:
        import onnxruntime

        model = _with_graph_outputs(self.model, values, self._types)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except ValueError as exc:  # protobuf refuses to serialise models above 2 GB
            raise LocalizationError(f"cannot hand the edited model to ONNX Runtime: {exc}") from exc
        return [np.asarray(v) for v in session.run(values, dict(self.inputs))]

    def traced_module(self, values: Sequence[str]) -> tvm.IRModule:
        return _import(_with_graph_outputs(self.model, values, self._types), self.inputs)

    def isolated_probe(self, values: Sequence[str]) -> IsolatedProbe:
        model, feeds = _isolated(self.model, values, self._types)
        values_fed = self.reference_values(feeds) if feeds else []
        fed = {_fed_name(name): value for name, value in zip(feeds, values_fed)}
        _declare_inputs(model, fed)
        return IsolatedProbe(_import(model, dict(self.inputs) | fed), tuple(fed.values()))

    def operator_case(self, value: str) -> OperatorCase | None:
        from onnx import helper

        node = next(n for n in self.model.graph.node if value in n.output)
        if _has_subgraph(node):
            return None
        initializers = {t.name: t for t in self.model.graph.initializer}
        fed = [name for name in dict.fromkeys(node.input) if name and name not in initializers]
        computed = [name for name in fed if name not in self.inputs]
        known = dict(zip(computed, self.reference_values(computed))) if computed else {}
        values = {name: self.inputs[name] if name in self.inputs else known[name] for name in fed}
        outputs = [name for name in node.output if name]
        graph = helper.make_graph(
            [node], "operator",
            [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in values.items()],
            [_value_info(name, self._types) for name in outputs],
            initializer=[initializers[n] for n in dict.fromkeys(node.input) if n in initializers],
        )
        model = helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        return self._case(node.op_type, model, tuple(values.values()), outputs)

    def prefix_case(self, value: str) -> OperatorCase | None:

        model = _with_graph_outputs(self.model, [value], self._types)
        last = next(i for i, node in enumerate(model.graph.node) if value in node.output)
        del model.graph.node[last + 1:]
        return self._case(f"the graph up to {value} ({last + 1} operators)", model, tuple(self.inputs.values()),
                          [value])

    def whole_case(self, max_operators: int) -> OperatorCase | None:

        if len(self.model.graph.node) > max_operators or any(_has_subgraph(n) for n in self.model.graph.node):
            return None
        outputs = [o.name for o in self.model.graph.output]
        return self._case(f"the whole model ({len(self.model.graph.node)} operators)", self.model,
                          tuple(self.inputs.values()), outputs)

    def _case(self, op: str, model: onnx.ModelProto, inputs: tuple[np.ndarray, ...],
              outputs: list[str]) -> OperatorCase:
        """``model`` fed ``inputs`` as a case, ONNX Runtime's values of ``outputs`` (in this
        model's run) as what it should give."""
        import onnx
        import onnxruntime

        versions = {"onnx": onnx.__version__, "onnxruntime": str(onnxruntime.__version__)}
        return OperatorCase("onnx", op, inputs, onnx_model=model.SerializeToString(),
                            expected=tuple(self.reference_values(outputs)), versions=versions)


def _graph_nodes(model: onnx.ModelProto, types: Mapping[str, Any]) -> list[GraphNode]:
    outputs = {output.name: index for index, output in enumerate(model.graph.output)}
    nodes = []
    for position, node in enumerate(model.graph.node):
        if node.op_type in _SKIPPED_OPS:
            continue
        for value in node.output:
            if not value or not _is_tensor(types.get(value)):
                continue
            nodes.append(GraphNode(
                name=node.name or f"{node.op_type}_{position}", op=node.op_type, value=value,
                output_name=value if value in outputs else None, output_index=outputs.get(value),
            ))
    return nodes


def _value_types(model: onnx.ModelProto) -> dict[str, Any]:
    """Tensor name → ``TypeProto`` from shape inference (names it cannot type are absent)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types are a nicety; ONNX Runtime infers its own
        inferred = model
    graph = inferred.graph
    return {info.name: info.type for info in [*graph.input, *graph.value_info, *graph.output]}


def _is_tensor(type_proto: Any) -> bool:
    """Tensors and values of unknown type; not sequences, maps or optionals."""
    return type_proto is None or type_proto.WhichOneof("value") in ("tensor_type", None)


def _value_info(name: str, types: Mapping[str, Any]) -> onnx.ValueInfoProto:
    import onnx

    info = onnx.ValueInfoProto(name=name)
    if types.get(name) is not None:
        info.type.CopyFrom(types[name])
    return info


def _with_graph_outputs(model: onnx.ModelProto, values: Sequence[str], types: Mapping[str, Any]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are exactly ``values``, in order."""
    edited = _copy(model)
    del edited.graph.output[:]
    edited.graph.output.extend(_value_info(name, types) for name in values)
    return edited


def _isolated(model: onnx.ModelProto, values: Sequence[str],
              types: Mapping[str, Any]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy keeping only constants and the nodes producing ``values``; every input such a node
    reads from another node becomes a new graph input. Returns the model and those value names."""
    wanted = set(values)
    kept = [node for node in model.graph.node if node.op_type in _SKIPPED_OPS or wanted & set(node.output)]
    if any(_has_subgraph(node) for node in kept):
        raise LocalizationError("operators with subgraphs (If/Loop/Scan) cannot be isolated")
    constants = {out for node in model.graph.node if node.op_type in _SKIPPED_OPS for out in node.output}
    produced = {out for node in model.graph.node for out in node.output} - constants
    feeds: dict[str, None] = {}
    edited = _copy(model)
    del edited.graph.node[:]
    for node in kept:
        copy = edited.graph.node.add()
        copy.CopyFrom(node)
        if node.op_type in _SKIPPED_OPS:
            continue
        for index, name in enumerate(node.input):
            if name in produced:
                feeds.setdefault(name, None)
                copy.input[index] = _fed_name(name)
    del edited.graph.output[:]
    edited.graph.output.extend(_value_info(name, types) for name in values)
    return edited, list(feeds)


def _declare_inputs(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> None:
    from onnx.helper import make_tensor_value_info, np_dtype_to_tensor_dtype

    for name, array in arrays.items():
        info: onnx.ValueInfoProto = make_tensor_value_info(name, np_dtype_to_tensor_dtype(array.dtype), array.shape)
        model.graph.input.append(info)


def _fed_name(value: str) -> str:
    return f"{value}__reference"


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attribute.g.node or attribute.graphs for attribute in node.attribute)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _import(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> tvm.IRModule:
    """As :meth:`OnnxSource.to_relax` imports, with these inputs' shapes and dtypes."""
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(
        model,
        shape_dict={name: list(array.shape) for name, array in inputs.items()},
        dtype_dict={name: str(array.dtype) for name, array in inputs.items()},
        sanitize_input_names=False,
    )

