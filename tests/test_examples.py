"""The demo suite passes against the snapshots it ships, and notices a changed weight."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.xdist_group("demo")  # one worker, in order: the later runs find the demo's schedules


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache for every copy of the demo: a changed weight rebuilds its model, but
    with the sampled schedules the unchanged model left there."""
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture
def demo(pytester: pytest.Pytester, not_an_xdist_worker: None, demo_cache: Path) -> pytest.Pytester:
    """A copy of examples/ (tests, conftest, shipped snapshots), without generated model files."""
    shutil.copytree(EXAMPLES, pytester.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("models", "__pycache__", ".pytest_cache"))
    pytester.makeini(f"[pytest]\ntvm_cache_dir = {demo_cache}\n")
    return pytester


def test_demo_suite_passes_against_its_shipped_snapshots(demo: pytest.Pytester) -> None:
    result = demo.runpytest_subprocess("-v")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*test_efficientnet_lite0_int8_still_sees_the_cat *0.9*/*dB*passed",
                                 "*8 snapshots passed.*"])
    assert "C++ check skipped" not in result.stdout.str()
    assert result.stdout.str().count(" bitwise ") == 8  # every model also ran from C++, identical bits


def test_perturbed_weight_is_a_model_change_until_the_snapshot_is_updated(demo: pytest.Pytester) -> None:
    tests = demo.path / "test_torchvision_models.py"
    tests.write_text(
        tests.read_text().replace('model=lambda: seeded("mobilenet_v2")',
                                  "model=lambda: perturbed(seeded('mobilenet_v2'))")
        + "\n\ndef perturbed(model):\n"
          "    import torch\n"
          "    with torch.no_grad():\n"
          "        model.features[0][0].weight[0, 0, 0, 0] += 0.01\n"
          "    return model\n"
    )
    changed = demo.runpytest("-k", "mobilenet_v2 and not onnx")
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines(["snapshot test_mobilenet_v2.tensors: the model changed since the snapshot was "
                                  "taken *"])
    demo.runpytest("-k", "mobilenet_v2 and not onnx", "--snapshot-update").assert_outcomes(passed=1)
    demo.runpytest("-k", "mobilenet_v2 and not onnx").assert_outcomes(passed=1)
