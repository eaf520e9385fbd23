"""The kit's tests: every selected catalogue model through every source form, via the plugin.

A model listed in ``expected_failures.json`` for the target is an expected failure, strictly:
when it starts passing, the kit fails it with XPASS so the list gets updated. One listed as a crash
expects the TVM worker to crash (:class:`SandboxError`): failing any other way is a plain failure.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from pytest_tvmdeploy.errors import SandboxError
from pytest_tvmdeploy.kit.catalogue import QDQ, QDQ_BUDGET, CatalogueEntry, select
from pytest_tvmdeploy.kit.expected import (
    CRASHES,
    EXPECTED_FAILURES,
    Expected,
    Listing,
    listed_as,
    read_expected,
    shape_case,
)
from pytest_tvmdeploy.kit.model_files import model_file, seeded_module
from pytest_tvmdeploy.plugin.session import SESSION_KEY, option_value
from pytest_tvmdeploy.targets import TargetSpec

#: Source forms that reach TVM as the module the ``torch`` form built (same network, same weights).
SHARED_BUILD_SOURCES = ("torchscript", "pt2")


def _model(entry: CatalogueEntry, source: str, folder: Path):
    return seeded_module(entry) if source == "torch" else model_file(entry, source, folder)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kit_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    entries = select(option_value(config, "tvm_kit_models"))  # the plugin has checked the names
    folder = config.stash[SESSION_KEY].cache_dir / "kit-models"
    expected = read_expected(Path(option_value(config, "tvm_kit_expected") or EXPECTED_FAILURES))
    params = []
    for position, entry in enumerate(entries):
        for source in entry.cases:
            factory = partial(_model, entry, source, folder)
            factory.__qualname__ = f"kit model {entry.name} ({source})"  # how errors name it
            # a model with named dimensions: one test per shape, one artifact for them all
            for shape, shape_id in zip(entry.shapes or (None,), entry.shape_ids):
                marks = [pytest.mark.tvm_model(
                    model=factory, inputs=entry.inputs, shapes=list(entry.shapes) or None,
                    rtol=entry.rtol, atol=entry.atol, snapshot=False, name=entry.name,
                    quant_budget=QDQ_BUDGET if source == QDQ else None,
                )]
                xfail = _expected_failure(expected, config, shape_case(f"{entry.name}/{source}", shape_id))
                if xfail is not None:
                    marks.append(xfail)
                case_id = "-".join(filter(None, (entry.name, source, shape_id)))
                order = (shape != (entry.shapes or (None,))[0], source in SHARED_BUILD_SOURCES, position)
                params.append((order, pytest.param((entry.name, source), shape, marks=marks, id=case_id)))
    # Tests that build first, those that reuse their builds after: pytest-xdist workers then
    # rarely wait for each other's build of the same library.
    metafunc.parametrize(("kit_case", "tvm_shape"), [param for _, param in sorted(params, key=lambda p: p[0])],
                         indirect=["tvm_shape"])


def _expected_failure(expected: Expected, config: pytest.Config, case: str) -> pytest.MarkDecorator | None:
    """A strict xfail if ``case`` is listed for one of the session's targets (a crash: only a crash)."""
    for target in config.stash[SESSION_KEY].targets:
        listed = listed_as(_listing(expected, target), case)
        if listed is None:
            continue
        kind, reason = listed
        if kind == CRASHES:
            return pytest.mark.xfail(reason=f"{target.label}: crash: {reason}", strict=True, raises=SandboxError)
        return pytest.mark.xfail(reason=f"{target.label}: {reason}", strict=True)
    return None


def _listing(expected: Expected, target: TargetSpec) -> Listing:
    """A target's own sets, else its kind's ("llvm" covers llvm -mcpu=...: most failures are in
    import, the same for every CPU)."""
    own = expected.get(target.label, {})
    return own if any(own.values()) else expected.get(str(target.as_dict["kind"]), {})


def test_model(kit_case: tuple[str, str], tvm_deployment) -> None:
    """The standard checks (Python VM and C++ vs the framework) decide; the body checks the form."""
    _, source = kit_case
    assert tvm_deployment.source_kind == {"torch": "torch", "torchscript": "torchscript", "onnx": "onnx",
                                          "pt2": "exported_program", QDQ: "onnx"}[source]
