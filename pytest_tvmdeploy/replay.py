"""Replay a reproducer folder: ``python -m pytest_tvmdeploy.replay <folder>``.

Runs the folder's ``model.so`` on its inputs in the Relax VM and puts the result through the
same :func:`~pytest_tvmdeploy.checks.check` a test runs, under the stored tolerances or int8
budget; prints the verdict; exit code 0 if it matches, 1 if not, 2 if it cannot replay.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_tvmdeploy.build.cache import Artifact
from pytest_tvmdeploy.checks import CheckResult, check
from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.deployment.result import Deployment, Timings
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.hashing import arrays_fingerprint
from pytest_tvmdeploy.outputs import NamedArrays, RunResult, named_like
from pytest_tvmdeploy.report.reproducer import MANIFEST, load_arrays
from pytest_tvmdeploy.runners.python_vm import run_python_vm
from pytest_tvmdeploy.targets import parse_target


def replay(folder: Path) -> CheckResult:
    """Re-run the reproducer in ``folder`` and check it as its test did."""
    manifest = json.loads((folder / MANIFEST).read_text())
    artifact = Artifact(folder / "model.so", key="", sha256=manifest["sha256"], size=manifest["size"], meta={})
    artifact.verify()
    inputs = load_arrays(folder / "inputs", manifest["inputs"])
    reference = RunResult(manifest["reference"], load_arrays(folder / "reference", manifest["outputs"]))
    result = run_python_vm(artifact.path, inputs)
    deployment = Deployment(
        model=manifest["model"], source_kind=manifest["source_kind"], reference_name=manifest["reference"],
        target=parse_target(manifest["target"]), artifact=artifact, cache_hit=True, fingerprint="",
        model_fingerprint="", input_fingerprint=arrays_fingerprint(inputs), inputs=NamedArrays(inputs),
        reference=NamedArrays(reference.outputs), outputs=named_like(reference, result), timings=Timings(),
        device=result.runner,
    )
    budget = manifest.get("quant_budget")
    return check(deployment, ToleranceRules.from_json(manifest["tolerances"]),
                 budget=QuantBudget.from_value(budget) if budget is not None else None, localize=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_tvmdeploy.replay", description=__doc__)
    parser.add_argument("folder", type=Path, help="reproducer folder named in the failure message")
    args = parser.parse_args(argv)
    try:
        result = replay(args.folder)
    except (OSError, KeyError, ValueError, TvmDeployError) as exc:
        print(f"replay of {args.folder} failed: {exc}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
