"""Unit tests of pytest_tvmdeploy.inputs: seeded random specs, given arrays, naming, errors."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from pytest_tvmdeploy.errors import InputSpecError
from pytest_tvmdeploy.inputs import SUPPORTED_DTYPES, make_inputs, seed_for, signature

SPEC = {"x": ((2, 3, 4), "float32"), "ids": ((5,), "int64"), "m": ((3,), "bool")}


# -- reproducibility -----------------------------------------------------------------------


def test_same_seed_gives_identical_arrays():
    a = make_inputs(SPEC, seed=1234)
    b = make_inputs(SPEC, seed=1234)
    assert list(a) == list(b) == ["x", "ids", "m"]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].dtype == b[name].dtype


def test_different_seed_gives_different_arrays():
    a = make_inputs({"x": ((64,), "float32")}, seed=1)["x"]
    b = make_inputs({"x": ((64,), "float32")}, seed=2)["x"]
    assert not np.array_equal(a, b)


# -- random specs ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
def test_every_supported_dtype_gives_that_dtype_and_shape(dtype):
    array = make_inputs({"x": ((2, 3), dtype)}, seed=0)["x"]
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.dtype(dtype)
    assert array.shape == (2, 3)


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
def test_zero_dim_spec_gives_zero_dim_ndarray(dtype):
    array = make_inputs({"x": ((), dtype)}, seed=0)["x"]
    assert isinstance(array, np.ndarray), type(array)
    assert array.shape == () and array.dtype == np.dtype(dtype)


def test_spec_shape_may_be_a_list_and_zero_sized():
    arrays = make_inputs({"a": ([2, 2], "float32"), "b": ((0, 3), "int32")}, seed=0)
    assert arrays["a"].shape == (2, 2)
    assert arrays["b"].shape == (0, 3) and arrays["b"].dtype == np.int32


@pytest.mark.parametrize("dtype, low, high", [("int8", -128, 127), ("uint8", 0, 255)])
def test_small_integer_default_ranges_cover_the_dtype(dtype, low, high):
    array = make_inputs({"x": ((20000,), dtype)}, seed=0)["x"]
    assert (int(array.min()), int(array.max())) == (low, high)


@pytest.mark.parametrize("dtype", ["int16", "int32", "int64"])
def test_wide_integer_default_range_is_0_to_99(dtype):
    array = make_inputs({"x": ((20000,), dtype)}, seed=0)["x"]
    assert (int(array.min()), int(array.max())) == (0, 99)


def test_custom_integer_range_is_respected_high_exclusive():
    array = make_inputs({"x": ((5000,), "int16", (-5, 5))}, seed=3)["x"]
    assert array.dtype == np.int16
    assert set(np.unique(array).tolist()) == set(range(-5, 5))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_custom_float_range_is_respected(dtype):
    array = make_inputs({"x": ((5000,), dtype, (2.0, 3.0))}, seed=3)["x"]
    assert array.dtype == np.dtype(dtype)
    assert array.min() >= 2.0 and array.max() <= 3.0
    assert array.max() - array.min() > 0.9


def test_default_floats_are_standard_normal():
    array = make_inputs({"x": ((20000,), "float64")}, seed=0)["x"]
    assert abs(array.mean()) < 0.05 and abs(array.std() - 1.0) < 0.05


def test_bool_spec():
    array = make_inputs({"m": ((1000,), "bool")}, seed=0)["m"]
    assert array.dtype == np.bool_
    assert 300 < int(array.sum()) < 700


# -- list and dict forms -----------------------------------------------------------------------


def test_list_inputs_take_the_given_names():
    arrays = make_inputs([((2,), "float32"), np.array([1, 2], np.int64)], seed=0, names=["a", "b"])
    assert list(arrays) == ["a", "b"]
    np.testing.assert_array_equal(arrays["b"], [1, 2])


def test_list_inputs_without_names_are_numbered():
    arrays = make_inputs([((2,), "float32"), ((3,), "int32")], seed=0)
    assert list(arrays) == ["input0", "input1"]


def test_list_inputs_count_is_checked():
    with pytest.raises(InputSpecError, match=r"2 values given but the model takes 3 inputs \(a, b, c\)"):
        make_inputs([((1,), "float32"), ((1,), "float32")], seed=0, names=["a", "b", "c"])


def test_dict_inputs_are_reordered_to_names():
    given = {"b": np.array([2.0]), "a": np.array([1.0])}
    arrays = make_inputs(given, seed=0, names=["a", "b"])
    assert list(arrays) == ["a", "b"]
    assert arrays["a"][0] == 1.0 and arrays["b"][0] == 2.0


def test_dict_random_specs_follow_names_order():
    # the data drawn for an input depends on its position in the model, not in the dict
    by_model = make_inputs({"a": ((4,), "float32"), "b": ((4,), "float32")}, seed=5)
    reordered = make_inputs({"b": ((4,), "float32"), "a": ((4,), "float32")}, seed=5, names=["a", "b"])
    np.testing.assert_array_equal(by_model["a"], reordered["a"])
    np.testing.assert_array_equal(by_model["b"], reordered["b"])


def test_dict_inputs_with_wrong_names_list_both():
    with pytest.raises(InputSpecError) as info:
        make_inputs({"a": ((1,), "float32"), "x": ((1,), "float32")}, seed=0, names=["a", "b"])
    assert "['a', 'x']" in str(info.value)
    assert "['a', 'b']" in str(info.value)


def test_signature():
    arrays = make_inputs({"x": ((1, 3), "float32"), "ids": ((2,), "int64")}, seed=0)
    assert signature(arrays) == [("x", (1, 3), "float32"), ("ids", (2,), "int64")]


# -- given values pass through -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.uint8, torch.bool])
def test_torch_tensors_pass_through(dtype):
    tensor = (torch.arange(6).reshape(2, 3) % 3).to(dtype)
    array = make_inputs({"x": tensor}, seed=0)["x"]
    assert isinstance(array, np.ndarray)
    assert array.dtype == tensor.numpy().dtype
    assert array.shape == (2, 3)
    np.testing.assert_array_equal(array, tensor.numpy())


def test_torch_tensor_with_grad_passes_through():
    tensor = torch.tensor([[1.5, -2.0]], requires_grad=True)
    array = make_inputs([tensor], seed=0)["input0"]
    np.testing.assert_array_equal(array, [[1.5, -2.0]])
    assert array.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float16", "float64", "int8", "uint64", "bool"])
def test_numpy_arrays_pass_through(dtype):
    source = (np.arange(12).reshape(3, 4) % 2).astype(dtype).T  # non-contiguous view
    array = make_inputs({"x": source}, seed=0)["x"]
    assert array.dtype == source.dtype
    assert array.shape == (4, 3)
    np.testing.assert_array_equal(array, source)
    assert array.flags.c_contiguous


@pytest.mark.parametrize(
    "value",
    [np.float32(3.5), np.array(3.5, np.float32), 3.5, torch.tensor(3.5)],
    ids=["numpy-scalar", "numpy-0d", "python-float", "torch-0d"],
)
def test_zero_dim_values_keep_their_shape(value):
    array = make_inputs({"x": value}, seed=0)["x"]
    assert array.shape == ()
    assert float(array) == 3.5


def test_python_list_value():
    array = make_inputs({"x": [[1, 2], [3, 4]]}, seed=0)["x"]
    assert array.shape == (2, 2)
    np.testing.assert_array_equal(array, [[1, 2], [3, 4]])


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        (((2,), "complex64"), r"input 'inp': unsupported dtype 'complex64'"),
        (((2,), "float8"), r"input 'inp': unsupported dtype 'float8'"),
        (((2, -1), "float32"), r"input 'inp': shape \(2, -1\) must be non-negative"),
        (((2.5,), "float32"), r"input 'inp': shape \(2.5,\) must be non-negative"),
        (((3,), "int32", (5, 5)), r"input 'inp': empty value range \[5, 5\)"),
        (((3,), "int32", (5, 1)), r"input 'inp': empty value range \[5, 1\)"),
        (((3,), "float32", (1.0, 1.0)), r"input 'inp': empty value range"),
        (((3,), "float32", (2.0, 1.0)), r"input 'inp': empty value range"),
    ],
    ids=["complex64", "float8", "negative-dim", "float-dim", "int-empty", "int-reversed",
         "float-empty", "float-reversed"],
)
def test_bad_specs_raise_input_spec_error(spec, message):
    with pytest.raises(InputSpecError, match=message):
        make_inputs({"inp": spec}, seed=0)


@pytest.mark.parametrize(
    "value, message",
    [
        (object(), r"input 'inp': .* is neither an array \(numeric or bool\) nor a \(shape, dtype\) spec"),
        ({"a": 1}, r"input 'inp': .* is neither an array"),
        ([[1, 2], [3]], r"input 'inp': cannot convert list"),
        ("abc", r"input 'inp'"),
    ],
    ids=["object", "dict", "ragged", "string"],
)
def test_non_array_values_raise_input_spec_error(value, message):
    with pytest.raises(InputSpecError, match=message):
        make_inputs({"inp": value}, seed=0)


@pytest.mark.parametrize("inputs", [{}, []])
def test_no_inputs(inputs):
    with pytest.raises(InputSpecError, match="no inputs given"):
        make_inputs(inputs, seed=0)


@pytest.mark.parametrize("inputs", [42, "x", None])
def test_inputs_must_be_dict_or_list(inputs):
    with pytest.raises(InputSpecError, match="expected a dict name -> value or a list"):
        make_inputs(inputs, seed=0)


# -- seed_for -------------------------------------------------------------------------------------


def test_seed_for_is_stable_crc32():
    test_id = "tests/test_x.py::test_a[llvm]"
    assert seed_for(test_id) == 917397399
    assert seed_for(test_id) == zlib.crc32(test_id.encode("utf-8"))
    assert seed_for("tests/test_x.py::test_b[llvm]") == 122045706
    assert seed_for("tests/test_x.py::test_a[llvm]") != seed_for("tests/test_x.py::test_a[cuda]")
    assert seed_for("tésts::ünïcode") == zlib.crc32("tésts::ünïcode".encode())
    assert 0 <= seed_for(test_id) < 2**32


def test_seed_for_drives_make_inputs():
    a = make_inputs(SPEC, seed=seed_for("t::a"))
    b = make_inputs(SPEC, seed=seed_for("t::b"))
    assert not np.array_equal(a["x"], b["x"])
