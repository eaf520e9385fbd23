"""A MetaSchedule builder whose build processes outlive the batch, and the run.

TVM's ``LocalBuilder`` starts fresh worker processes for every batch of candidates, and its
build function imports all of ``tvm.s_tir.tensor_intrin`` (~20 s on one of our cores) in each
of them; under load the first builds of every batch then hit the timeout. Here the workers are
this process's (``local_workers``: kept for its later runs too), and they import nothing beyond
what building a candidate needs: candidates arrive already tensorized, so no intrinsic has to be
registered in the worker. For a remote device the candidates are linked here into shared
libraries (with the deployment's cross compiler, if any): the device then needs no compiler.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.support.popen_pool import MapResult, StatusKind
from tvm.target import Target

from pytest_tvmdeploy.tuning.local_workers import build_pool

#: Seconds one candidate may take to build before its worker is killed (and restarted).
BUILD_TIMEOUT_SECONDS = 60.0
#: Builds after which a worker is replaced: TVM's pool workers leak memory over many uses.
BUILDS_PER_WORKER = 256


@dataclass(frozen=True)
class Export:
    """How candidates leave the builder: a tar archive of objects (``shared=False``, linked where
    it is loaded), or a shared library linked here with ``cc`` (``None``: the host's compiler)."""

    shared: bool = False
    cc: str | None = None


def build_candidate(mod: IRModule, target: Target, folder: str, export: Export = Export()) -> str:
    """Compile one candidate and export it (see :class:`Export`) in a new folder under ``folder``.

    Runs in a pool worker: MetaSchedule's ``default_build`` + ``default_export``, minus the
    blanket intrinsics import. MetaSchedule deletes the candidate's folder once it is
    measured; a build killed by its timeout leaves its folder to the run's cleanup.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support.tar import tar

    from pytest_tvmdeploy.build.compile import export_library

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    runtime_module = tvm_build(mod, target=target)
    into = tempfile.mkdtemp(prefix="candidate-", dir=folder)
    if not export.shared:
        path = os.path.join(into, "candidate." + tar.output_format)
        runtime_module.export_library(path, fcompile=tar)
    else:
        path = str(export_library(runtime_module, Path(into) / "candidate.so", cc=export.cc))
    return path


def build_job(job: tuple[IRModule, Target, str, Export]) -> str:
    """``build_candidate`` on one ``(mod, target, folder, export)`` tuple (the pool passes one argument)."""
    return build_candidate(*job)


@derived_object
class PersistentPoolBuilder(PyBuilder):
    """Builds candidates into ``folder`` in this process's pool of ``max_workers`` build processes."""

    def __init__(self, *, folder: str, max_workers: int, timeout_seconds: float = BUILD_TIMEOUT_SECONDS,
                 export: Export = Export()) -> None:
        super().__init__()
        self.folder = folder
        self.export = export
        self.timeout_seconds = timeout_seconds
        self.pool = build_pool(max_workers, timeout_seconds, BUILDS_PER_WORKER)

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        jobs = [(build_input.mod, build_input.target, self.folder, self.export) for build_input in build_inputs]
        outcomes = self.pool.map_with_error_catching(build_job, jobs)
        return [self._result(outcome) for outcome in outcomes]

    def _result(self, outcome: MapResult) -> BuilderResult:
        if outcome.status == StatusKind.COMPLETE:
            return BuilderResult(outcome.value, None)
        if outcome.status == StatusKind.TIMEOUT:
            return BuilderResult(None, f"build timed out after {self.timeout_seconds:.0f} s")
        return BuilderResult(None, f"build failed: {outcome.value}")
