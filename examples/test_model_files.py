"""Exported model files, as a deployment team receives them; paths are relative to this file."""

import pytest


@pytest.mark.tvm_model(model="models/resnet18.pt", inputs={"x": ((1, 3, 224, 224), "float32")})
def test_resnet18_torchscript(tvm_deployment):
    assert tvm_deployment.source_kind == "torchscript"


@pytest.mark.tvm_model(model="models/mobilenet_v2.onnx", inputs={"image": ((1, 3, 224, 224), "float32")})
def test_mobilenet_v2_onnx(tvm_deployment):
    assert tvm_deployment.reference_name == "onnxruntime"
    assert tvm_deployment.outputs["logits"].shape == (1, 1000)


@pytest.mark.tvm_model(model="models/squeezenet1_1.pt2", inputs={"x": ((1, 3, 224, 224), "float32")})
def test_squeezenet_exported_program(tvm_deployment):
    assert tvm_deployment.source_kind == "exported_program"
