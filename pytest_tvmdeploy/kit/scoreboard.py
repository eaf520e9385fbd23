"""The kit's scoreboard: how many cases pass, per suite, per operator (per opset for ONNX's node
tests) and per failure category, and what changed against an earlier run (its ``report.json``'s records,
tallied the same way).

A case's category is where it stopped: ``import`` (the frontend), ``build``, ``run``, ``crash``
(the TVM worker died, hung or ran out of memory), ``differs`` (outputs out of tolerance),
``reference`` (no reference could run it), or ``passed``. An expected failure counts where it
failed: the scoreboard says what works, the expected-failures file what is known.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pytest_tvmdeploy.kit.update_expected import kit_case
from pytest_tvmdeploy.report.record import TestRecord
from pytest_tvmdeploy.report.scoreboard_section import CATEGORIES

#: Where a record's stage puts it.
_STAGE_CATEGORY = {"import": "import", "inputs": "import", "quantize": "build", "tune": "build", "build": "build",
                   "run": "run", "cpp": "run", "compare": "differs", "reference": "reference"}


def category(record: TestRecord) -> str:
    """The scoreboard category of one finished case."""
    if record.outcome in ("passed", "xpassed"):
        return "passed"
    if record.crash:
        return "crash"
    return _STAGE_CATEGORY.get(record.stage or "", "other")


@dataclass
class Tally:
    """Cases and how they ended, by category."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str) -> None:
        self.counts[what] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def passed(self) -> int:
        return self.counts["passed"]

    def rate(self) -> str:
        return f"{self.passed}/{self.total} ({100 * self.passed / self.total:.1f}%)" if self.total else "0/0"

    def failures(self) -> str:
        """``import 3, differs 1``: the categories other than passed, in :data:`CATEGORIES` order."""
        return ", ".join(f"{c} {self.counts[c]}" for c in CATEGORIES[1:] if self.counts[c])


@dataclass
class Scoreboard:
    """One suite's tallies: in all, per operator, per (operator, opset)."""

    suite: str
    unit: str = "operator"        # what the per-unit tallies count: operators, or models
    overall: Tally = field(default_factory=Tally)
    operators: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    opsets: dict[tuple[str, int], Tally] = field(default_factory=lambda: defaultdict(Tally))
    outcomes: dict[str, str] = field(default_factory=dict)  # case (test_abs/onnx-node, gru/onnx) -> category

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "unit": self.unit, "total": self.overall.total, "passed": self.overall.passed,
            "categories": {c: self.overall.counts[c] for c in CATEGORIES},
            "operators": {op: dict(t.counts) for op, t in sorted(self.operators.items())},
            "opsets": {f"{op}@{opset}": dict(t.counts) for (op, opset), t in sorted(self.opsets.items())},
            "cases": dict(sorted(self.outcomes.items())),
        }


#: ``describe(case)`` -> ``(operator, opset)`` of a kit case, or ``None`` for a case of no operator.
Describe = Callable[[str], "tuple[str, int] | None"]


def scoreboard(suite: str, records: Iterable[TestRecord], describe: Describe, unit: str = "operator") -> Scoreboard:
    """The tallies of the finished ``records`` whose case ``describe`` knows."""
    board = Scoreboard(suite, unit)
    for record in records:
        known = describe(record.model or "")
        if known is None or record.outcome is None or record.outcome == "skipped":
            continue
        operator, opset = known
        what = category(record)
        board.overall.add(what)
        board.operators[operator].add(what)
        board.opsets[operator, opset].add(what)
        board.outcomes[kit_case(record) or record.model or ""] = what  # gru/onnx: each form apart
    return board


def scoreboard_lines(board: Scoreboard, limit: int = 40) -> list[str]:
    """The terminal's summary: the suite's pass rate and categories, the operators that do not
    pass every case (worst first, ``limit`` of them; per opset where their opsets differ)."""
    overall = board.overall
    lines = [f"{board.suite}: {overall.rate()} cases passed; {overall.failures() or 'no failures'}"]
    clean = sum(1 for t in board.operators.values() if t.passed == t.total)
    lines.append(f"{board.unit}s: {len(board.operators)}, {clean} pass every case, "
                 f"{sum(1 for t in board.operators.values() if not t.passed)} pass none")
    failing = sorted((t.passed / t.total, op) for op, t in board.operators.items() if t.passed < t.total)
    for _, op in failing[:limit]:
        tally = board.operators[op]
        per_opset = {opset: t for (name, opset), t in board.opsets.items() if name == op}
        opsets = "" if len(per_opset) < 2 else " [" + ", ".join(
            f"opset {opset}: {t.passed}/{t.total}" for opset, t in sorted(per_opset.items())) + "]"
        lines.append(f"  {op}: {tally.passed}/{tally.total} ({tally.failures()}){opsets}")
    if len(failing) > limit:
        lines.append(f"  ... and {len(failing) - limit} more {board.unit}(s) with failures (see the report)")
    return lines


def changes(before: Scoreboard, after: Scoreboard) -> dict[str, list[str]]:
    """What changed against an earlier run's scoreboard: cases and units (operators, models) newly
    passing or newly failing. Cases and units only one of the runs has are not compared."""
    compared = {case: (before.outcomes[case] == "passed", what == "passed")
                for case, what in after.outcomes.items() if case in before.outcomes}
    old_units = {unit: t.passed == t.total for unit, t in before.operators.items()}
    new_units = {unit: t.passed == t.total for unit, t in after.operators.items() if unit in old_units}
    return {
        "newly_passing": sorted(c for c, (was, now) in compared.items() if now and not was),
        "newly_failing": sorted(c for c, (was, now) in compared.items() if was and not now),
        "newly_passing_units": sorted(u for u, ok in new_units.items() if ok and not old_units[u]),
        "newly_failing_units": sorted(u for u, ok in new_units.items() if not ok and old_units[u]),
    }


def change_lines(change: dict[str, list[str]], after: Scoreboard, baseline: str, limit: int = 20) -> list[str]:
    """The terminal's account of :func:`changes` against the run kept in ``baseline``."""
    lines = [f"against {baseline}: {len(change['newly_passing'])} case(s) newly passing, "
             f"{len(change['newly_failing'])} newly failing"]
    lines += [f"  newly passing {after.unit}: {unit}" for unit in change["newly_passing_units"]]
    lines += [f"  newly failing {after.unit}: {unit}" for unit in change["newly_failing_units"]]
    lines += [f"  newly failing: {case} ({after.outcomes[case]})" for case in change["newly_failing"][:limit]]
    if len(change["newly_failing"]) > limit:
        lines.append(f"  ... and {len(change['newly_failing']) - limit} more newly failing case(s) (see the report)")
    return lines
