"""Tasks whose search space ran out, remembered per target so later runs do not tune them again.

A task with fewer possible schedules than the per-task budget (a reshape has one) never reaches
the budget's record count; without this note every run would tune it again. The note lives
beside the database files in ``tuning_exhausted.json``: ``{target key: [workload hash, ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pytest_tvmdeploy.errors import BuildError
from pytest_tvmdeploy.files import write_atomic

EXHAUSTED_FILE = "tuning_exhausted.json"


def exhausted_workloads(folder: Path, target_key: str) -> frozenset[str]:
    """Workload hashes noted as fully explored for ``target_key``."""
    return frozenset(_read(Path(folder)).get(target_key, ()))


def note_exhausted(folder: Path, target_key: str, shashes: Iterable[str]) -> None:
    """Add workload hashes to the note for ``target_key``."""
    new = set(shashes)
    if not new:
        return
    notes = _read(Path(folder))
    notes[target_key] = sorted(set(notes.get(target_key, ())) | new)
    write_atomic(Path(folder) / EXHAUSTED_FILE, json.dumps(notes, indent=1, sort_keys=True) + "\n")


def _read(folder: Path) -> dict[str, list[str]]:
    path = folder / EXHAUSTED_FILE
    if not path.exists():
        return {}
    try:
        notes = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildError(f"tuning database {path}: unreadable: {exc}") from exc
    if not (isinstance(notes, dict) and all(isinstance(v, list) for v in notes.values())):
        raise BuildError(f"tuning database {path}: not a {{target: [workload hash, ...]}} object")
    return notes
