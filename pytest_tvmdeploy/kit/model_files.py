"""The catalogue's models as the files teams receive: TorchScript, ONNX, ExportedProgram."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from pytest_tvmdeploy.inputs import make_inputs
from pytest_tvmdeploy.kit.catalogue import CatalogueEntry

SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "pt2": ".pt2"}


def model_file(entry: CatalogueEntry, source: str, folder: Path) -> Path:
    """``folder/<name><suffix>``, written once (seed 0) and atomically, then reused."""
    import torch

    path = Path(folder) / f"{entry.name}{SUFFIXES[source]}"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = entry.build()
    example = tuple(torch.from_numpy(a) for a in make_inputs(entry.inputs, seed=0).values())
    # Written under its final name (TorchScript and .pt2 archives record it), then moved in place.
    with tempfile.TemporaryDirectory(dir=path.parent) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        staged = Path(staging) / path.name
        if source == "torchscript":
            torch.jit.trace(module, example, check_trace=False).save(str(staged))
        elif source == "onnx":
            names = list(entry.inputs)
            torch.onnx.export(module, example, str(staged), input_names=names, dynamo=False)
        else:
            torch.export.save(torch.export.export(module, example), str(staged))
        os.replace(staged, path)
    return path
