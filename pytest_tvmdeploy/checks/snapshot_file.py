"""The tensor snapshot file: one text file per test, metadata on top, arrays below.

A snapshot file (``__snapshots__/<test file>/<test>.tensors``) starts with the metadata as
indented JSON (model and input fingerprints, output names, shapes, dtypes, tolerances, framework
versions), so a pull request shows in plain text what changed, followed by the outputs as a
base64-armoured ``.npz`` (dtype and shape exact) and its sha256. Damage is reported by
:class:`SnapshotFileError`, never guessed around.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.outputs import ONNX_REFERENCE, ONNXRUNTIME

FORMAT_VERSION = 1
#: The metadata key of the error levels (one row per target and output, see :mod:`..ratchet`).
ERRORS = "errors"
_HEADER = (f"# pytest-tvmdeploy tensor snapshot, format {FORMAT_VERSION}: "
           f"metadata (JSON), then the outputs (.npz, base64)")
_ARRAYS_MARK = "# outputs"
_LINE = 76


class SnapshotFileError(TvmDeployError):
    """A stored snapshot that cannot be read: corrupt, truncated or hand-edited."""


@dataclass(frozen=True)
class TensorSnapshot:
    """Named output arrays and the metadata that says where they came from."""

    arrays: Mapping[str, np.ndarray]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tolerances(self) -> ToleranceRules:
        return ToleranceRules.from_json(self.metadata.get("tolerances", {}))


def encode(snapshot: TensorSnapshot) -> str:
    """The text of a snapshot file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False,
                        **{f"output_{i}": np.asarray(a) for i, a in enumerate(snapshot.arrays.values())})
    payload = buffer.getvalue()
    meta = dict(snapshot.metadata, outputs=_describe(snapshot.arrays))
    armour = base64.b64encode(payload).decode()
    lines = [_HEADER, metadata_json(meta),
             f"{_ARRAYS_MARK} sha256={hashlib.sha256(payload).hexdigest()}"]
    lines += [armour[i:i + _LINE] for i in range(0, len(armour), _LINE)]
    return "\n".join(lines) + "\n"


def metadata_json(meta: Mapping[str, Any]) -> str:
    """JSON with one line per key and per input/output, so a diff points at what changed."""
    items = sorted(meta.items())
    lines = ["{"]
    for index, (key, value) in enumerate(items):
        comma = "," if index < len(items) - 1 else ""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows = ",\n".join(f"    {json.dumps(v, sort_keys=True, default=str)}" for v in value)
            lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True, default=str)}{comma}")
    return "\n".join(lines + ["}"])


def decode(text: str, *, where: str = "snapshot") -> TensorSnapshot:
    """Read :func:`encode`'s text back; :class:`SnapshotFileError` names ``where`` on any damage."""
    try:
        header, rest = text.split("\n", 1)
        meta_text, mark, armour = _split_arrays(rest)
        if not header.startswith(_HEADER.split(":")[0]):
            raise ValueError("missing the snapshot header line")
        meta = json.loads(meta_text)
        payload = base64.b64decode("".join(armour.split()), validate=True)
        if hashlib.sha256(payload).hexdigest() != mark.split("sha256=", 1)[1].strip():
            raise ValueError("the outputs do not match their recorded sha256")
        described = meta["outputs"]
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {d["name"]: npz[f"output_{i}"] for i, d in enumerate(described)}
    except (ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile, binascii.Error, EOFError) as exc:
        raise SnapshotFileError(f"{where}: not a readable tensor snapshot ({exc})") from exc
    if _describe(arrays) != described:
        raise SnapshotFileError(f"{where}: its metadata says outputs {described}, its arrays are {_describe(arrays)} "
                                f"(edited by hand?)")
    return TensorSnapshot(arrays, meta)


def _split_arrays(text: str) -> tuple[str, str, str]:
    marker = f"\n{_ARRAYS_MARK} "
    if marker not in text:
        raise ValueError(f"no '{_ARRAYS_MARK}' line")
    meta_text, tail = text.split(marker, 1)
    mark, _, armour = tail.partition("\n")
    return meta_text, mark, armour


def as_snapshot(data: Any) -> TensorSnapshot:
    """Accept a :class:`TensorSnapshot`, a mapping name -> array, or one array."""
    if isinstance(data, TensorSnapshot):
        return data
    if isinstance(data, Mapping):
        return TensorSnapshot({str(k): np.asarray(v) for k, v in data.items()})
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        return TensorSnapshot({"out0": np.asarray(data)})
    raise TypeError(f"TensorSnapshotExtension stores arrays or name -> array mappings, not {type(data).__name__}")


def snapshot_of(deployment: Any, rules: ToleranceRules) -> TensorSnapshot:
    """The golden snapshot of a deployment: its reference outputs and where they came from."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    model = deployment.model if deployment.source_kind == "torch" else Path(deployment.model).name
    framework = {ONNXRUNTIME: "onnxruntime", ONNX_REFERENCE: "onnx"}.get(deployment.reference_name, "torch")
    metadata = {
        "model": model,
        "source_kind": deployment.source_kind,
        "reference": deployment.reference_name,
        "model_fingerprint": deployment.model_fingerprint,
        "input_fingerprint": deployment.input_fingerprint,
        "inputs": _describe(deployment.inputs),
        "tolerances": rules.to_json(),
        "versions": {name: installed(name) for name in (framework, "numpy")},
    }
    return TensorSnapshot(dict(deployment.reference), metadata)


def _describe(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()]


def read_snapshot_file(location: Path) -> str | None:
    """The stored text (``None`` if there is no snapshot), validated: damage raises :class:`SnapshotFileError`."""
    try:
        text = location.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotFileError(f"{location}: cannot be read ({exc})") from exc
    decode(text, where=str(location))
    return text
