"""Snapshot drift: does a deployment still match its stored golden outputs?

A stored snapshot applies only while model and inputs are the same (their fingerprints); then
the fresh reference and every TVM runner must match it. :class:`SnapshotFile` keeps one
``.tensors`` file without pytest; the plugin uses the syrupy store of
:mod:`pytest_tvmdeploy.checks.snapshot_extension`, which follows the same rules.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pytest_tvmdeploy.checks.elementwise import Comparison, compare
from pytest_tvmdeploy.checks.ratchet import Ratchet, deployment_levels, merged_levels
from pytest_tvmdeploy.checks.snapshot_file import (
    ERRORS,
    SnapshotFileError,
    TensorSnapshot,
    decode,
    encode,
    read_snapshot_file,
    snapshot_of,
)
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.outputs import TVM_CPP, TVM_PYTHON

Judge = Callable[..., Any]


class SnapshotStore(Protocol):
    """Where a deployment's golden outputs live; :meth:`check` returns ``(failures, status)``
    with status ``written``, ``matched``, ``failed`` or ``damaged``."""

    def check(self, deployment: Any, rules: ToleranceRules, judge: Judge | None) -> tuple[list[str], str]: ...


@dataclass(frozen=True)
class SnapshotFile:
    """One ``.tensors`` file: checked against, or (with ``update``) written; a missing file is
    written on ``update`` and a failure otherwise. ``ratchet`` judges error growth."""

    path: Path
    update: bool = False
    ratchet: Ratchet = Ratchet()

    def check(self, deployment: Any, rules: ToleranceRules, judge: Judge | None) -> tuple[list[str], str]:
        try:
            stored_text = read_snapshot_file(self.path)
        except SnapshotFileError as exc:
            if not self.update:
                return [f"snapshot: {exc}"], "damaged"
            set_aside(self.path)
            stored_text = None
        stored = decode(stored_text, where=str(self.path)) if stored_text is not None else None
        fresh = fresh_snapshot(deployment, rules, stored)
        if self.update or stored is None:
            if not self.update:
                return [f"snapshot: {self.path} does not exist; write it with update=True"], "failed"
            write_atomic(self.path, encode(fresh))
            return [], "written"
        failures = compare_with_stored(stored, fresh, deployment, rules, self.path.name, judge, ratchet=self.ratchet)
        return failures, "failed" if failures else "matched"


def fresh_snapshot(deployment: Any, rules: ToleranceRules, stored: TensorSnapshot | None) -> TensorSnapshot:
    """The deployment's snapshot with its error level on its target, and the levels ``stored``
    keeps for other targets (when it comes from the same model and inputs)."""
    fresh = snapshot_of(deployment, rules)
    kept = stored.metadata.get(ERRORS) if stored is not None and same_origin(fresh, stored) else None
    levels = merged_levels(kept, deployment_levels(deployment, rules), deployment.target.label)
    return TensorSnapshot(fresh.arrays, {**fresh.metadata, ERRORS: levels})


def compare_with_stored(stored: TensorSnapshot, fresh: TensorSnapshot, deployment: Any, rules: ToleranceRules,
                        name: str, judge: Judge | None, test_id: str = "", ratchet: Ratchet | None = None) -> list[str]:
    """Failures of a deployment against a stored snapshot: a changed origin, drifted outputs, or
    (by ``ratchet``) an error grown past its recorded level."""
    if not same_origin(fresh, stored):
        return [f"snapshot {name}: " + origin_changed_message(stored, fresh, test_id)]
    target, ratchet = deployment.target.label, ratchet or Ratchet()
    levels = [row for row in fresh.metadata.get(ERRORS, []) if row.get("target") == target]
    grown = ratchet.grown(stored.metadata.get(ERRORS), levels, target, rules)
    return drifted(stored, deployment, rules, name, judge) + ratchet.judge(grown, update_command(test_id))


def same_origin(fresh: TensorSnapshot, stored: TensorSnapshot) -> bool:
    """Both taken from the same model on the same inputs (fingerprints equal)."""
    keys = ("model_fingerprint", "input_fingerprint")
    return all(fresh.metadata.get(k) == stored.metadata.get(k) for k in keys)


def still_matches(fresh: TensorSnapshot, stored: TensorSnapshot) -> bool:
    """Same model and inputs, and the fresh arrays within tolerance of the stored ones."""
    return same_origin(fresh, stored) and snapshot_differences(fresh, stored) is None


def snapshot_differences(fresh: TensorSnapshot, stored: TensorSnapshot) -> Comparison | None:
    """``None`` if the fresh arrays match the stored ones within the fresh tolerances, else the verdict."""
    verdict = compare(stored.arrays, fresh.arrays, fresh.tolerances, reference_name="snapshot", actual_name="current")
    return None if verdict and list(stored.arrays) == list(fresh.arrays) else verdict


def origin_changed_message(stored: TensorSnapshot, fresh: TensorSnapshot, test_id: str = "") -> str:
    """Why a snapshot no longer applies: the model (graph/weights) or the input values changed."""
    what, key = ("model", "model_fingerprint")
    if stored.metadata.get(key) == fresh.metadata.get(key):
        what, key = ("inputs", "input_fingerprint")
    before, after = str(stored.metadata.get(key))[:12], str(fresh.metadata.get(key))[:12]
    return (
        f"the {what} changed since the snapshot was taken ({key} {before} -> {after}); "
        f"if that is intended, refresh it with: {update_command(test_id)}"
    )


def update_command(test_id: str) -> str:
    """The command that rewrites a test's snapshot."""
    return f"pytest --snapshot-update {shlex.quote(test_id)}".rstrip() if test_id else "pytest --snapshot-update"


def drifted(stored: TensorSnapshot, deployment: Any, rules: ToleranceRules, name: str,
            judge: Judge | None) -> list[str]:
    """Outputs that left the stored golden values although model and inputs are the same."""
    golden = f"snapshot {name}"
    verdicts = [compare(stored.arrays, deployment.reference, rules, reference_name=golden,
                        actual_name=deployment.reference_name)]
    runners = {TVM_PYTHON: deployment.outputs}
    if deployment.cpp_outputs is not None:
        runners[TVM_CPP] = deployment.cpp_outputs
    for runner, outputs in runners.items():
        if judge is None:
            verdicts.append(compare(stored.arrays, outputs, rules, reference_name=golden, actual_name=runner))
        else:
            verdicts.append(judge(stored.arrays, outputs, golden, runner))
    failed = [v.describe() for v in verdicts if not v]
    if not failed:
        return []
    return [f"outputs drifted from snapshot {name} under the same model and inputs:"] + failed


def set_aside(location: Path) -> None:
    """Keep a damaged snapshot next to where it was, under a name syrupy does not manage."""
    os.replace(location, location.with_name(f".{location.name}.damaged"))
