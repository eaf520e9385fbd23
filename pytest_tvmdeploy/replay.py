"""Replay a reproducer folder: ``python -m pytest_tvmdeploy.replay <folder>``.

Runs the folder's ``model.so`` on its inputs in the Relax VM and puts the result through the
same :func:`~pytest_tvmdeploy.checks.check` a test runs, under the stored tolerances or int8
budget; prints the verdict; exit code 0 if it matches, 1 if not, 2 if it cannot replay.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pytest_tvmdeploy.build.cache import Artifact
from pytest_tvmdeploy.checks import CheckResult, check
from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.deployment.result import Deployment, Timings
from pytest_tvmdeploy.deployment.sandbox import DEFAULT_TIMEOUT, Sandbox
from pytest_tvmdeploy.errors import SandboxError, TvmDeployError
from pytest_tvmdeploy.hashing import arrays_fingerprint
from pytest_tvmdeploy.outputs import NamedArrays, RunResult, named_like
from pytest_tvmdeploy.report.crash_reproducer import CRASH, crash_job
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


def replay_crash(folder: Path, timeout: float) -> SandboxError | None:
    """Run a crash reproducer's TVM work in a child process: the error if it fails the same way."""
    manifest = json.loads((folder / MANIFEST).read_text())
    scratch = Path(tempfile.mkdtemp(prefix="tvmdeploy-replay-"))
    try:
        with Sandbox(timeout=timeout, log_dir=scratch / "sandbox") as sandbox:
            sandbox.run(crash_job(folder, manifest, scratch / "cache"))
    except SandboxError as exc:
        return exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_tvmdeploy.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="reproducer folder named in the failure message")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="time limit of each stage when replaying a crash (default %(default)g s)")
    args = parser.parse_args(argv)
    try:
        if json.loads((args.folder / MANIFEST).read_text()).get("kind") == CRASH:
            return _report_crash(args.folder, replay_crash(args.folder, args.timeout))
        result = replay(args.folder)
    except (OSError, KeyError, ValueError, TvmDeployError) as exc:
        print(f"replay of {args.folder} failed: {exc}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0 if result else 1


def _report_crash(folder: Path, error: SandboxError | None) -> int:
    if error is None:
        print(f"{folder}: TVM no longer crashes on it: the work finished in the worker")
        return 0
    print(str(error))
    return 3


if __name__ == "__main__":
    sys.exit(main())
