"""The model as the Relax module to build: imported, quantized if asked, tuned, built — each at
most once per deployment (tuning and building both need the module; a cache hit needs neither)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.build.cache import ARTIFACT_NAME
from pytest_tvmdeploy.build.compile import export_library, tvm_version
from pytest_tvmdeploy.build.specialize import specialize
from pytest_tvmdeploy.deployment.config import DeployConfig
from pytest_tvmdeploy.quantize import quantize_for_target
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources import ModelSource
from pytest_tvmdeploy.sources.base import ModelFile
from pytest_tvmdeploy.tuning import DatabaseFiles, build_with_records, tune, workload_hashes

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
        result = self.timed("quantize", lambda: quantize_for_target(module, quant, self.config.spec,
                                                                    calibration=self.samples))
        self.meta["quantization"] = {
            "config": quant.to_json(),
            "calibration_samples": result.calibration_samples,
            "quantized_sites": result.quantized_sites,
            "sites": list(result.sites),
            "vnni_convs": result.vnni_convs,
        }
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
        summary = self.timed("tune", lambda: tune(relax_module, config.spec, config.tuning_dir,
                                                  max_trials=config.tune, progress=self.heartbeat,
                                                  max_seconds=config.tune_seconds))
        self.meta["tuning"] = {"tasks": summary.tasks, "trials": summary.trials, "seconds": summary.seconds,
                               "skipped_tasks": len(summary.skipped)}

    def build(self, folder: Path, records: DatabaseFiles | None) -> dict[str, Any]:
        """Compile (applying the best of ``records`` to the module's tasks, ``None`` when none
        applies) and export into ``folder``; returns the artifact's metadata."""
        config, tuned = self.config, records is not None and not records.is_empty
        relax_module = self.tunable() if tuned else self.get()

        def compile_and_export() -> None:
            built = build_with_records(relax_module, config.spec, records, sampled=config.schedule == "sampled")
            if tuned:
                self.meta["tuned_functions"] = built.applied
            self.meta["sampled_functions"] = built.sampled
            export_library(built.executable, folder / ARTIFACT_NAME, cc=config.cc)

        self.timed("compile", compile_and_export)
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
