"""Latency of tuned and untuned TVM builds against PyTorch and ONNX Runtime, each backend in its own process.

    python benchmarks/latency.py [--models resnet18,mobilenet_v2] [--repeat 30] [--int8 [--quantize-stem]]
                                 [--target "llvm -mcpu=x86-64-v4"] [--tuning-dir DIR] [--tune BUDGET]

Per model (torchvision, seeded random weights, 1x3x224x224 fp32, one real photo crop as input): TVM untuned
(plain loops, ``schedule="none"``); TVM's default build without tuning (sampled schedules,
``schedule="sampled"``); TVM tuned, run by the Python VM and by the C++ runner (``cpp_check/``); PyTorch
eager; ONNX Runtime (CPU provider, default threads). With ``--int8`` also the int8 model (this project's
quantizer, mse + max per channel, bias correction, unsigned activations; the first conv in int8 too with
``--quantize-stem``) untuned and tuned; on a CPU with AVX-512 VNNI (``-mcpu=sapphirerapids``, ``znver4``, ...)
its convs take the VNNI form (``quantize/vnni.py``); and ONNX Runtime's own int8 model (``quantize_static``,
QDQ, uint8 activations, int8 weights per channel, the same calibration crops), whose median the int8 rows are
also divided by (``vs_onnxruntime_int8``). Tuned builds apply the MetaSchedule database ``DIR/<label>/`` (the
target's label; ``{model}`` in DIR is replaced by the model's name; default ``benchmarks/tuning/{model}``);
``--tune N`` first tunes each model until its database holds N trials for the target (``--tune 2000/15m``: or
until 15 minutes of tuning; the notes' recipe row takes the trials only). Each backend runs in a fresh
process, one after another; reported: median, min and max of ``--repeat`` timed calls, and each median's ratio
to ONNX Runtime's. JSON goes to ``benchmarks/results/latency-<target label>.json`` (``--output NAME``:
``benchmarks/results/NAME``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model, photo, run_child, timed, write_results  # noqa: E402
from pytest_tvmdeploy.outputs import TVM_CPP, TVM_PYTHON  # noqa: E402
from pytest_tvmdeploy.targets import parse_target  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
#: The int8 configuration: the most accurate one without GPTQ (which changes no speed, only the time
#: quantizing takes); the first conv and the classifier stay float (the old defaults).
INT8 = {"calibrate_mode": "mse", "weight_scale": "max", "per_channel": True, "bias_correction": True,
        "unsigned_activations": True}
#: ``--quantize-stem``: the first conv in int8 as well (ONNX Runtime's int8 model quantizes it too).
INT8_STEM = {**INT8, "skip_conv_layers": ()}
FP32_BACKENDS = ("tvm-untuned", "tvm-default", "tvm-tuned", "pytorch", "onnxruntime")
#: Tuned with the recipe in the team's notes instead of this package's tuner (``--recipe``).
RECIPE_BACKEND = "tvm-recipe"
INT8_BACKENDS = ("tvm-int8-untuned", "tvm-int8-tuned", "onnxruntime-int8")
FRAMEWORK_BACKENDS = ("pytorch", "onnxruntime", "onnxruntime-int8")
#: Calibration crops per photo, for both quantizers.
CALIBRATION_PER_PHOTO = 4


def int8_config(quantize_stem: bool) -> dict:
    """The int8 configuration of the rows: :data:`INT8`, or :data:`INT8_STEM` with ``--quantize-stem``."""
    return INT8_STEM if quantize_stem else INT8


def framework_worker(backend: str, name: str, repeat: int) -> list[dict]:
    import torch

    x, net = photo(), model(name)
    if backend == "pytorch":
        with torch.no_grad():
            return [row(backend, name, timed(lambda: net(torch.from_numpy(x)), repeat))]
    import onnxruntime

    path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), input_names=["x"], dynamo=False)
    extra = {}
    if backend == "onnxruntime-int8":
        started = time.perf_counter()
        path = onnxruntime_int8(path)
        extra["prepare_s"] = round(time.perf_counter() - started, 1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [row(backend, name, timed(lambda: session.run(None, {"x": x}), repeat), **extra)]


def onnxruntime_int8(path: Path) -> Path:
    """ONNX Runtime's static quantizer on the fp32 model at ``path``: QDQ, uint8 activations, int8
    weights per channel (u8s8, its x86 setting), calibrated on the crops our quantizer uses."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sys.path.insert(0, str(ROOT / "fixtures"))
    from images import calibration_set

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration_set(CALIBRATION_PER_PHOTO, input_name="x"))

        def get_next(self) -> dict | None:
            return next(self.samples, None)

    prepared, quantized = path.with_name("prepared.onnx"), path.with_name("int8.onnx")
    quant_pre_process(str(path), str(prepared))
    quantize_static(str(prepared), str(quantized), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return quantized


def tvm_worker(backend: str, name: str, repeat: int, target: str, tuning_dir: str, tune: str,
               quantize_stem: bool = False) -> list[dict]:
    from pytest_tvmdeploy import deploy
    from pytest_tvmdeploy.runners.cpp_build import SessionCppRunner
    from pytest_tvmdeploy.settings.values import tuning_budget

    sys.path.insert(0, str(ROOT / "fixtures"))
    from images import calibration_set

    spec = parse_target(target)
    recipe = backend == RECIPE_BACKEND
    tuned = backend.endswith("-tuned") or recipe
    quantized = "int8" in backend
    schedule = "sampled" if tuned or backend == "tvm-default" else "none"
    database = Path(tuning_dir.replace("{model}", name + "-recipe" * recipe)) / spec.label if tuned else None
    trials, seconds = tuning_budget(tune, "--tune") if tune else (0, None)
    started = time.perf_counter()
    if recipe:
        recipe_seconds = recipe_tune(name, spec, database, trials)
        return [row(backend, name, recipe_run(name, spec, database, repeat), tune_s=round(recipe_seconds, 1),
                    prepare_s=round(time.perf_counter() - started, 1))]
    deployment = deploy(
        model(name), {"x": photo()}, target=spec, cache_dir=CACHE, repeat=(repeat if tuned else min(repeat, 10)) + 1,
        quantize=int8_config(quantize_stem) if quantized else None,
        calibration=calibration_set(CALIBRATION_PER_PHOTO, input_name="x") if quantized else None,
        tuning_dir=database, tune=trials if tuned else 0, tune_seconds=seconds, schedule=schedule,
        cpp_runner=SessionCppRunner(CACHE / "cpp-runner").executable() if tuned else None,
    )
    extra = {"tuned_functions": deployment.tuned, "sampled_functions": deployment.sampled,
             "prepare_s": round(time.perf_counter() - started, 1),
             "tune_s": round(deployment.timings.tune, 1),
             "threads": deployment.threads}
    if quantized:
        extra["vnni_convs"] = deployment.quantization.get("vnni_convs", 0)
    rows = [row(backend, name, deployment.runs[TVM_PYTHON].call_seconds[1:], **extra)]  # first call: warm-up
    if TVM_CPP in deployment.runs:
        rows.append(row(f"{backend}-cpp", name, deployment.runs[TVM_CPP].call_seconds[1:], **extra))
    return rows


def recipe_tune(name: str, spec: Any, folder: Path, trials: int) -> float:
    """Tune ``name`` into ``folder`` as the notes' recipe does (stock ``tune_relax``: the gradient
    scheduler, no per-task cap, a persistent build pool, population 256, 50 initial unmeasured,
    32 candidates per iteration, 3 runs of >= 40 ms each); returns the seconds it took. A folder
    that already holds ``trials`` records is not tuned again."""
    from tvm import relax, transform
    from tvm.s_tir import meta_schedule as ms

    from pytest_tvmdeploy.shapes import ShapeSignature
    from pytest_tvmdeploy.sources import open_source
    from pytest_tvmdeploy.threads import configure_threads
    from pytest_tvmdeploy.tuning.pool_builder import PersistentPoolBuilder
    from pytest_tvmdeploy.tuning.records import read_database
    from pytest_tvmdeploy.tuning.targets import tuning_target

    if len(read_database(folder).records) >= trials:
        return 0.0
    configure_threads()  # measured with the threads the package measures with
    started = time.perf_counter()
    module = open_source(model(name)).to_relax(ShapeSignature.of({"x": photo()}))
    target = tuning_target(spec)
    with target:
        module = transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                       relax.transform.CanonicalizeBindings(), relax.get_pipeline("zero")])(module)
    folder.mkdir(parents=True, exist_ok=True)
    builder = PersistentPoolBuilder(folder=tempfile.mkdtemp(), max_workers=2)
    try:
        ms.relax_integration.tune_relax(
            module, {}, target, str(folder), max_trials_global=trials, num_trials_per_iter=32, builder=builder,
            runner=ms.runner.LocalRunner(timeout_sec=30, evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=40)),
            strategy=ms.search_strategy.EvolutionarySearch(population_size=256, init_min_unmeasured=50))
    finally:
        builder.shutdown()
    return time.perf_counter() - started


def recipe_run(name: str, spec: Any, folder: Path, repeat: int) -> list[float]:
    """Seconds of ``repeat`` calls of ``name`` built with the recipe's records, prepared as the
    recipe prepares (without this package's BatchNorm fold, whose conv tasks its records lack)."""
    from pytest_tvmdeploy.build.compile import export_library
    from pytest_tvmdeploy.build.passes import FOLD_BATCH_NORM, build_pipeline
    from pytest_tvmdeploy.runners.python_vm import run_python_vm
    from pytest_tvmdeploy.shapes import ShapeSignature
    from pytest_tvmdeploy.sources import open_source
    from pytest_tvmdeploy.threads import configure_threads
    from pytest_tvmdeploy.tuning.apply import build_with_records
    from pytest_tvmdeploy.tuning.records import read_database

    configure_threads()
    module = open_source(model(name)).to_relax(ShapeSignature.of({"x": photo()}))
    built = build_with_records(module, spec, read_database(folder), build_pipeline().without([FOLD_BATCH_NORM]),
                               sampled=True)
    library = export_library(built.executable, Path(tempfile.mkdtemp()) / f"{name}-recipe.so")
    return list(run_python_vm(library, {"x": photo()}, repeat=repeat + 1).call_seconds[1:])


def row(backend: str, name: str, seconds: Any, **extra: Any) -> dict:
    ms = [1000 * s for s in seconds]
    return {"backend": backend, "model": name, "median_ms": statistics.median(ms), "min_ms": min(ms),
            "max_ms": max(ms), "n": len(ms), **extra}


def run_backend(backend: str, name: str, args: argparse.Namespace) -> list[dict]:
    return run_child(__file__, ["--worker", backend, name, "--repeat", str(args.repeat), "--target", args.target,
                                "--tuning-dir", args.tuning_dir, "--tune", str(args.tune)]
                     + ["--quantize-stem"] * args.quantize_stem, f"{name} {backend}") or []


def add_ratios(rows: list[dict]) -> None:
    """Each row's median over ONNX Runtime's (``vs_onnxruntime``; ``None`` without an ORT row), and
    each int8 row's over ONNX Runtime's int8 model's (``vs_onnxruntime_int8``)."""
    ort = next((r["median_ms"] for r in rows if r["backend"] == "onnxruntime"), None)
    ort_int8 = next((r["median_ms"] for r in rows if r["backend"] == "onnxruntime-int8"), None)
    for r in rows:
        r["vs_onnxruntime"] = r["median_ms"] / ort if ort else None
        if "int8" in r["backend"]:
            r["vs_onnxruntime_int8"] = r["median_ms"] / ort_int8 if ort_int8 else None


def print_model(rows: list[dict], name: str) -> None:
    """One model's rows as a table, and its int8/fp32 ratios."""
    for r in rows:
        ratio = f"{r['vs_onnxruntime']:6.2f}x ORT" if r["vs_onnxruntime"] else ""
        ratio += f" {r['vs_onnxruntime_int8']:6.2f}x ORT int8" if r.get("vs_onnxruntime_int8") else ""
        print(f"{name:14s} {r['backend']:22s} median {r['median_ms']:9.2f} ms  (min {r['min_ms']:.2f}, "
              f"max {r['max_ms']:.2f}, n={r['n']})  {ratio}", flush=True)
    by = {r["backend"]: r["median_ms"] for r in rows}
    for kind in ("untuned", "tuned"):
        if f"tvm-int8-{kind}" in by and f"tvm-{kind}" in by:
            print(f"{name:14s} int8/fp32 {kind} TVM = {by[f'tvm-int8-{kind}'] / by[f'tvm-{kind}']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--target", default="llvm -mcpu=x86-64-v4")
    parser.add_argument("--tuning-dir", default=str(ROOT / "benchmarks" / "tuning" / "{model}"))
    parser.add_argument("--tune", default="0", help="trials (1409), a time limit (15m) or both (2000/15m)")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--quantize-stem", action="store_true", help="int8 rows: the first conv in int8 as well")
    parser.add_argument("--backends", help="comma-separated subset of the backends to run (default: all)")
    parser.add_argument("--recipe", action="store_true",
                        help=f"also tune with the notes' recipe (row {RECIPE_BACKEND}, --tune trials)")
    parser.add_argument("--output", help="file name under benchmarks/results/ (default latency-<target label>.json)")
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, name = args.worker
        rows = (framework_worker(backend, name, args.repeat) if backend in FRAMEWORK_BACKENDS
                else tvm_worker(backend, name, args.repeat, args.target, args.tuning_dir, args.tune,
                                args.quantize_stem))
        print(json.dumps(rows))
        return
    rows: list[dict] = []
    for name in args.models.split(","):
        backends = FP32_BACKENDS + (RECIPE_BACKEND,) * args.recipe + (INT8_BACKENDS if args.int8 else ())
        if args.backends:
            backends = tuple(b for b in backends if b in args.backends.split(","))
        model_rows = [r for backend in backends for r in run_backend(backend, name, args)]
        add_ratios(model_rows)
        print_model(model_rows, name)
        rows += model_rows
    label = parse_target(args.target).label
    int8 = {"int8_config": int8_config(args.quantize_stem)} if args.int8 else {}
    write_results(args.output or f"latency-{label}.json",
                  {"target": args.target, "repeat": args.repeat, **int8, "rows": rows})


if __name__ == "__main__":
    main()
