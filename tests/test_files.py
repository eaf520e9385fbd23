"""Atomic writes leave complete files with the permissions a plain open() would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pytest_tvmdeploy.files import write_atomic


def test_written_file_is_complete_and_readable_by_others(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "sub" / "report.json", "{}")
    finally:
        os.umask(mask)
    written = tmp_path / "sub" / "report.json"
    assert written.read_text() == "{}"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert [p.name for p in written.parent.iterdir()] == ["report.json"]  # no temporary file left
