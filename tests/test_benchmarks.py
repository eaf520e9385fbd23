"""The benchmark scripts start: their imports and options hold (the measurements themselves are
minutes of tuning and timing, run by hand on a quiet machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", ["latency.py", "overhead.py", "quantization_accuracy.py", "dynamic_shapes.py",
                                    "conv_forms.py"])
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

