"""The package's shape: the README's layout matches the tree, and no folder imports a later stage."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pytest_tvmdeploy"

#: The pipeline's folders in order; a folder may import only those before it (and root modules).
STAGES = ("sources", "quantize", "build", "tuning", "runners", "deployment", "checks", "report",
          "settings", "plugin", "kit")
#: Root modules that sit on top of the pipeline (the public API and the replay command).
TOP = ("__init__.py", "replay.py")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_folders(path: Path) -> set[str]:
    """The package folders a module imports, at module level or inside functions."""
    folders = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "pytest_tvmdeploy" and len(parts) > 1 and parts[1] in STAGES:
                folders.add(parts[1])
    return folders


def test_readme_layout_lists_every_module_once() -> None:
    block = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    listed = re.findall(r"^(pytest_tvmdeploy/\S+\.py)\s", block, flags=re.MULTILINE)
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(str(p.relative_to(ROOT)) for p in modules())


def test_no_folder_imports_a_later_stage() -> None:
    backwards = []
    for path in modules():
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            if relative.name in TOP:
                continue
            rank = -1  # root modules: the base every stage stands on
        else:
            rank = STAGES.index(relative.parts[0])
        backwards += [f"{relative} imports {folder}/" for folder in imported_folders(path)
                      if STAGES.index(folder) > rank]
    assert backwards == []


def test_plain_api_imports_neither_pytest_nor_tvm(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, pytest_tvmdeploy, pytest_tvmdeploy.settings.session; "
            "print(sorted(m for m in ('pytest', 'tvm', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"
