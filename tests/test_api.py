"""The plain-Python API works without pytest and refuses damaged artifacts before any loader sees them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from pytest_tvmdeploy import compare, deploy
from pytest_tvmdeploy.deployment.config import DeployConfig
from pytest_tvmdeploy.deployment.run import run_cpp_check

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

SCRIPT = f"""
import sys
from pytest_tvmdeploy import deploy, compare
d = deploy("tiny_convnet.onnx", {{"x": ((1, 3, 16, 16), "float32")}}, base_dir=r"{FIXTURES}", cache_dir=sys.argv[1])
verdict = compare(d.reference, d.outputs, reference_name=d.reference_name)
print(verdict.describe())
print("cache_hit", d.cache_hit)
assert "pytest" not in sys.modules, "the plain API must not import pytest"
"""


def test_deploy_runs_from_a_plain_script_without_pytest(tmp_path: Path) -> None:
    run = lambda: subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)],  # noqa: E731
                                 capture_output=True, text=True, timeout=300)
    first, second = run(), run()
    assert first.returncode == 0, first.stderr
    assert "tvm matches onnxruntime on all 1 output(s)" in first.stdout
    assert "cache_hit False" in first.stdout
    assert second.returncode == 0 and "cache_hit True" in second.stdout


def test_cpp_run_refuses_an_artifact_whose_hash_does_not_match(tmp_path: Path) -> None:
    d = deploy(FIXTURES / "tiny_convnet.pt2", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=tmp_path / "cache")
    ran = tmp_path / "runner-was-started"
    runner = tmp_path / "runner"
    runner.write_text(f"#!/bin/sh\ntouch {ran}\n")
    runner.chmod(0o755)
    tampered = replace(d.artifact, sha256="0" * 64)
    result, error = run_cpp_check(tampered, dict(d.inputs), DeployConfig(cpp_runner=runner, cpp_timeout=60))
    assert result is None
    assert error is not None and str(d.artifact_path) in error and "does not match recorded" in error
    assert not ran.exists()  # refused before the child process ever started


def test_deployment_exposes_plain_numbers_and_arrays(tmp_path: Path) -> None:
    d = deploy(FIXTURES / "tiny_convnet.pt", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=tmp_path, seed=3)
    assert isinstance(d.outputs[0], np.ndarray) and d.outputs[0].shape == (1, 10)
    assert d.outputs["out0"] is d.outputs[0]
    assert set(d.timings.as_dict()) >= {"import", "compile", "run", "reference", "vm_load"}
    assert d.timings.compile > 0 and not d.cache_hit
    assert d.artifact_path.is_file() and d.artifact.size == d.artifact_path.stat().st_size
    assert compare(d.reference, d.outputs)


def test_repeat_times_every_runner_and_progress_names_each_phase(tmp_path: Path) -> None:
    phases: list[str] = []
    spec = {"x": ((1, 3, 16, 16), "float32")}
    d = deploy(FIXTURES / "tiny_convnet.onnx", spec, cache_dir=tmp_path, repeat=4, progress=phases.append)
    assert phases == ["load", "reference", "import", "compile", "run"]
    assert [len(d.runs[name].call_seconds) for name in ("onnxruntime", "tvm")] == [4, 4]
    assert d.timings.run == float(np.median(d.runs["tvm"].call_seconds)) > 0
    phases.clear()
    deploy(FIXTURES / "tiny_convnet.onnx", spec, cache_dir=tmp_path, progress=phases.append)
    assert phases == ["load", "reference", "run"]  # cached: nothing imported or compiled


VERDICTS = """
import pytest
from models import TinyConvNet, seeded
SPEC = {"x": ((1, 3, 16, 16), "float32")}

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs=SPEC, cpp="off")
def test_passing(tvm_deployment): pass

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs=SPEC, rtol=0, atol=0, cpp="off")
def test_failing(tvm_deployment): pass
"""


def test_plain_check_reaches_the_plugins_verdict(project) -> None:
    import json

    from models import TinyConvNet, seeded
    from pytest_tvmdeploy import ToleranceRules, check
    from pytest_tvmdeploy.inputs import seed_for

    project.makepyfile(test_verdicts=VERDICTS)
    run = project.runpytest("--tvm-report=out", "--tvm-localize=off", "--tvm-cache-dir=cache")
    run.assert_outcomes(passed=1, failed=1)
    records = {r["test"].rsplit("::", 1)[-1]: r
               for r in json.loads((project.path / "out" / "report.json").read_text())["tests"]}
    for name, rules in (("test_passing", ToleranceRules()), ("test_failing", ToleranceRules(rtol=0, atol=0))):
        d = deploy(seeded(TinyConvNet()), {"x": ((1, 3, 16, 16), "float32")}, cache_dir=project.path / "cache",
                   seed=seed_for(f"test_verdicts.py::{name}"))
        assert d.cache_hit  # the very artifact and inputs the plugin checked
        result = check(d, rules, localize=False)
        assert bool(result) is (records[name]["outcome"] == "passed")
        assert result.summary()["max_abs_error"] == records[name]["max_abs_error"]
    assert records["test_failing"]["max_abs_error"] > 0
    assert "outside exact" in result.describe() and records["test_failing"]["stage"] == "compare"


def test_check_keeps_a_snapshot_file_without_pytest(tmp_path: Path) -> None:
    from pytest_tvmdeploy import SnapshotFile, check

    d = deploy(FIXTURES / "tiny_convnet.onnx", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=tmp_path / "cache")
    path = tmp_path / "golden.tensors"
    missing = check(d, snapshot=SnapshotFile(path))
    assert not missing and "does not exist" in missing.describe() and not path.exists()
    written = check(d, snapshot=SnapshotFile(path, update=True))
    assert written and written.snapshot == "written" and path.is_file()
    matched = check(d, snapshot=SnapshotFile(path))
    assert matched and matched.snapshot == "matched"
    other = deploy(FIXTURES / "tiny_convnet.onnx", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=tmp_path / "cache",
                   seed=1)
    changed = check(other, snapshot=SnapshotFile(path))
    assert changed.snapshot == "failed" and "the inputs changed since the snapshot was taken" in changed.describe()
