"""Shrink a tuning database to what builds apply: the best valid record of each workload and target.

    python -m pytest_tvmdeploy.tuning.compact DIR [DIR ...]

A tuning run stores every measured candidate (hundreds per task, megabytes per model); a build
applies only the fastest valid one of each workload. Compact a database before committing it
for CI: builds from it are the same, at a small fraction of the size. Tuning the same models
again starts from fewer stored trials, so it measures more candidates before it is satisfied.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_tvmdeploy.errors import BuildError
from pytest_tvmdeploy.tuning.records import DatabaseFiles, RecordLine, database_lock, read_database
from pytest_tvmdeploy.tuning.selection import is_valid, mean_seconds


def compact(folder: Path) -> tuple[int, int]:
    """Rewrite ``folder``'s database with one record per (workload, target); ``(before, after)``.

    Holds the database's lock, so a tuning run in another process is not cut short."""
    if not Path(folder).is_dir():
        raise BuildError(f"tuning database {folder}: no such folder")
    with database_lock(Path(folder)):
        return _compact(read_database(Path(folder)))


def _compact(files: DatabaseFiles) -> tuple[int, int]:
    best: dict[tuple[int, str], tuple[int, RecordLine]] = {}
    for position, record in enumerate(files.records):
        if not is_valid(record):
            continue
        key = (record.workload, json.dumps(record.target, sort_keys=True))
        if key not in best or mean_seconds(record) < mean_seconds(best[key][1]):
            best[key] = (position, record)
    compacted = files.subset([record for _, record in sorted(best.values(), key=lambda item: item[0])])
    if files.records:
        compacted.write(files.folder)
    return len(files.records), len(compacted.records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_tvmdeploy.tuning.compact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="database folders (database_*.json inside)")
    for folder in parser.parse_args(argv).folders:
        try:
            before, after = compact(folder)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{folder}: {before} -> {after} record(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
