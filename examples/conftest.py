"""The demo suite's model files: written once from seeded torchvision models, then reused.

A real project commits its exported files; these are generated (and git-ignored) only
because a 45 MB ResNet has no place in this repository.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

MODELS = Path(__file__).resolve().parent / "models"


def seeded(name: str, seed: int = 0) -> torch.nn.Module:
    """A torchvision architecture with reproducible random weights, in eval mode."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)().eval()


def _write_once(path: Path, write) -> None:
    if path.exists():
        return
    path.parent.mkdir(exist_ok=True)
    # Written under its final name (TorchScript and .pt2 archives record it), then moved
    # into place atomically so parallel workers never see half a file.
    with tempfile.TemporaryDirectory(dir=path.parent) as staging:
        write(str(Path(staging) / path.name))
        os.replace(Path(staging) / path.name, path)


@pytest.fixture(scope="session", autouse=True)
def exported_model_files() -> None:
    example = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _write_once(MODELS / "resnet18.pt",
                    lambda p: torch.jit.trace(seeded("resnet18"), (example,)).save(p))
        _write_once(MODELS / "mobilenet_v2.onnx",
                    lambda p: torch.onnx.export(seeded("mobilenet_v2"), (example,), p, input_names=["image"],
                                                output_names=["logits"], dynamo=False))
        _write_once(MODELS / "squeezenet1_1.pt2",
                    lambda p: torch.export.save(torch.export.export(seeded("squeezenet1_1"), (example,)), p))
