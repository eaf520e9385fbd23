"""Golden outputs kept with syrupy: one text file per test, metadata on top, arrays below.

A snapshot file (``__snapshots__/<test file>/<test>.tensors``) starts with the metadata as
indented JSON (model and input fingerprints, output names, shapes, dtypes, tolerances, framework
versions), so a pull request shows in plain text what changed, followed by the outputs as a
base64-armoured ``.npz`` (dtype and shape exact) and its sha256. Keeping both parts in one file
lets syrupy's own bookkeeping (written / updated / unused) handle it like any snapshot.
Matching is tolerance-aware and delegates to :mod:`pytest_tvmdeploy.check.elementwise`.

Use it directly from a test::

    from pytest_tvmdeploy.check.snapshot_file import TensorSnapshotExtension

    def test_outputs(snapshot):
        assert {"logits": logits} == snapshot(extension_class=TensorSnapshotExtension)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import shlex
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from pytest_tvmdeploy.check.elementwise import Comparison, compare
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.check.tolerances import ToleranceRules

FORMAT_VERSION = 1
_HEADER = f"# pytest-tvmdeploy tensor snapshot, format {FORMAT_VERSION}: metadata (JSON), then the outputs (.npz, base64)"
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
    framework = "onnxruntime" if deployment.reference_name == "onnxruntime" else "torch"
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


def same_origin(fresh: TensorSnapshot, stored: TensorSnapshot) -> bool:
    """Both taken from the same model on the same inputs (fingerprints equal)."""
    keys = ("model_fingerprint", "input_fingerprint")
    return all(fresh.metadata.get(k) == stored.metadata.get(k) for k in keys)


def snapshot_differences(fresh: TensorSnapshot, stored: TensorSnapshot) -> Comparison | None:
    """``None`` if the fresh arrays match the stored ones within the fresh tolerances, else the verdict."""
    verdict = compare(stored.arrays, fresh.arrays, fresh.tolerances, reference_name="snapshot", actual_name="current")
    return None if verdict and list(stored.arrays) == list(fresh.arrays) else verdict


class TensorSnapshotExtension(SingleFileSnapshotExtension):
    """syrupy extension for output tensors: a ``.tensors`` text file per test, written atomically."""

    file_extension = "tensors"
    _write_mode = WriteMode.TEXT

    def serialize(self, data: Any, **_: Any) -> str:
        return encode(as_snapshot(data))

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        fresh, stored = decode(serialized_data, where="current outputs"), decode(snapshot_data)
        return same_origin(fresh, stored) and snapshot_differences(fresh, stored) is None

    def diff_lines(self, serialized_data: Any, snapshot_data: Any) -> Iterator[str]:
        if not snapshot_data:
            return
        fresh, stored = decode(serialized_data, where="current outputs"), decode(snapshot_data)
        if not same_origin(fresh, stored):
            yield origin_changed_message(stored, fresh)
            return
        verdict = snapshot_differences(fresh, stored)
        if verdict is not None:
            yield from verdict.describe().splitlines()

    def read_snapshot_data_from_location(self, *, snapshot_location: str, snapshot_name: str, session_id: str) -> str | None:
        return read_snapshot_file(Path(snapshot_location))

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: Any = None) -> None:
        data = next(iter(snapshot_collection)).data
        write_atomic(Path(snapshot_collection.location), data)


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


def origin_changed_message(stored: TensorSnapshot, fresh: TensorSnapshot, test_id: str = "") -> str:
    """Why a snapshot no longer applies: the model (graph/weights) or the input values changed."""
    what, key = ("model", "model_fingerprint")
    if stored.metadata.get(key) == fresh.metadata.get(key):
        what, key = ("inputs", "input_fingerprint")
    before, after = str(stored.metadata.get(key))[:12], str(fresh.metadata.get(key))[:12]
    return (
        f"the {what} changed since the snapshot was taken ({key} {before} -> {after}); "
        f"if that is intended, refresh it with: {_update_command(test_id)}"
    )


def _update_command(test_id: str) -> str:
    return f"pytest --snapshot-update {shlex.quote(test_id)}".rstrip() if test_id else "pytest --snapshot-update"




def check_snapshot(
    assertion: Any, deployment: Any, rules: ToleranceRules, *, updating: bool, test_id: str,
    judge: Callable[..., Any] | None = None,
) -> tuple[list[str], str]:
    """Check a deployment against its stored snapshot through syrupy's ``snapshot`` assertion.

    Returns ``(failures, status)``. Without ``updating``: a changed model or input fingerprint is
    reported as such; under the same fingerprints the fresh reference and every TVM runner must
    match the stored outputs within ``rules`` (TVM runners by ``judge`` when given, e.g. the
    quantization budget of an int8 deployment). The syrupy assertion always runs, so syrupy's
    report (written/updated/unused) and ``--snapshot-update`` work as usual. A damaged snapshot
    file is reported (or, when updating, moved aside and rewritten): it is never silently lost.
    """
    assertion = assertion.use_extension(TensorSnapshotExtension)
    location = Path(TensorSnapshotExtension.get_location(test_location=assertion.test_location, index=assertion.index))
    fresh = snapshot_of(deployment, rules)
    failures: list[str] = []
    try:
        stored_data = read_snapshot_file(location)
    except SnapshotFileError as exc:
        if not updating:
            return [f"snapshot: {exc}"], "damaged"
        _set_aside(location)
        stored_data = None
    if stored_data is not None and not updating:
        stored = decode(stored_data, where=str(location))
        if not same_origin(fresh, stored):
            failures.append(f"snapshot {location.name}: " + origin_changed_message(stored, fresh, test_id))
        else:
            failures += _drift(stored, deployment, rules, location.name, judge)
    if not (assertion == fresh) and not failures:
        lines = [f"  {line}" for line in assertion.get_assert_diff()]
        if stored_data is None:
            lines.append(f"  write it with: {_update_command(test_id)}")
        failures.append("\n".join(["snapshot:"] + lines))
    status = "failed" if failures else ("written" if stored_data is None else "matched")
    return failures, status


def _drift(stored: TensorSnapshot, deployment: Any, rules: ToleranceRules, name: str,
           judge: Callable[..., Any] | None) -> list[str]:
    """Outputs that left the stored golden values although model and inputs are the same."""
    golden = f"snapshot {name}"
    verdicts = [compare(stored.arrays, deployment.reference, rules, reference_name=golden,
                        actual_name=deployment.reference_name)]
    runners = {"tvm": deployment.outputs}
    if deployment.cpp_outputs is not None:
        runners["tvm-cpp"] = deployment.cpp_outputs
    for runner, outputs in runners.items():
        if judge is None:
            verdicts.append(compare(stored.arrays, outputs, rules, reference_name=golden, actual_name=runner))
        else:
            verdicts.append(judge(stored.arrays, outputs, golden, runner))
    failed = [v.describe() for v in verdicts if not v]
    if not failed:
        return []
    return [f"outputs drifted from snapshot {name} under the same model and inputs:"] + failed


def _set_aside(location: Path) -> None:
    """Keep a damaged snapshot next to where it was, under a name syrupy does not manage."""
    os.replace(location, location.with_name(f".{location.name}.damaged"))
