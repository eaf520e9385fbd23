"""int8 vs fp32 latency of the same model on the same target, each backend in its own process.

    python benchmarks/int8_latency.py [--models resnet18,mobilenet_v2] [--repeat 15]

Backends: TVM fp32 and TVM int8 (this project's Relax quantizer; kl_divergence calibration on
photo crops, max weight scales per channel, every conv but the first), both untuned, plus
PyTorch eager and ONNX Runtime (fp32) for scale. Prints the median, min and max of the timed
calls and the ratios; JSON goes to benchmarks/results/int8_latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model, photo, timed  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tvm-fp32", "tvm-int8", "pytorch", "onnxruntime")
INT8 = {"calibrate_mode": "kl_divergence", "weight_scale": "max", "per_channel": True}


def worker(backend: str, name: str, repeat: int) -> dict:
    sys.path.insert(0, str(ROOT / "fixtures"))
    from images import calibration_set

    x = photo()
    net = model(name)
    if backend == "pytorch":
        import torch

        with torch.no_grad():
            seconds = timed(lambda: net(torch.from_numpy(x)), repeat)
    elif backend == "onnxruntime":
        import onnxruntime
        import torch

        path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
        torch.onnx.export(net, (torch.from_numpy(x),), str(path), input_names=["x"], dynamo=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        seconds = timed(lambda: session.run(None, {"x": x}), repeat)
    else:
        import tvm

        from pytest_tvmdeploy import deploy

        quantized = backend == "tvm-int8"
        deployment = deploy(net, {"x": x}, cache_dir=ROOT / "benchmarks" / ".cache",
                            quantize=INT8 if quantized else None,
                            calibration=calibration_set(2, input_name="x") if quantized else None)
        vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(deployment.artifact_path)), tvm.cpu())
        arg = tvm.runtime.tensor(x)
        seconds = timed(lambda: vm["main"](arg), repeat)
    ms = [1000 * s for s in seconds]
    return {"backend": backend, "model": name, "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeat)))
        return
    rows = []
    for name in args.models.split(","):
        for backend in BACKENDS:
            done = subprocess.run([sys.executable, __file__, "--worker", backend, name, "--repeat", str(args.repeat)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{name:14s} {backend:12s} median {row['median_ms']:9.2f} ms  (min {row['min_ms']:.2f}, max {row['max_ms']:.2f}, n={row['n']})", flush=True)
        by = {r["backend"]: r["median_ms"] for r in rows if r["model"] == name}
        print(f"{name:14s} int8/fp32 TVM = {by['tvm-int8'] / by['tvm-fp32']:.2f}x   TVM fp32/ONNX Runtime = "
              f"{by['tvm-fp32'] / by['onnxruntime']:.1f}x   TVM int8/ONNX Runtime = {by['tvm-int8'] / by['onnxruntime']:.1f}x   "
              f"PyTorch/ONNX Runtime = {by['pytorch'] / by['onnxruntime']:.1f}x", flush=True)
    out = ROOT / "benchmarks" / "results" / "int8_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
