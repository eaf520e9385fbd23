"""An ONNX file: imported with TVM's ONNX frontend, referenced by ONNX Runtime."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pytest_tvmdeploy.errors import InputSpecError, ModelSourceError
from pytest_tvmdeploy.hashing import file_sha256
from pytest_tvmdeploy.inputs import signature
from pytest_tvmdeploy.outputs import RunResult, timed_calls
from pytest_tvmdeploy.shapes import InputShape, ShapeSignature
from pytest_tvmdeploy.sources.base import ModelFile, ModelSource, raise_if_unsupported

if TYPE_CHECKING:
    import tvm


class OnnxSource(ModelSource):
    """An ``.onnx`` file (weights inline or as external data next to it)."""

    kind = "onnx"
    reference_name = "onnxruntime"

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
        import onnxruntime

        self._check_names(inputs)
        try:
            if self._session is None:
                options = onnxruntime.SessionOptions()
                options.log_severity_level = 3
                self._session = onnxruntime.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
            names = [o.name for o in self._session.get_outputs()]
            session, feed = self._session, dict(inputs)
            values, seconds = timed_calls(lambda: session.run(None, feed), repeat)
        except Exception as exc:  # noqa: BLE001
            raise InputSpecError(
                f"{self.description}: the inputs {signature(inputs)} do not fit the model; "
                f"ONNX Runtime raised {type(exc).__name__}: {str(exc).strip()[:500]}"
            ) from exc
        return RunResult(self.reference_name, dict(zip(names, values)), call_seconds=seconds)

    def fingerprint(self, shapes: ShapeSignature) -> str:
        external = sorted(p for p in self.path.parent.glob(self.path.name + ".data"))
        if not external:
            return self._digest
        return self._digest + "".join(file_sha256(p)[:16] for p in external)

    def operators(self, shapes: ShapeSignature) -> dict[str, int]:
        counts: Counter[str] = Counter()
        graphs = [self.model.graph]
        while graphs:  # subgraphs of If/Loop/Scan too: the frontend imports them as well
            graph = graphs.pop()
            for node in graph.node:
                domain = "" if node.domain in ("", "ai.onnx") else f"{node.domain}."
                counts[domain + node.op_type] += 1
                graphs += [a.g for a in node.attribute if a.HasField("g")]
                graphs += [g for a in node.attribute for g in a.graphs]
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
