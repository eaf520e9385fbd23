"""Replay a reproducer folder: ``python -m pytest_tvmdeploy.replay <folder>``.

Runs the folder's ``model.so`` on its inputs in the Relax VM, compares with the stored
reference under the stored tolerances, prints the verdict; exit code 0 if it matches, 1 if not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_tvmdeploy.build.cache import verify_file
from pytest_tvmdeploy.check.quantized import QuantBudget
from pytest_tvmdeploy.check.judge import Verdict, output_judge
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.report.reproducer import MANIFEST, load_arrays
from pytest_tvmdeploy.runners.python_vm import run_python_vm
from pytest_tvmdeploy.check.tolerances import ToleranceRules


def replay(folder: Path) -> Verdict:
    """Re-run the reproducer in ``folder`` and compare with its stored reference."""
    manifest = json.loads((folder / MANIFEST).read_text())
    so_path = folder / "model.so"
    verify_file(so_path, sha256=manifest["sha256"], size=manifest["size"])
    inputs = load_arrays(folder / "inputs", manifest["inputs"])
    reference = load_arrays(folder / "reference", manifest["outputs"])
    result = run_python_vm(so_path, inputs)
    budget = manifest.get("quant_budget")
    judge = output_judge(ToleranceRules.from_json(manifest["tolerances"]),
                         QuantBudget.from_value(budget) if budget is not None else None)
    return judge(reference, result.outputs, manifest["reference"], "tvm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_tvmdeploy.replay", description=__doc__)
    parser.add_argument("folder", type=Path, help="reproducer folder named in the failure message")
    args = parser.parse_args(argv)
    try:
        verdict = replay(args.folder)
    except (OSError, KeyError, ValueError, TvmDeployError) as exc:
        print(f"replay of {args.folder} failed: {exc}", file=sys.stderr)
        return 2
    print(verdict.describe())
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
