"""The report page's script and controls: every ``table.sortable`` sorts by a click on a column's
head; the tests table filters by outcome and by text. The state lives in the page's address
(``report.html#outcome=failed&filter=conv&sort=9&desc=1``), so a filtered view is a link to share,
and a page opened with such an address starts in that view. No server, no library."""

from __future__ import annotations

from collections.abc import Iterable

STYLE = """
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
.controls { margin: .5em 0; } .controls input { width: 24em; } .controls label { margin-right: 1em; }
"""

SCRIPT = r"""
(function () {
  function key(row, column) {
    var cell = row.cells[column];
    if (!cell) { return ""; }
    var text = cell.getAttribute("data-sort");
    if (text === null) { text = cell.textContent.trim(); }
    return /^[-+]?(\d|\.\d)/.test(text) ? parseFloat(text) : text.toLowerCase();
  }
  function missing(value) { return value === "-" || value === ""; }
  function compare(a, b) {  // numbers first, then text
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    if (typeof a === "number") { return -1; }
    if (typeof b === "number") { return 1; }
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function sortTable(table, column, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, index) { return [key(row, column), index, row]; });
    keyed.sort(function (a, b) {  // a cell without a value ("-") goes last either way
      if (missing(a[0]) !== missing(b[0])) { return missing(a[0]) ? 1 : -1; }
      return (descending ? -1 : 1) * compare(a[0], b[0]) || a[1] - b[1];
    });
    keyed.forEach(function (entry) { body.appendChild(entry[2]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      if (index === column) { th.setAttribute("aria-sort", descending ? "descending" : "ascending"); }
      else { th.removeAttribute("aria-sort"); }
    });
    table.dataset.sortColumn = String(column);
    table.dataset.sortDescending = descending ? "1" : "0";
  }
  function state() {
    var found = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var parts = pair.split("=");
      if (parts[0]) { found[decodeURIComponent(parts[0])] = decodeURIComponent(parts.slice(1).join("=")); }
    });
    return found;
  }
  function remember() {
    var table = document.getElementById("tests");
    var parts = [];
    var outcome = document.getElementById("outcome-filter");
    var text = document.getElementById("text-filter");
    if (outcome && outcome.value) { parts.push("outcome=" + encodeURIComponent(outcome.value)); }
    if (text && text.value) { parts.push("filter=" + encodeURIComponent(text.value)); }
    if (table && table.dataset.sortColumn) {
      parts.push("sort=" + table.dataset.sortColumn);
      if (table.dataset.sortDescending === "1") { parts.push("desc=1"); }
    }
    history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname + location.search);
  }
  function filterTests() {
    var table = document.getElementById("tests");
    if (!table) { return; }
    var outcome = document.getElementById("outcome-filter").value;
    var words = document.getElementById("text-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var text = row.textContent.toLowerCase() + " " + (row.getAttribute("data-test") || "").toLowerCase();
      var visible = (!outcome || row.className.split(" ").indexOf(outcome) >= 0) &&
        words.every(function (word) { return text.indexOf(word) >= 0; });
      row.hidden = !visible;
      if (visible) { shown += 1; }
    });
    document.getElementById("shown-count").textContent = String(shown);
    table.dataset.shown = String(shown);
  }
  window.addEventListener("load", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
        th.addEventListener("click", function () {
          var again = table.dataset.sortColumn === String(column) && table.dataset.sortDescending !== "1";
          sortTable(table, column, again);
          if (table.id === "tests") { remember(); }
        });
      });
    });
    var outcome = document.getElementById("outcome-filter");
    var text = document.getElementById("text-filter");
    if (!outcome || !text) { return; }
    var wanted = state();
    outcome.value = wanted.outcome || "";
    text.value = wanted.filter || "";
    if (wanted.sort !== undefined && /^\d+$/.test(wanted.sort)) {
      sortTable(document.getElementById("tests"), parseInt(wanted.sort, 10), wanted.desc === "1");
    }
    filterTests();
    outcome.addEventListener("change", function () { filterTests(); remember(); });
    text.addEventListener("input", function () { filterTests(); remember(); });
  });
})();
"""


def controls(outcomes: Iterable[str], total: int) -> str:
    """The tests table's filters: an outcome choice, a text box, and how many rows show."""
    options = "".join(f'<option value="{o}">{o}</option>' for o in outcomes)
    return ('<p class="controls"><label>outcome <select id="outcome-filter"><option value="">all</option>'
            f'{options}</select></label><label>text <input id="text-filter" type="search" '
            'placeholder="model, operator, reason ... (every word)"></label>'
            f'showing <span id="shown-count">{total}</span> of {total} (click a column head to sort)</p>')
