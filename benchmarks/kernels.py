"""Where a TVM build's time goes: each compiled kernel timed inside the model and alone.

    python benchmarks/kernels.py [--models resnet18,mobilenet_v2] [--target "llvm -mcpu=sapphirerapids"]
                                 [--tuning-dir DIR] [--int8 [--quantize-stem]] [--output NAME]

This builds the model as ``benchmarks/latency.py`` does (the same torchvision network, seeded
weights, photo input, tuning records from ``DIR/<target label>/``, sampled schedules for the
functions without one; ``--int8``: latency.py's int8 configuration) and times every TIR function:

- *in model*: each call during whole-model runs, timed by the VM's instrument hook (Relax's VM in
  TVM 0.27 has no profiler); these calls and the VM's builtins add up to the whole model;
- *alone, hot*: the function by itself with TVM's ``time_evaluator`` on zero-filled arguments of
  its buffers' shapes, called back to back, so its weights stay in the caches (what a tuner that
  does not flush caches measures);
- *alone, cold*: the same with every argument but the first flushed from the caches before each
  call (what the package's tuner measures on CPUs).

Per kernel: calls per inference, microseconds per call each way, share of the in-model time,
GFLOP/s in the model (TVM's own flop estimate). JSON goes to
``benchmarks/results/kernels-<target label>[-int8[-stem]].json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model, photo, timed, write_results  # noqa: E402
from latency import CALIBRATION_PER_PHOTO, ROOT, int8_config  # noqa: E402

#: Each kernel's timing: repeats of at least this many milliseconds of back-to-back calls.
MIN_REPEAT_MS = 40
REPEATS = 7
#: Cold timings: single calls, each after the caches are flushed.
COLD_CALLS = 21
#: Whole-model runs timed call by call.
MODEL_RUNS = 20


def relax_module(name: str, int8: dict | None, spec: Any) -> Any:
    """The network's Relax module as the plugin imports it (quantized with ``int8``, one of
    latency.py's int8 configurations, if given)."""
    from pytest_tvmdeploy.quantize import quantize_for_target
    from pytest_tvmdeploy.shapes import ShapeSignature
    from pytest_tvmdeploy.sources import open_source

    x = photo()
    module = open_source(model(name)).to_relax(ShapeSignature.of({"x": x}))
    if not int8:
        return module
    sys.path.insert(0, str(ROOT / "fixtures"))
    from images import calibration_set

    return quantize_for_target(module, int8, spec, calibration=calibration_set(CALIBRATION_PER_PHOTO,
                                                                                 input_name="x")).module


def calls_per_function(module: Any) -> dict[str, int]:
    """How often ``main`` calls each TIR function (``call_tir`` and its variants)."""
    from tvm import relax

    counts: dict[str, int] = {}

    @relax.expr_functor.visitor
    class Calls(relax.PyExprVisitor):
        def visit_call_(self, call: Any) -> None:
            super().visit_call_(call)
            if call.args and isinstance(call.args[0], relax.GlobalVar):
                counts[call.args[0].name_hint] = counts.get(call.args[0].name_hint, 0) + 1

    Calls().visit_expr(module["main"])
    return counts


def zero_arguments(func: Any, device: Any) -> list[Any] | None:
    """Zero-filled tensors of the function's buffers (None if a shape is not fixed)."""
    import numpy as np
    import tvm

    arguments = []
    for param in func.params:  # a buffer parameter carries its shape and dtype
        shape, dtype = getattr(param, "shape", None), getattr(param, "dtype", None)
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            return None
        arguments.append(tvm.runtime.tensor(np.zeros(tuple(int(d) for d in shape), dtype=str(dtype)), device))
    return arguments


def seconds_in_model(vm: Any, inputs: list[Any], runs: int) -> dict[str, list[float]]:
    """Per function the VM calls (TIR kernels and builtins), each call's seconds over ``runs``
    whole-model runs, timed by the VM's instrument hook."""
    import time

    seconds: dict[str, list[float]] = {}
    started: list[float] = []

    def instrument(func: Any, symbol: str, before_run: bool, ret_value: Any, *args: Any) -> int:
        if before_run:
            started.append(time.perf_counter())
        else:
            seconds.setdefault(symbol, []).append(time.perf_counter() - started.pop())
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            vm["main"](*inputs)
    finally:
        vm.set_instrument(None)
    return seconds


def kernel_rows(built: Any, device: Any, in_model: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Every TIR function of ``built`` (a RecordsBuild with its scheduled module): its calls' time in
    the model (``in_model``, from :func:`seconds_in_model` over MODEL_RUNS runs) and alone."""
    import tvm
    from tvm import tirx as tir
    from tvm.s_tir.analysis import estimate_tir_flops

    library = built.executable.mod.imports[0] if built.executable.mod.imports else built.executable.mod
    calls = calls_per_function(built.module)
    rows = []
    for global_var, func in built.module.functions.items():
        name = global_var.name_hint
        if not isinstance(func, tir.PrimFunc) or name not in calls or name not in in_model:
            continue
        arguments = zero_arguments(func, device)
        if arguments is None:
            continue
        hot = library.time_evaluator(name, device, number=1, repeat=REPEATS, min_repeat_ms=MIN_REPEAT_MS)
        cold = library.time_evaluator(name, device, number=1, repeat=COLD_CALLS, min_repeat_ms=0,
                                      f_preproc="cache_flush_cpu_non_first_arg")
        seconds = statistics.median(in_model[name])
        try:
            flops = estimate_tir_flops(tvm.IRModule({"main": func}))
        except tvm.error.InternalError:  # it has no rule for some tensorized bodies (prim.Broadcast)
            flops = None
        rows.append({"kernel": name, "calls": calls[name], "us_per_call": round(seconds * 1e6, 1),
                     "us_total": round(seconds * 1e6 * calls[name], 1),
                     "us_alone_hot": round(statistics.median(hot(*arguments).results) * 1e6, 1),
                     "us_alone_cold": round(statistics.median(cold(*arguments).results) * 1e6, 1),
                     "gflops": round(flops / seconds / 1e9, 1) if flops else None})
    total = sum(r["us_total"] for r in rows) or 1.0
    for r in rows:
        r["share"] = round(r["us_total"] / total, 3)
    return sorted(rows, key=lambda r: -r["us_total"])


def breakdown(name: str, spec: Any, database: Path, int8: dict | None) -> dict[str, Any]:
    import tvm

    from pytest_tvmdeploy.tuning.apply import build_with_records
    from pytest_tvmdeploy.tuning.records import read_database
    from pytest_tvmdeploy.vm import relax_vm

    records = read_database(database) if database.is_dir() else None
    built = build_with_records(relax_module(name, int8, spec), spec, records, sampled=True)
    device = tvm.cpu()
    vm = relax_vm(built.executable)
    x = tvm.runtime.tensor(photo())
    model_ms = statistics.median(timed(lambda: vm["main"](x), 30)) * 1e3
    in_model = seconds_in_model(vm, [x], MODEL_RUNS)
    rows = kernel_rows(built, device, in_model)
    kernel_names = {r["kernel"] for r in rows}
    vm_ms = sum(sum(v) for k, v in in_model.items() if k not in kernel_names) / MODEL_RUNS * 1e3
    return {"model": name, "int8": int8 is not None, "int8_config": int8, "database": str(database),
            "tuned_functions": built.applied, "sampled_functions": built.sampled, "model_ms": round(model_ms, 3),
            "kernels_in_model_ms": round(sum(r["us_total"] for r in rows) / 1e3, 3),
            "vm_builtins_ms": round(vm_ms, 3),
            "kernels_alone_hot_ms": round(sum(r["us_alone_hot"] * r["calls"] for r in rows) / 1e3, 3),
            "kernels_alone_cold_ms": round(sum(r["us_alone_cold"] * r["calls"] for r in rows) / 1e3, 3),
            "kernels": rows}


def main() -> None:
    from pytest_tvmdeploy.targets import parse_target
    from pytest_tvmdeploy.threads import configure_threads

    threads = configure_threads()  # as deployments run: every core, before TVM's thread pool starts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--target", default="llvm -mcpu=sapphirerapids")
    parser.add_argument("--tuning-dir", default=str(ROOT / "benchmarks" / "tuning" / "{model}"))
    parser.add_argument("--int8", action="store_true", help="the int8 model (latency.py's configuration)")
    parser.add_argument("--quantize-stem", action="store_true", help="--int8 with the first conv in int8 as well")
    parser.add_argument("--top", type=int, default=12, help="kernels printed per model")
    parser.add_argument("--output", help="file name under benchmarks/results/")
    args = parser.parse_args()
    spec = parse_target(args.target)
    int8 = int8_config(args.quantize_stem) if args.int8 else None
    kind = ""
    if args.int8:
        kind = " int8 (stem in int8)" if args.quantize_stem else " int8"
    results = []
    for name in args.models.split(","):
        result = breakdown(name, spec, Path(args.tuning_dir.replace("{model}", name)) / spec.label, int8)
        results.append(result)
        print(f"{name}{kind}: whole model {result['model_ms']:.2f} ms; kernels in the "
              f"model {result['kernels_in_model_ms']:.2f} ms + VM builtins {result['vm_builtins_ms']:.2f} ms; "
              f"kernels alone {result['kernels_alone_hot_ms']:.2f} ms hot, {result['kernels_alone_cold_ms']:.2f} "
              f"ms cold ({result['tuned_functions']} tuned, {result['sampled_functions']} sampled functions)")
        print(f"  {'kernel':46s} {'calls':>5s} {'us/call':>8s} {'hot':>8s} {'cold':>8s} {'share':>6s} {'GFLOP/s':>7s}")
        for r in result["kernels"][:args.top]:
            print(f"  {r['kernel'][:46]:46s} {r['calls']:5d} {r['us_per_call']:8.1f} {r['us_alone_hot']:8.1f} "
                  f"{r['us_alone_cold']:8.1f} {r['share']:6.1%} {r['gflops'] if r['gflops'] is not None else '-':>7}")
    label = spec.label
    if args.int8:
        label += "-int8-stem" if args.quantize_stem else "-int8"
    path = write_results(args.output or f"kernels-{label}.json", {"target": args.target, "threads": threads,
                                                                  "results": results})
    print(f"written {path}")


if __name__ == "__main__":
    main()
