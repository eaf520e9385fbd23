"""Model sources: turn what a test names as ``model=`` into a :class:`ModelSource`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_tvmdeploy.errors import ModelSourceError
from pytest_tvmdeploy.sources.base import ModelSource
from pytest_tvmdeploy.sources.onnx_file import OnnxSource
from pytest_tvmdeploy.sources.torch_export import (
    SavedExportedProgramSource,
    TorchModuleSource,
    TorchScriptSource,
)

#: File suffix → source class.
FILE_SOURCES: dict[str, type[ModelSource]] = {
    ".onnx": OnnxSource,
    ".pt": TorchScriptSource,
    ".pth": TorchScriptSource,
    ".torchscript": TorchScriptSource,
    ".pt2": SavedExportedProgramSource,
}


def open_source(model: Any, *, base_dir: Path | None = None, seed: int = 0) -> ModelSource:
    """Load ``model`` — an ``nn.Module``, a callable returning one, or a path — as a source.

    Relative paths are resolved against ``base_dir`` (the test file's folder). A callable is
    called with torch's random generator seeded from ``seed``, so a factory that builds a
    randomly initialised network builds the same one every time.
    """
    import torch

    if isinstance(model, ModelSource):
        return model
    if isinstance(model, (str, Path)):
        return _open_file(Path(model), base_dir)
    if isinstance(model, torch.nn.Module):
        return TorchModuleSource(model)
    if callable(model):
        name = getattr(model, "__qualname__", repr(model))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                built = model()
        except Exception as exc:  # noqa: BLE001
            raise ModelSourceError(
                f"model factory {name}: raised {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(built, (str, Path)):
            return _open_file(Path(built), base_dir)
        if isinstance(built, ModelSource):  # a source made by hand (the kit's ONNX node cases)
            return built
        if not isinstance(built, torch.nn.Module):
            raise ModelSourceError(
                f"model factory {name}: returned {type(built).__name__}, expected an nn.Module or a path"
            )
        return TorchModuleSource(built)
    raise ModelSourceError(
        f"model={model!r}: expected an nn.Module, a callable returning one, or a path to "
        f"{', '.join(sorted(FILE_SOURCES))} file"
    )


def _open_file(path: Path, base_dir: Path | None) -> ModelSource:
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    suffix = path.suffix.lower()
    if suffix not in FILE_SOURCES:
        raise ModelSourceError(
            f"{path}: unknown model file type {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(sorted(FILE_SOURCES))}"
        )
    if not path.is_file():
        raise ModelSourceError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ModelSourceError(f"{path}: model file is empty")
    return FILE_SOURCES[suffix](path)


__all__ = ["FILE_SOURCES", "ModelSource", "open_source"]
