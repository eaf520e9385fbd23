"""The torch forms' graph: the ExportedProgram's FX nodes, probed by editing its outputs and inputs.

Both sides come from one graph: PyTorch values are recorded while interpreting the program,
and TVM's come from the same program with extra outputs, so value *i* names the same node.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.checks.localize.graph import GraphNode, InstrumentedGraph, IsolatedProbe, LocalizationError
from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources.torch_export import ExportedProgramSource, operator_name

if TYPE_CHECKING:
    import torch
    import tvm


class ExportedProgramGraph(InstrumentedGraph):
    """The FX graph of ``source.exported_program(inputs)`` (before TVM's decompositions)."""

    reference_name = "pytorch"

    def __init__(self, source: ExportedProgramSource, inputs: Mapping[str, np.ndarray]) -> None:
        self.program = source.exported_program(ShapeSignature.of(inputs))
        self._recorded: dict[str, np.ndarray] = {}  # PyTorch values computed so far
        super().__init__(_graph_nodes(self.program), _ordered_inputs(source, inputs))

    def reference_values(self, values: Sequence[str]) -> list[np.ndarray]:
        import torch

        wanted = set(values) - set(self._recorded)
        recorded = self._recorded

        class Recorder(torch.fx.Interpreter):
            def run_node(self, node: torch.fx.Node) -> Any:
                result = super().run_node(node)
                if node.name in wanted:  # copied now: a later in-place op may overwrite it
                    recorded[node.name] = _to_numpy(result)
                return result

        if wanted:
            with torch.no_grad():
                Recorder(self.program.graph_module).run(*self._flat_arguments())
        return [recorded[name] for name in values]

    def traced_module(self, values: Sequence[str]) -> tvm.IRModule:
        graph_module = copy.deepcopy(self.program.graph_module)
        graph = graph_module.graph
        nodes = _nodes_by_name(graph)
        snapshots = [_insert_clone_after(graph, nodes[name]) for name in values]
        return _import(_rebuild(self.program, graph_module, snapshots, new_inputs=[]))

    def isolated_probe(self, values: Sequence[str]) -> IsolatedProbe:
        graph_module = copy.deepcopy(self.program.graph_module)
        graph = graph_module.graph
        nodes = _nodes_by_name(graph)
        window = [nodes[name] for name in values]
        feeds: dict[str, torch.fx.Node] = {}  # producer name → the program input replacing it
        for node in _with_tuple_producers(window):
            _feed_inputs(graph, node, feeds)
        snapshots = [_insert_clone_after(graph, node) for node in window]
        module = _import(_rebuild(self.program, graph_module, snapshots, new_inputs=list(feeds.values())))
        feed_values = self.reference_values(list(feeds)) if feeds else []
        return IsolatedProbe(module, tuple(feed_values))

    def operator_case(self, value: str) -> OperatorCase | None:
        nodes = _nodes_by_name(self.program.graph)
        return self._segment_case(_with_tuple_producers([nodes[value]]), [nodes[value]])

    def prefix_case(self, value: str) -> OperatorCase | None:
        prefix = []
        for node in self.program.graph.nodes:
            if node.op == "call_function" and not _is_check(node):
                prefix.append(node)
            if node.name == value:
                break
        case = self._segment_case(prefix, [prefix[-1]])
        return replace(case, op=f"the graph up to {value} ({len(prefix)} operators)") if case is not None else None

    def whole_case(self, max_operators: int) -> OperatorCase | None:
        operators = [n for n in self.program.graph.nodes if n.op == "call_function" and not _is_check(n)]
        if len(operators) > max_operators:
            return None
        outputs = [n for n in self.program.graph.output_node().args[0] if n in operators]
        case = self._segment_case(operators, outputs)
        return replace(case, op=f"the whole model ({len(operators)} operators)") if case is not None else None

    def _segment_case(self, segment: list[torch.fx.Node], results: list[torch.fx.Node]) -> OperatorCase | None:
        """The nodes of ``segment`` as a module returning ``results``, fed what they read from outside."""
        import torch

        outside = list(dict.fromkeys(a for n in segment for a in n.all_input_nodes if a not in segment))
        if not all(isinstance(a.meta.get("val"), torch.Tensor) for a in outside):
            return None
        placeholders = [n for n in self.program.graph.nodes if n.op == "placeholder"]
        arguments = dict(zip(placeholders, self._flat_arguments()))
        computed = [a.name for a in outside if a not in arguments]
        values = dict(zip(computed, self.reference_values(computed)))
        inputs = tuple(_to_numpy(arguments[a]) if a in arguments else values[a.name] for a in outside)
        graph = torch.fx.Graph()
        copies = {a: graph.placeholder(f"x{i}") for i, a in enumerate(outside)}
        for node in segment:
            copies[node] = graph.node_copy(node, copies.__getitem__)
        graph.output(copies[results[0]] if len(results) == 1 else tuple(copies[r] for r in results))
        code = torch.fx.GraphModule(torch.nn.Module(), graph).code.strip()
        return OperatorCase("pytorch", operator_name(segment[0].target), inputs, code=code,
                            versions={"torch": torch.__version__})

    def _flat_arguments(self) -> list[torch.Tensor]:
        """The graph module's positional arguments: lifted parameters, buffers, constants, inputs."""
        import torch
        from torch.export.graph_signature import InputKind

        program = self.program
        mutates = any(spec.kind.name != "USER_OUTPUT" for spec in program.graph_signature.output_specs)
        user = iter(torch.from_numpy(np.asarray(a, order="C")) for a in self.user_inputs)
        arguments = []
        for spec in program.graph_signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                arguments.append(next(user))
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in program.state_dict:
                tensor = program.state_dict[spec.target]
                arguments.append(tensor.clone() if mutates else tensor)
            elif spec.target in program.constants:
                arguments.append(program.constants[spec.target])
            else:
                raise LocalizationError(f"cannot supply program input {spec.arg} ({spec.kind.name})")
        return arguments


def _is_check(node: torch.fx.Node) -> bool:
    """A node that only asserts (``aten._assert_tensor_metadata``): nothing uses its value."""
    return not node.users and operator_name(node.target).startswith(("aten._assert", "aten.sym_constrain"))


def _graph_nodes(program: torch.export.ExportedProgram) -> list[GraphNode]:
    output_names = _user_output_positions(program)
    nodes = []
    for node in program.graph.nodes:
        if not _is_tensor_node(node):
            continue
        origin = node
        op = operator_name(node.target)
        if node.target is operator.getitem and isinstance(node.args[0], type(node)):
            origin = node.args[0]
            op = f"{operator_name(origin.target)}[{node.args[1]}]"
        position = output_names.get(node.name)
        nodes.append(GraphNode(
            name=node.name, op=op, value=node.name, module_path=_module_path(origin),
            output_name=f"out{position}" if position is not None else None, output_index=position,
        ))
    return nodes


def _user_output_positions(program: torch.export.ExportedProgram) -> dict[str, int]:
    """FX node name → its position among the tensor user outputs (the reference's ``out0``, ...)."""
    from torch.export.graph_signature import TensorArgument

    users = [spec.arg for spec in program.graph_signature.output_specs
             if spec.kind.name == "USER_OUTPUT" and isinstance(spec.arg, TensorArgument)]
    positions: dict[str, int] = {}
    for index, argument in enumerate(users):
        positions.setdefault(argument.name, index)
    return positions


def _ordered_inputs(source: ExportedProgramSource, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    names = source.input_names()
    if names is None:
        return list(inputs.values())
    return [inputs[name] for name in names if name in inputs]


def _is_tensor_node(node: torch.fx.Node) -> bool:
    import torch

    value = node.meta.get("val")
    return node.op == "call_function" and isinstance(value, torch.Tensor) and value.layout == torch.strided


_MODULE_PREFIX = re.compile(r"^(L\['self'\]\.?|L__self__\.?)")


def _module_path(node: torch.fx.Node) -> str | None:
    """The innermost ``nn.Module`` the node was traced in (``layer1.0.conv1``), if recorded."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = _MODULE_PREFIX.sub("", str(list(stack.values())[-1][0]))
    return path or None


def _to_numpy(value: Any) -> np.ndarray:
    import torch

    tensor = value.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.cpu().clone().numpy()


def _aten() -> Any:
    import torch

    return torch.ops.aten


def _nodes_by_name(graph: torch.fx.Graph) -> dict[str, torch.fx.Node]:
    return {node.name: node for node in graph.nodes}


def _with_tuple_producers(window: list[torch.fx.Node]) -> list[torch.fx.Node]:
    """The window plus the tuple-valued operators whose items it reads (``getitem``), in order."""
    chosen = {node: None for node in window}
    for node in window:
        for producer in node.all_input_nodes:
            if producer.op == "call_function" and not _is_tensor_node(producer):
                chosen.setdefault(producer, None)
    order = {node: i for i, node in enumerate(window[0].graph.nodes)} if window else {}
    return sorted(chosen, key=order.__getitem__)


def _feed_inputs(graph: torch.fx.Graph, node: torch.fx.Node, feeds: dict[str, torch.fx.Node]) -> None:
    """Make ``node`` read each tensor it takes from another operator from a new program input."""
    for producer in list(node.all_input_nodes):
        if not _is_tensor_node(producer):
            continue
        if producer.name not in feeds:
            feeds[producer.name] = _add_user_input(graph, f"{producer.name}__reference", producer)
        with graph.inserting_before(node):
            # A copy, so an in-place operator does not write into a program input.
            copied = graph.call_function(_aten().clone.default, (feeds[producer.name],))
        copied.meta["val"] = producer.meta["val"]
        node.replace_input_with(producer, copied)


def _insert_clone_after(graph: torch.fx.Graph, node: torch.fx.Node) -> torch.fx.Node:
    """A copy of ``node``'s value taken right after it is computed (later in-place ops miss it)."""
    with graph.inserting_after(node):
        clone = graph.call_function(_aten().clone.default, (node,))
    clone.meta["val"] = node.meta["val"]
    return clone


def _add_user_input(graph: torch.fx.Graph, name: str, like: torch.fx.Node) -> torch.fx.Node:
    """A new last placeholder shaped like ``like``'s value."""
    last = [node for node in graph.nodes if node.op == "placeholder"][-1]
    with graph.inserting_after(last):
        placeholder = graph.placeholder(name)
    placeholder.meta["val"] = like.meta["val"]
    return placeholder


def _rebuild(
    program: torch.export.ExportedProgram,
    graph_module: torch.fx.GraphModule,
    user_outputs: list[torch.fx.Node],
    new_inputs: list[torch.fx.Node],
) -> torch.export.ExportedProgram:
    """``program`` with its graph replaced by ``graph_module`` (an edited copy), returning
    ``user_outputs`` and taking ``new_inputs`` after its own user inputs."""
    from torch.export import ExportedProgram
    from torch.export.graph_signature import (
        ExportGraphSignature,
        InputKind,
        InputSpec,
        OutputKind,
        OutputSpec,
        TensorArgument,
    )
    from torch.utils._pytree import tree_structure

    graph = graph_module.graph
    output = graph.output_node()
    signature = program.graph_signature
    kept = [(spec, arg) for spec, arg in zip(signature.output_specs, output.args[0])
            if spec.kind != OutputKind.USER_OUTPUT]
    output.args = (tuple(arg for _, arg in kept) + tuple(user_outputs),)
    graph.lint()
    graph_module.recompile()
    # a copied graph may rename a placeholder (``input`` becomes ``input_1``: FX avoids builtins)
    placeholders = [node.name for node in graph.nodes if node.op == "placeholder"]
    input_specs = [_renamed(spec, name) for spec, name in zip(signature.input_specs, placeholders)] + [
        InputSpec(InputKind.USER_INPUT, TensorArgument(name=node.name), target=None) for node in new_inputs
    ]
    output_specs = [spec for spec, _ in kept] + [
        OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(name=node.name), target=None) for node in user_outputs
    ]
    call_graph = copy.deepcopy(program.module_call_graph)
    top = call_graph[0].signature if call_graph else None
    if top is not None:
        user_count = sum(spec.kind == InputKind.USER_INPUT for spec in input_specs)
        top.in_spec = tree_structure((tuple(range(user_count)), {}))
        top.out_spec = tree_structure(tuple(range(len(user_outputs))))
        if top.forward_arg_names is not None:
            top.forward_arg_names = list(top.forward_arg_names) + [node.name for node in new_inputs]
    return ExportedProgram(
        root=graph_module,
        graph=graph,
        graph_signature=ExportGraphSignature(input_specs=input_specs, output_specs=output_specs),
        state_dict=program.state_dict,
        range_constraints=program.range_constraints,
        module_call_graph=call_graph,
        example_inputs=None,
        constants=program.constants,
        verifiers=[program.verifier],
    )


def _renamed(spec: Any, name: str) -> Any:
    """An input spec naming ``name`` as its graph node, if it names a tensor node."""
    from torch.export.graph_signature import TensorArgument

    return dataclasses.replace(spec, arg=TensorArgument(name=name)) if isinstance(spec.arg, TensorArgument) else spec


def _import(program: torch.export.ExportedProgram) -> tvm.IRModule:
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(program)
