"""The model as the Relax module to build: imported, quantized if asked, tuned, built — each at
most once per deployment (tuning and building both need the module; a cache hit needs neither)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.build.cache import ARTIFACT_NAME, ArtifactCache, cache_key
from pytest_tvmdeploy.build.compile import export_library, tvm_version
from pytest_tvmdeploy.build.specialize import specialize
from pytest_tvmdeploy.deployment.config import DeployConfig
from pytest_tvmdeploy.files import link_or_copy
from pytest_tvmdeploy.quantize import quantize_for_target
from pytest_tvmdeploy.runners.rpc_tuning import rpc_measurement
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources import ModelSource
from pytest_tvmdeploy.sources.base import ModelFile
from pytest_tvmdeploy.tuning import DatabaseFiles, build_with_records, sampled_host_build, tune, workload_hashes
from pytest_tvmdeploy.tuning.sampled import Remember

if TYPE_CHECKING:
    import tvm


class RelaxModule:
    """Builds one model's artifact; ``seconds`` holds the time of each stage it ran."""

    def __init__(self, source: ModelSource | ModelFile, shapes: ShapeSignature, config: DeployConfig,
                 samples: list[dict[str, np.ndarray]] | None, phase: Callable[[str], None],
                 heartbeat: Callable[[str], None] | None = None) -> None:
        self.source, self.shapes, self.config, self.samples, self.phase = source, shapes, config, samples, phase
        self.heartbeat = heartbeat  # told each tuning progress line: a long tuning run is alive
        self.seconds: dict[str, float] = {}
        self.meta: dict[str, Any] = {}
        self._module: Any = None
        self._tunable: Any = None

    def get(self) -> tvm.IRModule:
        if self._module is None:
            self._module = self._quantized(self.timed("import", self._import))
        return self._module

    def tunable(self) -> tvm.IRModule:
        """The module tuning sees: with symbolic dimensions, plus a static copy of ``main`` per
        shape the tests run at (see :func:`specialize`), which tuned records then speed up."""
        if self._tunable is None:
            module = self.get()
            self._tunable = specialize(module, self.shapes, self.shapes.dims.shapes) if self.shapes.is_dynamic \
                else module
        return self._tunable

    def _quantized(self, module: tvm.IRModule) -> tvm.IRModule:
        quant = self.config.quant
        if quant is None:
            return module
        compiler = sampled_host_build if self.config.schedule == "sampled" else None  # for long simulations
        result = self.timed("quantize", lambda: quantize_for_target(module, quant, self.config.spec,
                                                                    calibration=self.samples, compiler=compiler))
        self.meta["quantization"] = {
            "config": quant.to_json(),
            "calibration_samples": result.calibration_samples,
            "quantized_sites": result.quantized_sites,
            "sites": list(result.sites),
            "vnni_convs": result.vnni_convs,
            "equalized_pairs": result.equalized_pairs,
            "keep_float": list(result.keep_float),
        }
        if result.sensitivity is not None:
            self.meta["quantization"]["sensitivity"] = result.sensitivity.to_json()
        if result.budget is not None:
            self.meta["quantization"]["budget"] = result.budget.to_json()
        return result.module

    def _import(self) -> tvm.IRModule:
        """The frontend's module; a model handed over as a file is opened first (only now: a
        cached artifact needs no model)."""
        if isinstance(self.source, ModelFile):
            source, shapes = self.source.open(self.shapes)
            renamed = {old.name: new.name for old, new in zip(self.shapes.inputs, shapes.inputs)}
            self.samples = [{renamed.get(k, k): v for k, v in s.items()} for s in self.samples or []] or None
            self.source, self.shapes = source, shapes
        return self.source.to_relax(self.shapes)

    @staticmethod
    def _shared_library(libraries: ArtifactCache, key: Mapping[str, Any],
                        compile_into: Callable[[Path], dict[str, Any]], folder: Path) -> dict[str, Any]:
        """The library for ``key`` from ``libraries`` (compiled now if absent), linked into ``folder``."""
        library, built = libraries.get_or_build(cache_key(key), compile_into)
        link_or_copy(library.path, folder / ARTIFACT_NAME)
        compiled = {name: library.meta[name] for name in ("tuned_functions", "sampled_functions")
                    if name in library.meta}
        return {**compiled, "library": {"key": library.key, "reused": not built}}

    def timed(self, name: str, work: Callable[[], Any]) -> Any:
        self.phase(name)
        start = time.perf_counter()
        result = work()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return result

    def workloads(self) -> tuple[str, ...]:
        """The workload hashes of the module's tuning tasks for the target."""
        return workload_hashes(self.tunable(), self.config.spec)

    def tune(self) -> None:
        """Tune what the database lacks for this module (nothing when it was tuned before)."""
        config, relax_module = self.config, self.tunable()
        remote = rpc_measurement(config.remote, lease_timeout=config.remote_timeout, cc=config.cc) \
            if config.remote else None
        summary = self.timed("tune", lambda: tune(relax_module, config.spec, config.tuning_dir,
                                                  max_trials=config.tune, progress=self.heartbeat,
                                                  max_seconds=config.tune_seconds, remote=remote))
        self.meta["tuning"] = {"tasks": summary.tasks, "trials": summary.trials, "seconds": summary.seconds,
                               "skipped_tasks": len(summary.skipped)}

    def build(self, folder: Path, records: DatabaseFiles | None, libraries: ArtifactCache | None = None,
              key: Mapping[str, Any] | None = None, schedules: Remember | None = None) -> dict[str, Any]:
        """Compile (applying the best of ``records`` to the module's tasks, ``None`` when none
        applies) and export into ``folder``; returns the artifact's metadata.

        With ``libraries``, the library is kept there under ``key`` plus the Relax module's
        structural hash (constants included), and linked into ``folder``: a model reaching TVM
        as the identical module again (the same network as a module, a TorchScript file and a
        ``.pt2``) is compiled once. ``schedules`` keeps the sampled schedules of its functions
        (see :mod:`pytest_tvmdeploy.tuning.sampled`)."""
        config, tuned = self.config, records is not None and not records.is_empty
        relax_module = self.tunable() if tuned else self.get()

        def compile_and_export(into: Path) -> dict[str, Any]:
            built = build_with_records(relax_module, config.spec, records, sampled=config.schedule == "sampled",
                                       remember=schedules)
            export_library(built.executable, into / ARTIFACT_NAME, cc=config.cc)
            return {**({"tuned_functions": built.applied} if tuned else {}), "sampled_functions": built.sampled}

        if libraries is None:
            self.meta.update(self.timed("compile", lambda: compile_and_export(folder)))
        else:
            self.meta.update(self.timed("compile", lambda: self._shared_library(
                libraries, {**(key or {}), "relax_module": module_digest(relax_module)}, compile_and_export, folder)))
        return {
            **self.meta,
            "model": self.source.description,
            "source_kind": self.source.kind,
            "target": config.spec.as_dict,
            "inputs": self.shapes.key(),
            "tvm": tvm_version(),
            "cc": config.cc,
            "import_seconds": self.seconds.get("import", 0.0),
            "compile_seconds": self.seconds["compile"],
        }


def module_digest(module: tvm.IRModule) -> str:
    """The module's structural hash: its functions, shapes and every constant's bytes."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(module):016x}"
