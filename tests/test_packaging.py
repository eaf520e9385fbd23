"""An installed wheel carries everything the plugin needs, the C++ runner's sources included."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_cpp_runner_sources_and_the_plugin_entry_point(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("pytest_tvmdeploy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT / "cpp_check").as_posix() for p in (ROOT / "cpp_check").rglob("*") if p.is_file()}
    assert {f"pytest_tvmdeploy/cpp_check/{s}" for s in sources} <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pytest_tvmdeploy").rglob("*.py")}
    assert modules <= names, f"left out of the wheel: {sorted(modules - names)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tvmdeploy = pytest_tvmdeploy.plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()
