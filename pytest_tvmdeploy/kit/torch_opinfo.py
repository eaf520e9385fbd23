"""The ``torch-opinfo`` suite: PyTorch's OpInfo database (``op_db``), one operator per case.

Each case is one OpInfo entry at one dtype (float32, and int64 where the entry supports it) with
the first usable sample input PyTorch's own tests draw for it (torch, Python's and numpy's
generators seeded with 0): the sample's tensors become the model's inputs ``x0``, ``x1``, ... and
every other argument is baked into an ``nn.Module`` whose forward calls the operator. The kit
deploys that module like any PyTorch model: ``torch.export``, TVM, and PyTorch eager as the
reference. Float outputs are compared at rtol 1e-4, atol 1e-5; integer and bool outputs exactly.

A sample that cannot be a plain model is passed over for the entry's next one: tensors nested in
lists (``cat``), no tensor input (factories), complex or empty tensors, outputs other than tensors
or tuples of them, changing an input in place. An entry whose first such sample gives different outputs
under different seeds is random and has no case; so have in-place entries (``resize_``) and those
PyTorch marks as returning uninitialised memory (``empty_like``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np

SUITE = "torch-opinfo"
#: The dtypes a case may run at, when its OpInfo supports them.
DTYPES = ("float32", "int32", "int64")
#: Tolerances of floating outputs (integer and bool outputs are compared exactly).
RTOL, ATOL = 1e-4, 1e-5
#: The dtypes of numpy arrays a model input may have.
_INPUT_KINDS = "biuf"
#: The seeds of the eager runs that tell a random operator.
SEEDS = (1, 2, 3)
#: What builds a case's module.
Factory = Callable[[], Any]
#: An output's shape and dtype name: ``((5, 5), "float32")``.
Signature = tuple[tuple[int, ...], str]


@dataclass(frozen=True)
class OpInfoCase:
    """One OpInfo entry at one dtype: the module to deploy, its inputs, the tolerances."""

    name: str                                  # abs-float32, max.binary-int64
    operator: str                              # the OpInfo name: abs, max, nn.functional.conv2d
    variant: str                               # the OpInfo variant ("" for most): binary
    dtype: str                                 # the sample's dtype: float32
    module: Factory                            # builds the torch.nn.Module
    inputs: dict[str, np.ndarray]              # x0, x1, ... in the forward's order
    outputs: tuple[Signature, ...]             # what op(sample) itself returns, as PyTorch's tests call it
    rtol: float
    atol: float


class _Slot:
    """Where the n-th tensor input goes in the operator's arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"x{self.index}"


@cache
def _module_class(arity: int) -> type:
    """An ``nn.Module`` class whose forward takes ``x0 ... x<arity-1>`` (named: the plugin and
    ``torch.export`` name the model's inputs after them)."""
    import torch

    class OpInfoModule(torch.nn.Module):
        """``op(*args, **kwargs)`` with the inputs in the tensor slots of ``args`` and ``kwargs``."""

        def __init__(self, op: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                     label: str) -> None:
            super().__init__()
            self.op, self.args, self.kwargs, self.label = op, args, dict(kwargs), label

        def forward(self, *tensors: Any) -> Any:
            args = tuple(tensors[a.index] if isinstance(a, _Slot) else a for a in self.args)
            kwargs = {k: tensors[v.index] if isinstance(v, _Slot) else v for k, v in self.kwargs.items()}
            result = self.op(*args, **kwargs)
            # a plain tuple: torch.export.save cannot write torch.return_types (topk's values, indices)
            return tuple(result) if isinstance(result, (tuple, list)) else result

        def extra_repr(self) -> str:
            return self.label

    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(arity)]
    OpInfoModule.forward.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    OpInfoModule.__name__ = OpInfoModule.__qualname__ = f"OpInfoModule{arity}"
    return OpInfoModule


def build_module(op: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], arity: int,
                 label: str) -> Any:
    """The case's module: ``op`` with its non-tensor arguments baked in."""
    return _module_class(arity)(op, args, kwargs, label)


@cache
def opinfo_cases() -> tuple[OpInfoCase, ...]:
    """Every eligible case of the installed PyTorch's ``op_db``, in its order (cached)."""
    return tuple(enumerate_cases())


def enumerate_cases(dtypes: tuple[str, ...] = DTYPES) -> Iterator[OpInfoCase]:
    """The cases of ``op_db`` at ``dtypes`` (not cached: every call draws the samples again)."""
    import warnings

    import torch
    from torch.testing._internal.common_methods_invocations import op_db

    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for opinfo in op_db:
            if not _eligible_opinfo(opinfo):
                continue
            supported = opinfo.supported_dtypes("cpu")
            for dtype in dtypes:
                if getattr(torch, dtype) not in supported:
                    continue
                case = _case(opinfo, dtype)
                if case is not None and case.name not in seen:
                    seen.add(case.name)
                    yield case


def describe_case(name: str) -> tuple[str, int] | None:
    """The scoreboard's unit of a case named ``name`` (``max.binary-int64``): its OpInfo name
    and 0 (operators have no opsets here); ``None`` for a name no OpInfo entry makes. Cheaper
    than :func:`opinfo_cases`: no sample is drawn."""
    label, _, dtype = name.rpartition("-")
    operator = _operators_by_label().get(label)
    return (operator, 0) if operator is not None and dtype else None


@cache
def _operators_by_label() -> dict[str, str]:
    from torch.testing._internal.common_methods_invocations import op_db

    return {_label(opinfo): opinfo.name for opinfo in op_db}


def _label(opinfo: Any) -> str:
    """``max.binary``: the OpInfo name, and its variant if it has one."""
    return f"{opinfo.name}.{opinfo.variant_test_name}" if opinfo.variant_test_name else opinfo.name


def _eligible_opinfo(opinfo: Any) -> bool:
    """Entries that can be a plain model at all: not in place, not uninitialised memory."""
    name = opinfo.name
    in_place = name.endswith("_") and not name.endswith("__")
    return not in_place and not opinfo.has_nondeterministic_output


def _case(opinfo: Any, dtype: str) -> OpInfoCase | None:
    """The case of the first usable sample of ``opinfo`` at ``dtype``, or ``None`` (none usable,
    or the operator is random: its first usable sample's outputs depend on the seed)."""
    import torch

    label = _label(opinfo)
    with _seeded(0):
        try:
            for sample in _samples(opinfo, getattr(torch, dtype)):
                plain = _plain_model(opinfo.op, sample, label)
                runs = _eager_runs(*plain) if plain is not None else None
                if runs is None:
                    continue
                if not all(_same(a, b) for run in runs[1:] for a, b in zip(runs[0], run)):
                    return None
                factory, inputs = plain
                name = f"{label}-{dtype}"
                factory.__qualname__ = f"OpInfo case {name}"  # how the plugin's errors name it
                return OpInfoCase(name=name, operator=opinfo.name, variant=opinfo.variant_test_name, dtype=dtype,
                                  module=factory, inputs=inputs, outputs=_direct_outputs(opinfo.op, sample),
                                  rtol=RTOL, atol=ATOL)
        except Exception:  # noqa: BLE001 - an entry that cannot draw its samples here has no case
            return None
    return None


def _samples(opinfo: Any, dtype: Any) -> Iterator[Any]:
    """The samples ``opinfo.sample_inputs("cpu", dtype, set_seed=False)`` gives, without its
    wrapper: that looks for the running unittest test up the stack (``inspect.stack()``) twice
    per call, a second per dozen calls under pytest, for bookkeeping the kit does not use."""
    return iter(opinfo.sample_inputs_func(opinfo, "cpu", dtype, False))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's, Python's and numpy's random generators seeded with ``seed`` (sample generators
    draw from each), and restored afterwards."""
    import random

    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _plain_model(op: Callable[..., Any], sample: Any, label: str) -> tuple[Factory, dict[str, np.ndarray]] | None:
    """The module factory and inputs of one sample, if it can be a plain model."""
    tensors: list[Any] = []
    args = _template((sample.input, *sample.args), tensors)
    kwargs = _template(tuple(sample.kwargs.values()), tensors)
    inputs = _arrays(tensors) if args is not None and kwargs is not None and tensors else None
    if inputs is None:
        return None
    return partial(build_module, op, args, dict(zip(sample.kwargs, kwargs)), len(tensors), label), inputs


def _template(values: tuple[Any, ...], tensors: list[Any]) -> tuple[Any, ...] | None:
    """``values`` with each top-level tensor replaced by its :class:`_Slot` (appended to
    ``tensors``); ``None`` when a tensor hides inside another value (a list of tensors)."""
    import torch

    template = []
    for value in values:
        if isinstance(value, torch.Tensor):
            template.append(_Slot(len(tensors)))
            tensors.append(value)
        elif _holds_tensor(value):
            return None
        else:
            template.append(value)
    return tuple(template)


def _holds_tensor(value: Any) -> bool:
    import torch
    from torch.utils._pytree import tree_leaves

    return any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(value))


def _arrays(tensors: list[Any]) -> dict[str, np.ndarray] | None:
    """The tensors as contiguous numpy arrays ``x0``, ``x1``, ...; ``None`` when one is empty or
    of a dtype a model input cannot have (complex, bfloat16)."""
    import torch

    arrays = {}
    for index, tensor in enumerate(tensors):
        if tensor.numel() == 0 or tensor.is_complex() or tensor.layout != torch.strided:
            return None
        try:
            array = tensor.detach().resolve_conj().resolve_neg().contiguous().numpy().copy()
        except (TypeError, RuntimeError):
            return None
        if array.dtype.kind not in _INPUT_KINDS:
            return None
        arrays[f"x{index}"] = array
    return arrays


def _eager_runs(factory: Factory, inputs: Mapping[str, np.ndarray]) -> list[list[Any]] | None:
    """The module's output tensors from eager runs under different seeds (to tell a random
    operator), or ``None`` when it fails, changes an input (batch norm's running statistics in
    training) or returns something else than a tensor or a tuple of them."""
    from unittest import mock

    import torch

    runs = []
    for seed in SEEDS:
        tensors = [torch.from_numpy(a.copy()) for a in inputs.values()]
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            try:  # OpInfo wraps its random operators in a reseeding call: that must not hide them here
                with mock.patch.object(torch, "manual_seed", lambda _: None):
                    result = factory()(*tensors)
            except Exception:  # noqa: BLE001 - a sample the operator rejects once contiguous
                return None
        outputs = _output_tensors(result)
        if outputs is None or not all(_same(t, torch.from_numpy(a)) for t, a in zip(tensors, inputs.values())):
            return None
        runs.append(outputs)
    return runs


def _direct_outputs(op: Callable[..., Any], sample: Any) -> tuple[Signature, ...]:
    """The shapes and dtypes of ``op`` called on the sample as drawn (no module, no numpy)."""
    import torch

    with torch.no_grad():
        result = op(sample.input, *sample.args, **sample.kwargs)
    tensors = list(result) if isinstance(result, (tuple, list)) else [result]
    return tuple((tuple(t.shape), str(t.dtype).removeprefix("torch.")) for t in tensors)


def _output_tensors(result: Any) -> list[Any] | None:
    """The output's tensors when it is a tensor or a (named) tuple or list of tensors, each
    non-empty, strided and real; ``None`` otherwise."""
    import torch

    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
        return None
    if any(t.numel() == 0 or t.is_complex() or t.layout != torch.strided or t.dtype == torch.bfloat16
           for t in outputs):
        return None
    return outputs


def _same(a: Any, b: Any) -> bool:
    """Whether two tensors are equal in shape, dtype and every element (NaN equal to NaN)."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
