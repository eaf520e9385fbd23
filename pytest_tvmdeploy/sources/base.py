"""What every model source offers: input names, a reference run, a fingerprint, a Relax module."""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pytest_tvmdeploy.errors import UnsupportedOperatorError
from pytest_tvmdeploy.outputs import RunResult
from pytest_tvmdeploy.shapes import ShapeSignature

if TYPE_CHECKING:
    import tvm


class ModelSource(abc.ABC):
    """A model in one of the supported forms, loaded and ready to import into TVM.

    Subclasses implement the steps of the pipeline that depend on the form: naming inputs,
    running the framework reference, fingerprinting the model and importing it as a Relax
    ``IRModule`` for a :class:`ShapeSignature` (its named dimensions stay symbolic).
    """

    #: Short name of the form (``torch``, ``torchscript``, ``exported_program``, ``onnx``).
    kind: str = ""
    #: Which framework computes the reference outputs.
    reference_name: str = ""
    #: The third reference that settles a disagreement (see :meth:`arbiter`), if the form has one.
    arbiter_name: str = ""

    def __init__(self, description: str, path: Path | None = None) -> None:
        self.description = description
        self.path = path

    @abc.abstractmethod
    def input_names(self) -> tuple[str, ...] | None:
        """The model's input names in positional order, if the form records them."""

    def optional_inputs(self) -> frozenset[str]:
        """Inputs that may be left out (parameters with defaults); the rest are required."""
        return frozenset()

    @abc.abstractmethod
    def run_reference(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> RunResult:
        """Run the model in its own framework (``repeat`` timed calls); outputs are flattened and named."""

    def arbiter(self, inputs: Mapping[str, np.ndarray]) -> RunResult | None:
        """A third reference's outputs, to settle a disagreement between TVM and this source's
        reference (``None``: none here; ONNX files have ONNX's reference evaluator, for small
        graphs). Raises :class:`~pytest_tvmdeploy.errors.ReferenceRunError` when it cannot run."""
        return None

    def shape_signature(self, declared: ShapeSignature, static: bool = False) -> ShapeSignature:
        """What to build for: the dimensions the test names (``declared``), and those the model
        file itself leaves open unless ``static`` (then the test's sizes fix them)."""
        return declared

    @abc.abstractmethod
    def fingerprint(self, shapes: ShapeSignature) -> str:
        """A hex digest that changes whenever the graph or any weight changes."""

    @abc.abstractmethod
    def to_relax(self, shapes: ShapeSignature) -> tvm.IRModule:
        """Import the model into a Relax ``IRModule`` for these shapes (names stay symbolic)."""

    def operators(self, shapes: ShapeSignature) -> dict[str, int]:
        """How often the frontend meets each operator (aten ops for torch forms, op types for
        ONNX), for coverage reports; empty when the form has no graph to read."""
        return {}

    def model_file(self, shapes: ShapeSignature, folder: Path, fingerprint: str) -> ModelFile:
        """The model as a file another process can open (``.pt2`` or ``.onnx``); a form that is
        not a file yet is written into ``folder`` once, named by ``fingerprint`` (this source's
        :meth:`fingerprint` for ``shapes``, which the caller has already computed)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be handed over as a file")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


@dataclass(frozen=True)
class ModelFile:
    """A model as a file, under its source's name and kind: what the TVM worker opens."""

    path: Path
    description: str
    kind: str

    def open(self, shapes: ShapeSignature) -> tuple[ModelSource, ShapeSignature]:
        """The source, and ``shapes`` under its input names: a program exported from TorchScript
        may name its inputs otherwise (``x_3`` for ``x``), in the same order."""
        from pytest_tvmdeploy.sources import open_source

        source = open_source(self.path)
        source.description, source.kind = self.description, self.kind
        names = source.input_names()
        if names is not None and len(names) == len(shapes.inputs):
            return source, shapes.renamed(names)
        return source, shapes

    def open_at(self, inputs: Mapping[str, np.ndarray]) -> tuple[ModelSource, dict[str, np.ndarray]]:
        """The source, at these inputs' shapes, and the inputs under its input names."""
        source, shapes = self.open(ShapeSignature.of(inputs))
        return source, dict(zip((i.name for i in shapes.inputs), inputs.values()))



_UNSUPPORTED_PATTERNS = (
    re.compile(r"Unsupported function types? \[([^\]]*)\]"),
    re.compile(r"not supported for frontend ONNX: ([^.\n]*)"),
)


def unsupported_operators(message: str) -> tuple[str, ...]:
    """Operator names a TVM frontend error message says it cannot import (empty if none)."""
    for pattern in _UNSUPPORTED_PATTERNS:
        match = pattern.search(message)
        if match:
            names = re.split(r"[,\s]+", match.group(1))
            return tuple(n.strip("'\" ") for n in names if n.strip("'\" "))
    return ()


def raise_if_unsupported(exc: BaseException, source: ModelSource) -> None:
    """Re-raise a frontend failure as :class:`UnsupportedOperatorError` when it names operators."""
    operators = unsupported_operators(str(exc))
    if operators:
        raise UnsupportedOperatorError(
            f"{source.description}: TVM's {source.kind} frontend cannot import "
            f"operator(s) {', '.join(operators)}",
            operators,
        ) from exc
