"""MetaSchedule's JSON database read as plain lines: validation, digests and merging, no TVM.

The database is two files of one JSON value per line. ``database_workload.json`` holds
``[structural_hash, base64 IRModule]``; ``database_tuning_record.json`` holds
``[workload line index, [trace, run_secs, target, args_info]]``. Files only ever grow by
appended lines, so writing the workload file before the record file keeps every intermediate
state loadable: records never point past the workloads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from pytest_tvmdeploy.errors import BuildError
from pytest_tvmdeploy.files import write_atomic

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
LOCK_FILE = ".tuning.lock"

_RECORD_LINE = re.compile(r"\[\s*(\d+)\s*,(.*)\]\s*", re.DOTALL)


@dataclass(frozen=True)
class WorkloadLine:
    """One workload: a TIR function's structural hash and its serialized module."""

    shash: str
    text: str  # the whole line, as TVM wrote it


@dataclass(frozen=True)
class RecordLine:
    """One measured candidate of a workload."""

    workload: int                        # index into the workload lines
    body: str                            # the record's JSON text: [trace, run_secs, target, args_info]
    target: dict[str, Any]               # the target it was measured on
    run_secs: tuple[float | None, ...]   # measured run times (1e10 stands for a failure)
    first_instruction: str | None        # the kind of the trace's first instruction

    def line(self, workload: int | None = None) -> str:
        """The line as stored, optionally pointing at another workload index."""
        return f"[{self.workload if workload is None else workload},{self.body}]"


@dataclass(frozen=True)
class DatabaseFiles:
    """The parsed content of one database folder (empty when the files do not exist)."""

    folder: Path
    workloads: tuple[WorkloadLine, ...] = ()
    records: tuple[RecordLine, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.records

    def subset(self, records: Sequence[RecordLine]) -> DatabaseFiles:
        """A database of ``records`` (lines of this one) and only the workloads they use, renumbered."""
        used = sorted({record.workload for record in records})
        renumber = {old: new for new, old in enumerate(used)}
        return DatabaseFiles(self.folder, tuple(self.workloads[old] for old in used),
                             tuple(replace(record, workload=renumber[record.workload]) for record in records))

    def digest(self) -> str | None:
        """sha256 over every line of both files (``None`` without records)."""
        if self.is_empty:
            return None
        hasher = hashlib.sha256()
        for workload in self.workloads:
            hasher.update(workload.text.encode() + b"\n")
        hasher.update(b"--\n")
        for record in self.records:
            hasher.update(record.line().encode() + b"\n")
        return hasher.hexdigest()

    def write(self, folder: Path) -> None:
        """Write both files into ``folder``, workloads first (see the module docstring)."""
        write_atomic(folder / WORKLOAD_FILE, "".join(w.text + "\n" for w in self.workloads))
        write_atomic(folder / RECORD_FILE, "".join(r.line() + "\n" for r in self.records))


def database_lock(folder: Path) -> FileLock:
    """The lock a process holds while it rewrites the database in ``folder`` (tuning, compacting)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(folder) / LOCK_FILE))


def read_database(folder: Path) -> DatabaseFiles:
    """Read and check both files; raise :class:`BuildError` naming the file and line if damaged."""
    folder = Path(folder)
    workload_lines = _lines(folder / WORKLOAD_FILE)
    record_lines = _lines(folder / RECORD_FILE)
    workloads = tuple(_workload(folder / WORKLOAD_FILE, number, text) for number, text in workload_lines)
    records = tuple(_record(folder / RECORD_FILE, number, text, len(workloads)) for number, text in record_lines)
    return DatabaseFiles(folder, workloads, records)


def merge_new_records(
    destination: Path,
    run: DatabaseFiles,
    seed: DatabaseFiles,
    tuned_workloads: Mapping[str, WorkloadLine],
) -> int:
    """Append the records ``run`` has beyond ``seed`` to the database in ``destination``.

    ``run`` is a database that started as a copy of ``seed`` and was only appended to;
    ``tuned_workloads`` are the modules the run tuned, by workload hash. Each new record is
    stored with the module it was tuned on: MetaSchedule files a record under any stored
    workload that is structurally equal, but its trace names the blocks of the tuned module,
    and block names (which follow the model's variable names) are not part of that equality;
    under another model's workload the trace would not replay. The destination is read again,
    since it may have grown meanwhile; a workload it holds with the same module is reused.
    Returns the number of records added.
    """
    current = read_database(destination)
    workloads = list(current.workloads)
    modules = [_module(workload) for workload in workloads]
    index_in_current: dict[int, int] = {}
    new_records = run.records[len(seed.records):]
    for record in new_records:
        if record.workload not in index_in_current:
            stored = run.workloads[record.workload]
            tuned = tuned_workloads.get(stored.shash, stored)
            index_in_current[record.workload] = _find_or_append(workloads, modules, tuned)
    records = list(current.records)
    records += [replace(record, workload=index_in_current[record.workload]) for record in new_records]
    if new_records:
        DatabaseFiles(destination, tuple(workloads), tuple(records)).write(destination)
    return len(new_records)


def _module(workload: WorkloadLine) -> str:
    """The serialized module of a workload line (block names included)."""
    return json.loads(workload.text)[1]


def _find_or_append(workloads: list[WorkloadLine], modules: list[str], wanted: WorkloadLine) -> int:
    """The index of the workload holding ``wanted``'s module, appended if none does."""
    module = _module(wanted)
    for index, (workload, stored) in enumerate(zip(workloads, modules)):
        if workload.shash == wanted.shash and stored == module:
            return index
    workloads.append(wanted)
    modules.append(module)
    return len(workloads) - 1


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"tuning database {path}: unreadable: {exc}") from exc
    return [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _workload(path: Path, number: int, text: str) -> WorkloadLine:
    value = _json(path, number, text)
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise BuildError(f"tuning database {path} line {number}: not a workload ([hash, module] expected)")
    return WorkloadLine(value[0], text.strip())


def _record(path: Path, number: int, text: str, workload_count: int) -> RecordLine:
    value = _json(path, number, text)
    match = _RECORD_LINE.fullmatch(text)
    if not (match and isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)
            and len(value[1]) == 4):
        raise BuildError(f"tuning database {path} line {number}: not a tuning record ([workload, record] expected)")
    workload = int(match.group(1))
    if workload >= workload_count:
        raise BuildError(
            f"tuning database {path} line {number}: refers to workload {workload}, "
            f"but {path.with_name(WORKLOAD_FILE)} has {workload_count}"
        )
    trace, run_secs, target = value[1][:3]
    return RecordLine(
        workload,
        match.group(2).strip(),
        target if isinstance(target, dict) else {},
        tuple(float(v) if isinstance(v, (int, float)) else None for v in run_secs or ()),
        _first_instruction(trace),
    )


def _first_instruction(trace: Any) -> str | None:
    try:
        return str(trace[0][0][0])
    except (TypeError, IndexError, KeyError):
        return None


def _json(path: Path, number: int, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError(f"tuning database {path} line {number}: not JSON ({exc.msg} at column {exc.colno})") from exc
