"""The kit's tests: every selected catalogue model through every source form, via the plugin.

A model listed in ``expected_failures.json`` for the target is an expected failure, strictly:
when it starts passing, the kit fails it with XPASS so the list gets updated.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from pytest_tvmdeploy.kit.catalogue import QDQ, QDQ_BUDGET, CatalogueEntry, select
from pytest_tvmdeploy.kit.model_files import model_file
from pytest_tvmdeploy.plugin.session import SESSION_KEY, option_value

EXPECTED_FAILURES = Path(__file__).with_name("expected_failures.json")


def _model(entry: CatalogueEntry, source: str, folder: Path):
    return entry.build() if source == "torch" else model_file(entry, source, folder)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kit_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    entries = select(option_value(config, "tvm_kit_models"))  # the plugin has checked the names
    folder = config.stash[SESSION_KEY].cache_dir / "kit-models"
    expected = json.loads(Path(option_value(config, "tvm_kit_expected") or EXPECTED_FAILURES).read_text())
    params = []
    for entry in entries:
        for source in entry.cases:
            factory = partial(_model, entry, source, folder)
            factory.__qualname__ = f"kit model {entry.name} ({source})"  # how errors name it
            marks = [pytest.mark.tvm_model(
                model=factory, inputs=entry.inputs,
                rtol=entry.rtol, atol=entry.atol, snapshot=False, name=entry.name,
                quant_budget=QDQ_BUDGET if source == QDQ else None,
            )]
            reason = _expected_failure(expected, config, f"{entry.name}/{source}")
            if reason:
                marks.append(pytest.mark.xfail(reason=reason, strict=True))
            params.append(pytest.param((entry.name, source), marks=marks, id=f"{entry.name}-{source}"))
    metafunc.parametrize("kit_case", params)


def _expected_failure(expected: dict, config: pytest.Config, case: str) -> str | None:
    """The recorded reason if ``case`` is expected to fail on one of the session's targets."""
    for target in config.stash[SESSION_KEY].targets:
        # A target's own list, else its kind's ("llvm" covers llvm -mcpu=...: most failures are
        # in import, the same for every CPU).
        listed = expected.get(target.label) or expected.get(str(target.as_dict["kind"]), {})
        reason = listed.get(case)
        if reason:
            return f"{target.label}: {reason}"
    return None


def test_model(kit_case: tuple[str, str], tvm_deployment) -> None:
    """The standard checks (Python VM and C++ vs the framework) decide; the body checks the form."""
    _, source = kit_case
    assert tvm_deployment.source_kind == {"torch": "torch", "torchscript": "torchscript", "onnx": "onnx",
                                          "pt2": "exported_program", QDQ: "onnx"}[source]
