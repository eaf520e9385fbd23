"""The benchmark scripts start: their imports and options hold (the measurements themselves are
minutes of tuning and timing, run by hand on a quiet machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", ["latency.py", "overhead.py", "quantization_accuracy.py", "dynamic_shapes.py",
                                    "conv_forms.py", "kernels.py", "sampled_builds.py"])
def test_benchmark_script_shows_its_usage(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "--" in done.stdout


def test_dynamic_shapes_worker_times_one_backend_at_one_shape() -> None:
    # what the benchmark runs per backend and shape, at its smallest: the untuned dynamic artifact
    import json

    done = subprocess.run([sys.executable, str(BENCHMARKS / "dynamic_shapes.py"), "--worker", "tvm-dynamic-untuned",
                           '{"seq": 8}', "--repeat", "2", "--target", "llvm"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["backend"] == "tvm-dynamic-untuned" and row["shape"] == {"seq": 8} and row["dynamic"] is True
    assert row["n"] == 2 and 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]



def test_the_kernel_breakdown_times_every_kernel_the_model_calls() -> None:
    import torch
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    from pytest_tvmdeploy.targets import parse_target
    from pytest_tvmdeploy.tuning.apply import build_with_records
    from pytest_tvmdeploy.vm import relax_vm

    sys.path.insert(0, str(BENCHMARKS))
    import kernels

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU()).eval()
    module = from_exported_program(torch.export.export(net, (torch.zeros(1, 3, 16, 16),)))
    built = build_with_records(module, parse_target("llvm"), None, sampled=True)
    calls = kernels.calls_per_function(built.module)
    in_model = kernels.seconds_in_model(relax_vm(built.executable), [tvm.runtime.tensor(np.ones((1, 3, 16, 16),
                                                                                              "float32"))], 3)
    assert {name: len(seconds) for name, seconds in in_model.items() if name in calls} == {
        name: 3 * count for name, count in calls.items()}  # every call of every run, and nothing else
    rows = kernels.kernel_rows(built, tvm.cpu(), in_model)
    assert {row["kernel"] for row in rows} == set(calls)
    assert sum(row["calls"] for row in rows) == sum(calls.values())
    convs = [row for row in rows if "conv2d" in row["kernel"]]
    assert len(convs) == 3 and all(row["gflops"] > 0 for row in convs)  # TVM's flop estimate over the time
    assert all(row["us_per_call"] > 0 and row["us_alone_hot"] > 0 and row["us_alone_cold"] > 0 for row in rows)
    assert abs(sum(row["share"] for row in rows) - 1) < 0.01
    assert [row["us_total"] for row in rows] == sorted((row["us_total"] for row in rows), reverse=True)
