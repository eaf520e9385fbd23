"""The one table of pytest-tvmdeploy's settings: command line, ini, marker, default, help, parser.

``pytest_addoption`` of each plugin feature module registers its rows
(:func:`options_of`), :mod:`pytest_tvmdeploy.settings.session` merges the values by the rows'
rules, and the ``tvm_model`` marker's arguments are validated against :data:`MARKER_ARGUMENTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_tvmdeploy.settings import values
from pytest_tvmdeploy.targets import DEFAULT_TARGET

MARKER = "tvm_model"

#: The environment variable ``tvm.testing`` takes its targets from (``;``-separated).
TARGETS_VARIABLE = "TVM_TEST_TARGETS"


@dataclass(frozen=True)
class Option:
    """One setting: ``--tvm-x`` on the command line, optionally ``tvm_x`` in the ini file.

    The command line wins over the ini file, which wins over ``default``. ``parse(value, where)``
    turns the merged value into what the settings hold; ``feature`` names the plugin module
    that registers it.
    """

    name: str                      # the dest / ini name: tvm_target
    feature: str
    help: str
    metavar: str | None = None
    default: Any = None
    ini: bool = False
    parse: Callable[[Any, str], Any] = values.text_or_none
    choices: tuple[str, ...] | None = None
    many: bool = False             # repeatable on the command line, one per line in the ini

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def where(self) -> str:
        """How an error names the option."""
        return f"{self.flag} / {self.name}" if self.ini else self.flag


def switch(name: str, feature: str, default: str, help: str) -> Option:  # noqa: A002 - Option's own field name
    """An ``on`` / ``off`` option, settable in the ini file too."""
    return Option(name, feature, help, default=default, ini=True, choices=("on", "off"), parse=values.switch)


OPTIONS: tuple[Option, ...] = (
    Option("tvm_target", "deploy", many=True, ini=True, metavar="TARGET",
           help=f"TVM target for tvm_model tests: 'llvm', 'llvm -mcpu=znver4' or JSON "
                f"'{{\"kind\": \"llvm\", \"mcpu\": \"znver4\"}}'. Repeat to run each test per target. "
                f"Default: ${TARGETS_VARIABLE} (';'-separated, as tvm.testing reads it), else ini "
                f"tvm_target, else {DEFAULT_TARGET}."),
    Option("tvm_rtol", "deploy", ini=True, metavar="R", parse=values.tolerance,
           help="relative tolerance for floating outputs of tests whose marker sets none"),
    Option("tvm_atol", "deploy", ini=True, metavar="A", parse=values.tolerance,
           help="absolute tolerance for floating outputs of tests whose marker sets none"),
    Option("tvm_cache_dir", "deploy", ini=True, metavar="DIR",
           help="artifact cache folder (default: ini tvm_cache_dir, relative to the rootdir, "
                "else <pytest cache>/tvmdeploy)"),
    Option("tvm_repeat", "deploy", ini=True, metavar="N", default="1", parse=values.repeat,
           help="time N calls of every runner (TVM Python, C++, the reference) and report the "
                "median (default: ini tvm_repeat, else 1)"),
    Option("tvm_threads", "deploy", ini=True, metavar="N", parse=values.thread_count,
           help="threads TVM's CPU runtime runs each model with (sets TVM_NUM_THREADS; default: "
                "$TVM_NUM_THREADS, else the available cores shared evenly among pytest-xdist workers)"),
    Option("tvm_cc", "deploy", ini=True, metavar="COMPILER",
           help="compiler export_library links the .so with, e.g. aarch64-linux-gnu-g++ for a "
                "target with another mtriple (default: ini tvm_cc, else the host's g++)"),
    Option("tvm_cpp", "cpp", ini=True, default="auto", choices=values.CPP_MODES, parse=values.cpp_mode,
           help="also run every .so from C++ (cpp_check/, linked to libtvm_runtime) in a child "
                "process: auto (default; skipped with a reason when CMake or a C++ compiler is "
                "missing), on (missing toolchain is an error), off"),
    Option("tvm_cpp_runner", "cpp", metavar="PATH",
           help="a prebuilt tvm_cpp_check to use instead of building cpp_check/ (default: "
                "$TVMDEPLOY_CPP_RUNNER, else built once into the cache)"),
    Option("tvm_cpp_timeout", "cpp", metavar="SECONDS", default="600", parse=values.seconds,
           help="time limit of one C++ run (default 600)"),
    switch("tvm_snapshot", "snapshot", "on",
           help="keep each marked test's reference outputs as a syrupy snapshot under "
                "__snapshots__/ and check PyTorch and TVM against it (default on; "
                "--snapshot-update writes them)"),
    Option("tvm_ratchet", "snapshot", ini=True, default="fail", choices=("fail", "warn", "off"),
           help="snapshots keep each output's error on each target; when a later run's max abs or "
                "p99 error grows past --tvm-ratchet-factor times that level, even inside tolerance, "
                "fail the test (default), warn, or do nothing; --snapshot-update records the new level"),
    Option("tvm_ratchet_factor", "snapshot", ini=True, default="4", metavar="FACTOR", parse=values.growth_factor,
           help="how many times its recorded level an output's error may grow before the ratchet acts "
                "(default 4; errors below atol/100 + 1e-6 x the output's magnitude count as that floor)"),
    Option("tvm_schedule", "deploy", ini=True, default="sampled", choices=("sampled", "none"),
           help="what functions without a tuning record get: 'sampled' (default), a schedule drawn from "
                "MetaSchedule's rules and ranked by the shipped cost model, nothing measured; 'none', "
                "TVM's plain loops"),
    switch("tvm_static_shapes", "deploy", "off",
           help="build every marked model for its test's input sizes, even where the inputs name a "
                "dimension (shapes=) or an ONNX file leaves one open (dim_param): one artifact per "
                "shape, instead of one symbolic artifact for them all (default off)"),
    Option("tvm_quantize", "deploy", metavar="MODE",
           help="deploy every marked test's model as int8: a calibrate mode (global_scale, "
                "kl_divergence, max, percentile), optionally +WEIGHT_SCALE (e.g. kl_divergence+max); "
                "outputs are then judged by the quantization budget, not elementwise"),
    switch("tvm_localize", "check", "on",
           help="when a float model's TVM outputs leave tolerance, compare every intermediate "
                "result with the framework's and name the first operator that diverges "
                "(default on; costs one or two extra builds per failing test)"),
    switch("tvm_bisect", "check", "on",
           help="when a float model's TVM outputs leave tolerance, rebuild it with more and more of "
                "the build's optional passes (and tuning records) and name the first compiler stage, "
                "pass or record after which they do (default on; a few extra builds per failing test)"),
    Option("tvm_tune", "tuning", metavar="TRIALS", default="0", parse=values.tuning_budget,
           help="tune each marked model with MetaSchedule until its target's tuning database holds "
                "TRIALS trials for it (records already there count) before building; builds apply "
                "the database. A time limit per model and run: 15m (time only), 2000/15m (whichever "
                "comes first)"),
    Option("tvm_tuning_dir", "tuning", ini=True, metavar="DIR",
           help="tuning databases, one folder per target label (default: ini tvm_tuning_dir, "
                "relative to the rootdir, else <cache>/tuning); commit it to reuse tuned schedules in CI"),
    Option("tvm_rpc", "remote", metavar="HOST:PORT",
           help="run every .so on this TVM RPC server instead of in this process"),
    Option("tvm_rpc_tracker", "remote", metavar="HOST:PORT",
           help="run every .so on a device leased from this RPC tracker (with --tvm-rpc-key)"),
    Option("tvm_rpc_key", "remote", metavar="KEY",
           help="the device key: asked of the RPC tracker, or the match key sent to a --tvm-rpc server"),
    Option("tvm_rpc_timeout", "remote", metavar="SECONDS", default="600", parse=values.seconds,
           help="time limit of one remote run, waiting for a free device included (default 600)"),
    switch("tvm_isolate", "isolation", "on",
           help="run everything that touches TVM (import, quantize, tune, build, run, localize) in a "
                "sandbox worker process, so a TVM crash fails one test, not the session (default on; "
                "off runs in-process, for debugging with pdb)"),
    Option("tvm_timeout", "isolation", ini=True, metavar="SECONDS", default="1800", parse=values.seconds,
           help="time limit of each stage in the sandbox worker; a stage that exceeds it is killed "
                "and fails its test (default 1800)"),
    Option("tvm_memory_limit", "isolation", ini=True, metavar="SIZE", parse=values.size,
           help="memory the sandbox worker may allocate (e.g. 8G); exceeding it fails the test "
                "instead of exhausting the host (default: no limit)"),
    Option("tvm_setup", "isolation", ini=True, metavar="MODULE", many=True, parse=values.module_names,
           help="a module imported where TVM runs (the sandbox worker, or this process with "
                "--tvm-isolate=off) before its first deployment: register custom converters, TVM "
                "functions or passes there (repeatable)"),
    switch("tvm_coverage", "report", "off",
           help="record the operators each model's frontend sees (aten ops, ONNX op types) and print "
                "a coverage table: per operator, the models using it and how their tests ended "
                "(default off; on in tvmdeploy-kit)"),
    Option("tvm_report", "report", metavar="DIR",
           help="write DIR/report.json (every marked test's record: target, source, stage, "
                "reason, times, errors; merged from all xdist workers) and DIR/report.html "
                "(the same as a table with plots)"),
    Option("tvm_kit_suite", "kit", metavar="SUITE", default="models",
           choices=("models", "onnx-node", "torch-opinfo"),
           help="what the conformance kit checks: models (the catalogue, see --tvm-kit-models), "
                "onnx-node (every ONNX backend node test of the installed onnx with array inputs) or "
                "torch-opinfo (PyTorch's OpInfo operators, one sample per operator and dtype)"),
    Option("tvm_kit_models", "kit", metavar="NAMES", default="default",
           help="models of the conformance kit (pytest --pyargs pytest_tvmdeploy.kit): "
                "default (a quick subset), all, or comma-separated catalogue names"),
    Option("tvm_kit_baseline", "kit", metavar="REPORT",
           help="an earlier run's report.json (or the folder holding it) to compare the kit's "
                "scoreboard with: newly passing / newly failing cases and operators (default: the "
                "report.json already in --tvm-report's folder)"),
    Option("tvm_kit_expected", "kit", metavar="JSON",
           help="the kit's expected failures per target (default: the one shipped with the kit for "
                "the suite)"),
)


def options_of(feature: str) -> tuple[Option, ...]:
    """The rows a plugin feature module registers."""
    return tuple(option for option in OPTIONS if option.feature == feature)


def option(name: str) -> Option:
    """The row named ``name`` (``tvm_target``)."""
    return next(o for o in OPTIONS if o.name == name)


@dataclass(frozen=True)
class MarkerArgument:
    """One keyword of ``@pytest.mark.tvm_model``; ``overrides`` names the option it replaces per test."""

    name: str
    help: str
    overrides: str | None = None
    required: bool = False


MARKER_ARGUMENTS: tuple[MarkerArgument, ...] = (
    MarkerArgument("model", "nn.Module, zero-argument callable returning one, or path (.onnx/.pt/.pt2) "
                            "relative to the test file", required=True),
    MarkerArgument("inputs", "dict name -> array/tensor or (shape, dtype[, (low, high)]) spec, or a list "
                             "in positional order", required=True),
    MarkerArgument("shapes", "the sizes to run at when inputs name a dimension, e.g. inputs={'x': (('batch', 3, "
                             "224, 224), 'float32')}: a list [{'batch': 1}, {'batch': 8}] (a test id each, one "
                             "artifact for all), or ranges {'batch': (1, 32)} (run at both ends)"),
    MarkerArgument("ranges", "the sizes each named dimension may take, {'batch': (1, 32)} (high None: unbounded); "
                             "the artifact is bounded by them and a shape outside is an error"),
    MarkerArgument("static_shapes", "build for each shape's sizes (one artifact per shape) instead of one "
                                    "symbolic artifact (default: --tvm-static-shapes)",
                   overrides="tvm_static_shapes"),
    MarkerArgument("rtol", "relative tolerance for every floating output", overrides="tvm_rtol"),
    MarkerArgument("atol", "absolute tolerance for every floating output", overrides="tvm_atol"),
    MarkerArgument("tolerances", "per-output overrides: {name or index: {'rtol': .., 'atol': ..}}"),
    MarkerArgument("cpp", "also run the .so from C++: 'auto', 'on'/True, 'off'/False (default: --tvm-cpp)",
                   overrides="tvm_cpp"),
    MarkerArgument("snapshot", "keep the reference outputs as a syrupy snapshot: True/False "
                               "(default: --tvm-snapshot)", overrides="tvm_snapshot"),
    MarkerArgument("quantize", "deploy the int8 model: a calibrate mode name, a QuantConfig or a dict of "
                               "its fields (default: --tvm-quantize)", overrides="tvm_quantize"),
    MarkerArgument("calibration", "calibration data for quantize=: an iterable of input dicts, or a "
                                  "callable returning one"),
    MarkerArgument("quant_budget", "budgets of a quantized model against fp32: a QuantBudget or a dict of "
                                   "its fields; given without quantize= (an int8 model file), outputs are "
                                   "judged by it, not elementwise"),
    MarkerArgument("name", "the model's name in reports (default: the file name or the module's class)"),
    MarkerArgument("tune", "MetaSchedule trials this model should have in the tuning database, stored "
                           "ones included (default: --tvm-tune, 0)", overrides="tvm_tune"),
)

MARKER_NAMES = tuple(argument.name for argument in MARKER_ARGUMENTS)
