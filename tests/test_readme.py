"""The README tells the truth: its usage example passes as written, and CI runs its test command."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_usage_example() -> str:
    usage = README.split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


@pytest.fixture(scope="session")
def resnet18_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/resnet18.pt (TorchScript) and models/resnet18.onnx, as the example expects."""
    import torch
    import torchvision

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    example = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, (example,)).save(str(folder / "resnet18.pt"))
        torch.onnx.export(model, (example,), str(folder / "resnet18.onnx"), input_names=["x"], dynamo=False)
    return folder


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One artifact cache for both runs of the example: the second builds nothing."""
    return f"--tvm-cache-dir={tmp_path_factory.mktemp('readme-cache')}"


@pytest.mark.xdist_group("readme-example")  # one worker, one after the other: the second run finds the builds
def test_readme_usage_example_passes(pytester: pytest.Pytester, resnet18_files: Path, shared_cache: str) -> None:
    shutil.copytree(resnet18_files, pytester.path / "models")
    pytester.makepyfile(test_deploy=readme_usage_example())
    pytester.runpytest("--snapshot-update", shared_cache).assert_outcomes(passed=3)  # the README's first run
    result = pytester.runpytest("-v", "--tvm-target=llvm", shared_cache)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random([
        "*test_resnet18 *PASSED*", "*test_resnet18_torchscript *PASSED*", "*test_resnet18_onnx *PASSED*",
    ])


@pytest.mark.xdist_group("readme-example")
def test_readme_example_fails_with_diagnostics_at_zero_tolerance(pytester: pytest.Pytester,
                                                                 resnet18_files: Path, shared_cache: str) -> None:
    shutil.copytree(resnet18_files, pytester.path / "models")
    pytester.makepyfile(test_deploy=readme_usage_example())
    # the failure as the README shows it: statistics, first diverging operator, reproducer (the
    # compiler-stage bisection after it has tests of its own, in test_stages)
    result = pytester.runpytest("--tvm-rtol=0", "--tvm-atol=0", "--tvm-snapshot=off", "--tvm-bisect=off",
                                shared_cache)
    # the first test sets its own tolerance in the marker and keeps it; the two files fail
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random([
        "*tvm output differs from pytorch: 1 of 1 output(s) outside tolerance",
        "*tvm output differs from onnxruntime: 1 of 1 output(s) outside tolerance",
        "*mismatched elements: * / 1000 (*%) outside exact",
        "*worst element [[]0, *[]]: reference=*, tvm=*",
        "first diverging operator: *onv*",
        "*replay it with: python -m pytest_tvmdeploy.replay *",
    ])


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"^(python3 -m venv .*)$", README.split("## Usage")[0], re.M)
    assert len(commands) == 2, "the README starts with exactly two set-up commands"
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_cpp_recipe_builds_and_runs_a_so_from_the_shell(tmp_path: Path) -> None:
    import subprocess
    import sys

    import numpy as np

    from pytest_tvmdeploy import deploy

    block = re.search(r"### From C\+\+.*?```sh\n(.*?)```", README, re.S).group(1)
    d = deploy(ROOT / "fixtures" / "tiny_convnet.onnx", {"x": ((1, 3, 16, 16), "float32")},
               cache_dir=tmp_path / "cache")
    np.save(tmp_path / "x.npy", d.inputs["x"])
    script = (block.replace("$(pwd)/.venv/bin/python", sys.executable)
                   .replace("build/cpp", str(tmp_path / "build"))
                   .replace("model.so", str(d.artifact_path))
                   .replace("x=x.npy", f"x={tmp_path / 'x.npy'}")
                   .replace("--out-dir out", f"--out-dir {tmp_path / 'out'}"))
    run = subprocess.run(["bash", "-euc", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "output_0.npy"), d.outputs["logits"])
    assert "call_seconds" in (tmp_path / "out" / "result.json").read_text()
