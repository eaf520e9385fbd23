"""Golden outputs kept with syrupy: the tensor snapshot extension and the plugin's snapshot store.

Use the extension directly from a test::

    from pytest_tvmdeploy import TensorSnapshotExtension

    def test_outputs(snapshot):
        assert {"logits": logits} == snapshot(extension_class=TensorSnapshotExtension)

Keeping metadata and arrays in one file lets syrupy's own bookkeeping (written / updated /
unused) handle it like any snapshot; matching is tolerance-aware (:mod:`.drift`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from pytest_tvmdeploy.checks.drift import (
    Judge,
    compare_with_stored,
    fresh_snapshot,
    origin_changed_message,
    same_origin,
    set_aside,
    snapshot_differences,
    still_matches,
    update_command,
)
from pytest_tvmdeploy.checks.ratchet import Ratchet
from pytest_tvmdeploy.checks.snapshot_file import (
    ERRORS,
    SnapshotFileError,
    TensorSnapshot,
    as_snapshot,
    decode,
    encode,
    read_snapshot_file,
)
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import StorageError
from pytest_tvmdeploy.files import write_atomic


class TensorSnapshotExtension(SingleFileSnapshotExtension):
    """syrupy extension for output tensors: a ``.tensors`` text file per test, written atomically."""

    file_extension = "tensors"
    _write_mode = WriteMode.TEXT

    def serialize(self, data: Any, **_: Any) -> str:
        return encode(as_snapshot(data))

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        fresh, stored = decode(serialized_data, where="current outputs"), decode(snapshot_data)
        return still_matches(fresh, stored)

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

    def read_snapshot_data_from_location(self, *, snapshot_location: str, snapshot_name: str,
                                         session_id: str) -> str | None:
        return read_snapshot_file(Path(snapshot_location))

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: Any = None) -> None:
        data = next(iter(snapshot_collection)).data
        write_atomic(Path(snapshot_collection.location), data)


@dataclass
class SyrupySnapshot:
    """The snapshot store of a pytest test: syrupy's ``snapshot`` assertion with our extension.

    The syrupy assertion always runs, so syrupy's report (written/updated/unused) and
    ``--snapshot-update`` work as usual. A damaged snapshot file is reported (or, when updating,
    moved aside and rewritten): it is never silently lost.
    """

    assertion: Any
    updating: bool
    test_id: str
    ratchet: Ratchet = Ratchet()

    def check(self, deployment: Any, rules: ToleranceRules, judge: Judge | None) -> tuple[list[str], str]:
        assertion = self.assertion.use_extension(TensorSnapshotExtension)
        location = Path(TensorSnapshotExtension.get_location(test_location=assertion.test_location,
                                                             index=assertion.index))
        failures: list[str] = []
        try:
            stored_data = read_snapshot_file(location)
        except SnapshotFileError as exc:
            if not self.updating:
                return [f"snapshot: {exc}"], "damaged"
            set_aside(location)
            stored_data = None
        stored = decode(stored_data, where=str(location)) if stored_data is not None else None
        fresh = fresh_snapshot(deployment, rules, stored)
        if stored is not None and not self.updating:
            failures += compare_with_stored(stored, fresh, deployment, rules, location.name, judge, self.test_id,
                                            self.ratchet)
        matched = assertion == fresh  # syrupy's own check (and, when updating, its write)
        if self.updating and stored is not None and still_matches(fresh, stored):
            # syrupy keeps a snapshot whose outputs still match: the error level is ours to refresh
            return [], "written" if _record_levels(location, stored, fresh) else "matched"
        if not matched and not failures:
            stored_error = _storage_error(assertion)
            if stored_error is not None:  # a full disk: said plainly, no traceback, no "write it with"
                return [f"snapshot: {stored_error}"], "failed"
            lines = [f"  {line}" for line in assertion.get_assert_diff()]
            if stored_data is None:
                lines.append(f"  write it with: {update_command(self.test_id)}")
            failures.append("\n".join(["snapshot:"] + lines))
        status = "failed" if failures else ("written" if stored_data is None else "matched")
        return failures, status


def _record_levels(location: Path, stored: TensorSnapshot, fresh: TensorSnapshot) -> bool:
    """Write ``fresh``'s error levels into ``stored`` (the snapshot at ``location``) if they
    differ; whether it did."""
    if stored.metadata.get(ERRORS) == fresh.metadata.get(ERRORS):
        return False
    write_atomic(location, encode(TensorSnapshot(stored.arrays, {**stored.metadata, ERRORS: fresh.metadata[ERRORS]})))
    return True


def _storage_error(assertion: Any) -> StorageError | None:
    """The :class:`StorageError` syrupy caught writing the snapshot in its last assertion, if any."""
    results = getattr(assertion, "_execution_results", {})  # syrupy keeps no public handle on it
    last = results.get(assertion.num_executions - 1)
    error = getattr(last, "exception", None)
    return error if isinstance(error, StorageError) else None
