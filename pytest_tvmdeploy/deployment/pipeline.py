"""The whole pipeline for one model: source → Relax → build (cached) → run → reference.

Usable without pytest::

    from pytest_tvmdeploy import check, deploy
    d = deploy(torchvision.models.resnet18(), {"x": ((1, 3, 224, 224), "float32")}, target="llvm")
    assert check(d)

The framework side (opening the model, its inputs and reference run) and the TVM side (import,
quantize, tune, build, run) are separate steps: :func:`framework_side` and :func:`tvm_side`.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.build.cache import Artifact, ArtifactCache, cache_key
from pytest_tvmdeploy.build.compile import tvm_version
from pytest_tvmdeploy.build.passes import build_pipeline
from pytest_tvmdeploy.deployment.config import Calibration, DeployConfig, needed_samples
from pytest_tvmdeploy.deployment.relax_module import RelaxModule
from pytest_tvmdeploy.deployment.result import Deployment, Timings
from pytest_tvmdeploy.deployment.run import run_cpp_check, run_tvm
from pytest_tvmdeploy.deployment.sandbox import Sandbox
from pytest_tvmdeploy.deployment.worker import Job
from pytest_tvmdeploy.errors import InputSpecError
from pytest_tvmdeploy.hashing import arrays_fingerprint
from pytest_tvmdeploy.inputs import make_inputs
from pytest_tvmdeploy.outputs import TVM_CPP, NamedArrays, RunResult, named_like
from pytest_tvmdeploy.shapes import ShapeSignature, SymbolicDims, bind_specs, declared_signature, symbols_of
from pytest_tvmdeploy.sources import ModelSource, open_source
from pytest_tvmdeploy.sources.base import ModelFile
from pytest_tvmdeploy.threads import configure_threads, runtime_threads
from pytest_tvmdeploy.tuning import DatabaseFiles, applied_fingerprint, needs_tuning, read_database
from pytest_tvmdeploy.tuning.sampled import recipe as sampled_recipe

#: Bumped whenever the way artifacts are built changes, so old cache entries are not reused.
BUILD_RECIPE = 7

Phase = Callable[[str], None]
#: The cache's folder of sampled schedules, one file per function (see ``tuning.sampled``).
SCHEDULES = "schedules"
#: The cache's folder of compiled libraries, keyed by the Relax module rather than the model file.
LIBRARIES = "libraries"
#: :func:`tvm_side` as the sandbox worker calls it.
TVM_SIDE = "pytest_tvmdeploy.deployment.pipeline:tvm_side"


def deploy(
    model: Any,
    inputs: Mapping[str, Any] | list[Any],
    config: DeployConfig | None = None,
    *,
    shape: Mapping[str, int] | None = None,
    dims: SymbolicDims | None = None,
    calibration: Calibration | None = None,
    progress: Phase | None = None,
    sandbox: Sandbox | None = None,
    on_framework: Callable[[FrameworkSide], None] | None = None,
    **options: Any,
) -> Deployment:
    """Import, build (or reuse), export and run ``model``; run its reference too.

    ``model`` and ``inputs`` take the same forms as the ``tvm_model`` marker. A spec may name a
    dimension (``(("batch", 3, 224, 224), "float32")``): the artifact is built with it symbolic,
    and this deployment runs at the sizes ``shape`` gives (``{"batch": 8}``); ``dims`` declares
    each name's range (a size outside it is an :class:`InputSpecError`). An ONNX file's named
    dimensions stay symbolic too, unless ``static_shapes``. ``config`` says
    where and how (see :class:`DeployConfig`); keyword ``options`` are its fields and override it
    (``deploy(m, inputs, target="llvm -mcpu=znver4", cache_dir=...)``). Without ``cache_dir``
    the artifact goes to a fresh temporary folder. A quantized config is calibrated on
    ``calibration`` (input dicts, or a callable returning them) when its mode needs it.
    ``progress`` is called with each phase's name (load, reference, import, quantize, tune,
    compile, run, cpp) as it starts. With a ``sandbox``, everything that touches TVM runs in its
    worker process: a crash, hang or memory blow-up there raises :class:`SandboxError` naming the
    stage. A C++ crash or timeout is recorded in ``cpp_error``, not raised; a target for another
    architecture without a remote device is built but not run (``not_run`` says why).
    ``on_framework`` hears the :class:`FrameworkSide` (opened model, inputs, reference) before any
    TVM work, so a caller can note what it needs of the model even if TVM then fails.
    """
    config = replace(config, **options) if config is not None else DeployConfig(**options)
    configure_threads()  # TVM's runtime on all cores unless the environment says otherwise
    phase = progress or (lambda name: None)
    framework = framework_side(model, inputs, config, calibration, phase, shape, dims)
    if on_framework is not None:
        on_framework(framework)
    job = framework.tvm_job()
    if sandbox is None:
        outcome = tvm_side(job, config, phase)
    else:  # the model crosses to the worker as a file; a crash there fails only this deployment
        folder = (config.cache_dir or Path(tempfile.gettempdir())) / "models"
        model = framework.source.model_file(framework.shapes, folder, framework.model_fingerprint)
        handed_over = replace(job, source=model)
        outcome = sandbox.run(Job(TVM_SIDE, {"job": handed_over, "config": config}, reports_progress=True), phase)
    return assemble(framework, config, outcome)


@dataclass(frozen=True)
class FrameworkSide:
    """What the framework gives a deployment: the opened model, its inputs, its reference run."""

    source: ModelSource
    arrays: dict[str, np.ndarray]
    shapes: ShapeSignature          # what the artifact is built for
    sizes: dict[str, int]           # each symbolic dimension's size in ``arrays``
    reference: RunResult
    model_fingerprint: str
    samples: list[dict[str, np.ndarray]] | None  # calibration data, when quantizing needs it
    load_seconds: float

    def tvm_job(self) -> TvmJob:
        """What the TVM side needs of this: no reference, nothing but the model and its data."""
        return TvmJob(self.source, self.arrays, self.shapes, self.samples, self.model_fingerprint)


@dataclass(frozen=True)
class TvmJob:
    """The TVM side's input; ``source`` is a :class:`ModelFile` when it crosses to the worker."""

    source: ModelSource | ModelFile
    arrays: dict[str, np.ndarray]
    shapes: ShapeSignature
    samples: list[dict[str, np.ndarray]] | None
    model_fingerprint: str


@dataclass(frozen=True)
class TvmOutcome:
    """What the TVM side produced: the artifact and each TVM runner's result."""

    artifact: Artifact
    key: str
    built: bool
    seconds: dict[str, float]          # per stage: import, quantize, tune, compile
    tvm_result: RunResult | None
    not_run: str | None
    cpp_result: RunResult | None
    cpp_error: str | None


def framework_side(model: Any, inputs: Mapping[str, Any] | list[Any], config: DeployConfig,
                   calibration: Calibration | None, phase: Phase, shape: Mapping[str, int] | None = None,
                   dims: SymbolicDims | None = None) -> FrameworkSide:
    """Open the model, make its inputs (at ``shape``'s sizes) and calibration samples, work out
    the shapes to build for, run the reference."""
    phase("load")
    start = time.perf_counter()
    source = open_source(model, base_dir=config.base_dir, seed=config.seed)
    load_seconds = time.perf_counter() - start
    arrays = _inputs_for(source, bind_specs(inputs, shape or {}) if symbols_of(inputs) else inputs, config.seed)
    shapes, sizes = _shapes_for(source, inputs, arrays, dims or SymbolicDims.declare([dict(shape or {})]),
                                static=config.static_shapes)
    samples = needed_samples(config, calibration, source.description)
    phase("reference")
    reference = source.run_reference(arrays, repeat=config.repeat)
    return FrameworkSide(source, arrays, shapes, sizes, reference, source.fingerprint(shapes), samples,
                         load_seconds)


def _shapes_for(source: ModelSource, inputs: Mapping[str, Any] | list[Any], arrays: dict[str, np.ndarray],
                dims: SymbolicDims, static: bool) -> tuple[ShapeSignature, dict[str, int]]:
    """What to build for (the dimensions ``inputs`` or the model file name stay symbolic unless
    ``static``), and the sizes ``arrays`` give them: checked against their ranges even when static."""
    shapes = source.shape_signature(declared_signature(inputs, arrays, dims), static=static)
    try:
        sizes = shapes.bind(arrays)
    except InputSpecError as exc:
        raise InputSpecError(f"{source.description}: {exc}") from None
    return (ShapeSignature.of(arrays), {}) if static else (shapes, sizes)


def tvm_side(job: TvmJob, config: DeployConfig, phase: Phase, heartbeat: Phase | None = None) -> TvmOutcome:
    """Build (or reuse) the artifact and run it in TVM's runners; ``heartbeat`` hears each line
    of tuning progress."""
    module = RelaxModule(job.source, job.shapes, config, job.samples, phase, heartbeat)
    cache = ArtifactCache(config.cache_dir if config.cache_dir is not None
                          else Path(tempfile.mkdtemp(prefix="tvmdeploy-")))
    build_inputs = _build_inputs(job, config)
    tasks_key = cache_key(build_inputs)
    if job.shapes.is_dynamic:  # its tuning tasks depend on the shapes its static copies are made for
        tasks_key = cache_key({**build_inputs, "specialized": [dict(s) for s in job.shapes.dims.shapes]})
    records, applied = _tuning_records(module, config, cache, tasks_key)
    key = cache_key({**build_inputs, "tuning": applied})
    library_key = {**{k: v for k, v in build_inputs.items() if k != "model"}, "tuning": applied}
    artifact, built = cache.get_or_build(key, lambda folder: module.build(
        folder, records if applied else None, ArtifactCache(cache.root / LIBRARIES), library_key,
        schedules=functools.partial(cache.remembered, SCHEDULES)))
    phase("run")
    tvm_result, not_run = run_tvm(artifact, job.arrays, config)
    cpp_result, cpp_error = None, None
    if config.cpp_runner is not None and config.spec.runs_here:
        phase("cpp")
        cpp_result, cpp_error = run_cpp_check(artifact, job.arrays, config)
    return TvmOutcome(artifact, key, built, dict(module.seconds), tvm_result, not_run, cpp_result, cpp_error)


def _build_inputs(job: TvmJob, config: DeployConfig) -> dict[str, Any]:
    """Everything the artifact depends on, for its cache key (passes added to the build too)."""
    added = build_pipeline().key()
    return {
        **({"added_passes": added} if added else {}),
        "model": job.model_fingerprint,
        "inputs": job.shapes.key(),
        "target": config.spec.json,
        "tvm": tvm_version(),
        "recipe": BUILD_RECIPE,
        "quantize": config.quant.to_json() if config.quant is not None else None,
        "calibration": [arrays_fingerprint(s) for s in job.samples] if job.samples else None,
        "cc": config.cc,
        **({"schedule": sampled_recipe()} if config.schedule == "sampled" else {}),
    }


def _tuning_records(
    module: RelaxModule, config: DeployConfig, cache: ArtifactCache, build_key: str
) -> tuple[DatabaseFiles | None, str | None]:
    """Tune if asked and needed; then the database and the digest of the records it applies to
    this model (part of the artifact's key, so records for other models do not rebuild it).

    The model's workload hashes are kept in the cache under ``build_key``: once known, a model
    whose artifact is cached and whose tuning budget is met is neither imported nor prepared."""
    if config.tuning_dir is None:
        return None, None
    records = read_database(config.tuning_dir)  # read once: the key and the build see the same records
    if records.is_empty and not config.tune:
        return records, None
    workloads = cache.remembered("workloads", build_key, lambda: list(module.workloads()))
    if config.tune and needs_tuning(records, config.spec, workloads, max_trials=config.tune):
        module.tune()
        records = read_database(config.tuning_dir)
    return records, applied_fingerprint(records, workloads, config.spec)


def _inputs_for(source: ModelSource, inputs: Mapping[str, Any] | list[Any], seed: int) -> dict[str, np.ndarray]:
    try:
        return make_inputs(inputs, seed=seed, names=source.input_names(), optional=source.optional_inputs())
    except InputSpecError as exc:
        raise InputSpecError(f"{source.description}: {exc}") from None


def assemble(framework: FrameworkSide, config: DeployConfig, outcome: TvmOutcome) -> Deployment:
    """The :class:`Deployment` from what the framework side and the TVM side produced."""
    reference, tvm_result, stage = framework.reference, outcome.tvm_result, outcome.seconds
    runs = {r.runner: r for r in (reference, tvm_result, outcome.cpp_result) if r is not None}
    timings = Timings(
        load=framework.load_seconds,
        reference=reference.median_call_seconds,
        import_=stage.get("import", 0.0),
        quantize=stage.get("quantize", 0.0),
        tune=stage.get("tune", 0.0),
        compile=stage.get("compile", 0.0),
        cached_compile=float(outcome.artifact.meta.get("compile_seconds", 0.0)),
        vm_load=tvm_result.load_seconds if tvm_result is not None else 0.0,
        run=tvm_result.median_call_seconds if tvm_result is not None else 0.0,
        cpp_load=runs[TVM_CPP].load_seconds if TVM_CPP in runs else 0.0,
        cpp_run=runs[TVM_CPP].median_call_seconds if TVM_CPP in runs else 0.0,
    )
    source, artifact = framework.source, outcome.artifact
    return Deployment(
        model=source.description,
        source_kind=source.kind,
        reference_name=reference.runner,  # a stand-in's name when the framework could not run it
        target=config.spec,
        artifact=artifact,
        cache_hit=not outcome.built,
        fingerprint=outcome.key,
        model_fingerprint=framework.model_fingerprint,
        input_fingerprint=arrays_fingerprint(framework.arrays),
        sizes=framework.sizes,
        inputs=NamedArrays(framework.arrays),
        reference=NamedArrays(reference.outputs),
        outputs=named_like(reference, tvm_result) if tvm_result is not None else NamedArrays({}),
        timings=timings,
        runs=runs,
        cpp_outputs=named_like(reference, outcome.cpp_result) if outcome.cpp_result is not None else None,
        cpp_error=outcome.cpp_error,
        quantization=artifact.meta.get("quantization"),
        source=source,
        tuned=bool(artifact.meta.get("tuned_functions")),
        tuning_dir=config.tuning_dir if artifact.meta.get("tuned_functions") else None,
        not_run=outcome.not_run,
        device=tvm_result.runner if tvm_result is not None else None,
        sampled=int(artifact.meta.get("sampled_functions", 0)),
        threads=runtime_threads(),
    )
