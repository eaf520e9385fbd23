"""Sources that reach TVM through a ``torch.export.ExportedProgram``: nn.Module, TorchScript, .pt2."""

from __future__ import annotations

import abc
import hashlib
import inspect
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.errors import InputSpecError, ModelSourceError, brief
from pytest_tvmdeploy.inputs import signature
from pytest_tvmdeploy.outputs import RunResult, timed_calls
from pytest_tvmdeploy.sources.base import ModelFile, ModelSource, raise_if_unsupported

if TYPE_CHECKING:
    import torch
    import tvm


class ExportedProgramSource(ModelSource):
    """Shared steps of every torch form: order inputs, run eagerly, export, fingerprint, import."""

    reference_name = "pytorch"

    def __init__(self, description: str, path: Path | None = None) -> None:
        super().__init__(description, path)
        self._exported: dict[str, torch.export.ExportedProgram] = {}

    @abc.abstractmethod
    def _callable(self) -> Callable[..., Any]:
        """What computes the reference outputs from positional tensors."""

    @abc.abstractmethod
    def _export(self, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        """Produce an ExportedProgram for these example inputs."""

    def _positional(self, inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        import torch

        names = self.input_names()
        if names is not None and not set(names) - self.optional_inputs() <= set(inputs) <= set(names):
            raise InputSpecError(
                f"{self.description}: inputs {sorted(inputs)} do not match the model's "
                f"inputs {list(names)}"
            )
        ordered = [inputs[n] for n in names if n in inputs] if names is not None else list(inputs.values())
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in ordered)

    def run_reference(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> RunResult:
        import torch

        args = self._positional(inputs)
        model = self._callable()
        try:
            with torch.no_grad():
                result, seconds = timed_calls(lambda: model(*args), repeat)
        except Exception as exc:  # noqa: BLE001 - the model's own error, shown to the user
            raise InputSpecError(
                f"{self.description}: the inputs {signature(inputs)} do not fit the model; "
                f"PyTorch raised {type(exc).__name__}: {exc}"
            ) from exc
        return RunResult(self.reference_name, flatten_torch_outputs(result), call_seconds=seconds)

    def exported_program(self, inputs: Mapping[str, np.ndarray]) -> torch.export.ExportedProgram:
        """The ExportedProgram for these inputs' shapes and dtypes (exported once)."""
        key = repr(signature(inputs))
        if key not in self._exported:
            try:
                self._exported[key] = self._export(self._positional(inputs))
            except (InputSpecError, ModelSourceError):
                raise
            except Exception as exc:  # noqa: BLE001
                raise ModelSourceError(
                    f"{self.description}: torch.export failed: {type(exc).__name__}: {exc}"
                ) from exc
        return self._exported[key]

    def fingerprint(self, inputs: Mapping[str, np.ndarray]) -> str:
        program = self.exported_program(inputs)
        digest = hashlib.sha256(program.graph_module.code.encode("utf-8"))
        for group in (program.state_dict, program.constants):
            for name in sorted(group):
                _update_with_tensor(digest, name, group[name])
        return digest.hexdigest()

    def model_file(self, inputs: Mapping[str, np.ndarray], folder: Path, fingerprint: str) -> ModelFile:
        import torch

        if self.path is not None and Path(self.path).suffix.lower() == ".pt2":
            return ModelFile(Path(self.path).resolve(), self.description, self.kind)
        # the program is specialised to the inputs' shapes: they are part of its name
        name = hashlib.sha256(f"{fingerprint}{signature(inputs)}".encode()).hexdigest()
        path = Path(folder) / f"{name}.pt2"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged = path.with_name(f".{name}.{os.getpid()}.tmp.pt2")
            torch.export.save(self.exported_program(inputs), str(staged))
            os.replace(staged, path)  # whole or absent, whatever process reads it
        return ModelFile(path.resolve(), self.description, self.kind)

    def to_relax(self, inputs: Mapping[str, np.ndarray]) -> tvm.IRModule:
        from tvm.relax.frontend.torch import from_exported_program

        program = self.exported_program(inputs)
        try:
            return from_exported_program(program)
        except Exception as exc:  # noqa: BLE001
            raise_if_unsupported(exc, self)
            raise ModelSourceError(
                f"{self.description}: TVM's torch frontend failed: {type(exc).__name__}: {exc}"
            ) from exc


class TorchModuleSource(ExportedProgramSource):
    """An ``nn.Module`` (or a zero-argument callable returning one)."""

    kind = "torch"

    def __init__(self, module: torch.nn.Module, description: str | None = None) -> None:
        super().__init__(description or f"nn.Module {type(module).__name__}")
        self.module = module.eval()

    def input_names(self) -> tuple[str, ...] | None:
        params = inspect.signature(self.module.forward).parameters.values()
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            return None
        return tuple(p.name for p in params)

    def optional_inputs(self) -> frozenset[str]:
        params = inspect.signature(self.module.forward).parameters.values()
        return frozenset(p.name for p in params if p.default is not inspect.Parameter.empty)

    def _callable(self) -> Callable[..., Any]:
        return self.module

    def _export(self, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        import torch

        _quiet_structured_trace()
        return torch.export.export(self.module, args)


class TorchScriptSource(ExportedProgramSource):
    """A TorchScript file (``torch.jit.trace``/``script`` + ``save``), converted to an ExportedProgram."""

    kind = "torchscript"

    def __init__(self, path: Path) -> None:
        import torch

        super().__init__(str(path), path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # noqa: BLE001
            raise ModelSourceError(
                f"{path}: not a loadable TorchScript file: {type(exc).__name__}: {brief(exc)}"
            ) from exc

    def input_names(self) -> tuple[str, ...] | None:
        arguments = self.module.forward.schema.arguments[1:]  # [0] is self
        return tuple(arg.name for arg in arguments)

    def _callable(self) -> Callable[..., Any]:
        return self.module

    def _export(self, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        import torch
        from torch._export.converter import TS2EPConverter

        _quiet_structured_trace()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter warns that it is a prototype
            converted = TS2EPConverter(self.module, args).convert()
        # The converter leaves every input dimension symbolic; TVM then builds shape-generic code
        # (squeezenet1_1: 90 s to compile, 1 s when static). Exported again with these inputs'
        # shapes, the program is static, like the other forms.
        try:
            return torch.export.export(converted.module(), args, strict=False)
        except Exception:  # noqa: BLE001 - the converted program still works, only slower
            return converted

    def fingerprint(self, inputs: Mapping[str, np.ndarray]) -> str:
        # The graph and the weights, not the file's bytes: a re-saved file records its own
        # name and the process's type-mangling counters, which say nothing about the model.
        graph = self.module.inlined_graph.str(False)  # without source locations
        digest = hashlib.sha256(re.sub(r"___torch_mangle_\d+\.", "", graph).encode())
        for name, tensor in sorted(self.module.state_dict().items()):
            _update_with_tensor(digest, name, tensor)
        return digest.hexdigest()


class SavedExportedProgramSource(ExportedProgramSource):
    """A ``torch.export.save``-d ExportedProgram (``.pt2``)."""

    kind = "exported_program"

    def __init__(self, path: Path) -> None:
        import torch

        super().__init__(str(path), path)
        try:
            self.program = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelSourceError(
                f"{path}: not a loadable ExportedProgram (.pt2): {type(exc).__name__}: {brief(exc)}"
            ) from exc

    def input_names(self) -> tuple[str, ...] | None:
        return tuple(self.program.graph_signature.user_inputs)

    def _callable(self) -> Callable[..., Any]:
        return self.program.module()

    def _export(self, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        expected = [tuple(n.meta["val"].shape) for n in self.program.graph.nodes
                    if n.op == "placeholder" and n.name in self.program.graph_signature.user_inputs]
        given = [tuple(a.shape) for a in args]
        if expected and expected != given:
            raise InputSpecError(
                f"{self.description}: the ExportedProgram was saved for input shapes {expected}, "
                f"got {given}"
            )
        return self.program


def _quiet_structured_trace() -> None:
    """Keep torch.export's structured-trace records out of pytest's captured logs.

    ``torch.__trace`` logs at DEBUG for TORCH_TRACE's own handler and does not propagate,
    but pytest attaches its capture handler to every non-propagating logger, so each
    failing test's report fills with empty DEBUG lines. Unless TORCH_TRACE is set, drop them.
    """
    import logging

    trace_log = logging.getLogger("torch.__trace")
    if not any(isinstance(f, _DropUnlessTorchTrace) for f in trace_log.filters):
        trace_log.addFilter(_DropUnlessTorchTrace())


class _DropUnlessTorchTrace:
    def filter(self, record: object) -> bool:
        import os

        return bool(os.environ.get("TORCH_TRACE"))


def flatten_torch_outputs(result: Any) -> dict[str, np.ndarray]:
    """Flatten nested tuples/lists/dicts of tensors into ``out0``, ``out1``, ... arrays."""
    import torch
    from torch.utils._pytree import tree_leaves

    leaves = [leaf for leaf in tree_leaves(result) if isinstance(leaf, torch.Tensor)]
    return {f"out{i}": leaf.detach().cpu().numpy().copy() for i, leaf in enumerate(leaves)}


def _update_with_tensor(digest: hashlib._Hash, name: str, tensor: Any) -> None:
    import torch

    if not isinstance(tensor, torch.Tensor):
        digest.update(f"{name}={tensor!r}".encode())
        return
    data = tensor.detach().cpu().contiguous()
    digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
