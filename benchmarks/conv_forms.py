"""One convolution (+ bias + ReLU) tuned in each of its computable forms, equal trials each.

    python benchmarks/conv_forms.py [--channels 64] [--size 56] [--trials 320]
                                    [--forms plain,blocked,winograd] [--target "llvm -mcpu=sapphirerapids"]
    python benchmarks/conv_forms.py --forms int8-nchw16c,int8-nhwc --channels 16 --out-channels 96 \
                                    --kernel 1 --size 112 --trials 320

Float forms (3x3, as many output channels as input ones): ``plain`` (TOPI ``conv2d_nchw``),
``blocked`` (``conv2d_NCHWc`` in ``NCHW16c``, what tuned builds use,
:mod:`pytest_tvmdeploy.build.block_layout`), ``winograd`` (TOPI's F(4x4, 3x3) Winograd with
pre-transformed weights, MetaSchedule's own Winograd schedule rules). Each is tuned with
MetaSchedule in its own process from an empty database and timed by TVM's ``time_evaluator``;
reported: median ms, tuning seconds and GFLOP/s counted as the direct convolution's FLOPs (so a
Winograd result compares on the same scale).

int8 forms (VNNI CPUs; uint8 data, int8 weights, int32 sums requantized to int8 in the same
function, as in a quantized model): ``int8-nchw16c`` (the deployed form, :mod:`pytest_tvmdeploy.quantize.vnni`:
NCHW in and out, blocked inside) and ``int8-nhwc`` (channels last in and out, weights packed
``[O/16, KH, KW, I/4, 16, 4]``: the 4 input channels ``vpdpbusd`` sums and its 16 outputs are
contiguous, so nothing is relaid). Each is tuned with the package's tuner (cold timing) from an
empty database, checked against an exact integer convolution, and timed alone hot and cold and
as the module's one call. JSON goes to ``benchmarks/results/conv_forms-<target label>.json``
(``--output NAME``).
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
INT8_FORMS = ("int8-nchw16c", "int8-nhwc")


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


def vnni_conv_nhwc(data: Any, kernel: Any, offsets: Any, stride: int, padding: int) -> Any:
    """TE: the uint8 x int8 -> int32 conv on channels-last data, minus ``offsets`` per output channel.
    ``kernel[ob, y, x, g, oi, k] = weights[16 ob + oi, 4 g + k, y, x]`` (zero where that pads)."""
    from tvm import te
    from tvm.topi.utils import get_const_tuple

    from pytest_tvmdeploy.quantize.vnni import SHIFT

    batch, height, width, channels = get_const_tuple(data.shape)
    out_blocks, kernel_h, kernel_w, groups, _, _ = get_const_tuple(kernel.shape)
    (out_channels,) = get_const_tuple(offsets.shape)
    padded = te.compute(
        (batch, height + 2 * padding, width + 2 * padding, groups * 4),
        lambda n, y, x, c: te.if_then_else(
            te.all(y >= padding, y < padding + height, x >= padding, x < padding + width, c < channels),
            data[n, y - padding, x - padding, te.min(c, channels - 1)], te.const(SHIFT, "uint8")),
        name="pad_u8_nhwc")
    out_h = (height + 2 * padding - kernel_h) // stride + 1
    out_w = (width + 2 * padding - kernel_w) // stride + 1
    ry, rx = te.reduce_axis((0, kernel_h), "ry"), te.reduce_axis((0, kernel_w), "rx")
    rg, rk = te.reduce_axis((0, groups), "rg"), te.reduce_axis((0, 4), "rk")
    blocked = te.compute(
        (batch, out_h, out_w, out_blocks, 16),
        lambda n, y, x, ob, oi: te.sum(
            padded[n, y * stride + ry, x * stride + rx, rg * 4 + rk].astype("int32")
            * kernel[ob, ry, rx, rg, oi, rk].astype("int32"), axis=[ry, rx, rg, rk]),
        name="conv2d_nhwc_u8i8")
    return te.compute((batch, out_h, out_w, out_channels),
                      lambda n, y, x, o: blocked[n, y, x, o // 16, o % 16] - offsets[o], name="conv2d_nhwc_u8i8_out")


def pack_nhwc(weights: Any) -> Any:
    """OIHW int8 weights as :func:`vnni_conv_nhwc` reads them."""
    import numpy as np

    out_channels, in_channels, height, width = weights.shape
    out_blocks, groups = -(-out_channels // 16), -(-in_channels // 4)
    padded = np.zeros((out_blocks * 16, groups * 4, height, width), weights.dtype)
    padded[:out_channels, :in_channels] = weights
    return np.ascontiguousarray(padded.reshape(out_blocks, 16, groups, 4, height, width).transpose(0, 4, 5, 2, 1, 3))


def requantize(acc: Any, bias: Any, channel_axis: int) -> Any:
    """TE: int32 sums plus bias, scaled by a fixed-point multiplier, ReLU'd into int8 (as realized models do)."""
    from tvm import te, tirx

    def value(*index: Any) -> Any:
        scaled = ((acc(*index) + bias[index[channel_axis]]).astype("int64") * 1519) >> 20
        return tirx.max(tirx.min(scaled, 127), 0).astype("int8")

    return te.compute(acc.shape, value, name="requantize")


def int8_module(form: str, weights: Any, size: int, stride: int) -> Any:
    """``main(x)``: the uint8 data (NCHW or NHWC by ``form``) through ``form``'s conv and a requantization."""
    import numpy as np
    from tvm import relax

    from pytest_tvmdeploy.quantize.vnni import SHIFT, pack_weights, vnni_conv

    out_channels, in_channels, kernel, _ = weights.shape
    padding = kernel // 2
    nhwc = form == "int8-nhwc"
    shape = (1, size, size, in_channels) if nhwc else (1, in_channels, size, size)
    x = relax.Var("x", relax.TensorType(shape, "uint8"))
    offsets = relax.const((SHIFT * weights.astype(np.int32).sum(axis=(1, 2, 3))).astype("int32"))
    bias = relax.const(np.arange(out_channels, dtype="int32") * 97 - 3000)
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            if nhwc:
                acc = bb.emit_te(vnni_conv_nhwc, x, relax.const(pack_nhwc(weights)), offsets, stride, padding,
                                 primfunc_name_hint="conv2d_nhwc_u8i8")
            else:
                acc = bb.emit_te(vnni_conv, x, relax.const(pack_weights(weights)), offsets, [stride, stride],
                                 [padding] * 4, [1, 1], primfunc_name_hint="conv2d_nchw16c_u8i8")
            out = bb.emit_output(bb.emit_te(requantize, acc, bias, 3 if nhwc else 1))
        bb.emit_func_output(out)
    return bb.get()


def measure_int8(form: str, channels: int, out_channels: int, kernel: int, size: int, stride: int, trials: int,
                 target_text: str) -> dict[str, Any]:
    """Tune ``form`` with the package's tuner, check its integers and time it (run in a child process)."""
    import numpy as np
    import torch
    import tvm

    import kernels
    from pytest_tvmdeploy.quantize.vnni import SHIFT
    from pytest_tvmdeploy.targets import parse_target
    from pytest_tvmdeploy.threads import configure_threads
    from pytest_tvmdeploy.tuning import build_with_records, read_database, tune
    from pytest_tvmdeploy.vm import relax_vm

    configure_threads()
    spec = parse_target(target_text)
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (out_channels, channels, kernel, kernel)).astype("int8")
    module = int8_module(form, weights, size, stride)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tune(module, spec, Path(folder), max_trials=trials)
        built = build_with_records(module, spec, read_database(Path(folder)), sampled=True)
    tune_s = time.perf_counter() - start
    data = rng.integers(0, 256, (1, channels, size, size)).astype("uint8")
    x = data.transpose(0, 2, 3, 1).copy() if form == "int8-nhwc" else data
    vm = relax_vm(built.executable)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    sums = torch.nn.functional.conv2d(torch.from_numpy(data.astype(np.float64) - SHIFT),
                                      torch.from_numpy(weights.astype(np.float64)), stride=stride,
                                      padding=kernel // 2).numpy().astype(np.int64)
    expected = np.clip(((sums + (np.arange(out_channels) * 97 - 3000)[None, :, None, None]) * 1519) >> 20, 0, 127)
    if form == "int8-nhwc":
        expected = expected.transpose(0, 2, 3, 1)
    if not np.array_equal(got, expected.astype("int8")):
        raise SystemExit(f"{form}: wrong integers ({np.count_nonzero(got != expected)} of {got.size} differ)")
    in_model = kernels.seconds_in_model(vm, [tvm.runtime.tensor(x)], 200)
    (row,) = [r for r in kernels.kernel_rows(built, tvm.cpu(), in_model) if "u8i8" in r["kernel"]]
    out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
    ops = 2 * out_channels * channels * kernel * kernel * out_size * out_size
    return {"form": form, "channels": channels, "out_channels": out_channels, "kernel": kernel, "size": size,
            "stride": stride, "trials": trials, "tune_s": round(tune_s, 1), "tuned_functions": built.applied,
            "tensorized": "vpdpbusd" in built.module[row["kernel"]].script(),
            "us_called": row["us_per_call"], "us_alone_hot": row["us_alone_hot"], "us_alone_cold": row["us_alone_cold"],
            "gops_cold": round(ops / row["us_alone_cold"] / 1e3, 1)}


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
    parser.add_argument("--out-channels", type=int, help="int8 forms: output channels (default: --channels)")
    parser.add_argument("--kernel", type=int, default=3, help="int8 forms: kernel size (float forms: 3)")
    parser.add_argument("--stride", type=int, default=1, help="int8 forms: stride (float forms: 1)")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--trials", type=int, default=320)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--target", default="llvm -mcpu=sapphirerapids")
    parser.add_argument("--output", help="file name under benchmarks/results/")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out_channels = args.out_channels or args.channels
    if args.child:
        print(json.dumps(measure_int8(args.child, args.channels, out_channels, args.kernel, args.size, args.stride,
                                      args.trials, args.target) if args.child in INT8_FORMS
                         else measure(args.child, args.channels, args.size, args.trials, args.target)))
        return
    rows = []
    for form in args.forms.split(","):
        measured = run_child(__file__, ["--child", form, "--channels", str(args.channels), "--size", str(args.size),
                                        "--out-channels", str(out_channels), "--kernel", str(args.kernel),
                                        "--stride", str(args.stride), "--trials", str(args.trials),
                                        "--target", args.target], form)
        if measured is None:
            raise SystemExit(f"{form}: its child process failed (above)")
        rows.append(measured)
        print(rows[-1], flush=True)
    from pytest_tvmdeploy.targets import parse_target

    label = parse_target(args.target).label
    write_results(args.output or f"conv_forms-{label}.json", {"target": args.target, "rows": rows})


if __name__ == "__main__":
    main()
