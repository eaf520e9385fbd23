"""The start-up header names the installed TVM / PyTorch / ONNX versions and says whether they are the verified set."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pytest_tvmdeploy import versions

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of constraints.txt."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt pins exact versions only: {line!r}"
            pins[canonical(name)] = pinned.strip()
    return pins


def with_versions(monkeypatch: pytest.MonkeyPatch, **changed: str | None) -> None:
    """Make versions.py see other installed versions (``None``: not installed), the rest as they are."""
    real = versions.version

    def fake(name: str) -> str:
        key = name.replace("-", "_")
        if key in changed:
            if changed[key] is None:
                raise metadata.PackageNotFoundError(name)
            return changed[key]
        return real(name)

    monkeypatch.setattr(versions, "version", fake)


def test_verified_set_agrees_with_constraints_txt() -> None:
    pins = constraints()
    shared = {canonical(name) for name in versions.VERIFIED} & set(pins)
    assert shared == {canonical(name) for name in versions.VERIFIED}, "constraints.txt pins every verified package"
    for name, release in versions.VERIFIED.items():
        pinned = pins[canonical(name)]
        assert pinned == release, f"{name}: versions.py says {release}, constraints.txt {pinned}"


def test_header_names_the_installed_versions() -> None:
    [line] = versions.report_header()
    assert line.startswith("tvmdeploy: ")
    assert f"TVM {metadata.version('apache-tvm')} (tvm-ffi {metadata.version('apache-tvm-ffi')})" in line
    assert f"torch {metadata.version('torch')}" in line
    assert f"onnxruntime {metadata.version('onnxruntime')}" in line
    assert f"onnx {metadata.version('onnx')}" in line
    assert f"(torchvision {metadata.version('torchvision')})" in line


def test_the_project_venv_is_the_verified_set() -> None:
    # the README's test command installs with -c constraints.txt
    [line] = versions.report_header()
    assert line.endswith(" — the verified set"), line
    assert versions.differences(versions.installed_versions()) == {}


def test_header_names_the_package_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    with_versions(monkeypatch, torch="2.9.1")
    [line] = versions.report_header()
    assert "torch 2.9.1" in line
    assert line.endswith(f"— not the verified set (verified: torch {versions.VERIFIED['torch']}; differs: torch 2.9.1)")
    assert "apache-tvm " not in line.split("not the verified set")[1]  # only what differs is named


def test_a_build_variant_of_the_verified_release_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    with_versions(monkeypatch, torch=versions.VERIFIED["torch"] + "+cpu")
    [line] = versions.report_header()
    assert f"torch {versions.VERIFIED['torch']}+cpu" in line and line.endswith("— the verified set")


def test_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    with_versions(monkeypatch, torchvision=None, onnx=None)
    [line] = versions.report_header()
    assert "torchvision" not in line  # only the kit's extra: not part of the verdict
    assert "onnx not installed" in line
    assert line.endswith(f"(verified: onnx {versions.VERIFIED['onnx']}; differs: onnx not installed)")


@pytest.mark.parametrize("release", ["0.1.15", "0.1.15.post2"])
def test_tvm_ffi_0_1_15_gets_a_warning(monkeypatch: pytest.MonkeyPatch, release: str) -> None:
    with_versions(monkeypatch, apache_tvm_ffi=release)
    line, warning = versions.report_header()
    assert f"tvm-ffi {release}" in line and "not the verified set" in line
    assert warning == (f"tvmdeploy: WARNING: apache-tvm-ffi {release} is known to segfault MetaSchedule tuning "
                       f"(--tvm-tune); the verified release is {versions.VERIFIED['apache-tvm-ffi']}")


@pytest.mark.parametrize("release", ["0.1.14.post1", "0.1.150"])
def test_no_warning_for_other_tvm_ffi_releases(monkeypatch: pytest.MonkeyPatch, release: str) -> None:
    with_versions(monkeypatch, apache_tvm_ffi=release)
    assert len(versions.report_header()) == 1


def test_reading_versions_imports_neither_tvm_nor_torch() -> None:
    # the module on its own (the package's __init__ is not what is measured here)
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('v', sys.argv[1]); "
            "v = importlib.util.module_from_spec(spec); spec.loader.exec_module(v); v.report_header(); "
            "print(sorted(m for m in ('tvm', 'tvm_ffi', 'torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code, versions.__file__], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
