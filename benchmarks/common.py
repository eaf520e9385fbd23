"""What the benchmarks share: the model, the input photo, timed calls after a warm-up, the results file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def model(name: str) -> Any:
    """A torchvision architecture with seeded random weights, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


def photo() -> Any:
    """One real photo crop, 1x3x224x224 float32, normalised like ImageNet inputs."""
    sys.path.insert(0, str(ROOT / "fixtures"))
    from images import calibration_set

    return calibration_set(1, seed=9, input_name="x")[0]["x"]


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds of ``repeat`` calls after one untimed warm-up call."""
    from pytest_tvmdeploy.outputs import timed_calls

    call()
    return list(timed_calls(call, repeat)[1])


def write_results(name: str, data: Any) -> Path:
    """Write ``data`` as JSON to ``benchmarks/results/<name>``; returns the path."""
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    return out


def run_child(script: str | Path, args: list[str], label: str) -> Any | None:
    """Run ``python script *args`` in a process of its own and return the JSON its last output
    line holds; ``None`` (with the tail of its errors printed under ``label``) if it failed."""
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{label}: failed\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])
