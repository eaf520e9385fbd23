"""Models straight from Python: the marker takes an nn.Module or a factory returning one."""

import pytest
import torchvision

from conftest import seeded


@pytest.mark.tvm_model(
    model=lambda: torchvision.models.resnet18().eval(),
    inputs={"x": ((1, 3, 224, 224), "float32")},
    rtol=1e-4, atol=1e-4,
)
def test_resnet18(tvm_deployment):
    # the standard checks run for every marked test; the body may add its own
    assert tvm_deployment.outputs[0].shape == (1, 1000)


@pytest.mark.tvm_model(model=lambda: seeded("mobilenet_v2"), inputs={"x": ((1, 3, 224, 224), "float32")})
def test_mobilenet_v2(tvm_deployment):
    reference, deployed = tvm_deployment.reference[0], tvm_deployment.outputs[0]
    assert reference.argmax() == deployed.argmax()  # same top-1 class
