"""The kit's expected-failures file: per target, the cases that fail and, kept apart, those that crash
TVM's worker (a signal, a hang, a memory blow-up)::

    {"llvm": {"failures": {"gru/onnx": "import: ..."}, "crashes": {"vit/pt2": "run: SIGSEGV: ..."}}}

A target mapping straight to its cases (the first format) lists failures only; it is still read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXPECTED_FAILURES = Path(__file__).with_name("expected_failures.json")
#: The shipped file of each suite (``--tvm-kit-suite``): the catalogue's models, ONNX's node tests,
#: PyTorch's OpInfo operators.
SUITE_FILES = {"models": EXPECTED_FAILURES, "onnx-node": Path(__file__).with_name("expected_onnx_node.json"),
               "torch-opinfo": Path(__file__).with_name("expected_torch_opinfo.json")}

FAILURES, CRASHES = "failures", "crashes"
#: The sets of a target, in the order they are written.
KINDS = (FAILURES, CRASHES)

#: One target's sets: kind -> ``"<model>/<source>"`` -> ``"<stage>: <reason>"``.
Listing = dict[str, dict[str, str]]
#: The whole file: target label (or target kind) -> its sets.
Expected = dict[str, Listing]


def expected_failures_file(suite: str) -> Path:
    """The expected-failures file shipped for ``suite``."""
    return SUITE_FILES[suite]


def read_expected(path: Path) -> Expected:
    """The expected failures and crashes in ``path`` (either format)."""
    return parse_expected(json.loads(path.read_text()))


def parse_expected(data: Mapping[str, Any]) -> Expected:
    """Every target's sets from a file's JSON (either format)."""
    return {target: _listing(target, value) for target, value in data.items()}


def _listing(target: str, value: Any) -> Listing:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected failures of {target!r}: a mapping of cases, not {value!r}")
    if not _is_split(value):
        return {FAILURES: dict(value), CRASHES: {}}  # the flat format: failures only
    listing = {kind: dict(value.get(kind, {})) for kind in KINDS}
    both = sorted(listing[FAILURES].keys() & listing[CRASHES].keys())
    if both:
        raise ValueError(f"expected failures of {target!r}: {both} listed both as failures and as crashes")
    return listing


def _is_split(value: Mapping[str, Any]) -> bool:
    """Whether a target's value holds the sets (rather than cases: those are ``model/source``)."""
    return bool(value) and set(value) <= set(KINDS) and all(isinstance(v, Mapping) for v in value.values())


def empty_listing() -> Listing:
    """A target's sets with nothing listed."""
    return {kind: {} for kind in KINDS}


def listed_as(listing: Listing, case: str) -> tuple[str, str] | None:
    """``(kind, reason)`` of ``case`` in a target's sets, or ``None`` when it is not listed. A case
    at one shape (``gru_seq/onnx[seq=8]``) is also listed by its model and source alone."""
    for key in dict.fromkeys((case, whole_case(case))):
        for kind in KINDS:
            if key in listing.get(kind, {}):
                return kind, listing[kind][key]
    return None


def shape_case(case: str, shape: str | None) -> str:
    """The case of one shape of a model with named dimensions: ``gru_seq/onnx[seq=8]``."""
    return f"{case}[{shape}]" if shape else case


def whole_case(case: str) -> str:
    """``gru_seq/onnx`` of ``gru_seq/onnx[seq=8]``: the case at every shape."""
    return case.split("[", 1)[0]


def count(expected: Expected, kind: str) -> int:
    """How many cases of ``kind`` are listed, over every target."""
    return sum(len(listing.get(kind, {})) for listing in expected.values())


def sorted_expected(expected: Expected) -> Expected:
    """Targets and cases in order, both sets present: a stable, reviewable file."""
    return {target: {kind: dict(sorted(listing.get(kind, {}).items())) for kind in KINDS}
            for target, listing in sorted(expected.items())}


def dump_expected(expected: Expected) -> str:
    """The file's text (the split format)."""
    return json.dumps(sorted_expected(expected), indent=2) + "\n"
