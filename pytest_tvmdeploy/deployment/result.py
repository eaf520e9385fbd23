"""What one deployment produced: the artifact, every runner's outputs, timings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.build.cache import Artifact
from pytest_tvmdeploy.outputs import NamedArrays, RunResult
from pytest_tvmdeploy.sources import ModelSource
from pytest_tvmdeploy.targets import TargetSpec


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage. ``compile`` is 0 on a cache hit (see ``cached_compile``)."""

    load: float = 0.0          # opening the model source (file load / module construction)
    reference: float = 0.0     # one reference run (PyTorch / ONNX Runtime)
    import_: float = 0.0       # export + TVM frontend (0 on a cache hit)
    quantize: float = 0.0      # calibration + int8 rewrite (0 unless quantized and built)
    tune: float = 0.0          # MetaSchedule tuning (0 unless asked and the database lacked records)
    compile: float = 0.0       # tvm.compile + export_library (0 on a cache hit)
    cached_compile: float = 0.0  # what the cached artifact took to build, when it was built
    vm_load: float = 0.0       # loading the .so into the Relax VM (uploading it, on a remote device)
    run: float = 0.0           # median call of main (0 if not run)
    cpp_load: float = 0.0      # C++ runner: loading the .so and creating the VM (0 if not run)
    cpp_run: float = 0.0       # C++ runner: median call of main (0 if not run)

    def as_dict(self) -> dict[str, float]:
        return {name.rstrip("_"): getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Deployment:
    """Everything one deployment produced, as plain numpy arrays and numbers."""

    model: str
    source_kind: str
    reference_name: str
    target: TargetSpec
    artifact: Artifact
    cache_hit: bool
    fingerprint: str           # the artifact's cache key (model, inputs, target, TVM, recipe)
    model_fingerprint: str     # graph + weights (or the file's bytes), target-independent
    input_fingerprint: str     # the input values
    inputs: NamedArrays
    reference: NamedArrays
    outputs: NamedArrays
    timings: Timings
    runs: Mapping[str, RunResult] = field(default_factory=dict)
    cpp_outputs: NamedArrays | None = None  # None when the C++ runner did not run
    cpp_error: str | None = None            # why the C++ run failed (crash, timeout, error)
    quantization: Mapping[str, Any] | None = None  # int8 config and per-site scales, if quantized
    source: ModelSource | None = field(default=None, compare=False, repr=False)  # the opened model
    tuned: bool = False        # stored schedules (tuning records) were applied to some of its functions
    not_run: str | None = None  # why TVM did not run it (built for another architecture), else None
    device: str | None = None  # which runner produced ``outputs`` (tvm, rpc:<device>)
    sizes: Mapping[str, int] = field(default_factory=dict)  # the symbolic dimensions' sizes in this run
    tuning_dir: Path | None = None  # the tuning database whose records the artifact applied (if tuned)
    sampled: int = 0           # functions that ran a sampled schedule (no tuning record; see tuning.sampled)
    threads: int = 1           # the threads TVM's CPU runtime ran it with (TVM_NUM_THREADS)

    @property
    def artifact_path(self) -> Path:
        return self.artifact.path

    @property
    def dynamic(self) -> bool:
        """Whether the artifact was built with symbolic dimensions (and this run binds them)."""
        return bool(self.sizes)

    @property
    def reference_note(self) -> str:
        """Why the reference is a stand-in for the model's framework (empty when it is not)."""
        reference = self.runs.get(self.reference_name)
        return reference.note if reference is not None else ""

    @property
    def output_names(self) -> list[str]:
        return list(self.reference)
