"""The benchmark scripts start: their imports and options hold (the measurements themselves are
minutes of tuning and timing, run by hand on a quiet machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", ["latency.py", "overhead.py", "quantization_accuracy.py", "dynamic_shapes.py"])
def test_benchmark_script_shows_its_usage(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "--" in done.stdout
