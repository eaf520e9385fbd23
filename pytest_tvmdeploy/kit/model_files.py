"""The catalogue's models as the files teams receive: TorchScript, ONNX, ExportedProgram."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.inputs import make_inputs
from pytest_tvmdeploy.kit.catalogue import QDQ, CatalogueEntry

SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "pt2": ".pt2", QDQ: ".qdq.onnx"}
#: Seeded inputs ONNX Runtime's static quantizer calibrates QDQ models on.
QDQ_CALIBRATION_SAMPLES = 8


def seeded_module(entry: CatalogueEntry) -> Any:
    """The entry's ``nn.Module`` with the weights its model files hold (seed 0): every source
    form of a model then reaches TVM as the same network, which is compiled once."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return entry.build()


def model_file(entry: CatalogueEntry, source: str, folder: Path) -> Path:
    """``folder/<name><suffix>``, written once (seed 0) and atomically, then reused."""
    import torch

    path = Path(folder) / f"{entry.name}{SUFFIXES[source]}"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if source == QDQ:
        return _quantized_onnx(entry, model_file(entry, "onnx", folder), path)
    module = seeded_module(entry)
    example = tuple(torch.from_numpy(a) for a in make_inputs(entry.example_inputs(), seed=0).values())
    dynamic = _named_axes(entry)
    # Written under its final name (TorchScript and .pt2 archives record it), then moved in place.
    with tempfile.TemporaryDirectory(dir=path.parent) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        staged = Path(staging) / path.name
        if source == "torchscript":
            torch.jit.trace(module, example, check_trace=False).save(str(staged))
        elif source == "onnx":
            names = list(entry.inputs)
            if dynamic:  # the TorchScript-based exporter bakes sizes into reshapes; torch.export's keeps them
                with contextlib.redirect_stdout(io.StringIO()):
                    torch.onnx.export(module, example, str(staged), input_names=names, dynamo=True,
                                      dynamic_shapes=_export_dims(dynamic), external_data=False, verbose=False)
            else:
                torch.onnx.export(module, example, str(staged), input_names=names, dynamo=False)
        else:
            program = torch.export.export(module, example, dynamic_shapes=_export_dims(dynamic) if dynamic else None)
            torch.export.save(program, str(staged))
        os.replace(staged, path)
    return path


def _export_dims(named_axes: dict[str, dict[int, str]]) -> tuple[dict[int, Any] | None, ...]:
    """torch.export's ``dynamic_shapes`` for the named axes: one ``Dim`` per name."""
    import torch

    dims = {name: torch.export.Dim(name, min=1) for axes in named_axes.values() for name in axes.values()}
    return tuple({axis: dims[name] for axis, name in axes.items()} or None for axes in named_axes.values())


def _named_axes(entry: CatalogueEntry) -> dict[str, dict[int, str]]:
    """Each input's named axes (``{"x": {0: "batch"}}``), as the files keep them symbolic."""
    if not entry.shapes:
        return {}
    return {name: {axis: dim for axis, dim in enumerate(spec[0]) if isinstance(dim, str)}
            for name, spec in entry.inputs.items()}


def _quantized_onnx(entry: CatalogueEntry, float_model: Path, path: Path) -> Path:
    """ONNX Runtime's static quantizer on ``float_model``: QDQ format, int8 activations and
    per-channel int8 weights (its recommended setting for x86 CPUs), calibrated on seeded inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class SeededInputs(CalibrationDataReader):
        def __init__(self) -> None:
            self._samples = iter(make_inputs(entry.inputs, seed=seed) for seed in range(1, QDQ_CALIBRATION_SAMPLES + 1))

        def get_next(self) -> dict | None:
            return next(self._samples, None)

    with tempfile.TemporaryDirectory(dir=path.parent) as staging, _quiet_root_logger():
        staged = Path(staging) / path.name
        quantize_static(str(float_model), str(staged), SeededInputs(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        os.replace(staged, path)
    return path


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs advice through the root logger at WARNING; keep it out of test output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
