"""Golden outputs with syrupy: written on request, checked within tolerance, model changes named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_tvmdeploy.checks.snapshot_file import SnapshotFileError, TensorSnapshot, decode, encode

SUITE = """
import os, pytest
from models import TinyConvNet, TwoInThreeOut, seeded

SEED = int(os.environ.get("WEIGHT_SEED", "0"))

@pytest.mark.tvm_model(model=seeded(TinyConvNet(), SEED), inputs={"x": ((1, 3, 16, 16), "float32")})
def test_convnet(tvm_deployment):
    pass

@pytest.mark.tvm_model(model=TwoInThreeOut(), inputs={"a": ((2, 4), "float32"), "b": ((3, 4), "float32")})
def test_two(tvm_deployment):
    pass
"""


def stored(project: pytest.Pytester, name: str) -> Path:
    return project.path / "__snapshots__" / "test_suite" / f"{name}.tensors"


def test_first_run_fails_as_syrupy_does_then_update_writes_and_reruns_pass(snapshot_project: pytest.Pytester) -> None:
    snapshot_project.makepyfile(test_suite=SUITE)
    first = snapshot_project.runpytest()
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines(["snapshot:", "  Snapshot 'test_convnet' does not exist!",
                                "  write it with: pytest --snapshot-update test_suite.py::test_convnet"])
    update = snapshot_project.runpytest("--snapshot-update")
    update.assert_outcomes(passed=2)
    update.stdout.fnmatch_lines(["*2 snapshots generated.*"])
    text = stored(snapshot_project, "test_two").read_text()
    assert '"outputs": [\n    {"dtype": "float32", "name": "out0", "shape": [2, 4]},' in text
    assert '"reference": "pytorch"' in text and '"torch": "2.' in text
    again = snapshot_project.runpytest("-v")
    again.assert_outcomes(passed=2)
    again.stdout.fnmatch_lines(["*2 snapshots passed.*"])
    # and nothing is rewritten when nothing changed
    before = stored(snapshot_project, "test_two").stat().st_mtime_ns
    snapshot_project.runpytest("--snapshot-update").assert_outcomes(passed=2)
    assert stored(snapshot_project, "test_two").stat().st_mtime_ns == before


def test_changed_weights_are_reported_as_a_model_change_and_update_fixes_it(
    snapshot_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot_project.makepyfile(test_suite=SUITE)
    snapshot_project.runpytest("--snapshot-update").assert_outcomes(passed=2)
    monkeypatch.setenv("WEIGHT_SEED", "1")
    changed = snapshot_project.runpytest()
    changed.assert_outcomes(failed=1, passed=1)
    changed.stdout.fnmatch_lines([
        "snapshot test_convnet.tensors: the model changed since the snapshot was taken (model_fingerprint * -> *);"
        " if that is intended, refresh it with: pytest --snapshot-update test_suite.py::test_convnet",
    ])
    assert "drifted" not in changed.stdout.str()
    snapshot_project.runpytest("--snapshot-update").stdout.fnmatch_lines(["*1 snapshot updated*"])
    snapshot_project.runpytest().assert_outcomes(passed=2)


def _perturb(path: Path, delta: float) -> None:
    snap = decode(path.read_text())
    arrays = {name: a.copy() for name, a in snap.arrays.items()}
    first = next(iter(arrays.values()))
    first.flat[2] += delta
    path.write_text(encode(TensorSnapshot(arrays, snap.metadata)))


def test_stored_values_beyond_tolerance_are_drift_with_diagnostics(snapshot_project: pytest.Pytester) -> None:
    snapshot_project.makepyfile(test_suite=SUITE)
    snapshot_project.runpytest("--snapshot-update").assert_outcomes(passed=2)
    _perturb(stored(snapshot_project, "test_two"), 1e-7)  # inside float32 tolerance: still passes
    snapshot_project.runpytest().assert_outcomes(passed=2)
    _perturb(stored(snapshot_project, "test_two"), 0.5)
    result = snapshot_project.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "outputs drifted from snapshot test_two.tensors under the same model and inputs:",
        "pytorch output differs from snapshot test_two.tensors: 1 of 3 output(s) outside tolerance",
        "  out0: float32 (2, 4)",
        "    mismatched elements: 1 / 8 (12.5%) outside rtol=0.0001, atol=1e-05",
        "    worst element [[]0, 2[]]: reference=*, pytorch=*",
        "tvm output differs from snapshot test_two.tensors: 1 of 3 output(s) outside tolerance",
        "*tvm-cpp output differs from snapshot test_two.tensors*",
    ])
    assert "model changed" not in result.stdout.str()


def test_damaged_snapshot_files_are_named_and_kept(snapshot_project: pytest.Pytester) -> None:
    snapshot_project.makepyfile(test_suite=SUITE)
    snapshot_project.runpytest("--snapshot-update").assert_outcomes(passed=2)
    convnet, two = stored(snapshot_project, "test_convnet"), stored(snapshot_project, "test_two")
    convnet.write_text(convnet.read_text()[:-200])  # truncated
    two.write_text(two.read_text().replace('"shape": [2, 4]', '"shape": [4, 2]'))  # hand-edited
    result = snapshot_project.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random([
        f"snapshot: {convnet}: not a readable tensor snapshot (*)",
        f"snapshot: {two}: its metadata says outputs * its arrays are * (edited by hand?)",
    ])
    update = snapshot_project.runpytest("--snapshot-update")
    update.assert_outcomes(passed=2)
    assert (convnet.parent / ".test_convnet.tensors.damaged").is_file()  # kept for inspection, not lost
    snapshot_project.runpytest().assert_outcomes(passed=2)


def test_unused_snapshots_are_reported_and_removed_on_update(snapshot_project: pytest.Pytester) -> None:
    snapshot_project.makepyfile(test_suite=SUITE)
    snapshot_project.runpytest("--snapshot-update").assert_outcomes(passed=2)
    snapshot_project.makepyfile(test_suite=SUITE.split("@pytest.mark.tvm_model(model=TwoInThreeOut()")[0])
    unused = snapshot_project.runpytest("--snapshot-details")
    unused.stdout.fnmatch_lines(["*1 snapshot unused*", "*test_two*"])
    snapshot_project.runpytest("--snapshot-update").stdout.fnmatch_lines(["*1 unused snapshot deleted*"])
    assert not stored(snapshot_project, "test_two").exists()
    assert stored(snapshot_project, "test_convnet").exists()


def test_snapshots_can_be_switched_off(snapshot_project: pytest.Pytester) -> None:
    snapshot_project.makepyfile(
        """
        import pytest
        from models import TinyConvNet
        @pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "float32")}, snapshot=False)
        def test_marker_off(tvm_deployment): pass
        """
    )
    snapshot_project.runpytest().assert_outcomes(passed=1)
    snapshot_project.makepyfile(test_suite=SUITE)
    snapshot_project.runpytest("--tvm-snapshot=off").assert_outcomes(passed=3)
    assert not (snapshot_project.path / "__snapshots__").exists()


def test_tensor_extension_used_directly_with_the_snapshot_fixture(snapshot_project: pytest.Pytester) -> None:
    snapshot_project.makepyfile(
        """
        import numpy as np
        from pytest_tvmdeploy.checks.snapshot_extension import TensorSnapshotExtension

        def test_arrays(snapshot):
            values = {"a": np.arange(6, dtype="int64").reshape(2, 3), "b": np.linspace(0, 1, 5, dtype="float16")}
            assert values == snapshot(extension_class=TensorSnapshotExtension)
        """
    )
    snapshot_project.runpytest("--snapshot-update").assert_outcomes(passed=1)
    snapshot_project.runpytest().assert_outcomes(passed=1)
    snap = decode((snapshot_project.path / "__snapshots__/test_tensor_extension_used_directly_with_the_snapshot_fixture"
                   "/test_arrays.tensors").read_text())
    assert snap.arrays["a"].dtype == np.int64 and snap.arrays["b"].dtype == np.float16


def test_parallel_workers_write_whole_snapshots(snapshot_project: pytest.Pytester) -> None:
    tests = "".join(
        f"@pytest.mark.tvm_model(model=seeded(TinyConvNet(), {i}), inputs={{'x': ((1, 3, 16, 16), 'float32')}})\n"
        f"def test_model_{i}(tvm_deployment): pass\n\n"
        for i in range(6)
    )
    snapshot_project.makepyfile("import pytest\nfrom models import TinyConvNet, seeded\n\n" + tests)
    update = snapshot_project.runpytest_subprocess("-n", "2", "--snapshot-update")
    update.assert_outcomes(passed=6)
    files = sorted((snapshot_project.path / "__snapshots__").rglob("*.tensors"))
    assert len(files) == 6
    for path in files:
        decode(path.read_text(), where=str(path))  # every file whole and readable
    snapshot_project.runpytest_subprocess("-n", "2").assert_outcomes(passed=6)


def test_encode_decode_round_trip_keeps_dtype_and_shape_exactly() -> None:
    arrays = {"f16": np.array([1.5, -0.0, np.inf], "float16"), "i64": np.array([[2**62 + 1]], "int64"),
              "b": np.array(True), "empty": np.zeros((0, 3), "float32")}
    back = decode(encode(TensorSnapshot(arrays, {"model_fingerprint": "x"})))
    assert list(back.arrays) == list(arrays)
    for name, array in arrays.items():
        assert back.arrays[name].dtype == array.dtype and back.arrays[name].shape == array.shape
        assert back.arrays[name].tobytes() == array.tobytes()
    assert back.metadata["model_fingerprint"] == "x"


@pytest.mark.parametrize("damage", ["", "not a snapshot\n", "garbage"])
def test_decode_names_the_file_on_damage(damage: str) -> None:
    with pytest.raises(SnapshotFileError, match=r"^some/file.tensors: not a readable tensor snapshot"):
        decode(damage, where="some/file.tensors")
