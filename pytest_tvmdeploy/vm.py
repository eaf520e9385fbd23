"""The one way this package makes a Relax VM, feeds it numpy arrays and reads its results back.

Runners, calibration and the localisation probes all go through here, so a VM is always created
and its (possibly nested) results always flattened the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def relax_vm(executable: Any, device: Any = None) -> Any:
    """A Relax VM over ``executable`` (a compiled executable or a loaded module) on ``device``
    (default: this machine's CPU)."""
    import tvm

    return tvm.relax.VirtualMachine(executable, device if device is not None else tvm.cpu())


def tvm_tensors(arrays: Iterable[np.ndarray], device: Any = None) -> list[Any]:
    """The arrays as TVM tensors on ``device`` (default: this machine's CPU), for a VM call."""
    import tvm

    return [tvm.runtime.tensor(np.asarray(a, order="C"), device if device is not None else tvm.cpu()) for a in arrays]


def flatten_outputs(value: Any) -> list[np.ndarray]:
    """A VM result as arrays, depth first: tensors, shapes (as int64 vectors) and scalars."""
    import tvm_ffi

    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, tvm_ffi.Shape):
        return [np.asarray(list(value), dtype=np.int64)]
    if isinstance(value, (bool, int, float)):
        return [np.asarray(value)]
    return [array for item in value for array in flatten_outputs(item)]
