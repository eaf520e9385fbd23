"""The error ratchet: an error that grows inside tolerance fails until --snapshot-update records it."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_tvmdeploy.checks.ratchet import Ratchet, error_levels
from pytest_tvmdeploy.checks.snapshot_file import decode
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import ConfigError

#: The build scales the first relu's output by 1 + PLANTED_ERROR: an error we set, far inside tolerance.
PLANT = """
import os
from faults import plant_relax_rewrite
plant_relax_rewrite(factor=1 + float(os.environ["PLANTED_ERROR"]))
"""

SUITE = """
import pytest
from models import TinyConvNet, seeded

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")},
                       rtol=0.01, atol=0.01, cpp="off")
def test_convnet(tvm_deployment):
    pass
"""


def _run(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, error: float, *args: str) -> pytest.RunResult:
    monkeypatch.setenv("PLANTED_ERROR", str(error))
    # one cache per planted error: the rewrite's factor is not part of its name, so not of the cache key
    return project.runpytest_subprocess("--tvm-setup=plant", f"--tvm-cache-dir=cache-{error}", "--tvm-localize=off",
                                        "--tvm-bisect=off", *args)


def test_an_error_grown_tenfold_inside_tolerance_fails_until_recorded(
        snapshot_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot_project.makepyfile(plant=PLANT, test_suite=SUITE)
    _run(snapshot_project, monkeypatch, 1e-4, "--snapshot-update").assert_outcomes(passed=1)
    path = snapshot_project.path / "__snapshots__" / "test_suite" / "test_convnet.tensors"
    (level,) = decode(path.read_text()).metadata["errors"]
    assert level["target"] == "llvm" and level["output"] == "out0" and level["elements"] == 10
    assert 1.5e-4 < level["max_abs"] < 1e-3  # the planted error, far inside atol=0.01

    grown = _run(snapshot_project, monkeypatch, 1e-3)
    grown.assert_outcomes(failed=1)
    grown.stdout.fnmatch_lines(["*error ratchet: the error grew, although inside tolerance: output 'out0' on llvm: "
                                "max abs error * is *x the recorded * (more than 4x)*"
                                "record the new level with: pytest --snapshot-update test_suite.py::test_convnet*"])
    ratio = float(grown.stdout.str().split("max abs error ")[1].split(" is ")[1].split("x")[0])
    assert 8 < ratio < 12  # the planted error grew tenfold

    warned = _run(snapshot_project, monkeypatch, 1e-3, "--tvm-ratchet=warn")
    warned.assert_outcomes(passed=1, warnings=1)
    warned.stdout.fnmatch_lines(["*ErrorRatchetWarning: error ratchet: the error grew*"])

    _run(snapshot_project, monkeypatch, 1e-3, "--snapshot-update").assert_outcomes(passed=1)
    (recorded,) = decode(path.read_text()).metadata["errors"]
    assert 8 < recorded["max_abs"] / level["max_abs"] < 12
    _run(snapshot_project, monkeypatch, 1e-3).assert_outcomes(passed=1)
    # the way back down is not a failure
    _run(snapshot_project, monkeypatch, 1e-4).assert_outcomes(passed=1)


def test_error_levels_hold_the_statistics_the_ratchet_compares() -> None:
    reference = {"y": np.linspace(-1, 1, 1000, dtype=np.float32)}
    actual = {"y": reference["y"] + np.float32(1e-3) * (np.arange(1000) % 100 == 0)}
    (row,) = error_levels(reference, actual, ToleranceRules(rtol=1e-3, atol=1e-3), "llvm")
    assert row["max_abs"] == pytest.approx(1e-3, rel=1e-3)
    assert row["p99_abs"] == pytest.approx(1e-3 * 0.01, rel=0.2)  # 1% of the elements carry the error
    assert row["tight_mismatches"] == 10  # above a tenth of atol + rtol*|ref|
    rules = ToleranceRules(rtol=1e-3, atol=1e-3)
    assert Ratchet().grown([row], [{**row, "max_abs": 3.9e-3}], "llvm", rules) == []
    (reason,) = Ratchet().grown([row], [{**row, "max_abs": 4.1e-3}], "llvm", rules)
    assert reason.startswith("output 'y' on llvm: max abs error 0.0041 is 4.1x the recorded 0.001")
    assert Ratchet("off").grown([row], [{**row, "max_abs": 1.0}], "llvm", rules) == []
    assert Ratchet().grown([row], [{**row, "max_abs": 1.0}], "other-target", rules) == []  # nothing recorded there
    with pytest.raises(ConfigError, match="greater than 1"):
        Ratchet(factor=1)
