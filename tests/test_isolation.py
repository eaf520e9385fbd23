"""Crash isolation: a crash, hang or memory blow-up inside TVM fails only its own test, with the
stage and the signal or limit named, and the session goes on (serial and under xdist)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

#: Three tests: a real TVM 0.27 crash at run time between two healthy deployments.
CRASH_BETWEEN_HEALTHY = """
import numpy as np
import pytest
from models import FloorDivide, TinyConvNet, seeded

INT64_MIN = np.iinfo(np.int64).min

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")})
def test_before(tvm_deployment): pass

@pytest.mark.tvm_model(model=FloorDivide(),
                       inputs={"x": np.array([7, 8, 9, INT64_MIN]), "y": np.array([2, 3, 4, -1])})
def test_crash(tvm_deployment): pass

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 8, 8), "float32")})
def test_after(tvm_deployment): pass
"""


def _records(folder) -> dict[str, dict]:
    report = json.loads((folder / "report.json").read_text())
    return {r["test"].rsplit("::", 1)[-1]: r for r in report["tests"]}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_tvm_crash_fails_only_its_own_test(project: pytest.Pytester, workers: list[str]) -> None:
    project.makepyfile(test_models=CRASH_BETWEEN_HEALTHY)
    result = project.runpytest_subprocess(*workers, "--tvm-report=out", "--junitxml=junit.xml", "--tvm-cpp=off",
                                          "-p", "no:cacheprovider", "--tvm-cache-dir=cache")
    result.assert_outcomes(passed=2, errors=1)  # a deployment that cannot finish errors its test's setup
    result.stdout.fnmatch_lines(["*test_crash*TVM worker crashed in stage run: killed by SIGFPE*"])
    result.stdout.fnmatch_lines(["*test_crash*crashed (run, SIGFPE)*"])  # the session's table
    records = _records(project.path / "out")
    crash = records["test_crash"]
    assert (crash["outcome"], crash["stage"], crash["crash"]) == ("error", "run", "SIGFPE")
    assert records["test_before"]["outcome"] == records["test_after"]["outcome"] == "passed"
    html = (project.path / "out" / "report.html").read_text()
    assert "test_crash" in html and "SIGFPE" in html
    cases = {case.get("name"): case for case in ET.parse(project.path / "junit.xml").iter("testcase")}
    properties = {p.get("name"): p.get("value") for p in cases["test_crash"].iter("property")}
    assert properties["tvm_crash"] == "SIGFPE" and properties["tvm_stage"] == "run"
    # the crash leaves a reproducer that crashes the same way outside pytest
    folder = Path(re.search(r"reproducer: (\S+)", result.stdout.str()).group(1))
    # the crash is cut down to the smallest prefix that still crashes: the upstream script
    assert sorted(p.name for p in folder.iterdir()) == ["inputs", "model.pt2", "reproducer.json", "upstream"]
    manifest = json.loads((folder / "reproducer.json").read_text())
    assert (manifest["kind"], manifest["stage"], manifest["cause"]) == ("crash", "run", "SIGFPE")
    replay = subprocess.run([sys.executable, "-m", "pytest_tvmdeploy.replay", str(folder)],
                            capture_output=True, text=True, timeout=600)
    assert replay.returncode == 3, replay.stdout + replay.stderr
    assert "TVM worker crashed in stage run: killed by SIGFPE" in replay.stdout


HEALTHY_AFTER = """
@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")})
def test_after(tvm_deployment): pass
"""


def _fault_then_healthy(project: pytest.Pytester, fault: str, *options: str) -> tuple[pytest.RunResult, dict]:
    """Run a faulty marked test followed by a healthy one; the fault errors only its own test."""
    header = "import pytest\nfrom models import Outer, SquareMatmul, TinyConvNet, seeded\n"
    project.makepyfile(test_fault=header + fault + HEALTHY_AFTER)
    result = project.runpytest_subprocess(*options, "--tvm-report=out", "--tvm-cache-dir=cache")
    result.assert_outcomes(passed=1, errors=1)
    return result, _records(project.path / "out")


def test_a_hang_is_killed_at_the_stage_limit(project: pytest.Pytester) -> None:
    result, records = _fault_then_healthy(project, """
@pytest.mark.tvm_model(model=SquareMatmul(), inputs={"x": ((4096, 4096), "float32")}, cpp="off")
def test_hang(tvm_deployment): pass
""", "--tvm-timeout=25", "--tvm-schedule=none")  # plain loops: a sampled schedule runs it in a second
    result.stdout.fnmatch_lines(["*test_hang*TVM worker timed out in stage run after 25 s (--tvm-timeout)*"])
    assert (records["test_hang"]["stage"], records["test_hang"]["crash"]) == ("run", "timeout")


def test_a_memory_blow_up_fails_at_the_limit(project: pytest.Pytester) -> None:
    # a 24000 x 24000 float32 output: 2.3 GB, far over the worker's limit
    result, records = _fault_then_healthy(project, """
@pytest.mark.tvm_model(model=Outer(), inputs={"a": ((24000,), "float32"), "b": ((24000,), "float32")},
                       cpp="off", snapshot=False)
def test_memory(tvm_deployment): pass
""", "--tvm-memory-limit=1.5G")
    result.stdout.fnmatch_lines(["*test_memory*1.5G*--tvm-memory-limit*"])
    assert (records["test_memory"]["stage"], records["test_memory"]["crash"]) == ("run", "memory-limit")


def test_isolate_off_runs_in_process(project: pytest.Pytester) -> None:
    project.makepyfile(test_plain="""
        import sys
        import pytest
        from models import TinyConvNet, seeded

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_model(tvm_deployment):
            print("TVM_IN_PROCESS", "tvm" in sys.modules)
    """)
    isolated = project.runpytest_subprocess("-s", "--tvm-cache-dir=cache")
    isolated.assert_outcomes(passed=1)
    isolated.stdout.fnmatch_lines(["*TVM_IN_PROCESS False*"])
    in_process = project.runpytest_subprocess("-s", "--tvm-isolate=off", "--tvm-cache-dir=cache")
    in_process.assert_outcomes(passed=1)
    in_process.stdout.fnmatch_lines(["*TVM_IN_PROCESS True*"])
