"""An ONNX file: imported with TVM's ONNX frontend, referenced by ONNX Runtime (by ONNX's reference
evaluator where ONNX Runtime cannot run it, which also settles a disagreement between the two)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pytest_tvmdeploy.errors import InputSpecError, ModelSourceError, ReferenceRunError, brief
from pytest_tvmdeploy.hashing import file_sha256
from pytest_tvmdeploy.inputs import signature
from pytest_tvmdeploy.outputs import ONNX_REFERENCE, ONNXRUNTIME, RunResult, timed_calls
from pytest_tvmdeploy.shapes import InputShape, ShapeSignature
from pytest_tvmdeploy.sources.base import ModelFile, ModelSource, raise_if_unsupported
from pytest_tvmdeploy.sources.onnx_reference import MAX_ARBITER_NODES, EvaluatorFailed, evaluate

if TYPE_CHECKING:
    import tvm


class OnnxSource(ModelSource):
    """An ``.onnx`` file (weights inline or as external data next to it)."""

    kind = "onnx"
    reference_name = ONNXRUNTIME
    arbiter_name = ONNX_REFERENCE
    #: Graphs with more nodes than this get no arbiter (ONNX's evaluator is slow); ``None``: no cap.
    arbiter_max_nodes: int | None = MAX_ARBITER_NODES

    def __init__(self, path: Path) -> None:
        import onnx

        super().__init__(str(path), path)
        try:
            self.model = onnx.load(str(path))
            onnx.checker.check_model(self.model)
        except Exception as exc:  # noqa: BLE001
            raise ModelSourceError(
                f"{path}: not a valid ONNX model: {type(exc).__name__}: {str(exc).strip()[:500]}"
            ) from exc
        initializers = {init.name for init in self.model.graph.initializer}
        self._inputs = tuple(i.name for i in self.model.graph.input if i.name not in initializers)
        self._digest = file_sha256(path)
        self._session = None

    def input_names(self) -> tuple[str, ...] | None:
        return self._inputs

    def model_file(self, shapes: ShapeSignature, folder: Path, fingerprint: str) -> ModelFile:
        return ModelFile(Path(self.path).resolve(), self.description, self.kind)

    def shape_signature(self, declared: ShapeSignature, static: bool = False) -> ShapeSignature:
        """The graph's named (``dim_param``) and unknown dimensions stay symbolic unless ``static``:
        one artifact then serves every batch size the file was exported for."""
        if static:
            return declared
        graph_dims = {i.name: i.type.tensor_type.shape.dim for i in self.model.graph.input}
        inputs = []
        for spec in declared.inputs:
            dims = graph_dims.get(spec.name, ())
            if len(dims) == len(spec.dims):  # else ONNX Runtime names the rank mismatch
                inputs.append(InputShape(spec.name, tuple(
                    declared_dim if isinstance(declared_dim, str) or dim.HasField("dim_value")
                    else dim.dim_param or f"{spec.name}_{axis}"
                    for axis, (declared_dim, dim) in enumerate(zip(spec.dims, dims))), spec.dtype))
            else:
                inputs.append(spec)
        return ShapeSignature(tuple(inputs), declared.dims)

    def _check_names(self, inputs: Mapping[str, np.ndarray] | ShapeSignature) -> None:
        if isinstance(inputs, ShapeSignature):
            inputs = {i.name: None for i in inputs.inputs}
        if set(inputs) != set(self._inputs):
            raise InputSpecError(
                f"{self.description}: inputs {sorted(inputs)} do not match the ONNX graph's "
                f"inputs {list(self._inputs)}"
            )

    def run_reference(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> RunResult:
        """ONNX Runtime's outputs; where it cannot load or run the model (an operator or a type it
        does not implement), those of ONNX's reference evaluator, with a note saying why."""
        self._check_names(inputs)
        try:
            session = self._onnxruntime()
        except Exception as exc:  # noqa: BLE001
            return self._stand_in(inputs, repeat, f"ONNX Runtime cannot load the model: {_ort_reason(exc)}")
        names = [o.name for o in session.get_outputs()]
        feed = dict(inputs)
        try:
            values, seconds = timed_calls(lambda: session.run(None, feed), repeat)
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "InvalidArgument":  # how ONNX Runtime refuses a feed: type, rank, size
                raise InputSpecError(
                    f"{self.description}: the inputs {signature(inputs)} do not fit the model; "
                    f"ONNX Runtime raised {type(exc).__name__}: {str(exc).strip()[:500]}"
                ) from exc
            return self._stand_in(inputs, repeat, f"ONNX Runtime cannot run the model: {_ort_reason(exc)}")
        return RunResult(ONNXRUNTIME, dict(zip(names, values)), call_seconds=seconds)

    def _onnxruntime(self) -> object:
        import onnxruntime

        if self._session is None:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return self._session

    def _stand_in(self, inputs: Mapping[str, np.ndarray], repeat: int, why: str) -> RunResult:
        """The third reference in ONNX Runtime's place (``why`` says what ONNX Runtime did)."""
        return self._consult(inputs, repeat, f"{why}; the reference is {self.arbiter_name}",
                             f"no reference for the inputs {signature(inputs)}: {why}, and ONNX's reference "
                             "evaluator failed too")

    def arbiter(self, inputs: Mapping[str, np.ndarray]) -> RunResult | None:
        """The third reference on a small graph (at most :attr:`arbiter_max_nodes` nodes); ``None``
        for a larger one."""
        if self.arbiter_max_nodes is not None and node_count(self.model) > self.arbiter_max_nodes:
            return None
        return self._consult(inputs, 1, "", "ONNX's reference evaluator failed")

    def _consult(self, inputs: Mapping[str, np.ndarray], repeat: int, note: str, failure: str) -> RunResult:
        """The third reference's outputs; when it cannot run, a :class:`ReferenceRunError` that says
        ``failure`` and why."""
        try:
            return self._third_reference(inputs, repeat, note=note)
        except EvaluatorFailed as exc:
            raise ReferenceRunError(f"{self.description}: {failure} ({exc})") from exc

    def _third_reference(self, inputs: Mapping[str, np.ndarray], repeat: int, note: str = "") -> RunResult:
        """ONNX's reference evaluator's outputs (raises :class:`EvaluatorFailed`)."""
        return evaluate(self.model, inputs, repeat=repeat, note=note)

    def fingerprint(self, shapes: ShapeSignature) -> str:
        external = sorted(p for p in self.path.parent.glob(self.path.name + ".data"))
        if not external:
            return self._digest
        return self._digest + "".join(file_sha256(p)[:16] for p in external)

    def operators(self, shapes: ShapeSignature) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for graph in graphs(self.model):  # subgraphs of If/Loop/Scan too: the frontend imports them as well
            for node in graph.node:
                domain = "" if node.domain in ("", "ai.onnx") else f"{node.domain}."
                counts[domain + node.op_type] += 1
        return dict(sorted(counts.items()))

    def to_relax(self, shapes: ShapeSignature) -> tvm.IRModule:
        import tvm
        from tvm.relax.frontend.onnx import from_onnx

        self._check_names(shapes)
        symbols = {name: tvm.tirx.Var(name, "int64") for name in shapes.symbols}  # one variable per name
        try:
            module = from_onnx(
                self.model,
                shape_dict={i.name: [symbols.get(d, d) for d in i.dims] for i in shapes.inputs},
                dtype_dict={i.name: i.dtype for i in shapes.inputs},
                sanitize_input_names=False,
            )
        except Exception as exc:  # noqa: BLE001
            raise_if_unsupported(exc, self)
            raise ModelSourceError(
                f"{self.description}: TVM's ONNX frontend failed: {type(exc).__name__}: {exc}"
            ) from exc
        return with_shape_bounds(module, shapes)


def with_shape_bounds(module: tvm.IRModule, shapes: ShapeSignature) -> tvm.IRModule:
    """``module`` whose ``main`` carries the declared ranges as TVM's shape bounds (what its
    memory planner sizes buffers by), as the torch frontend does for ``torch.export.Dim``."""
    ranges = {name: shapes.dims.range_of(name) for name in shapes.symbols}
    main = module["main"]
    lower = {name: low for name, (low, _) in ranges.items()}
    upper = {name: high for name, (_, high) in ranges.items() if high is not None}
    if lower:
        main = main.with_attr("tir_var_lower_bound", lower)
    if upper:
        main = main.with_attr("tir_var_upper_bound", upper)
    module["main"] = main
    return module


def graphs(model: object) -> Iterator[object]:
    """``model``'s graph and every subgraph in it (the bodies of If, Loop and Scan nodes)."""
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            pending += [a.g for a in node.attribute if a.HasField("g")]
            pending += [g for a in node.attribute for g in a.graphs]


def node_count(model: object) -> int:
    """How many nodes ``model`` holds, those of its subgraphs included."""
    return sum(len(graph.node) for graph in graphs(model))


def _ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's error in one line, without the status prefix it repeats
    (``[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : ``)."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", brief(exc))
    return f"{type(exc).__name__}: {text[:300]}"
