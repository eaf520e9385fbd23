"""Unit tests of pytest_tvmdeploy.targets.parse_target / TargetSpec."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pytest_tvmdeploy.errors import TargetError
from pytest_tvmdeploy.targets import DEFAULT_TARGET, TargetSpec, parse_target

ID_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def test_plain_llvm():
    spec = parse_target("llvm")
    assert spec.json == '{"kind": "llvm"}'
    assert spec.as_dict == {"kind": "llvm"}
    assert spec.json == '{"kind": "llvm"}'
    assert spec.label == "llvm"
    assert parse_target(DEFAULT_TARGET) == spec
    assert parse_target("  llvm \n") == spec


def test_cli_form_with_mcpu_and_mattr_list():
    spec = parse_target("llvm -mcpu=znver4 -mattr=+avx2,+fma")
    assert spec.as_dict == {"kind": "llvm", "mcpu": "znver4", "mattr": ["+avx2", "+fma"]}
    assert isinstance(spec.as_dict["mattr"], list)
    assert spec.json == '{"kind": "llvm", "mattr": ["+avx2", "+fma"], "mcpu": "znver4"}'
    assert spec.label == "llvm-znver4"


def test_cli_form_double_dash_flag_and_keys_list():
    spec = parse_target("llvm --mcpu=cortex-a72 -keys=arm_cpu,cpu -fast")
    assert spec.as_dict == {"kind": "llvm", "mcpu": "cortex-a72", "keys": ["arm_cpu", "cpu"], "fast": True}


def test_json_string_dict_and_cli_forms_are_equal():
    cli = parse_target("llvm -mcpu=znver4 -mattr=+avx2,+fma")
    from_json = parse_target('{"mattr": ["+avx2", "+fma"], "kind": "llvm", "mcpu": "znver4"}')
    from_dict = parse_target({"mcpu": "znver4", "kind": "llvm", "mattr": ["+avx2", "+fma"]})
    assert cli == from_json == from_dict
    assert hash(cli) == hash(from_dict)
    assert from_dict.json == cli.json
    assert json.loads(from_json.json) == from_json.as_dict


def test_dict_input_is_not_mutated():
    given = {"kind": "llvm", "mattr": ["+avx2"]}
    parse_target(given)
    assert given == {"kind": "llvm", "mattr": ["+avx2"]}


def test_nested_dict_round_trips():
    # e.g. a device target with its host target, as TVM's dict form spells it
    given = {"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm", "mcpu": "znver4"}}
    spec = parse_target(given)
    assert spec.as_dict == given
    assert json.loads(spec.json) == given


def test_label_order_mcpu_mtriple_device():
    spec = parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72")
    assert spec.label == "llvm-cortex-a72-aarch64-linux-gnu"
    assert parse_target({"kind": "opencl", "device": "mali"}).label == "opencl-mali"


@pytest.mark.parametrize(
    "target, label",
    [
        ({"kind": "llvm", "mcpu": "sky lake/avx[512]"}, "llvm-sky_lake_avx_512_"),
        ({"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu"}, "llvm-x86_64-pc-linux-gnu"),
        ('llvm -mcpu="my cpu::v2"', "llvm-my_cpu_v2"),
    ],
)
def test_labels_are_id_safe(target, label):
    spec = parse_target(target)
    assert spec.label == label
    assert ID_SAFE.match(spec.label)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "target: empty string"),
        ("   ", "target: empty string"),
        ("{not json", "invalid JSON"),
        ('{"kind": "llvm",}', "invalid JSON"),
        ('{"mcpu": "znver4"}', "needs a 'kind'"),
        ({"mcpu": "znver4"}, "needs a 'kind'"),
        ({}, "needs a 'kind'"),
        ("llvm mcpu=znver4", "cannot read option 'mcpu=znver4'"),
        ('llvm -mcpu="znver4', "llvm -mcpu"),
    ],
    ids=["empty", "blank", "bad-json", "trailing-comma", "json-no-kind", "dict-no-kind", "empty-dict",
         "option-without-dash", "unclosed-quote"],
)
def test_invalid_targets_raise_target_error(text, message):
    with pytest.raises(TargetError, match=re.escape(message)):
        parse_target(text)


def test_to_tvm_rejects_unknown_kind():
    spec = parse_target({"kind": "nonsense"})
    with pytest.raises(TargetError) as info:
        spec.to_tvm()
    assert "nonsense" in str(info.value)
    assert str(info.value).startswith('target {"kind": "nonsense"}: TVM rejects it')


def test_to_tvm_accepts_llvm_with_options():
    target = parse_target("llvm -mcpu=znver4 -mattr=+avx2,+fma").to_tvm()
    assert target.kind.name == "llvm"
    assert str(target.attrs["mcpu"]) == "znver4"
    assert [str(a) for a in target.attrs["mattr"]] == ["+avx2", "+fma"]


def test_target_spec_is_frozen():
    spec = parse_target("llvm")
    assert isinstance(spec, TargetSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.label = "other"  # type: ignore[misc]
