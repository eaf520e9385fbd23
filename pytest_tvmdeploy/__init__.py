"""pytest-tvmdeploy: test that models deployed with Apache TVM compute what their framework computes.

The plain-Python API mirrors what the pytest plugin does for each ``tvm_model`` test.
"""

from pytest_tvmdeploy.targets import DEFAULT_TARGET, TargetSpec, parse_target
from pytest_tvmdeploy.check.elementwise import Comparison, OutputComparison, compare
from pytest_tvmdeploy.check.quantized import QuantBudget, QuantComparison, compare_quantized
from pytest_tvmdeploy.deploy.pipeline import Deployment, NamedArrays, Timings, deploy
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.inputs import make_inputs
from pytest_tvmdeploy.check.localize import Divergence, localize_divergence
from pytest_tvmdeploy.quantize import QuantConfig, quantize
from pytest_tvmdeploy.sources import ModelSource, open_source
from pytest_tvmdeploy.check.tolerances import Tolerance, ToleranceRules

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "Comparison",
    "Deployment",
    "Divergence",
    "ModelSource",
    "NamedArrays",
    "OutputComparison",
    "QuantBudget",
    "QuantComparison",
    "QuantConfig",
    "TargetSpec",
    "Timings",
    "Tolerance",
    "ToleranceRules",
    "TvmDeployError",
    "compare",
    "compare_quantized",
    "deploy",
    "localize_divergence",
    "make_inputs",
    "open_source",
    "parse_target",
    "quantize",
]
