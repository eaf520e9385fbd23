"""int8 deployments through the plugin: marker and option, calibration, budgets, cache keys."""

from __future__ import annotations

import pytest

QUANTIZED = """
import numpy as np, pytest
from models import ConvReluPoolConv, seeded

def calibration():
    rng = np.random.default_rng(5)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype("float32")} for _ in range(6)]

@pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 8, 8), "float32")},
                       quantize={"calibrate_mode": "max", "weight_scale": "max", "skip_conv_layers": []},
                       calibration=calibration)
def test_int8(tvm_deployment):
    info = tvm_deployment.quantization
    assert info["quantized_sites"] == 2 and info["calibration_samples"] == 6
    assert info["config"]["calibrate_mode"] == "max"
    assert tvm_deployment.cpp_outputs is not None  # the int8 .so runs from C++ as well
"""


def test_quantized_model_passes_its_budget_and_runs_from_cpp(project: pytest.Pytester) -> None:
    project.makepyfile(test_q=QUANTIZED)
    result = project.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_int8 *bitwise*0.9*/*dB*passed"])


def test_option_quantizes_every_marked_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import ConvReluPoolConv, TinyConvNet, seeded

        @pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 8, 8), "float32")})
        def test_a(tvm_deployment):
            assert tvm_deployment.quantization["config"]["calibrate_mode"] == "global_scale"

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")}, quantize=None)
        def test_opted_out(tvm_deployment):
            assert tvm_deployment.quantization is None
        """
    )
    result = project.runpytest("--tvm-quantize=global_scale", "-v")
    result.assert_outcomes(passed=2)
    bad = project.runpytest("--tvm-quantize=nonsense")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*quantize: 'nonsense' is not a quantization config: use *calibrate_mode*"])


def test_calibration_modes_without_data_are_an_error_and_the_fixture_can_supply_it(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import ConvReluPoolConv, seeded

        @pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 8, 8), "float32")},
                               quantize="kl_divergence")
        def test_kl(tvm_deployment):
            assert tvm_deployment.quantization["calibration_samples"] == 3
        """
    )
    missing = project.runpytest()
    missing.assert_outcomes(errors=1)
    missing.stdout.fnmatch_lines(["*test_kl: nn.Module ConvReluPoolConv: quantize calibrate_mode='kl_divergence' needs "
                                  "calibration data (calibration= in the marker, or the tvm_calibration_data "
                                  "fixture)*"])
    project.makeconftest(
        """
        import numpy as np, pytest

        @pytest.fixture
        def tvm_calibration_data():
            rng = np.random.default_rng(0)
            return [{"x": rng.standard_normal((1, 3, 8, 8)).astype("float32")} for _ in range(3)]
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_a_budget_miss_fails_listing_every_metric(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from models import ConvReluPoolConv, seeded

        @pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 8, 8), "float32")},
                               quantize={"global_scale": 0.05, "skip_conv_layers": []},
                               quant_budget={"min_cosine": 0.999, "min_sqnr_db": 40, "max_error_vs_range": 0.01})
        def test_crushed(tvm_deployment):
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "tvm (int8) vs pytorch (fp32): 1 of 1 output(s) outside the quantization budget",
        "  out0: float32 (1, 6, 4, 4)",
        "    cosine * (budget >= 0.999)  FAILED",
        "    sqnr_db * dB (budget >= 40 dB)  FAILED",
        "    error_vs_range * (budget <= 0.01)  FAILED",
        "*outlier_share*",
        "*reproducer: *",
    ])


def test_cache_key_follows_the_quantization_config_and_calibration_data(project: pytest.Pytester,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(
        """
        import os, numpy as np, pytest
        from models import ConvReluPoolConv, seeded

        def calibration():
            rng = np.random.default_rng(int(os.environ["CAL_SEED"]))
            return [{"x": rng.standard_normal((1, 3, 8, 8)).astype("float32")} for _ in range(3)]

        @pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 8, 8), "float32")},
                               quantize=os.environ["MODE"], calibration=calibration)
        def test_model(tvm_deployment): pass
        """
    )
    runs = [("max", "1", "1 built, 0 from cache"), ("max", "1", "0 built, 1 from cache"),
            ("percentile", "1", "1 built, 0 from cache"), ("max", "2", "1 built, 0 from cache"),
            ("global_scale", "1", "1 built, 0 from cache"), ("global_scale", "2", "0 built, 1 from cache")]
    for mode, seed, expected in runs:
        monkeypatch.setenv("MODE", mode)
        monkeypatch.setenv("CAL_SEED", seed)
        project.runpytest().stdout.fnmatch_lines([f"artifacts: {expected}"])  # global_scale ignores the data
