"""The kit's tests: every selected catalogue model through every source form, or every case of an
operator suite (``--tvm-kit-suite=onnx-node`` or ``torch-opinfo``), via the plugin.

A model listed in ``expected_failures.json`` for the target is an expected failure, strictly:
when it starts passing, the kit fails it with XPASS so the list gets updated. One listed as a crash
expects the TVM worker to crash (:class:`SandboxError`): failing any other way is a plain failure.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.errors import SandboxError
from pytest_tvmdeploy.kit.catalogue import QDQ, QDQ_BUDGET, CatalogueEntry, select
from pytest_tvmdeploy.kit.expected import (
    CRASHES,
    Expected,
    Listing,
    expected_failures_file,
    listed_as,
    read_expected,
    shape_case,
)
from pytest_tvmdeploy.kit.model_files import model_file, seeded_module
from pytest_tvmdeploy.kit.onnx_node import SUITE as ONNX_NODE
from pytest_tvmdeploy.kit.onnx_node import NodeCase, NodeCaseSource, node_cases
from pytest_tvmdeploy.kit.torch_opinfo import SUITE as TORCH_OPINFO
from pytest_tvmdeploy.kit.torch_opinfo import opinfo_cases
from pytest_tvmdeploy.plugin.session import SESSION_KEY, option_value
from pytest_tvmdeploy.targets import TargetSpec

#: Source forms that reach TVM as the module the ``torch`` form built (same network, same weights).
SHARED_BUILD_SOURCES = ("torchscript", "pt2")


def _model(entry: CatalogueEntry, source: str, folder: Path):
    return seeded_module(entry) if source == "torch" else model_file(entry, source, folder)


def _node_source(case: NodeCase, folder: Path) -> NodeCaseSource:
    return NodeCaseSource(case, case.write(folder))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kit_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    suite = option_value(config, "tvm_kit_suite")
    folder = config.stash[SESSION_KEY].cache_dir / "kit-models"
    expected = read_expected(Path(option_value(config, "tvm_kit_expected") or expected_failures_file(suite)))
    if suite == ONNX_NODE:
        params = _node_params(config, folder / ONNX_NODE, expected)
    elif suite == TORCH_OPINFO:
        params = _opinfo_params(config, expected)
    else:
        params = _model_params(config, folder, expected)
    metafunc.parametrize(("kit_case", "tvm_shape"), params, indirect=["tvm_shape"])


def _node_params(config: pytest.Config, folder: Path, expected: Expected) -> list[Any]:
    """One test per ONNX backend node case: ``test_abs-onnx-node``, its tolerances ONNX's own."""
    params = []
    for case in node_cases():
        factory = partial(_node_source, case, folder)
        factory.__qualname__ = f"ONNX node case {case.name}"
        params.append(_suite_param(config, expected, case.name, ONNX_NODE, model=factory, inputs=case.inputs,
                                   rtol=case.rtol, atol=case.atol))
    return params


def _opinfo_params(config: pytest.Config, expected: Expected) -> list[Any]:
    """One test per OpInfo case: ``abs-float32-torch-opinfo``, the operator wrapped as an ``nn.Module``."""
    return [_suite_param(config, expected, case.name, TORCH_OPINFO, model=case.module, inputs=case.inputs,
                         rtol=case.rtol, atol=case.atol) for case in opinfo_cases()]


def _suite_param(config: pytest.Config, expected: Expected, name: str, suite: str, **marker: Any) -> Any:
    """The test of an operator suite's case ``name`` (``<name>-<suite>``), a strict expected
    failure where the suite's file lists it."""
    marks = [pytest.mark.tvm_model(snapshot=False, name=name, **marker)]
    xfail = _expected_failure(expected, config, f"{name}/{suite}")
    if xfail is not None:
        marks.append(xfail)
    return pytest.param((name, suite), None, marks=marks, id=f"{name}-{suite}")


def _model_params(config: pytest.Config, folder: Path, expected: Expected) -> list[Any]:
    """Every catalogue model selected by ``--tvm-kit-models``, through every source form."""
    entries = select(option_value(config, "tvm_kit_models"))  # the plugin has checked the names
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
    return [param for _, param in sorted(params, key=lambda p: p[0])]


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
                                          "pt2": "exported_program", QDQ: "onnx", ONNX_NODE: "onnx",
                                          TORCH_OPINFO: "torch"}[source]
