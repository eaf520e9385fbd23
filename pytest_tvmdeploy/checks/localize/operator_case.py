"""One operator cut out of a model with its real inputs: what an upstream reproducer needs.

Either a PyTorch operator (``code``: the ``forward`` of a module calling it, as FX prints it) or
an ONNX node (``onnx_model``: a one-node model); ``inputs`` are the framework's values of its
inputs in the model's run, ``expected`` the framework's outputs on them (kept for ONNX, whose
reference runtime the reproducer does not need).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class OperatorCase:
    """A diverging operator, standalone: its framework form and its inputs."""

    framework: str                      # pytorch or onnx
    op: str                             # aten.select.int, Gather
    inputs: tuple[np.ndarray, ...] = field(repr=False)
    code: str | None = None             # PyTorch: ``def forward(self, x0, ...)`` calling the operator
    onnx_model: bytes | None = field(default=None, repr=False)  # ONNX: the one-node model
    expected: tuple[np.ndarray, ...] = field(default=(), repr=False)  # ONNX: ONNX Runtime's outputs
    versions: dict[str, str] = field(default_factory=dict)  # the framework's version it diverged on
    rtol: float = 0.0                   # the tolerance the operator's output left
    atol: float = 0.0
    passes: tuple[str, ...] = ()        # Relax passes (``relax.transform`` names) to run before tvm.compile

    def with_tolerance(self, rtol: float, atol: float) -> OperatorCase:
        return replace(self, rtol=rtol, atol=atol)
