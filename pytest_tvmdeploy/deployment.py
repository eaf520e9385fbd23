"""The whole pipeline for one model: source → Relax → build (cached) → run → reference.

Usable without pytest::

    from pytest_tvmdeploy import deploy, compare
    d = deploy(torchvision.models.resnet18(), {"x": ((1, 3, 224, 224), "float32")})
    assert compare(d.reference, d.outputs)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.build import TargetSpec, compile_module, export_library, parse_target, tvm_version
from pytest_tvmdeploy.cache import ARTIFACT_NAME, Artifact, ArtifactCache, cache_key
from pytest_tvmdeploy.errors import ConfigError, InputSpecError, TvmDeployError
from pytest_tvmdeploy.fingerprints import arrays_fingerprint
from pytest_tvmdeploy.inputs import make_inputs, signature
from pytest_tvmdeploy.quantize import QuantConfig
from pytest_tvmdeploy.quantize import quantize as quantize_module
from pytest_tvmdeploy.runners.base import RunResult
from pytest_tvmdeploy.runners.cpp import run_cpp
from pytest_tvmdeploy.runners.python_vm import run_python_vm
from pytest_tvmdeploy.sources import ModelSource, open_source

#: Bumped whenever the way artifacts are built changes, so old cache entries are not reused.
BUILD_RECIPE = 2


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
    compile: float = 0.0       # tvm.compile + export_library (0 on a cache hit)
    cached_compile: float = 0.0  # what the cached artifact took to build, when it was built
    vm_load: float = 0.0       # loading the .so into the Relax VM
    run: float = 0.0           # median call of main
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
) -> Deployment:
    """Import, build (or reuse), export and run ``model`` on ``target``; run its reference too.

    ``model`` and ``inputs`` take the same forms as the ``tvm_model`` marker. Without
    ``cache_dir`` the artifact goes to a fresh temporary folder. With ``cpp_runner`` (see
    :func:`pytest_tvmdeploy.runners.cpp.build_cpp_runner`) the ``.so`` also runs from C++ in a
    child process; a crash or timeout there is recorded in ``cpp_error``, not raised. With
    ``quantize`` (a :class:`QuantConfig`, a mode name or a dict) the artifact is the int8 model,
    calibrated on ``calibration`` (input dicts, or a callable returning them) when the mode needs it.
    ``repeat`` times every run (TVM, C++ and the reference; the median is reported).
    ``progress`` is called with each phase's name (load, reference, import, quantize, compile,
    run, cpp) as it starts.
    """
    phase = progress or (lambda name: None)
    spec = target if isinstance(target, TargetSpec) else parse_target(target)
    phase("load")
    start = time.perf_counter()
    source = open_source(model, base_dir=base_dir, seed=seed)
    load_seconds = time.perf_counter() - start
    try:
        arrays = make_inputs(inputs, seed=seed, names=source.input_names(), optional=source.optional_inputs())
    except InputSpecError as exc:
        raise InputSpecError(f"{source.description}: {exc}") from None
    quant = QuantConfig.from_value(quantize) if quantize is not None else None
    samples = calibration_samples(calibration) if quant is not None and quant.needs_calibration else None
    if quant is not None and quant.needs_calibration and not samples:
        raise ConfigError(
            f"{source.description}: quantize calibrate_mode={quant.calibrate_mode!r} needs calibration data "
            f"(calibration= in the marker, or the tvm_calibration_data fixture); none was given"
        )
    phase("reference")
    reference = source.run_reference(arrays, repeat=repeat)
    model_fingerprint = source.fingerprint(arrays)
    key = cache_key({
        "model": model_fingerprint,
        "inputs": signature(arrays),
        "target": spec.json,
        "tvm": tvm_version(),
        "recipe": BUILD_RECIPE,
        "quantize": quant.to_json() if quant is not None else None,
        "calibration": [arrays_fingerprint(s) for s in samples] if samples else None,
    })
    cache = ArtifactCache(cache_dir if cache_dir is not None else Path(tempfile.mkdtemp(prefix="tvmdeploy-")))
    stage: dict[str, float] = {}
    artifact, built = cache.get_or_build(
        key, lambda folder: _build(source, arrays, spec, folder, stage, quant, samples, phase)
    )
    phase("run")
    result = run_python_vm(artifact.path, arrays, repeat=repeat)
    outputs = _named_like(reference, result)
    runs = {reference.runner: reference, result.runner: result}
    cpp_outputs, cpp_error = None, None
    if cpp_runner is not None:
        phase("cpp")
        cpp_result, cpp_error = _run_cpp(cpp_runner, artifact, arrays, repeat=repeat, timeout=cpp_timeout)
        if cpp_result is not None:
            runs[cpp_result.runner] = cpp_result
            cpp_outputs = NamedArrays(_named_like(reference, cpp_result))
    timings = Timings(
        load=load_seconds,
        reference=reference.median_call_seconds,
        import_=stage.get("import", 0.0),
        quantize=stage.get("quantize", 0.0),
        compile=stage.get("compile", 0.0),
        cached_compile=float(artifact.meta.get("compile_seconds", 0.0)),
        vm_load=result.load_seconds,
        run=result.median_call_seconds,
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
        outputs=NamedArrays(outputs),
        timings=timings,
        runs=runs,
        cpp_outputs=cpp_outputs,
        cpp_error=cpp_error,
        quantization=artifact.meta.get("quantization"),
        source=source,
    )


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


def _build(
    source: ModelSource,
    arrays: Mapping[str, np.ndarray],
    spec: TargetSpec,
    folder: Path,
    stage: dict[str, float],
    quant: QuantConfig | None,
    samples: list[dict[str, np.ndarray]] | None,
    phase: Callable[[str], None],
) -> dict[str, Any]:
    phase("import")
    start = time.perf_counter()
    module = source.to_relax(arrays)
    stage["import"] = time.perf_counter() - start
    meta: dict[str, Any] = {}
    if quant is not None:
        phase("quantize")
        start = time.perf_counter()
        quantized = quantize_module(module, quant, calibration=samples)
        module = quantized.module
        stage["quantize"] = time.perf_counter() - start
        meta["quantization"] = {
            "config": quant.to_json(),
            "calibration_samples": quantized.calibration_samples,
            "quantized_sites": quantized.quantized_sites,
            "sites": list(quantized.sites),
        }
    phase("compile")
    start = time.perf_counter()
    executable = compile_module(module, spec)
    export_library(executable, folder / ARTIFACT_NAME)
    stage["compile"] = time.perf_counter() - start
    return {
        **meta,
        "model": source.description,
        "source_kind": source.kind,
        "target": spec.as_dict,
        "inputs": signature(arrays),
        "tvm": tvm_version(),
        "import_seconds": stage["import"],
        "compile_seconds": stage["compile"],
    }
