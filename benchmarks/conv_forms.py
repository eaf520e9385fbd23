"""One 3x3 convolution (+ bias + ReLU) tuned in each of its computable forms, equal trials each.

    python benchmarks/conv_forms.py [--channels 64] [--size 56] [--trials 320]
                                    [--forms plain,blocked,winograd] [--target "llvm -mcpu=sapphirerapids"]

Forms: ``plain`` (TOPI ``conv2d_nchw``), ``blocked`` (``conv2d_NCHWc`` in ``NCHW16c``, what tuned
builds use, :mod:`pytest_tvmdeploy.build.block_layout`), ``winograd`` (TOPI's F(4x4, 3x3) Winograd
with pre-transformed weights, MetaSchedule's own Winograd schedule rules). Each form is tuned with
MetaSchedule in its own process from an empty database and timed by TVM's ``time_evaluator``;
reported: median ms, tuning seconds and GFLOP/s counted as the direct convolution's FLOPs (so a
Winograd result compares on the same scale). JSON goes to ``benchmarks/results/conv_forms-<target label>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, write_results  # noqa: E402

FORMS = ("plain", "blocked", "winograd")


def _compute(form: str, channels: int, size: int, target: Any) -> list[Any]:
    """The TE tensors of ``form``: its inputs, then its output."""
    from tvm import te, topi

    bias_shape = (1, channels, 1, 1)
    if form == "plain":
        x = te.placeholder((1, channels, size, size), name="x")
        w = te.placeholder((channels, channels, 3, 3), name="w")
        y = topi.nn.conv2d_nchw(x, w, 1, 1, 1, "float32")
    elif form == "winograd":
        x = te.placeholder((1, channels, size, size), name="x")
        w = te.placeholder((6, 6, channels, channels), name="w")  # F(4x4, 3x3): 6x6 tiles
        y = topi.nn.conv2d_winograd_nchw_without_weight_transform(x, w, 1, 1, 1, "float32")
    elif form == "blocked":
        blocks = channels // 16
        x = te.placeholder((1, blocks, size, size, 16), name="x")
        w = te.placeholder((blocks, blocks, 3, 3, 16, 16), name="w")
        bias_shape = (1, blocks, 1, 1, 16)
        with target:
            y = topi.nn.conv2d_NCHWc(x, w, 1, 1, 1, "NCHW16c", "NCHW16c", "float32")
    else:
        raise ValueError(f"unknown form {form!r}; known: {', '.join(FORMS)}")
    b = te.placeholder(bias_shape, name="b")
    return [x, w, b, topi.nn.relu(y + b)]


def measure(form: str, channels: int, size: int, trials: int, target_text: str) -> dict[str, Any]:
    """Tune ``form`` with ``trials`` trials and time the best schedule (run in a child process)."""
    import numpy as np
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from pytest_tvmdeploy.targets import parse_target
    from pytest_tvmdeploy.tuning.targets import tuning_target

    target = tuning_target(parse_target(target_text))
    tensors = _compute(form, channels, size, target)
    module = tvm.IRModule({"main": te.create_prim_func(tensors).with_attr("global_symbol", "main")})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        database = ms.tune_tir(module, target, work_dir, max_trials_global=trials, num_trials_per_iter=64)
        schedule = database.query_schedule(module, target, workload_name="main")
    tune_s = time.perf_counter() - start
    if schedule is None:
        raise SystemExit(f"{form}: none of the {trials} trials gave a valid schedule (see MetaSchedule's log above)")
    library = tvm.tirx.build(schedule.mod, target=target)
    device = tvm.cpu()
    rng = np.random.default_rng(0)
    arrays = [tvm.runtime.tensor(rng.random([int(d) for d in t.shape], dtype="float32"), device) for t in tensors]
    seconds = library.time_evaluator("main", device, number=50, repeat=7)(*arrays).results
    median_ms = float(np.median(seconds)) * 1e3
    flops = 2 * channels * channels * 9 * size * size
    return {"form": form, "channels": channels, "size": size, "trials": trials, "tune_s": round(tune_s, 1),
            "median_ms": round(median_ms, 4), "direct_gflops": round(flops / median_ms / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--trials", type=int, default=320)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--target", default="llvm -mcpu=sapphirerapids")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.channels, args.size, args.trials, args.target)))
        return
    rows = []
    for form in args.forms.split(","):
        measured = run_child(__file__, ["--child", form, "--channels", str(args.channels), "--size", str(args.size),
                                        "--trials", str(args.trials), "--target", args.target], form)
        if measured is None:
            raise SystemExit(f"{form}: its child process failed (above)")
        rows.append(measured)
        print(rows[-1], flush=True)
    from pytest_tvmdeploy.targets import parse_target

    label = parse_target(args.target).label
    write_results(f"conv_forms-{label}.json", {"target": args.target, "rows": rows})


if __name__ == "__main__":
    main()
