"""report.html: the table carries the records' numbers, text is escaped, the plots decode, a browser shows it;
and the typed record every report reads, through the terminal table, JUnit properties and report.json."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.report import plots
from pytest_tvmdeploy.report.html import COLUMNS, render_html, write_html_report
from pytest_tvmdeploy.report.record import SCHEMA_VERSION, TestRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "unsupported operator <script>alert(\"x\")</script> & 'quotes'"


def histogram(centre: float, total: int = 1000, exact: int = 100) -> dict[str, Any]:
    edges = [float(e) for e in range(-12, 3)]
    counts = [0] * (len(edges) - 1)
    counts[int(centre) + 12] = total - exact
    return {"log10_edges": edges, "counts": counts, "exact": exact, "total": total}


def make_records() -> list[TestRecord]:
    """Five tests of three models: torch and ONNX passing, int8 failing with a divergence, a setup error, an xfail."""
    timings = {"load": 0.5, "reference": 0.0123, "import": 1.25, "compile": 3.5, "run": 0.00456, "cpp_run": 0.00321}
    return [
        TestRecord(test="test_models.py::test_squeezenet[llvm]", target="llvm", model="squeezenet1_1",
                   source="torch", reference_name="pytorch", outcome="passed", cache_hit=False,
                   artifact="/cache/ab/model.so", cpp="bitwise", timings=timings, max_abs_error=3.25e-06,
                   error_histogram=histogram(-6)),
        TestRecord(test="test_models.py::test_squeezenet_onnx[llvm]", target="llvm", model="squeezenet1_1",
                   source="onnx", reference_name="onnxruntime", outcome="passed", cache_hit=True,
                   cpp="off", timings={**timings, "cpp_run": 0.0, "reference": 0.0087},
                   max_abs_error=1.5e-05, error_histogram=histogram(-5, exact=0)),
        TestRecord(test="test_models.py::test_mobilenet_int8[llvm]", target="llvm", model="mobilenet_v2",
                   source="exported_program", reference_name="pytorch", outcome="failed", stage="compare",
                   reason='int8 cosine 0.91 < budget 0.99 for "logits"', cache_hit=False, cpp="differs",
                   timings={**timings, "quantize": 2.0}, max_abs_error=0.75,
                   quant={"cosine": 0.9123, "sqnr_db": 12.34}, error_histogram=histogram(-1),
                   divergence={"node": "conv2d_17", "op": "relax.nn.conv2d", "max_abs_error": 0.0625,
                               "summary": "first output outside <atol> after requantize"}),
        TestRecord(test="test_models.py::test_broken[llvm]", target="llvm", outcome="error", stage="import",
                   reason=HOSTILE),
        TestRecord(test="test_models.py::test_known_gap[llvm]", target="llvm", model="vit_b_16", source="onnx",
                   reference_name="onnxruntime", outcome="xfailed", stage="build", reason="no schedule",
                   cpp="skipped", cpp_note="no cmake", timings={"import": 0.5, "reference": 0.02}),
    ]


def make_report() -> dict[str, Any]:
    """The report.json content of :func:`make_records` (what render_html reads)."""
    return {"schema": SCHEMA_VERSION, "tvm": "0.27.0.post1", "targets": [{"label": "llvm", "target": {"kind": "llvm"}}],
            "tests": [record.to_json() for record in make_records()]}


class TableParser(HTMLParser):
    """The text of each cell of each ``<tr>`` of the table ``table_id``, the body's attributes and
    the images' sources."""

    def __init__(self, table_id: str = "tests") -> None:
        super().__init__()
        self.table_id = table_id
        self.tables: list[str] = []  # ids of the open tables, innermost last
        self.rows: list[list[str]] = []
        self.row_classes: list[str] = []
        self.images: list[str] = []
        self.body: dict[str, str] = {}
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "div" and self.cell is not None:
            self.cell.append(" ")  # a line of its own in the cell
        if tag == "table":
            self.tables.append(attributes.get("id", ""))
        if not self.tables or self.tables[-1] != self.table_id:
            if tag == "img":
                self.images.append(attributes["src"])
            elif tag == "body":
                self.body = attributes
            return
        if tag == "tr":
            self.rows.append([])
            self.row_classes.append(attributes.get("class", ""))
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "img":
            self.images.append(attributes["src"])
        elif tag == "body":
            self.body = attributes

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.tables:
            self.tables.pop()
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def parse(page: str, table_id: str = "tests") -> TableParser:
    parser = TableParser(table_id)
    parser.feed(page)
    return parser


def by_column(parser: TableParser) -> list[dict[str, str]]:
    header, *rows = parser.rows
    assert tuple(header) == COLUMNS
    return [dict(zip(header, row)) for row in rows]


def assert_png(data: bytes, min_colours: int = 20) -> tuple[int, int]:
    """A real, decodable, non-blank PNG; returns (width, height)."""
    from PIL import Image

    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ()) >= min_colours
        return image.size


def test_table_has_one_row_per_test_with_its_numbers() -> None:
    rows = by_column(parse(render_html(make_report())))
    assert [r["outcome"] for r in rows] == ["passed", "passed", "failed", "error", "xfailed"]
    torch_row, onnx_row, int8_row, error_row, xfail_row = rows
    assert torch_row["model / test"] == "squeezenet1_1 test_models.py::test_squeezenet[llvm]"
    assert (torch_row["source"], torch_row["target"], torch_row["artifact"]) == ("torch", "llvm", "built")
    assert (torch_row["import s"], torch_row["compile s"]) == ("1.25", "3.50")
    assert (torch_row["TVM ms"], torch_row["C++ ms"], torch_row["reference ms"]) == ("4.56", "3.21", "12.30 (pytorch)")
    assert (torch_row["C++ check"], torch_row["max abs error"]) == ("bitwise", "3.25e-06")
    assert (onnx_row["artifact"], onnx_row["C++ ms"], onnx_row["reference ms"]) == ("cached", "-", "8.70 (onnxruntime)")
    assert (torch_row["TVM ÷ reference"], onnx_row["TVM ÷ reference"]) == ("0.37x", "0.52x")  # 4.56/12.3, 4.56/8.7
    assert xfail_row["TVM ÷ reference"] == "-"  # stopped before TVM ran
    assert int8_row["int8 cos / SQNR"] == "0.9123 / 12.3 dB"
    assert int8_row["stage: reason"] == 'compare: int8 cosine 0.91 < budget 0.99 for "logits"'
    assert int8_row["first diverging op / compiler stage"] == (
        "relax.nn.conv2d at conv2d_17 (max abs error 6.25e-02) first output outside <atol> after requantize")
    assert error_row["model / test"] == "test_models.py::test_broken[llvm]"  # no model name: the id alone
    assert error_row["stage: reason"] == f"import: {HOSTILE}"
    assert {error_row[c] for c in ("source", "artifact", "TVM ms", "TVM ÷ reference", "max abs error",
                                   "int8 cos / SQNR")} == {"-"}
    assert xfail_row["C++ check"] == "skipped no cmake"  # the state, its note on a line below


def test_rows_are_coloured_by_outcome_and_header_counts_them() -> None:
    page = render_html(make_report())
    assert parse(page).row_classes[1:] == ["passed", "passed", "failed", "error", "xfailed"]
    for outcome, count in {"passed": 2, "failed": 1, "xfailed": 1, "xpassed": 0, "error": 1}.items():
        assert f'data-outcome="{outcome}">{outcome}: {count}<' in page
    assert "TVM 0.27.0.post1" in page and 'llvm <code>{&quot;kind&quot;: &quot;llvm&quot;}</code>' in page
    assert re.search(r"\.failed \{ background: #[0-9a-f]{6}; \}", page)


def test_text_is_escaped() -> None:
    page = render_html(make_report())
    assert page.count("<script>") == 1  # only the page's own image counter
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;quotes&#x27;" in page
    assert "outside &lt;atol&gt; after" in page


def test_each_plot_decodes_as_png() -> None:
    records = make_records()
    sizes = [assert_png(draw(records)) for draw in (plots.error_histograms, plots.latencies, plots.quantization)]
    assert all(width >= 400 and height >= 200 for width, height in sizes)
    images = parse(render_html(make_report())).images
    assert len(images) == 3
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert_png(base64.b64decode(src.split(",", 1)[1]))


def test_setup_errors_alone_give_a_table_and_no_plots(tmp_path: Path) -> None:
    record = make_records()[3]
    report = {"tvm": "0.27", "targets": [], "tests": [record.to_json()]}
    drawings = [draw([record]) for draw in (plots.error_histograms, plots.latencies, plots.quantization)]
    assert drawings == [None] * 3
    path = write_html_report(tmp_path, report)
    assert path == tmp_path / "report.html" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    parser = parse(path.read_text())
    assert parser.body["data-images-total"] == "0" and parser.images == []
    assert by_column(parser)[0]["outcome"] == "error"


def test_rendering_leaves_matplotlib_global_state_alone(tmp_path: Path) -> None:
    """No import at start-up, no pyplot, the user's backend untouched (a fresh interpreter to see imports)."""
    script = """
import json, sys
from pathlib import Path
import pytest_tvmdeploy.report.html as report_html
assert "matplotlib" not in sys.modules
import matplotlib
matplotlib.use("svg")
report_html.render_html(json.loads(Path(sys.argv[1]).read_text()))
assert "matplotlib.pyplot" not in sys.modules
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
"""
    report = tmp_path / "report.json"
    report.write_text(json.dumps(make_report()))
    subprocess.run([sys.executable, "-c", script, str(report)], check=True, timeout=120)


def test_report_of_a_real_session_renders(project: pytest.Pytester, tmp_path: Path) -> None:
    """The records the plugin writes today render, whatever optional keys they lack."""
    project.makepyfile(test_one="""
        import pytest
        @pytest.mark.tvm_model(model="tiny_convnet.onnx", inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_onnx(tvm_deployment): pass
        @pytest.mark.tvm_model(model="missing.onnx", inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_missing(tvm_deployment): pass
    """)
    project.runpytest(f"--tvm-report={tmp_path}", "--tvm-cpp=off").assert_outcomes(passed=1, errors=1)
    report = json.loads((tmp_path / "report.json").read_text())
    rows = by_column(parse(write_html_report(tmp_path, report).read_text()))
    assert sorted(r["outcome"] for r in rows) == ["error", "passed"]
    passed = next(r for r in rows if r["outcome"] == "passed")
    assert passed["source"] == "onnx" and float(passed["TVM ms"]) >= 0 and passed["max abs error"] != "-"


def test_records_of_a_newer_schema_are_refused() -> None:
    report = make_report()
    report["tests"][0]["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        render_html(report)


def test_case_label_names_the_case_and_target_without_parsing_the_id() -> None:
    kit = TestRecord(test="pkg/kit/test_kit.py::test_model[llvm-squeezenet1_1-onnx_qdq]", target="llvm",
                     case="squeezenet1_1-onnx_qdq", model="squeezenet1_1")
    assert plots.case_label(kit) == "test_model[squeezenet1_1-onnx_qdq] @ llvm"
    only_target, = (r for r in make_records() if r.test.endswith("test_squeezenet[llvm]"))
    assert plots.case_label(only_target) == "test_squeezenet[llvm]"  # no case: the id, which names the target
    assert plots.case_label(TestRecord(test="t.py::test_x", target="llvm")) == "test_x @ llvm"


# --- the record itself and the other readers: terminal table, JUnit properties, report.json ---------

def full_record() -> TestRecord:
    """A record with every field set to something other than its default."""
    return TestRecord(
        test="pkg/kit/test_kit.py::test_model[llvm-squeezenet1_1-onnx_qdq]", target="llvm",
        case="squeezenet1_1-onnx_qdq", model="squeezenet1_1", outcome="failed", stage="compare", reason="differs",
        source="onnx", reference_name="onnxruntime", cache_hit=True, tuned=True, artifact="/cache/ab/model.so",
        device="tvm", timings={"import": 1.0, "run": 0.002, "cpp_run": 0.001, "reference": 0.004},
        cpp="failed", cpp_note="tvm_cpp_check exited with 134", snapshot="matched", max_abs_error=0.5,
        quant={"cosine": 0.99, "sqnr_db": 20.0}, error_histogram=histogram(-3),
        divergence={"node": "conv2d_1", "op": "relax.nn.conv2d", "max_abs_error": 0.25}, crash="SIGSEGV")


def test_a_full_record_survives_json() -> None:
    record = full_record()
    text = json.dumps(record.to_json())  # plain JSON values only
    assert TestRecord.from_json(json.loads(text)) == record
    assert TestRecord.from_json(record.to_json()) == record


def test_a_record_of_a_newer_schema_raises() -> None:
    data = {**full_record().to_json(), "schema": SCHEMA_VERSION + 1}
    with pytest.raises(ValueError, match="newer"):
        TestRecord.from_json(data)


def test_terminal_table_shows_the_cpp_state_and_each_skip_reason_once() -> None:
    from pytest_tvmdeploy.report.terminal import COLUMNS as TABLE_COLUMNS
    from pytest_tvmdeploy.report.terminal import format_table, summary_row

    records = [*make_records(), TestRecord(test="t.py::test_other[llvm]", target="llvm", outcome="passed",
                                          cpp="skipped", cpp_note="no cmake")]
    rows = [summary_row(r) for r in records]
    cpp, cpp_ms = TABLE_COLUMNS.index("cpp"), TABLE_COLUMNS.index("cpp ms")
    assert [row[cpp] for row in rows] == ["bitwise", "off", "differs", "-", "skipped", "skipped"]
    assert [row[cpp_ms] for row in rows] == ["3.2", "-", "3.2", "-", "-", "-"]  # only a C++ check that ran
    assert rows[4][-1] == "xfailed (build)" and rows[4][TABLE_COLUMNS.index("ort ms")] == "20.0"
    lines = format_table(records)
    assert len(lines) == 1 + len(records) + 2 and lines[0].split() == " ".join(TABLE_COLUMNS).split()
    assert lines[-2:] == ["artifacts: 2 built, 1 from cache", "C++ check skipped: no cmake"]  # once for two tests


def test_junit_properties_give_the_cpp_state_and_its_note() -> None:
    from pytest_tvmdeploy.report.properties import junit_properties

    properties = dict(junit_properties(full_record()))
    assert properties["tvm_cpp"] == "failed" and properties["tvm_cpp_note"] == "tvm_cpp_check exited with 134"
    assert properties == {
        "tvm_target": "llvm", "tvm_source": "onnx", "tvm_artifact": "cached", "tvm_import_s": 1.0,
        "tvm_run_ms": 2.0, "tvm_cpp_run_ms": 1.0, "tvm_reference_ms": 4.0, "tvm_stage": "compare",
        "tvm_crash": "SIGSEGV", "tvm_cpp": "failed",
        "tvm_cpp_note": "tvm_cpp_check exited with 134", "tvm_snapshot": "matched", "tvm_max_abs_error": 0.5,
        "tvm_int8_cosine": 0.99, "tvm_int8_sqnr_db": 20.0}
    bare = dict(junit_properties(TestRecord(test="t.py::test_x", target="llvm", cpp="bitwise")))
    assert bare == {"tvm_target": "llvm", "tvm_cpp": "bitwise"}  # no note, no key


def test_report_document_holds_each_record_as_json_and_the_schema() -> None:
    from pytest_tvmdeploy.report.json_report import report_document
    from pytest_tvmdeploy.targets import parse_target

    records = [full_record(), *make_records()]
    document = report_document(records, [parse_target("llvm")])
    assert document["schema"] == SCHEMA_VERSION and document["targets"][0]["label"] == "llvm"
    assert document["tests"] == [r.to_json() for r in records]
    assert [TestRecord.from_json(t) for t in json.loads(json.dumps(document))["tests"]] == records


# --- in a real browser ------------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def chromium() -> str:
    """The headless browser; CI (TVMDEPLOY_REQUIRE_BROWSER=1) fails instead of skipping when it is missing."""
    found = shutil.which("chromium") or next((p for p in ("/usr/bin/chromium",) if os.access(p, os.X_OK)), None)
    if found is None:
        message = "chromium is not installed (apt-get install chromium); the browser checks need it"
        if os.environ.get("TVMDEPLOY_REQUIRE_BROWSER") == "1":
            pytest.fail(message + ", and TVMDEPLOY_REQUIRE_BROWSER=1 requires them")
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_html_report(tmp_path_factory.mktemp("html"), make_report())


def run_chromium(chromium: str, tmp_path: Path, *args: str) -> str:
    result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_browser_dom_shows_every_row_and_decoded_images(chromium: str, page: Path, tmp_path: Path) -> None:
    dom = run_chromium(chromium, tmp_path, "--dump-dom", page.as_uri())
    parser = parse(dom)
    assert [r["outcome"] for r in by_column(parser)] == ["passed", "passed", "failed", "error", "xfailed"]
    assert parser.body["data-images-total"] == "3"
    assert parser.body.get("data-images-loaded") == "3", "the images did not decode in the browser"


def test_browser_screenshot_is_not_blank(chromium: str, page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert assert_png(shot.read_bytes(), min_colours=500) == (1280, 2000)
