"""The kit's ``torch-opinfo`` suite: PyTorch's OpInfo operators as one-operator modules through the
plugin, with a scoreboard per operator."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_tvmdeploy.kit.expected import SUITE_FILES, read_expected
from pytest_tvmdeploy.kit.torch_opinfo import DTYPES, SUITE, describe_case, enumerate_cases, opinfo_cases
from pytest_tvmdeploy.kit.update_expected import kit_case, report_suite
from pytest_tvmdeploy.report.record import TestRecord
from pytest_tvmdeploy.sources import open_source


def test_the_cases_cover_over_300_operators_at_the_suite_dtypes_with_named_array_inputs() -> None:
    cases = opinfo_cases()
    assert len({case.operator for case in cases}) >= 300
    assert len({case.name for case in cases}) == len(cases)
    assert {case.dtype for case in cases} == set(DTYPES)
    for case in cases:
        assert case.name == f"{case.operator}{'.' + case.variant if case.variant else ''}-{case.dtype}"
        assert list(case.inputs) == [f"x{i}" for i in range(len(case.inputs))]
        assert all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" and a.size for a in case.inputs.values())
        assert describe_case(case.name) == (case.operator, 0)
    names = {case.name for case in cases}
    assert {"abs-float32", "abs-int64", "max.binary-float32", "topk-float32"} <= names
    # left out: a list of tensors, random, in place, no tensor input, uninitialised memory
    assert not names & {"cat-float32", "bernoulli-float32", "resize_-float32", "zeros-float32", "empty-float32"}


def test_enumerating_again_draws_the_same_cases_and_input_bytes() -> None:
    again = tuple(enumerate_cases())
    assert [case.name for case in again] == [case.name for case in opinfo_cases()]
    for first, second in zip(opinfo_cases(), again):
        assert first.inputs.keys() == second.inputs.keys()
        for name, array in first.inputs.items():
            assert array.dtype == second.inputs[name].dtype and array.tobytes() == second.inputs[name].tobytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # deprecated operators (upsample_bilinear) say so
def test_every_module_runs_eagerly_as_the_operator_called_on_its_sample() -> None:
    """The plugin's reference run of each module (numpy inputs in, the baked arguments) returns
    what the operator returned on the sample as drawn: same number of outputs, shapes, dtypes; and
    leaves the test's input arrays as they were."""
    mismatched, changed = {}, []
    for case in opinfo_cases():
        source = open_source(case.module)
        assert source.kind == "torch" and source.input_names() == tuple(case.inputs)
        inputs = {name: array.copy() for name, array in case.inputs.items()}
        outputs = source.run_reference(inputs).outputs
        got = tuple((a.shape, str(a.dtype)) for a in outputs.values())
        if got != case.outputs:
            mismatched[case.name] = (got, case.outputs)
        if not all(np.array_equal(inputs[n], a, equal_nan=a.dtype.kind == "f") for n, a in case.inputs.items()):
            changed.append(case.name)
    assert not mismatched and not changed


def test_the_suite_names_its_cases_and_its_expected_failures_file() -> None:
    record = TestRecord(test="pytest_tvmdeploy/kit/test_kit.py::test_model[abs-float32-torch-opinfo-llvm]",
                        target="llvm", case="abs-float32-torch-opinfo", model="abs-float32", outcome="passed")
    assert kit_case(record) == "abs-float32/torch-opinfo"
    assert report_suite([record]) == SUITE
    listed = read_expected(SUITE_FILES[SUITE])["llvm"]
    assert all(case.endswith(f"/{SUITE}") for cases in listed.values() for case in cases)
    assert describe_case("not an operator-float32") is None


def test_the_suite_deploys_opinfo_modules_and_prints_the_scoreboard(pytester: pytest.Pytester) -> None:
    """abs and topk (a named tuple of values and indices) pass; addmv is listed: TVM's frontend
    cannot import it."""
    opinfo_cases()  # imported out here: modules first imported in an in-process run are dropped after it
    result = pytester.runpytest("--pyargs", "pytest_tvmdeploy.kit", "--tvm-kit-suite=torch-opinfo", "-p", "no:randomly",
                                "-k", "abs-float32- or topk-float32- or addmv-float32-", "-rx")
    result.assert_outcomes(passed=2, xfailed=1)
    result.stdout.fnmatch_lines([
        "*tvmdeploy kit scoreboard*",
        "torch-opinfo: 2/3 (66.7%) cases passed; import 1",
        "operators: 3, 2 pass every case, 1 pass none",
        "  addmv: 0/1 (import 1)",
        "*XFAIL*addmv-float32-torch-opinfo*cannot import operator(s) addmv.default*",
    ])
