"""pytest-tvmdeploy: test that models deployed with Apache TVM compute what their framework computes.

The plain-Python API does what the pytest plugin does for each ``tvm_model`` test::

    from pytest_tvmdeploy import check, deploy
    deployment = deploy(model, {"x": ((1, 3, 224, 224), "float32")}, target="llvm")
    result = check(deployment, ToleranceRules(rtol=1e-4))
    assert result, result.describe()
"""

from pytest_tvmdeploy.checks import CheckResult, SnapshotFile, check
from pytest_tvmdeploy.checks.elementwise import Comparison, OutputComparison, compare
from pytest_tvmdeploy.checks.localize import Divergence, localize_divergence
from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.quantized import QuantComparison, compare_quantized
from pytest_tvmdeploy.checks.tolerances import Tolerance, ToleranceRules
from pytest_tvmdeploy.deployment.config import DeployConfig
from pytest_tvmdeploy.deployment.pipeline import deploy
from pytest_tvmdeploy.deployment.result import Deployment, Timings
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.inputs import make_inputs
from pytest_tvmdeploy.outputs import NamedArrays
from pytest_tvmdeploy.quantize import QuantConfig, quantize
from pytest_tvmdeploy.shapes import ShapeSignature, SymbolicDims
from pytest_tvmdeploy.sources import ModelSource, open_source
from pytest_tvmdeploy.targets import DEFAULT_TARGET, TargetSpec, parse_target

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "CheckResult",
    "Comparison",
    "DeployConfig",
    "Deployment",
    "Divergence",
    "ModelSource",
    "NamedArrays",
    "OutputComparison",
    "QuantBudget",
    "QuantComparison",
    "QuantConfig",
    "ShapeSignature",
    "SnapshotFile",
    "SymbolicDims",
    "TargetSpec",
    "Timings",
    "Tolerance",
    "ToleranceRules",
    "TvmDeployError",
    "check",
    "compare",
    "compare_quantized",
    "deploy",
    "localize_divergence",
    "make_inputs",
    "open_source",
    "parse_target",
    "quantize",
]
