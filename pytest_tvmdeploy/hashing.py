"""Content hashes that say whether a model, an input set or a file changed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def arrays_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes: changes whenever any value changes."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        contiguous = np.asarray(array, order="C")
        digest.update(f"{name}:{contiguous.dtype.str}:{contiguous.shape}".encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()
