"""A self-contained folder that replays a failed deployment outside pytest.

Layout: ``model.so``, ``inputs/<name>.npy``, ``reference/<name>.npy``, ``tvm/<name>.npy``
(and ``tvm-cpp/`` when the C++ runner ran) and ``reproducer.json`` (target, tolerances, hashes). Replay with
``python -m pytest_tvmdeploy.replay <folder>``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.build.compile import tvm_version
from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.report.upstream import write_upstream

MANIFEST = "reproducer.json"


def write_reproducer(
    folder: Path,
    *,
    test_id: str,
    deployment: Any,
    rules: ToleranceRules,
    actual: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    budget: Any = None,
    operator_case: OperatorCase | None = None,
) -> Path:
    """Write (or replace) the reproducer for one failed check; returns ``folder``.

    ``actual`` maps runner name (``tvm``, ``tvm-cpp``) to its outputs; each gets a folder.
    ``operator_case`` (a diverging operator, cut out) adds the upstream script (``upstream/repro.py``).
    """
    staging = staging_folder(folder)
    shutil.copy2(deployment.artifact_path, staging / "model.so")
    save_arrays(staging / "inputs", deployment.inputs)
    save_arrays(staging / "reference", deployment.reference)
    for runner, outputs in (actual if actual is not None else {"tvm": deployment.outputs}).items():
        save_arrays(staging / runner, outputs)
    manifest = {
        "test": test_id,
        "model": deployment.model,
        "source_kind": deployment.source_kind,
        "reference": deployment.reference_name,
        "runners": sorted(actual) if actual is not None else ["tvm"],
        "target": deployment.target.as_dict,
        "sha256": deployment.artifact.sha256,
        "size": deployment.artifact.size,
        "inputs": list(deployment.inputs),
        "outputs": list(deployment.reference),
        "tolerances": rules.to_json(),
        "quant_budget": budget.to_json() if budget is not None else None,
        "upstream": None,
    }
    if operator_case is not None:
        script = write_upstream(staging, operator_case, deployment.target.as_dict, tvm_version())
        manifest["upstream"] = str(script.relative_to(staging))
    return publish(staging, folder, manifest)


def staging_folder(folder: Path) -> Path:
    """A fresh folder beside ``folder`` to fill before :func:`publish` puts it in its place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))


def publish(staging: Path, folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Write the manifest and replace ``folder`` with ``staging``: a reader sees the old
    reproducer or the new one, never half of one."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def load_arrays(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Read ``<folder>/<name>.npy`` for each name, in order."""
    return {name: np.load(folder / f"{_file_name(name)}.npy", allow_pickle=False) for name in names}


def save_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write each array as ``<folder>/<name>.npy``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{_file_name(name)}.npy", np.asarray(array), allow_pickle=False)


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
