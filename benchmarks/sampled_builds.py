"""What a build without tuning records costs and gives, by how many sampled schedules each function draws.

    python benchmarks/sampled_builds.py [--models resnet18,mobilenet_v2,efficientnet_b0,regnet_y_400mf,densenet121]
                                        [--draws all16,shipped,all4] [--target llvm] [--repeat 10]

Per model (torchvision, seeded random weights, 1x3x224x224, one real photo crop) and per draw
setting, in a process of its own: seconds to sample the schedules
(:func:`pytest_tvmdeploy.tuning.sampled.schedule_unscheduled`, no cache), to ``tvm.compile`` and
to export the ``.so``, and the median of ``--repeat`` Relax VM calls. Settings: ``all16`` (16
draws for every function that reduces, the rule before small functions were told apart),
``shipped`` (the package's rule: :data:`~pytest_tvmdeploy.tuning.sampled.SMALL_CANDIDATES` for a
function under :data:`~pytest_tvmdeploy.tuning.sampled.SMALL_SHARE` of the model's flops),
``all4`` (4 draws everywhere). JSON goes to ``benchmarks/results/sampled_builds-<target label>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model, photo, run_child, timed, write_results  # noqa: E402

SETTINGS = ("all16", "shipped", "all4")


def child(name: str, setting: str, target_text: str, repeat: int) -> dict:
    """One model built with one draw setting: sampling, compile and export seconds, run median."""
    import tvm

    from pytest_tvmdeploy.build.compile import compile_module, export_library
    from pytest_tvmdeploy.build.passes import build_pipeline
    from pytest_tvmdeploy.shapes import ShapeSignature
    from pytest_tvmdeploy.sources import open_source
    from pytest_tvmdeploy.targets import parse_target
    from pytest_tvmdeploy.tuning import sampled
    from pytest_tvmdeploy.tuning.targets import tuning_target
    from pytest_tvmdeploy.tuning.tasks import prepare_module
    from pytest_tvmdeploy.vm import relax_vm, tvm_tensors

    if setting == "all16":
        sampled.SMALL_CANDIDATES = sampled.CANDIDATES
    elif setting == "all4":
        sampled.CANDIDATES = sampled.SMALL_CANDIDATES = 4
    x = photo()
    target = parse_target(target_text)
    pipeline = build_pipeline(blocked=False)
    as_tuned = tuning_target(target)
    prepared = prepare_module(open_source(model(name)).to_relax(ShapeSignature.of({"x": x})), as_tuned, pipeline)
    start = time.perf_counter()
    prepared, functions = sampled.schedule_unscheduled(prepared, as_tuned)
    sample_s = time.perf_counter() - start
    start = time.perf_counter()
    executable = compile_module(prepared, target, pipeline)
    compile_s = time.perf_counter() - start
    library = Path(tempfile.mkdtemp()) / f"{name}.so"
    start = time.perf_counter()
    export_library(executable, library)
    export_s = time.perf_counter() - start
    vm = relax_vm(tvm.runtime.load_module(str(library)))
    data = tvm_tensors([x])[0]
    seconds = timed(lambda: vm["main"](data), repeat)
    return {"model": name, "draws": setting, "functions": functions, "sample_s": round(sample_s, 1),
            "compile_s": round(compile_s, 1), "export_s": round(export_s, 1),
            "run_ms": round(1000 * statistics.median(seconds), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_b0,regnet_y_400mf,densenet121")
    parser.add_argument("--draws", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.target, args.repeat)))
        return
    from pytest_tvmdeploy.targets import parse_target

    rows = []
    for name in args.models.split(","):
        for setting in args.draws.split(","):
            row = run_child(__file__, ["--child", name, setting, "--target", args.target, "--repeat", str(args.repeat)],
                            f"{name} {setting}")
            if row is not None:
                rows.append(row)
                print(f"{name:18s} {setting:8s} {row['functions']:4d} functions  sample {row['sample_s']:5.1f} s  "
                      f"compile {row['compile_s']:5.1f} s  export {row['export_s']:5.1f} s  "
                      f"run {row['run_ms']:8.2f} ms", flush=True)
    label = parse_target(args.target).label
    print(f"written {write_results(f'sampled_builds-{label}.json', {'target': args.target, 'rows': rows})}")


if __name__ == "__main__":
    main()
