"""What localisation needs from a model's graph, whatever the framework: its nodes in order,
the framework's value of any of them, and Relax modules that expose those values."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pytest_tvmdeploy.errors import TvmDeployError

if TYPE_CHECKING:
    import tvm

    from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase


class LocalizationError(TvmDeployError):
    """Localising a divergence failed; the original comparison failure still stands."""

    stage = "localize"


@dataclass(frozen=True)
class GraphNode:
    """One tensor-valued intermediate of the framework's graph, in topological order.

    ``value`` is the name the graph knows the value by (FX node name, ONNX tensor name);
    ``name`` is the operator as users see it (equal to ``value`` for FX, the node name for ONNX).
    ``output_name``/``output_index`` are set when the value is also a model output.
    """

    name: str
    op: str
    value: str
    module_path: str | None = None
    output_name: str | None = None
    output_index: int | None = None

    def label(self) -> str:
        """``name (op, module_path)``, as messages show a node."""
        details = ", ".join(part for part in (self.op, self.module_path) if part)
        return f"{self.name} ({details})"


@dataclass(frozen=True)
class IsolatedProbe:
    """A Relax module computing some nodes from the framework's values of their inputs.

    Call it with the model's inputs followed by ``feeds`` (those framework values), in order.
    """

    module: tvm.IRModule
    feeds: tuple[np.ndarray, ...]


class InstrumentedGraph(abc.ABC):
    """A model's graph that can show the framework's and TVM's value of any intermediate."""

    #: Which framework computes the reference values (``pytorch``, ``onnxruntime``).
    reference_name: str = ""

    def __init__(self, nodes: Sequence[GraphNode], user_inputs: Sequence[np.ndarray]) -> None:
        self.nodes = tuple(nodes)
        self.user_inputs = tuple(user_inputs)  # in the order the Relax ``main`` takes them

    @abc.abstractmethod
    def reference_values(self, values: Sequence[str]) -> list[np.ndarray]:
        """The framework's value of each named graph value, on the user inputs."""

    @abc.abstractmethod
    def traced_module(self, values: Sequence[str]) -> tvm.IRModule:
        """The whole model in Relax, returning the named values (in order) instead of its outputs."""

    def operator_case(self, value: str) -> OperatorCase | None:
        """The operator producing ``value`` alone, fed the framework's values of its inputs
        (``None`` when it cannot be cut out)."""
        return None

    def prefix_case(self, value: str) -> OperatorCase | None:
        """The graph up to ``value`` (its only output), with the model's inputs: a crash's case."""
        return None

    def whole_case(self, max_operators: int) -> OperatorCase | None:
        """The whole model as a case (``None`` above ``max_operators`` operators, or when it cannot
        be written out): for faults only a whole build shows, such as one after fusion."""
        return None

    @abc.abstractmethod
    def isolated_probe(self, values: Sequence[str]) -> IsolatedProbe:
        """A Relax module returning the named values, each computed from fed reference inputs."""
