"""One dynamic-shape artifact against one static artifact per shape, untuned and tuned; PyTorch and
ONNX Runtime alongside, each backend and shape in its own process.

    python benchmarks/dynamic_shapes.py [--model transformer_encoder_seq] [--repeat 20]
                                        [--target "llvm -mcpu=x86-64-v3"] [--tune 400] [--tuning-dir DIR]

The model is a catalogue entry with named dimensions (``transformer_encoder_seq``: sequence length
8, 64, 128; ``squeezenet1_1_batch``: batch 1, 4), seeded weights and inputs. Per shape:
``tvm-static`` builds for that shape alone; ``tvm-dynamic`` is the one artifact built for every
size (its named dimension symbolic). Tuned, the dynamic artifact holds a static copy of ``main``
per declared shape, tuned, and dispatches on the input's size; a shape it was not specialised for
(``--extra``, default: between the first two) runs its symbolic code. ``--tune N`` tunes until the
database ``DIR/<target label>/`` holds N trials for the dynamic module, and N / (number of shapes)
for each static one: the copies' tasks are those of the static builds, so at a declared shape both
apply the same records, and at the extra shape the static build gets one copy's budget. Reported:
median, min and max of ``--repeat`` timed calls, and each median's ratio to the static artifact's
(same tuning) and to ONNX Runtime's.
JSON goes to ``benchmarks/results/dynamic_shapes-<model>-<target label>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, timed, write_results  # noqa: E402
from pytest_tvmdeploy.outputs import TVM_PYTHON  # noqa: E402
from pytest_tvmdeploy.targets import parse_target  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
TVM_BACKENDS = ("tvm-static-untuned", "tvm-dynamic-untuned", "tvm-static-tuned", "tvm-dynamic-tuned")
BACKENDS = ("pytorch", "onnxruntime", *TVM_BACKENDS)


def entry(name: str) -> Any:
    from pytest_tvmdeploy.kit.catalogue import CATALOGUE

    return next(e for e in CATALOGUE if e.name == name)


def arrays(model: Any, shape: dict[str, int]) -> dict[str, Any]:
    from pytest_tvmdeploy.inputs import make_inputs
    from pytest_tvmdeploy.shapes import bind_specs

    return make_inputs(bind_specs(model.inputs, shape), seed=0)


def seeded(model: Any) -> Any:
    import torch

    torch.manual_seed(0)
    return model.build()


def framework_worker(backend: str, name: str, shape: dict[str, int], repeat: int) -> dict:
    import torch

    model, feed = entry(name), arrays(entry(name), shape)
    net = seeded(model)
    if backend == "pytorch":
        args = [torch.from_numpy(a) for a in feed.values()]
        with torch.no_grad():
            return row(backend, shape, timed(lambda: net(*args), repeat))
    import onnxruntime

    from pytest_tvmdeploy.kit.model_files import model_file

    path = model_file(model, "onnx", Path(tempfile.mkdtemp()))  # the named axes stay dynamic
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return row(backend, shape, timed(lambda: session.run(None, feed), repeat))


def tvm_worker(backend: str, name: str, shape: dict[str, int], args: argparse.Namespace) -> dict:
    from pytest_tvmdeploy import deploy
    from pytest_tvmdeploy.shapes import SymbolicDims

    model = entry(name)
    spec = parse_target(args.target)
    tuned, static = backend.endswith("-tuned"), "static" in backend
    # the dynamic artifact's budget covers a copy per shape; a static one gets that copy's share
    budget = (args.tune // len(model.shapes) if static else args.tune) if tuned else 0
    deployment = deploy(
        lambda: seeded(model), model.inputs, shape=shape, dims=SymbolicDims.declare(model.shapes),
        target=spec, cache_dir=CACHE, repeat=args.repeat + 1, static_shapes=static,
        tuning_dir=Path(args.tuning_dir) / spec.label if tuned else None, tune=budget,
    )
    seconds = deployment.runs[TVM_PYTHON].call_seconds[1:]  # the first call warms up
    return row(backend, shape, seconds, tuned_functions=deployment.artifact.meta.get("tuned_functions", 0),
               dynamic=deployment.dynamic)


def row(backend: str, shape: dict[str, int], seconds: Any, **extra: Any) -> dict:
    ms = [1000 * s for s in seconds]
    return {"backend": backend, "shape": shape, "median_ms": statistics.median(ms), "min_ms": min(ms),
            "max_ms": max(ms), "n": len(ms), **extra}


def run_backend(backend: str, shape: dict[str, int], args: argparse.Namespace) -> dict | None:
    return run_child(__file__, ["--worker", backend, json.dumps(shape), "--model", args.model, "--repeat",
                                str(args.repeat), "--target", args.target, "--tuning-dir", args.tuning_dir,
                                "--tune", str(args.tune)], f"{backend} {shape}")


def add_ratios(rows: list[dict]) -> None:
    """Each row's median over the static artifact's of the same tuning, and over ONNX Runtime's."""
    by = {r["backend"]: r["median_ms"] for r in rows}
    for r in rows:
        kind = r["backend"].rsplit("-", 1)[-1]
        static = by.get(f"tvm-static-{kind}") if r["backend"].startswith("tvm-dynamic") else None
        r["vs_static"] = r["median_ms"] / static if static else None
        r["vs_onnxruntime"] = r["median_ms"] / by["onnxruntime"] if by.get("onnxruntime") else None


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        ratios = "  ".join(f"{r[key]:5.2f}x {label}" for key, label in (("vs_static", "static"),
                                                                         ("vs_onnxruntime", "ORT")) if r.get(key))
        print(f"{shape:10s} {r['backend']:20s} median {r['median_ms']:9.3f} ms  (min {r['min_ms']:.3f}, "
              f"max {r['max_ms']:.3f}, n={r['n']})  {ratios}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="transformer_encoder_seq")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--target", default="llvm -mcpu=x86-64-v3")
    parser.add_argument("--tuning-dir", default=str(ROOT / "benchmarks" / "tuning" / "dynamic"))
    parser.add_argument("--tune", type=int, default=400)
    parser.add_argument("--extra", help="a shape the dynamic artifact is not specialised for, as JSON")
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, shape = args.worker[0], json.loads(args.worker[1])
        result = (framework_worker(backend, args.model, shape, args.repeat) if backend in ("pytorch", "onnxruntime")
                  else tvm_worker(backend, args.model, shape, args))
        print(json.dumps(result))
        return
    shapes = [dict(s) for s in entry(args.model).shapes]
    extra = json.loads(args.extra) if args.extra else {k: (shapes[0][k] + shapes[1][k]) // 2 for k in shapes[0]}
    # The static builds are tuned first, each with its share; the dynamic one then finds its copies'
    # tasks tuned (the same workloads) and applies the same records: a build made before another
    # tuned further would compare older records with newer ones.
    static_tuned = {index: run_backend("tvm-static-tuned", shape, args) for index, shape in enumerate(shapes)}
    rows: list[dict] = []
    for index, shape in enumerate([*shapes, extra]):
        measured = [static_tuned[index] if backend == "tvm-static-tuned" and index in static_tuned
                    else run_backend(backend, shape, args) for backend in BACKENDS]
        shape_rows = [r for r in measured if r is not None]
        add_ratios(shape_rows)
        print_rows(shape_rows)
        rows += shape_rows
    label = parse_target(args.target).label
    write_results(f"dynamic_shapes-{args.model}-{label}.json",
                  {"model": args.model, "target": args.target, "repeat": args.repeat, "tune": args.tune,
                   "specialised": shapes, "rows": rows})


if __name__ == "__main__":
    main()
