"""The installed TVM, PyTorch and ONNX versions, against the set this plugin is verified with.

Versions come from the distributions' metadata (``importlib.metadata``), so nothing heavy is
imported: the pytest header costs milliseconds, not TVM's and torch's import time.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: The verified working set, as pinned in the repository's constraints.txt (tests/test_versions.py
#: checks that the two agree). A wheel does not carry constraints.txt, so the set lives here too.
VERIFIED: dict[str, str] = {
    "apache-tvm": "0.27.0.post1",
    "apache-tvm-ffi": "0.1.14.post0",
    "torch": "2.14.1",
    "torchvision": "0.29.1",
    "onnxruntime": "1.32.0",
    "onnx": "1.23.2",
}
#: Needed only by the conformance kit and the examples (the ``kit`` extra): absent is not a difference.
OPTIONAL = frozenset({"torchvision"})
#: Releases known to break the plugin: (distribution, release) -> what goes wrong. A release
#: matches its post releases too (0.1.15 covers 0.1.15.post2).
KNOWN_BAD: dict[tuple[str, str], str] = {
    ("apache-tvm-ffi", "0.1.15"): "is known to segfault MetaSchedule tuning (--tvm-tune)",
}


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package of :data:`VERIFIED`, ``None`` where it is not installed."""
    found: dict[str, str | None] = {}
    for name in VERIFIED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _public(release: str) -> str:
    """``2.14.1+cu130`` -> ``2.14.1``: a build variant of the verified release is that release."""
    return release.split("+", 1)[0]


def differences(installed: dict[str, str | None]) -> dict[str, str | None]:
    """The packages whose installed version is not the verified one (``None``: required, missing)."""
    return {name: found for name, found in installed.items()
            if not (found is None and name in OPTIONAL)
            and (found is None or _public(found) != VERIFIED[name])}


def known_bad(installed: dict[str, str | None]) -> list[str]:
    """One sentence per installed release listed in :data:`KNOWN_BAD`."""
    problems = []
    for (name, release), why in KNOWN_BAD.items():
        found = installed.get(name)
        if found is not None and (_public(found) == release or _public(found).startswith(release + ".")):
            problems.append(f"{name} {found} {why}; the verified release is {VERIFIED[name]}")
    return problems


def report_header() -> list[str]:
    """Lines for pytest's header: the versions in use, whether they are the verified set, warnings."""
    found = installed_versions()

    def shown(name: str, label: str) -> str:
        return f"{label} {found[name]}" if found[name] is not None else f"{label} not installed"

    stack = f"{shown('apache-tvm', 'TVM')} ({shown('apache-tvm-ffi', 'tvm-ffi')}), {shown('torch', 'torch')}"
    if found["torchvision"] is not None:
        stack += f" (torchvision {found['torchvision']})"
    stack += f", {shown('onnxruntime', 'onnxruntime')}, {shown('onnx', 'onnx')}"
    differ = differences(found)
    if not differ:
        verdict = "the verified set"
    else:
        verified = ", ".join(f"{name} {VERIFIED[name]}" for name in differ)
        installed = ", ".join(f"{name} {release or 'not installed'}" for name, release in differ.items())
        verdict = f"not the verified set (verified: {verified}; differs: {installed})"
    return [f"tvmdeploy: {stack} — {verdict}", *(f"tvmdeploy: WARNING: {p}" for p in known_bad(found))]
