"""The whole pipeline for one model: source → Relax → build (cached) → run → reference.

Usable without pytest::

    from pytest_tvmdeploy import deploy, compare
    d = deploy(torchvision.models.resnet18(), {"x": ((1, 3, 224, 224), "float32")})
    assert compare(d.reference, d.outputs)
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.targets import TargetSpec, parse_target
from pytest_tvmdeploy.build.compile import compile_module, export_library, tvm_version
from pytest_tvmdeploy.build.cache import ARTIFACT_NAME, Artifact, ArtifactCache, cache_key
from pytest_tvmdeploy.errors import ConfigError, InputSpecError, TvmDeployError
from pytest_tvmdeploy.hashing import arrays_fingerprint
from pytest_tvmdeploy.inputs import make_inputs, signature
from pytest_tvmdeploy.quantize import QuantConfig
from pytest_tvmdeploy.quantize import quantize as quantize_module
from pytest_tvmdeploy.outputs import RunResult
from pytest_tvmdeploy.runners.cpp import run_cpp
from pytest_tvmdeploy.runners.python_vm import run_python_vm
from pytest_tvmdeploy.runners.rpc_devices import RPC_TIMEOUT, RemoteSpec
from pytest_tvmdeploy.sources import ModelSource, open_source
from pytest_tvmdeploy.tuning.workloads import applied_fingerprint, workload_hashes
from pytest_tvmdeploy.tuning.plan import needs_tuning
from pytest_tvmdeploy.tuning.records import DatabaseFiles, read_database

if TYPE_CHECKING:
    import tvm

#: Bumped whenever the way artifacts are built changes, so old cache entries are not reused.
BUILD_RECIPE = 4


class NamedArrays(Mapping[str, np.ndarray]):
    """Outputs by name, in model order; ``outputs[0]`` also works (position)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = dict(arrays)
        self._names = list(self._arrays)

    def __getitem__(self, key: str | int) -> np.ndarray:
        if isinstance(key, int):
            return self._arrays[self._names[key]]
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in self._arrays.items())
        return f"NamedArrays({shapes})"


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
    device: str | None = None  # which runner produced ``outputs`` (tvm-python, rpc:<device>)

    @property
    def artifact_path(self) -> Path:
        return self.artifact.path

    @property
    def output_names(self) -> list[str]:
        return list(self.reference)


def deploy(
    model: Any,
    inputs: Mapping[str, Any] | list[Any],
    *,
    target: str | dict[str, Any] | TargetSpec = "llvm",
    cache_dir: Path | None = None,
    seed: int = 0,
    base_dir: Path | None = None,
    repeat: int = 1,
    cpp_runner: Path | None = None,
    cpp_timeout: float = 600.0,
    quantize: QuantConfig | str | Mapping[str, Any] | None = None,
    calibration: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    progress: Callable[[str], None] | None = None,
    cc: str | None = None,
    tuning_dir: Path | None = None,
    tune: int = 0,
    remote: RemoteSpec | None = None,
    remote_timeout: float = RPC_TIMEOUT,
) -> Deployment:
    """Import, build (or reuse), export and run ``model`` on ``target``; run its reference too.

    ``model`` and ``inputs`` take the same forms as the ``tvm_model`` marker. Without
    ``cache_dir`` the artifact goes to a fresh temporary folder. With ``cpp_runner`` (see
    :func:`pytest_tvmdeploy.runners.cpp.build_cpp_runner`) the ``.so`` also runs from C++ in a
    child process; a crash or timeout there is recorded in ``cpp_error``, not raised. With
    ``quantize`` (a :class:`QuantConfig`, a mode name or a dict) the artifact is the int8 model,
    calibrated on ``calibration`` (input dicts, or a callable returning them) when the mode needs it.
    ``repeat`` times every run (TVM, C++ and the reference; the median is reported).
    ``progress`` is called with each phase's name (load, reference, import, quantize, tune,
    compile, run, cpp) as it starts.

    ``tuning_dir`` is this target's MetaSchedule database folder: its records are applied to the
    build, and ``tune=N`` first tunes the model until the folder holds ``N`` trials for it
    (stored ones count; see :func:`pytest_tvmdeploy.tuning.tune`). ``cc`` is the compiler ``export_library`` links with (a cross compiler for
    another ``mtriple``). ``remote`` runs the ``.so`` on an RPC device instead of in this
    process; a target for another architecture without ``remote`` is built but not run
    (``not_run`` says why).
    """
    phase = progress or (lambda name: None)
    spec = target if isinstance(target, TargetSpec) else parse_target(target)
    phase("load")
    start = time.perf_counter()
    source = open_source(model, base_dir=base_dir, seed=seed)
    load_seconds = time.perf_counter() - start
    arrays = _inputs_for(source, inputs, seed)
    recipe = _recipe(source, spec, quantize, calibration, cc, tuning_dir, tune)
    phase("reference")
    reference = source.run_reference(arrays, repeat=repeat)
    model_fingerprint = source.fingerprint(arrays)
    module = _RelaxModule(source, arrays, recipe, phase)
    cache = ArtifactCache(cache_dir if cache_dir is not None else Path(tempfile.mkdtemp(prefix="tvmdeploy-")))
    build_inputs = {
        "model": model_fingerprint,
        "inputs": signature(arrays),
        "target": spec.json,
        "tvm": tvm_version(),
        "recipe": BUILD_RECIPE,
        "quantize": recipe.quant.to_json() if recipe.quant is not None else None,
        "calibration": [arrays_fingerprint(s) for s in recipe.samples] if recipe.samples else None,
        "cc": recipe.cc,
    }
    records, applied = _tuning_records(module, recipe, cache, cache_key(build_inputs))
    key = cache_key({**build_inputs, "tuning": applied})
    artifact, built = cache.get_or_build(key, lambda folder: module.build(folder, records))
    runs: dict[str, RunResult] = {reference.runner: reference}
    tvm_result, not_run = _run_tvm(artifact, arrays, spec, remote, repeat, remote_timeout, phase)
    if tvm_result is not None:
        runs[tvm_result.runner] = tvm_result
    cpp_outputs, cpp_error = None, None
    if cpp_runner is not None and spec.runs_here:
        phase("cpp")
        cpp_result, cpp_error = _run_cpp(cpp_runner, artifact, arrays, repeat=repeat, timeout=cpp_timeout)
        if cpp_result is not None:
            runs[cpp_result.runner] = cpp_result
            cpp_outputs = NamedArrays(_named_like(reference, cpp_result))
    stage = module.seconds
    timings = Timings(
        load=load_seconds,
        reference=reference.median_call_seconds,
        import_=stage.get("import", 0.0),
        quantize=stage.get("quantize", 0.0),
        tune=stage.get("tune", 0.0),
        compile=stage.get("compile", 0.0),
        cached_compile=float(artifact.meta.get("compile_seconds", 0.0)),
        vm_load=tvm_result.load_seconds if tvm_result is not None else 0.0,
        run=tvm_result.median_call_seconds if tvm_result is not None else 0.0,
        cpp_load=runs["cpp"].load_seconds if "cpp" in runs else 0.0,
        cpp_run=runs["cpp"].median_call_seconds if "cpp" in runs else 0.0,
    )
    return Deployment(
        model=source.description,
        source_kind=source.kind,
        reference_name=source.reference_name,
        target=spec,
        artifact=artifact,
        cache_hit=not built,
        fingerprint=key,
        model_fingerprint=model_fingerprint,
        input_fingerprint=arrays_fingerprint(arrays),
        inputs=NamedArrays(arrays),
        reference=NamedArrays(reference.outputs),
        outputs=NamedArrays(_named_like(reference, tvm_result) if tvm_result is not None else {}),
        timings=timings,
        runs=runs,
        cpp_outputs=cpp_outputs,
        cpp_error=cpp_error,
        quantization=artifact.meta.get("quantization"),
        source=source,
        tuned=bool(artifact.meta.get("tuned_functions")),
        not_run=not_run,
        device=tvm_result.runner if tvm_result is not None else None,
    )


@dataclass(frozen=True)
class BuildRecipe:
    """What an artifact depends on besides the model and its input signature."""

    target: TargetSpec
    quant: QuantConfig | None = None
    samples: list[dict[str, np.ndarray]] | None = None  # calibration data, when quantizing needs it
    cc: str | None = None
    tuning_dir: Path | None = None
    tune_trials: int = 0


def _tuning_records(
    module: _RelaxModule, recipe: BuildRecipe, cache: ArtifactCache, build_key: str
) -> tuple[DatabaseFiles | None, str | None]:
    """Tune if asked and needed; then the database and the digest of the records it applies to
    this model (part of the artifact's key, so records for other models do not rebuild it).

    The model's workload hashes are kept in the cache under ``build_key``: once known, a model
    whose artifact is cached and whose tuning budget is met is neither imported nor prepared."""
    if recipe.tuning_dir is None:
        return None, None
    records = read_database(recipe.tuning_dir)  # read once: the key and the build see the same records
    if records.is_empty and not recipe.tune_trials:
        return records, None
    workloads = cache.remembered("workloads", build_key, lambda: list(module.workloads()))
    if recipe.tune_trials and needs_tuning(records, recipe.target, workloads, max_trials=recipe.tune_trials):
        module.tune()
        records = read_database(recipe.tuning_dir)
    return records, applied_fingerprint(records, workloads, recipe.target)


def _inputs_for(source: ModelSource, inputs: Mapping[str, Any] | list[Any], seed: int) -> dict[str, np.ndarray]:
    try:
        return make_inputs(inputs, seed=seed, names=source.input_names(), optional=source.optional_inputs())
    except InputSpecError as exc:
        raise InputSpecError(f"{source.description}: {exc}") from None


def _recipe(
    source: ModelSource,
    spec: TargetSpec,
    quantize: QuantConfig | str | Mapping[str, Any] | None,
    calibration: Iterable[Any] | Callable[[], Iterable[Any]] | None,
    cc: str | None,
    tuning_dir: Path | None,
    tune: int,
) -> BuildRecipe:
    quant = QuantConfig.from_value(quantize) if quantize is not None else None
    samples = calibration_samples(calibration) if quant is not None and quant.needs_calibration else None
    if quant is not None and quant.needs_calibration and not samples:
        raise ConfigError(
            f"{source.description}: quantize calibrate_mode={quant.calibrate_mode!r} needs calibration data "
            f"(calibration= in the marker, or the tvm_calibration_data fixture); none was given"
        )
    if tune < 0:
        raise ConfigError(f"{source.description}: tune={tune} must be >= 0 (trials)")
    if tune and tuning_dir is None:
        raise ConfigError(f"{source.description}: tune={tune} needs a tuning_dir to keep the records in")
    return BuildRecipe(spec, quant, samples, cc or None, Path(tuning_dir) if tuning_dir is not None else None, tune)


def calibration_samples(calibration: Iterable[Any] | Callable[[], Iterable[Any]] | None) -> list[dict[str, np.ndarray]] | None:
    """Materialize calibration data (a callable is called first) as a list of name -> array dicts."""
    if calibration is None:
        return None
    data = calibration() if callable(calibration) else calibration
    samples = []
    for index, sample in enumerate(data):
        if not isinstance(sample, Mapping):
            raise ConfigError(f"calibration sample {index}: expected a dict input name -> array, got {type(sample).__name__}")
        samples.append({str(k): np.ascontiguousarray(np.asarray(v.detach().numpy() if hasattr(v, "detach") else v))
                        for k, v in sample.items()})
    return samples


def _named_like(reference: RunResult, result: RunResult) -> dict[str, np.ndarray]:
    """A runner's outputs under the reference's names (kept as they are if the counts differ)."""
    if len(result.outputs) != len(reference.outputs):
        return dict(result.outputs)  # the comparison reports the count mismatch
    return dict(zip(reference.outputs, result.outputs.values()))


def _run_cpp(
    runner: Path, artifact: Artifact, arrays: Mapping[str, np.ndarray], *, repeat: int, timeout: float
) -> tuple[RunResult | None, str | None]:
    try:
        artifact.verify()  # a damaged .so can crash the loader: refuse it before the child opens it
        with tempfile.TemporaryDirectory(prefix="tvmdeploy-cpp-") as work_dir:
            return run_cpp(runner, artifact.path, arrays, work_dir=Path(work_dir), repeat=repeat, timeout=timeout), None
    except TvmDeployError as exc:
        return None, str(exc)


class _RelaxModule:
    """The model as the Relax module to build (imported, then quantized if asked), made at most
    once per deployment: tuning and building both need it, a cache hit needs neither."""

    def __init__(self, source: ModelSource, arrays: Mapping[str, np.ndarray], recipe: BuildRecipe,
                 phase: Callable[[str], None]) -> None:
        self.source, self.arrays, self.recipe, self.phase = source, arrays, recipe, phase
        self.seconds: dict[str, float] = {}
        self.meta: dict[str, Any] = {}
        self._module: Any = None

    def get(self) -> "tvm.IRModule":
        if self._module is None:
            self._module = self._quantized(self.timed("import", lambda: self.source.to_relax(self.arrays)))
        return self._module

    def _quantized(self, module: "tvm.IRModule") -> "tvm.IRModule":
        quant = self.recipe.quant
        if quant is None:
            return module
        quantized = self.timed("quantize", lambda: quantize_module(module, quant, calibration=self.recipe.samples))
        from pytest_tvmdeploy.quantize.vnni import target_has_vnni, use_vnni_convs

        module, vnni_convs = quantized.module, 0
        if target_has_vnni(self.recipe.target):
            module, vnni_convs = use_vnni_convs(module)
        self.meta["quantization"] = {
            "config": quant.to_json(),
            "calibration_samples": quantized.calibration_samples,
            "quantized_sites": quantized.quantized_sites,
            "sites": list(quantized.sites),
            "vnni_convs": vnni_convs,
        }
        return module

    def timed(self, name: str, work: Callable[[], Any]) -> Any:
        self.phase(name)
        start = time.perf_counter()
        result = work()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return result

    def workloads(self) -> tuple[str, ...]:
        """The workload hashes of the module's tuning tasks for the recipe's target."""
        return workload_hashes(self.get(), self.recipe.target)

    def tune(self) -> None:
        """Tune what the recipe's database lacks for this module (nothing when it was tuned before)."""
        from pytest_tvmdeploy.tuning import tune

        relax_module = self.get()
        summary = self.timed("tune", lambda: tune(relax_module, self.recipe.target, self.recipe.tuning_dir,
                                                  max_trials=self.recipe.tune_trials))
        self.meta["tuning"] = {"tasks": summary.tasks, "trials": summary.trials, "seconds": summary.seconds,
                               "skipped_tasks": len(summary.skipped)}

    def build(self, folder: Path, records: DatabaseFiles | None) -> dict[str, Any]:
        """Compile (applying the best of ``records`` to the module's tasks) and export into
        ``folder``; returns the artifact's metadata."""
        recipe, relax_module = self.recipe, self.get()

        def compile_and_export() -> None:
            if records is not None and not records.is_empty:
                from pytest_tvmdeploy.tuning.apply import build_with_records

                executable, self.meta["tuned_functions"] = build_with_records(relax_module, recipe.target, records)
            else:
                executable = compile_module(relax_module, recipe.target)
            export_library(executable, folder / ARTIFACT_NAME, cc=recipe.cc)

        self.timed("compile", compile_and_export)
        return {
            **self.meta,
            "model": self.source.description,
            "source_kind": self.source.kind,
            "target": recipe.target.as_dict,
            "inputs": signature(self.arrays),
            "tvm": tvm_version(),
            "cc": recipe.cc,
            "import_seconds": self.seconds.get("import", 0.0),
            "compile_seconds": self.seconds["compile"],
        }




def _run_tvm(
    artifact: Artifact,
    arrays: Mapping[str, np.ndarray],
    spec: TargetSpec,
    remote: RemoteSpec | None,
    repeat: int,
    remote_timeout: float,
    phase: Callable[[str], None],
) -> tuple[RunResult | None, str | None]:
    """Run the artifact in this process's Relax VM, or on the remote device; ``(None, why)`` when
    it was built for another architecture and there is no device to run it on."""
    phase("run")
    if remote is not None:
        from pytest_tvmdeploy.runners.rpc import run_rpc

        artifact.verify()
        return run_rpc(artifact.path, arrays, remote, repeat=repeat, timeout=remote_timeout), None
    if not spec.runs_here:
        return None, (f"built for {spec.architecture} ({artifact.path}); this machine is "
                      f"{platform.machine()}: give an RPC device (--tvm-rpc / --tvm-rpc-tracker) to run it")
    return run_python_vm(artifact.path, arrays, repeat=repeat), None
