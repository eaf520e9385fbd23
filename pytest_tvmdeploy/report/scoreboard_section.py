"""The report's scoreboard section (kit runs): the suite's pass rate and failure categories, a
sortable table of its operators (or models), and what changed against the baseline report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_tvmdeploy.report import markup

#: Where a kit case ended, in the scoreboard's order: ``passed``, then where it stopped (the kit's
#: tally and this section share them).
CATEGORIES = ("passed", "import", "build", "run", "crash", "differs", "reference", "other")
#: Row colours by how many of a unit's cases pass (the tests table's classes stay its own).
STYLE = ".unit-all { background: #e3f4e1; } .unit-some { background: #fff5c2; } .unit-none { background: #fbdcdc; }\n"
#: Cases listed by name under "newly failing" / "newly passing" before the rest fold away.
LISTED_CASES = 50


def section(board: Mapping[str, Any] | None) -> str:
    """The whole section; empty when the run kept no scoreboard."""
    if not board or not board.get("total"):
        return ""
    unit = board.get("unit", "operator")
    categories = board.get("categories", {})
    summary = ", ".join(f"{c} {categories[c]}" for c in CATEGORIES[1:] if categories.get(c)) or "no failures"
    rate = 100 * board["passed"] / board["total"]
    head = "".join(f"<th>{markup.text(c)}</th>" for c in (unit, "cases", "passed", "pass rate",
                                                      *CATEGORIES[1:]))
    units = board.get("operators", {})
    rows = sorted(units.items(), key=lambda item: (_rate(item[1]), item[0]))
    body = "\n".join(_row(name, counts) for name, counts in rows)
    clean = sum(1 for counts in units.values() if _rate(counts) == 1.0)
    none = sum(1 for counts in units.values() if not counts.get("passed"))
    return (f"<h2>Scoreboard: {markup.text(board['suite'])}</h2>\n"
            f"<p class=\"meta\" id=\"scoreboard-summary\"><b>{board['passed']}/{board['total']} cases passed "
            f"({rate:.1f}%)</b>; {markup.text(summary)}</p>\n{_changes(board.get('changes'), unit)}"
            f"<details><summary>per {markup.text(unit)}: {len(units)}, {clean} pass every case, {none} pass none "
            "(worst first; click a column head to sort)</summary>\n"
            f"<table id=\"scoreboard\" class=\"sortable\">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
            "</tbody>\n</table>\n</details>")


def _row(name: str, counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    passed = counts.get("passed", 0)
    share = "all" if passed == total else "some" if passed else "none"
    cells = [name, str(total), str(passed), f"{100 * passed / total:.0f}%" if total else "-",
             *(str(counts.get(c, 0) or "") for c in CATEGORIES[1:])]
    return f"<tr class=\"unit-{share}\">" + "".join(f"<td>{markup.text(c)}</td>" for c in cells) + "</tr>"


def _rate(counts: Mapping[str, int]) -> float:
    total = sum(counts.values())
    return counts.get("passed", 0) / total if total else 0.0


def _changes(changes: Mapping[str, Any] | None, unit: str) -> str:
    """Newly passing / newly failing against the baseline: units, then cases."""
    if not changes:
        return ""
    parts = [f"<p class=\"meta\" id=\"scoreboard-changes\">against <code>{markup.text(changes.get('baseline', '?'))}"
             f"</code>: {len(changes.get('newly_passing', []))} case(s) newly passing, "
             f"{len(changes.get('newly_failing', []))} newly failing</p>"]
    for key, label in (("newly_failing_units", f"newly failing {unit}s"),
                       ("newly_passing_units", f"newly passing {unit}s"),
                       ("newly_failing", "newly failing cases"), ("newly_passing", "newly passing cases")):
        parts.append(_listing(changes.get(key) or [], label, key))
    return "\n".join(p for p in parts if p) + "\n"


def _listing(names: Sequence[str], label: str, key: str) -> str:
    if not names:
        return ""
    shown = ", ".join(markup.text(n) for n in names[:LISTED_CASES])
    rest = ""
    if len(names) > LISTED_CASES:
        rest = (f" <details><summary>{len(names) - LISTED_CASES} more</summary>"
                f"{', '.join(markup.text(n) for n in names[LISTED_CASES:])}</details>")
    return f"<p class=\"meta\" data-changes=\"{key}\"><b>{markup.text(label)}</b> ({len(names)}): {shown}{rest}</p>"

