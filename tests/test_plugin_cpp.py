"""Every marked test also runs its .so from C++; crashes, timeouts and switches are reported."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from pytest_tvmdeploy.plugin.cpp import CPP_RUNNER_VARIABLE

CONVNET = """
import numpy as np, pytest
from models import TinyConvNet, seeded

@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")})
def test_convnet(tvm_deployment):
    pass
"""


def test_cpp_outputs_are_bitwise_equal_to_python_for_every_dtype(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import numpy as np, pytest
        from models import MixedDtypes, TopK, TwoInThreeOut, seeded

        def same_bits(d):
            assert d.cpp_outputs is not None
            assert list(d.cpp_outputs) == list(d.outputs)
            for name in d.outputs:
                a, b = d.outputs[name], d.cpp_outputs[name]
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            assert d.timings.cpp_run > 0 and d.timings.cpp_load > 0

        @pytest.mark.tvm_model(model=seeded(MixedDtypes()), cpp="on",
            inputs={"ids": ((2, 5), "int64"), "counts": ((3,), "int32"), "small": ((4,), "int8"),
                    "mask": ((2, 2), "bool"), "half": ((3, 3), "float16")})
        def test_dtypes(tvm_deployment):
            same_bits(tvm_deployment)

        @pytest.mark.tvm_model(model=TwoInThreeOut(), cpp=True,
                               inputs={"a": ((2, 4), "float32"), "b": ((3, 4), "float32")})
        def test_multi_io(tvm_deployment):
            same_bits(tvm_deployment)
            assert len(tvm_deployment.cpp_outputs) == 3

        @pytest.mark.tvm_model(model=TopK(), cpp="on", inputs={"x": ((4, 10), "float32")})
        def test_topk_and_sort_need_runtime_extra(tvm_deployment):
            same_bits(tvm_deployment)
            assert str(tvm_deployment.cpp_outputs[1].dtype) == "int64"
        """
    )
    result = project.runpytest("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random(["*test_dtypes *bitwise*passed", "*test_multi_io *bitwise*passed",
                                        "*test_topk_and_sort_need_runtime_extra *bitwise*passed"])
    # the runner $TVMDEPLOY_CPP_RUNNER names (this suite's one build) ran them: none was built into the cache
    assert not (project.path / ".pytest_cache/d/tvmdeploy/cpp-runner").exists()


def test_resnet18_from_cpp(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import numpy as np, pytest, torchvision

        @pytest.mark.tvm_model(model=torchvision.models.resnet18(), inputs={"x": ((1, 3, 224, 224), "float32")},
                               cpp="on")
        def test_resnet18(tvm_deployment):
            np.testing.assert_array_equal(tvm_deployment.cpp_outputs[0], tvm_deployment.outputs[0])
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_cpp_off_and_marker_override(project: pytest.Pytester) -> None:
    project.makepyfile(
        CONVNET
        + """
@pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")}, cpp="on")
def test_marker_says_on(tvm_deployment):
    assert tvm_deployment.cpp_outputs is not None
"""
    )
    result = project.runpytest("--tvm-cpp=off", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random(["*test_convnet  *-  *off  *passed", "*test_marker_says_on  *bitwise*passed"])


def _fake_runner(folder: Path, body: str) -> Path:
    script = folder / "fake_tvm_cpp_check"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_crash_of_the_cpp_child_fails_the_test_and_the_session_goes_on(project: pytest.Pytester) -> None:
    # Fault injection: a runner that dies of SIGSEGV the way a broken deployment would.
    crashing = _fake_runner(project.path, 'echo "loading the module" >&2\nkill -SEGV $$')
    project.makepyfile(CONVNET + "\ndef test_after():\n    pass\n")
    result = project.runpytest(f"--tvm-cpp-runner={crashing}", "--tvm-cpp=on")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["C++ runner: C++ runner died with SIGSEGV (signal 11) running */model.so; "
                                 "stderr tail:",
                                 "loading the module"])


def test_cpp_timeout_fails_the_test(project: pytest.Pytester) -> None:
    hanging = _fake_runner(project.path, "sleep 30")
    project.makepyfile(CONVNET)
    result = project.runpytest(f"--tvm-cpp-runner={hanging}", "--tvm-cpp-timeout=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["C++ runner: C++ runner timed out after 1 s running */model.so (child killed)"])


def test_cpp_output_that_differs_is_reported_with_the_first_difference(project: pytest.Pytester,
                                                                        cpp_exe: Path) -> None:
    # Fault injection: a runner that delegates to the real one, then flips one output value.
    project.makepyfile(CONVNET)
    tamper = project.path / "tamper.py"
    tamper.write_text(
        "import numpy as np, sys\n"
        "p = sys.argv[1] + '/output_0.npy'\n"
        "a = np.load(p); a.flat[3] += 1; np.save(p, a)\n"
    )
    out_dir = '$(echo "$@" | sed "s/.*--out-dir \\([^ ]*\\).*/\\1/")'
    lying = _fake_runner(project.path, f'{cpp_exe} "$@" && {os.sys.executable} {tamper} {out_dir}')
    result = project.runpytest(f"--tvm-cpp-runner={lying}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "C++ outputs differ from the Python VM's: out0: 1 of 10 element(s) differ bitwise; "
        "first at [[]0, 3[]]: tvm=*, tvm-cpp=*",
        "tvm-cpp output differs from pytorch: 1 of 1 output(s) outside tolerance",
    ])


def _path_without_cmake(tmp: Path) -> str:
    """A PATH with the compilers and python but no cmake."""
    tools = tmp / "tools"
    tools.mkdir()
    for name in ("gcc", "g++", "c++", "cc", "ld", "as"):
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
    return str(tools)


def test_missing_toolchain_skips_in_auto_and_errors_when_on(project: pytest.Pytester, own_cpp_runner: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(CONVNET)
    monkeypatch.setenv("PATH", _path_without_cmake(project.path))
    auto = project.runpytest_subprocess("--tvm-cpp=auto", "-p", "no:cacheprovider",
                                        f"--tvm-cache-dir={project.path / 'c1'}")
    auto.assert_outcomes(passed=1)
    auto.stdout.fnmatch_lines(["*test_convnet  *skipped  *passed", "C++ check skipped: cmake not found on PATH"])
    on = project.runpytest_subprocess("--tvm-cpp=on", f"--tvm-cache-dir={project.path / 'c2'}")
    on.assert_outcomes(errors=1)
    on.stdout.fnmatch_lines(["*test_convnet: the C++ check is required (cpp=on) but cmake not found on PATH"])


def test_runner_is_built_once_and_reused_across_runs(project: pytest.Pytester, own_cpp_runner: None) -> None:
    project.makepyfile(
        """
        import pytest
        from models import TinyConvNet, TwoInThreeOut

        @pytest.mark.parametrize("n", range(3))
        @pytest.mark.tvm_model(model=TinyConvNet(), inputs={"x": ((1, 3, 16, 16), "float32")}, cpp="on")
        def test_model(tvm_deployment, n): pass
        """
    )
    project.runpytest().assert_outcomes(passed=3)
    builds = list((project.path / ".pytest_cache/d/tvmdeploy/cpp-runner").glob("*/tvm_cpp_check"))
    assert len(builds) == 1
    built_at = builds[0].stat().st_mtime_ns
    project.runpytest().assert_outcomes(passed=3)
    assert [p.stat().st_mtime_ns
            for p in (project.path / ".pytest_cache/d/tvmdeploy/cpp-runner").glob("*/tvm_cpp_check")] == [built_at]


def test_prebuilt_runner_that_does_not_exist_is_an_error(project: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(CONVNET)
    result = project.runpytest("--tvm-cpp-runner=/nonexistent/tvm_cpp_check")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*/nonexistent/tvm_cpp_check: prebuilt C++ runner not found"])
    # the environment's runner, for sessions that name none; the command line's wins over it
    monkeypatch.setenv(CPP_RUNNER_VARIABLE, "/nonexistent/from_the_environment")
    result = project.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*/nonexistent/from_the_environment: prebuilt C++ runner not found"])
    result = project.runpytest("--tvm-cpp-runner=/nonexistent/tvm_cpp_check")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*/nonexistent/tvm_cpp_check: prebuilt C++ runner not found"])
