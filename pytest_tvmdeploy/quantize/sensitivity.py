"""What each quantized site costs the model's outputs, and which sites to keep in float for a budget.

One float module simulates int8 at every site behind a gate (an extra input of ``main``, one
value per site): with gate 1, the site's input is rounded to its int8 steps and its weights and
bias are the dequantized int8 ones; with gate 0 it is the float site. One build answers every
question by its gates: all 0 is the float model, one 1 measures a site alone (its *sensitivity*),
all 1 but a few measures a mixed-precision choice. With its output read in float (as alone), a
quantized site computes exactly what the gated one does, up to float rounding of the sums. The
input and the weights of a site have gates of their own, so the costliest sites' cost is also
split: the input's rounding alone (weights float) and the weights' alone (input float). A site
whose input costs most is one a wide (16-bit) input mends (``QuantConfig.wide_inputs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.graph import Site, bias_shape, emit_float, float_site
from pytest_tvmdeploy.quantize.realize import (
    CalibratedSites,
    from_int8_steps,
    int8_steps,
    site_enabled,
)
from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors


@dataclass(frozen=True)
class SiteCost:
    """One site quantized alone: the outputs' SQNR against float (dB) and, for a classifier's
    ``(batch, classes)`` output, the share of inputs whose top-1 class is unchanged."""

    site: int
    op: str
    ordinal: int
    weight_shape: tuple[int, ...]
    sqnr_db: float
    agreement: float | None
    input_sqnr_db: float | None = None  # its input alone int8, weights float (the costliest sites)
    weights_sqnr_db: float | None = None  # its weights and bias alone int8, input float

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "op": self.op, "ordinal": self.ordinal, "weight_shape": list(self.weight_shape),
                "sqnr_db": self.sqnr_db, "agreement": self.agreement, "input_sqnr_db": self.input_sqnr_db,
                "weights_sqnr_db": self.weights_sqnr_db}


@dataclass(frozen=True)
class Quality:
    """Outputs against float: SQNR (dB) and top-1 agreement (None without a 2-D float output)."""

    sqnr_db: float
    agreement: float | None

    def value(self, metric: str) -> float | None:
        return self.sqnr_db if metric == "sqnr_db" else self.agreement


@dataclass(frozen=True)
class Sensitivity:
    """The cost of each quantizable site alone, on ``samples`` evaluation inputs."""

    sites: tuple[SiteCost, ...]
    samples: int

    def most_damaging(self) -> list[int]:
        """Site indices, the lowest SQNR (the most damaging site) first."""
        return [cost.site for cost in sorted(self.sites, key=lambda cost: (cost.sqnr_db, cost.site))]

    def table(self) -> str:
        """A plain-text table, most damaging first."""
        by_site = {cost.site: cost for cost in self.sites}
        lines = [f"{'site':>4}  {'op':<9}  {'weight shape':<18}  {'SQNR dB':>8}  {'top-1':>6}  {'input dB':>8}  "
                 f"{'weights dB':>10}"]
        for index in self.most_damaging():
            cost = by_site[index]
            agreement = "" if cost.agreement is None else f"{cost.agreement:.3f}"
            lines.append(f"{cost.site:>4}  {cost.op:<9}  {'x'.join(map(str, cost.weight_shape)):<18}  "
                         f"{cost.sqnr_db:>8.2f}  {agreement:>6}  {_db(cost.input_sqnr_db):>8}  "
                         f"{_db(cost.weights_sqnr_db):>10}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "sites": [cost.to_json() for cost in self.sites]}


def _db(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


#: What of a site :meth:`GatedModel.outputs` quantizes: its input and weights, or one of them.
PARTS = ("both", "input", "weights")
#: The costliest sites whose cost :func:`site_sensitivity` splits into input and weights.
SPLIT_SITES = 8


#: Compiles a Relax module for this machine's CPU into a VM executable: ``tvm.compile`` by default;
#: a caller can give one that schedules the functions, which costs seconds and makes runs faster.
Compiler = Callable[[tvm.IRModule], Any]
#: Predicted seconds of simulation runs above which :class:`GatedModel` rebuilds with the given
#: scheduling compiler. EfficientNet-Lite0's simulation with sampled schedules: 0.94 s a run on 9
#: images against 1.63 s, for 38 s more building; so it pays above ~95 s of runs (a small model's
#: runs never get there).
SCHEDULE_ABOVE_SECONDS = 120.0


def host_compile(module: tvm.IRModule) -> Any:
    """``tvm.compile`` for this machine's CPU, functions unscheduled."""
    return tvm.compile(module, target=tvm.target.Target("llvm"))


class GatedModel:
    """The gated simulation of ``sites`` (those ``config`` quantizes), built for the CPU;
    :meth:`outputs` runs it on the evaluation inputs with a set of sites quantized.

    It is built with ``tvm.compile`` first; when its first run predicts over
    :data:`SCHEDULE_ABOVE_SECONDS` for the runs a sensitivity table takes, it is built again with
    ``compiler`` (one that schedules), as are the integer modules :meth:`measure` runs."""

    def __init__(self, prepared: tvm.IRModule, sites: list[Site], source: CalibratedSites,
                 evaluation: Sequence[Sequence[np.ndarray]], compiler: Compiler | None = None) -> None:
        self.compiler: Compiler = host_compile
        self.sites = [site for site in sites if site_enabled(site, source.config)]
        self.count = len(sites)
        gates = relax.Var("gates", relax.TensorType([2 * max(self.count, 1)], "float32"))  # inputs, then weights
        gated = {site.index: _GatedSite(site, source, gates, max(self.count, 1)) for site in self.sites}
        module = emit_float(prepared, sites, extra_params=(gates,),
                            emit_site=lambda bb, site, data: (gated[site.index].emit(bb, data) if site.index in gated
                                                              else float_site(bb, site, data)))
        self.vm = relax_vm(host_compile(module))
        self.evaluation = [tvm_tensors(list(sample)) for sample in evaluation]
        started = time.perf_counter()
        self.reference = self.outputs(())
        predicted = (time.perf_counter() - started) * (len(self.sites) + 2 * SPLIT_SITES)
        if compiler is not None and predicted > SCHEDULE_ABOVE_SECONDS:
            self.compiler = compiler
            self.vm = relax_vm(compiler(module))
            self.reference = self.outputs(())

    def outputs(self, quantized: Sequence[int], part: str = "both") -> list[list[np.ndarray]]:
        """Every float output on every evaluation input, flattened per input (rows), with the
        sites ``quantized`` in int8 (their input, weights or both: ``part``) and the rest float."""
        if part not in PARTS:
            raise ValueError(f"GatedModel.outputs: part={part!r} is not one of {PARTS}")
        gates = np.zeros((2, max(self.count, 1)), dtype="float32")
        for row, name in enumerate(PARTS[1:]):
            if part in ("both", name):
                gates[row, list(quantized)] = 1.0
        return self._float_rows(self.vm, tvm.runtime.tensor(gates.reshape(-1)))

    def quality(self, quantized: Sequence[int], part: str = "both") -> Quality:
        """How far the simulated outputs with ``quantized`` sites in int8 (``part`` of them) are from float."""
        return compare(self.reference, self.outputs(quantized, part))

    def measure(self, module: tvm.IRModule) -> Quality:
        """How far a realized (integer) ``module``'s outputs are from float, on the same inputs."""
        return compare(self.reference, self._float_rows(relax_vm(self.compiler(module))))

    def _float_rows(self, vm: Any, *extra: Any) -> list[list[np.ndarray]]:
        """``vm``'s float outputs on each evaluation input (``extra`` arguments after the inputs)."""
        rows = []
        for inputs in self.evaluation:
            values = [np.asarray(v) for v in flatten_outputs(vm["main"](*inputs, *extra))]
            rows.append([v for v in values if v.dtype.kind == "f"])
        return rows


def compare(reference: list[list[np.ndarray]], actual: list[list[np.ndarray]]) -> Quality:
    """SQNR over all float outputs of all inputs; top-1 agreement of the first output if it is
    ``(batch, classes)``."""
    if not any(row for row in reference):
        raise ConfigError("quantize: sensitivity and budgets measure the float outputs against float, and the model "
                          "has none (only integer or bool outputs)")
    expected = np.concatenate([v.astype(np.float64).ravel() for row in reference for v in row])
    got = np.concatenate([v.astype(np.float64).ravel() for row in actual for v in row])
    noise = float(((expected - got) ** 2).sum())
    signal = float((expected ** 2).sum())
    sqnr = float("inf") if noise == 0 else (float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf"))
    agreement = None
    if reference and reference[0] and reference[0][0].ndim == 2:
        same = [np.argmax(r[0], axis=-1) == np.argmax(a[0], axis=-1) for r, a in zip(reference, actual)]
        agreement = float(np.concatenate(same).mean())
    return Quality(sqnr, agreement)


def site_sensitivity(model: GatedModel, split: int = SPLIT_SITES) -> Sensitivity:
    """Each quantizable site's cost when it alone is quantized; for the ``split`` costliest, also
    its input's alone and its weights' alone."""
    costs = []
    for site in model.sites:
        quality = model.quality([site.index])
        costs.append(SiteCost(site.index, site.kind, site.ordinal, tuple(site.weight.shape), quality.sqnr_db,
                              quality.agreement))
    costliest = Sensitivity(tuple(costs), 0).most_damaging()[:split]
    costs = [replace(cost, input_sqnr_db=model.quality([cost.site], "input").sqnr_db,
                     weights_sqnr_db=model.quality([cost.site], "weights").sqnr_db) if cost.site in costliest else cost
             for cost in costs]
    return Sensitivity(tuple(costs), len(model.evaluation))


@dataclass(frozen=True)
class BudgetChoice:
    """The sites a budget keeps in float; the realized module's outputs with the rest in int8
    (``quality``) and the simulation's (``simulated``), both against float."""

    metric: str
    target: float
    keep_float: tuple[int, ...]
    quality: Quality
    simulated: Quality
    builds: int  # integer modules realized and measured until the budget was met

    @property
    def met(self) -> bool:
        value = self.quality.value(self.metric)
        return value is not None and value >= self.target

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "target": self.target, "keep_float": list(self.keep_float),
                "sqnr_db": self.quality.sqnr_db, "agreement": self.quality.agreement, "met": self.met,
                "simulated_sqnr_db": self.simulated.sqnr_db, "simulated_agreement": self.simulated.agreement,
                "builds": self.builds}


def fit_budget(model: GatedModel, sensitivity: Sensitivity, metric: str, target: float,
               realize_keeping: Callable[[tuple[int, ...]], tvm.IRModule]) -> tuple[BudgetChoice, tvm.IRModule]:
    """The fewest most-damaging sites (in sensitivity order) to keep in float for the outputs to
    meet ``metric >= target``, and the integer module keeping them.

    The simulation chooses (for an SQNR budget its first guess adds the sites' noise powers as if
    independent, then it steps towards fewer or more float sites); the realized module is then
    measured, and while it misses the budget the next most damaging site joins the float ones.
    """
    order = sensitivity.most_damaging()
    kept = _simulated_choice(model, order, sensitivity, metric, target)
    builds = 0
    while True:
        module = realize_keeping(tuple(sorted(order[:kept])))
        quality = model.measure(module)
        builds += 1
        value = quality.value(metric)
        if (value is not None and value >= target) or kept >= len(order):
            break
        kept += 1
    simulated = model.quality([site.index for site in model.sites if site.index not in order[:kept]])
    return BudgetChoice(metric, target, tuple(sorted(order[:kept])), quality, simulated, builds), module


def _simulated_choice(model: GatedModel, order: list[int], sensitivity: Sensitivity, metric: str,
                      target: float) -> int:
    """How many of the sites in ``order`` the simulation keeps in float to meet the budget."""
    everything = [site.index for site in model.sites]
    cache: dict[int, bool] = {}

    def meets(kept: int) -> bool:
        if kept not in cache:
            value = model.quality([i for i in everything if i not in order[:kept]]).value(metric)
            cache[kept] = value is not None and value >= target
        return cache[kept]

    kept = _first_guess(sensitivity, order, target) if metric == "sqnr_db" else 0
    if meets(kept):
        while kept > 0 and meets(kept - 1):
            kept -= 1
        return kept
    while kept < len(order) and not meets(kept):
        kept += 1
    return kept


def _first_guess(sensitivity: Sensitivity, order: list[int], target: float) -> int:
    """How many of the most damaging sites must go for the rest's summed noise to meet ``target``
    dB (each site's noise relative to the signal is ``10 ** (-sqnr / 10)``)."""
    by_site = {cost.site: cost for cost in sensitivity.sites}
    noise = [10.0 ** (-by_site[index].sqnr_db / 10.0) for index in order]
    allowed = 10.0 ** (-target / 10.0)
    for kept in range(len(order) + 1):
        if sum(noise[kept:]) <= allowed:
            return kept
    return len(order)


class _GatedSite:
    """A site's int8 simulation, blended with its float self by two gates: its input's (at
    ``site.index``) and its weights' and bias's (at ``count + site.index``)."""

    def __init__(self, site: Site, source: CalibratedSites, gates: relax.Var, count: int) -> None:
        self.site, self.calibrated, self.gates, self.count = site, source.scales[site.index], gates, count
        weights, bias = source.integers(site, self.calibrated.input).dequantized(site)
        self.weight_change = (weights - site.weight).astype(np.float32)
        self.bias_change = (bias - site.bias).astype(np.float32)

    def emit(self, bb: relax.BlockBuilder, data: relax.Expr) -> relax.Expr:
        site, scale, zero_point = self.site, self.calibrated.input, self.calibrated.input_zero_point
        gate = bb.emit(R.strided_slice(self.gates, axes=[0], begin=[site.index], end=[site.index + 1]))
        steps = int8_steps(data, scale, zero_point, self.calibrated.input_bounds)
        simulated = bb.emit(from_int8_steps(steps, scale, zero_point))
        data = bb.emit(R.add(data, R.multiply(gate, R.subtract(simulated, data))))
        weights_at = self.count + site.index
        gate = bb.emit(R.strided_slice(self.gates, axes=[0], begin=[weights_at], end=[weights_at + 1]))
        weight = bb.emit(R.add(relax.const(site.weight.astype(np.float32)),
                               R.multiply(gate, relax.const(self.weight_change))))
        shape = bias_shape(site, site.output.ty.ndim)
        bias = bb.emit(R.add(relax.const(site.bias.reshape(shape).astype(np.float32)),
                             R.multiply(gate, relax.const(self.bias_change.reshape(shape)))))
        return float_site(bb, site, data, weight, bias)
