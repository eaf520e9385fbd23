"""An ONNX file: imported with TVM's ONNX frontend, referenced by ONNX Runtime."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pytest_tvmdeploy.errors import InputSpecError, ModelSourceError
from pytest_tvmdeploy.hashing import file_sha256
from pytest_tvmdeploy.inputs import signature
from pytest_tvmdeploy.outputs import RunResult, timed_calls
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

    def model_file(self, inputs: Mapping[str, np.ndarray], folder: Path, fingerprint: str) -> ModelFile:
        return ModelFile(Path(self.path).resolve(), self.description, self.kind)

    def _check_names(self, inputs: Mapping[str, np.ndarray]) -> None:
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

    def fingerprint(self, inputs: Mapping[str, np.ndarray]) -> str:
        external = sorted(p for p in self.path.parent.glob(self.path.name + ".data"))
        if not external:
            return self._digest
        return self._digest + "".join(file_sha256(p)[:16] for p in external)

    def to_relax(self, inputs: Mapping[str, np.ndarray]) -> tvm.IRModule:
        from tvm.relax.frontend.onnx import from_onnx

        self._check_names(inputs)
        try:
            return from_onnx(
                self.model,
                shape_dict={n: list(a.shape) for n, a in inputs.items()},
                dtype_dict={n: str(a.dtype) for n, a in inputs.items()},
                sanitize_input_names=False,
            )
        except Exception as exc:  # noqa: BLE001
            raise_if_unsupported(exc, self)
            raise ModelSourceError(
                f"{self.description}: TVM's ONNX frontend failed: {type(exc).__name__}: {exc}"
            ) from exc
