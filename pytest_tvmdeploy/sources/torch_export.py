"""Sources that reach TVM through a ``torch.export.ExportedProgram``: nn.Module, TorchScript, .pt2."""

from __future__ import annotations

import abc
import hashlib
import inspect
import operator
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.errors import InputSpecError, ModelSourceError, brief
from pytest_tvmdeploy.inputs import signature
from pytest_tvmdeploy.outputs import RunResult, timed_calls
from pytest_tvmdeploy.shapes import InputShape, Range, ShapeSignature, SymbolicDims
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
    def _export(self, args: tuple[torch.Tensor, ...], dynamic: tuple[Any, ...] | None) -> torch.export.ExportedProgram:
        """Produce an ExportedProgram for these example inputs; ``dynamic`` is torch.export's
        ``dynamic_shapes`` (a ``{axis: Dim}`` per input), ``None`` for a static program."""

    def _positional(self, inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        import torch

        names = self.input_names()
        if names is not None and not set(names) - self.optional_inputs() <= set(inputs) <= set(names):
            raise InputSpecError(
                f"{self.description}: inputs {sorted(inputs)} do not match the model's "
                f"inputs {list(names)}"
            )
        ordered = [inputs[n] for n in names if n in inputs] if names is not None else list(inputs.values())
        # copies: a model that writes into its inputs must not change the test's arrays
        return tuple(torch.from_numpy(np.array(a, order="C", copy=True)) for a in ordered)

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

    def exported_program(self, shapes: ShapeSignature) -> torch.export.ExportedProgram:
        """The ExportedProgram for these shapes (exported once): a named dimension becomes a
        ``torch.export.Dim`` over its declared range."""
        key = repr(shapes.key())
        if key not in self._exported:
            try:
                self._exported[key] = self._export(self._positional(shapes.example_arrays()),
                                                   _dynamic_shapes(shapes, self.input_names()))
            except (InputSpecError, ModelSourceError):
                raise
            except Exception as exc:  # noqa: BLE001
                if shapes.is_dynamic and "Constraints violated" in str(exc):
                    said = next((line.strip(" -") for line in str(exc).splitlines() if "specialized" in line),
                                brief(exc))
                    raise ModelSourceError(
                        f"{self.description}: torch.export cannot keep {', '.join(map(repr, shapes.symbols))} "
                        f"symbolic: the model's code fixes it (a loop over it, a reshape to a constant size, ...); "
                        f"declare a range the model accepts, or build per shape with static_shapes=True. "
                        f"torch.export: {said}"
                    ) from exc
                raise ModelSourceError(
                    f"{self.description}: torch.export failed: {type(exc).__name__}: {exc}"
                ) from exc
        return self._exported[key]

    def fingerprint(self, shapes: ShapeSignature) -> str:
        program = self.exported_program(shapes)
        digest = hashlib.sha256(program.graph_module.code.encode("utf-8"))
        for group in (program.state_dict, program.constants):
            for name in sorted(group):
                _update_with_tensor(digest, name, group[name])
        return digest.hexdigest()

    def operators(self, shapes: ShapeSignature) -> dict[str, int]:
        counts = Counter(operator_name(node.target) for node in self.exported_program(shapes).graph.nodes
                         if node.op == "call_function" and node.target is not operator.getitem)
        return dict(sorted(counts.items()))

    def model_file(self, shapes: ShapeSignature, folder: Path, fingerprint: str) -> ModelFile:
        import torch

        if self.path is not None and Path(self.path).suffix.lower() == ".pt2":
            return ModelFile(Path(self.path).resolve(), self.description, self.kind)
        # the program is specialised to the shapes: they are part of its name
        name = hashlib.sha256(f"{fingerprint}{shapes.key()}".encode()).hexdigest()
        path = Path(folder) / f"{name}.pt2"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged = path.with_name(f".{name}.{os.getpid()}.tmp.pt2")
            program = self.exported_program(shapes)
            try:
                torch.export.save(program, str(staged))
            except Exception as exc:  # noqa: BLE001 - torch raises what its serializer meets
                staged.unlink(missing_ok=True)
                raise ModelSourceError(
                    f"{self.description}: torch.export.save cannot write the exported program (TVM gets the "
                    f"model as a .pt2 file): {type(exc).__name__}: {brief(exc)}"
                ) from exc
            os.replace(staged, path)  # whole or absent, whatever process reads it
        return ModelFile(path.resolve(), self.description, self.kind)

    def to_relax(self, shapes: ShapeSignature) -> tvm.IRModule:
        from tvm.relax.frontend.torch import from_exported_program

        program = self.exported_program(shapes)
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

    def _export(self, args: tuple[torch.Tensor, ...], dynamic: tuple[Any, ...] | None) -> torch.export.ExportedProgram:
        import torch

        _quiet_structured_trace()
        return torch.export.export(self.module, args, dynamic_shapes=dynamic)


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

    def _export(self, args: tuple[torch.Tensor, ...], dynamic: tuple[Any, ...] | None) -> torch.export.ExportedProgram:
        import torch
        from torch._export.converter import TS2EPConverter

        _quiet_structured_trace()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter warns that it is a prototype
            converted = TS2EPConverter(self.module, args).convert()
        # The converter leaves every input dimension symbolic; TVM then builds shape-generic code
        # (squeezenet1_1: 90 s to compile, 1 s when static). Exported again, the program is static
        # but for the dimensions the test names, like the other forms.
        try:
            return torch.export.export(converted.module(), args, strict=False, dynamic_shapes=dynamic)
        except Exception:  # noqa: BLE001 - the converted program still works, only slower
            if dynamic is not None:
                raise
            return converted

    def fingerprint(self, shapes: ShapeSignature) -> str:
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

    def _saved_shapes(self) -> dict[str, tuple[Any, ...]]:
        """Each input's shape as saved: an int, or a ``torch.SymInt`` where the program is dynamic."""
        return {n.name: tuple(n.meta["val"].shape) for n in self.program.graph.nodes
                if n.op == "placeholder" and n.name in self.program.graph_signature.user_inputs}

    def shape_signature(self, declared: ShapeSignature, static: bool = False) -> ShapeSignature:
        """A program saved with dynamic dimensions keeps them, named as torch named them and over
        the ranges it saved (it was exported for every size there), whatever ``static`` says."""
        saved = self._saved_shapes()
        inputs, ranges = [], {}
        for spec in declared.inputs:
            shape = saved.get(spec.name, ())
            dims = spec.dims
            if len(shape) == len(dims):
                dims = tuple(d if isinstance(d, str) or isinstance(s, int) else str(s) for d, s in zip(dims, shape))
                ranges.update({str(s): self._saved_range(s) for s in shape if not isinstance(s, int)})
            inputs.append(InputShape(spec.name, dims, spec.dtype))
        return ShapeSignature(tuple(inputs), SymbolicDims({**ranges, **declared.dims.ranges}, declared.dims.example,
                                                                   declared.dims.shapes))

    def _saved_range(self, size: Any) -> Range:
        bounds = self.program.range_constraints.get(size.node.expr)
        if bounds is None:
            return (1, None)
        try:
            high: int | None = int(bounds.upper)
        except (TypeError, ValueError, OverflowError, AttributeError):  # torch's int_oo: unbounded
            high = None
        return int(bounds.lower), high

    def _export(self, args: tuple[torch.Tensor, ...], dynamic: tuple[Any, ...] | None) -> torch.export.ExportedProgram:
        expected = [tuple(d if isinstance(d, int) else "?" for d in shape) for shape in self._saved_shapes().values()]
        given = [tuple(d if isinstance(e, int) else "?" for d, e in zip(a.shape, shape))
                 for a, shape in zip(args, self._saved_shapes().values())]
        if expected and (expected != given or len(args) != len(expected)):
            raise InputSpecError(
                f"{self.description}: the ExportedProgram was saved for input shapes {expected}, "
                f"got {[tuple(a.shape) for a in args]}"
            )
        return self.program


def _dynamic_shapes(shapes: ShapeSignature, names: tuple[str, ...] | None) -> tuple[Any, ...] | None:
    """torch.export's ``dynamic_shapes`` for the named dimensions of ``shapes``, in the model's
    positional order: one ``Dim`` per name (shared by every input that uses it), over its range."""
    if not shapes.is_dynamic:
        return None
    from torch.export import Dim

    dims = {}
    for name in shapes.symbols:
        low, high = shapes.dims.range_of(name)
        dims[name] = Dim(name, min=low) if high is None else Dim(name, min=low, max=high)
    by_name = {i.name: i for i in shapes.inputs}
    order = [n for n in names if n in by_name] if names is not None else list(by_name)
    return tuple({axis: dims[d] for axis, d in enumerate(by_name[n].dims) if isinstance(d, str)} or None
                 for n in order)


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


def operator_name(target: Any) -> str:
    """An FX call target as coverage and localisation name it: ``aten.conv2d.default``, and
    Python's arithmetic on symbolic sizes as ``operator.mul``."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    name = getattr(target, "__name__", str(target))
    return f"operator.{name}" if getattr(target, "__module__", None) == "_operator" else name


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
