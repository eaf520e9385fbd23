"""Build: ``tvm.compile`` a Relax module for a target and export it as a ``.so``."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.build.passes import PassPipeline, build_pipeline
from pytest_tvmdeploy.errors import BuildError, brief
from pytest_tvmdeploy.files import storage_error
from pytest_tvmdeploy.targets import TargetSpec

if TYPE_CHECKING:
    import tvm

#: How the linker says it could not write the library.
DISK_FULL = "No space left on device"


def compile_module(module: tvm.IRModule, target: TargetSpec, pipeline: PassPipeline | None = None) -> Any:
    """``tvm.compile`` the Relax module for ``target`` with ``pipeline``'s passes (by default
    :func:`build_pipeline`: TVM's own, plus any added); returns the VM executable."""
    tvm_target = target.to_tvm()
    try:
        return (pipeline or build_pipeline()).compile(module, tvm_target)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"tvm.compile for target {target.json} failed: {brief(exc)}") from exc


def export_library(executable: Any, path: Path, cc: str | None = None) -> Path:
    """Write the executable as a shared library at ``path`` with the host's C++ compiler, or with
    ``cc`` (a cross compiler such as ``aarch64-linux-gnu-g++``)."""
    options: dict[str, Any] = {}
    if cc:
        from tvm.support import cc as compilers

        options["fcompile"] = compilers.cross_compiler(cc)
    try:
        executable.export_library(str(path), **options)
    except Exception as exc:  # noqa: BLE001
        if DISK_FULL in str(exc):  # the linker's words; TVM raises them as a RuntimeError
            raise storage_error(path, OSError(errno.ENOSPC, DISK_FULL)) from exc
        compiler = f" with {cc}" if cc else ""
        raise BuildError(f"export_library to {path}{compiler} failed: {brief(exc)}") from exc
    return path


def tvm_version() -> str:
    """The installed TVM version, read without importing TVM (which costs seconds)."""
    from importlib.metadata import version

    return version("apache-tvm")
