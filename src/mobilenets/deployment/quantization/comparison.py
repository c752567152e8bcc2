"""int8 next to fp32: the whole model on held-out images (``compare``), the error layer by layer
(``layer_errors``), and the layers mixed precision keeps in float (``float_nodes_for``)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from mobilenets.deployment.onnx_runtime import onnx_logits
from mobilenets.deployment.quantization.calibration import ArrayReader, ImageSet
from mobilenets.deployment.quantization.graph_form import prepare_for_quantization
from mobilenets.deployment.timing import median_latency_ms


@dataclass
class Comparison:
    """int8 against fp32 on the same images; accuracies are fractions (None without labels)."""

    images: int
    fp32_accuracy: float | None
    int8_accuracy: float | None
    agreement: float
    fp32_size_bytes: int
    int8_size_bytes: int
    fp32_latency_ms: float | None = None
    int8_latency_ms: float | None = None
    latency_batch: int | None = None

    @property
    def drop_points(self) -> float:
        """Accuracy points lost (agreement with fp32 stands in for accuracy on unlabelled images).

        Rounded to 1e-9 points: accuracies are counts over a finite set, and 0.84 − 0.83 must compare as
        exactly 1 point against a 1-point threshold ("exceeds" means more than), not 1.0000000000000009.
        """
        if self.fp32_accuracy is not None and self.int8_accuracy is not None:
            return round(100.0 * (self.fp32_accuracy - self.int8_accuracy), 9)
        return round(100.0 * (1.0 - self.agreement), 9)

    def to_dict(self) -> dict:
        return {**asdict(self), "drop_points": round(self.drop_points, 3)}


def compare(
    fp32_onnx: Path | str, int8_onnx: Path | str, evaluation: ImageSet, latency_batch: int | None = 1
) -> Comparison:
    fp32 = onnx_logits(fp32_onnx, evaluation.images).argmax(1)
    int8 = onnx_logits(int8_onnx, evaluation.images).argmax(1)
    labels = evaluation.labels
    comparison = Comparison(
        images=len(evaluation),
        fp32_accuracy=None if labels is None else float((fp32 == labels).mean()),
        int8_accuracy=None if labels is None else float((int8 == labels).mean()),
        agreement=float((fp32 == int8).mean()),
        fp32_size_bytes=Path(fp32_onnx).stat().st_size,
        int8_size_bytes=Path(int8_onnx).stat().st_size,
    )
    if latency_batch:
        comparison.latency_batch = latency_batch
        comparison.fp32_latency_ms = median_latency_ms(fp32_onnx, evaluation.images, latency_batch)
        comparison.int8_latency_ms = median_latency_ms(int8_onnx, evaluation.images, latency_batch)
    return comparison


# --------------------------------------------------------------------------------------------------
# Where the error comes from, and keeping those layers in float
# --------------------------------------------------------------------------------------------------


ACTIVATION_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid"}


@dataclass
class LayerError:
    """Signal-to-quantization-noise ratio (dB, higher is better) of one activation tensor."""

    tensor: str
    node: str
    op_type: str
    sqnr_db: float  # int8 model's activation vs fp32 model's: error accumulated up to this layer
    local_sqnr_db: float  # the tensor against its own quantize→dequantize (clipping by ReLU/clip included)
    loss_db: float  # SQNR vs fp32 lost in this layer: its input's sqnr_db minus its own
    layer: str = ""  # the model's module path (``blocks.3.expand.conv``), which ``node`` (``node_Conv_809``) is not

    @property
    def where(self) -> str:
        return f"{self.layer} ({self.op_type}, ONNX node {self.node})" if self.layer else f"{self.node} ({self.op_type})"

    def to_dict(self) -> dict:
        return asdict(self)


def layer_errors(fp32_onnx: Path | str, int8_onnx: Path | str, images: np.ndarray) -> list[LayerError]:
    """Per-tensor quantization error (ORT ``qdq_loss_debug``), the layers that lose the most SQNR first."""
    from onnxruntime.quantization import qdq_loss_debug as debug

    with tempfile.TemporaryDirectory(prefix="mobilenets-qdebug-") as work:
        prepared = prepare_for_quantization(Path(fp32_onnx), Path(work) / "fp32.onnx")
        float_aug, int8_aug = Path(work) / "fp32_aug.onnx", Path(work) / "int8_aug.onnx"
        debug.modify_model_output_intermediate_tensors(str(prepared), str(float_aug))
        debug.modify_model_output_intermediate_tensors(str(int8_onnx), str(int8_aug))
        float_acts = debug.collect_activations(str(float_aug), ArrayReader(images))
        int8_acts = debug.collect_activations(str(int8_aug), ArrayReader(images))
        errors = debug.compute_activation_error(debug.create_activation_matching(int8_acts, float_acts))
        graph = onnx.load(str(prepared)).graph
        producers = {output: node for node in graph.node for output in node.output}
        weights = {initializer.name for initializer in graph.initializer}
    accumulated = {tensor: float(error["xmodel_err"]) for tensor, error in errors.items() if "xmodel_err" in error}
    found = []
    for tensor, sqnr in accumulated.items():
        node = producers.get(tensor)
        if node is None:
            continue
        before = min((accumulated[i] for i in node.input if i in accumulated), default=sqnr)
        local = float(errors[tensor].get("qdq_err", np.inf))
        found.append(
            LayerError(tensor, node.name, node.op_type, sqnr, local, before - sqnr, model_layer(node, producers, weights))
        )
    return sorted(found, key=lambda e: -e.loss_db)


def model_layer(node, producers: dict, weights: set[str], depth: int = 3) -> str:
    """The module path of the layer an ONNX node computes, read from its weight's name (the exporter keeps
    parameter names: ``blocks.3.expand.conv.weight``); an activation or pooling takes its producer's."""
    for name in node.input[1:]:
        if name in weights and name.endswith(".weight"):
            return name.removesuffix(".weight")
    if depth and node.input and node.input[0] in producers:
        return model_layer(producers[node.input[0]], producers, weights, depth - 1)
    return ""


def float_nodes_for(
    fp32_onnx: Path | str, early_convs: int, errors: Sequence[LayerError] = (), worst: int = 0
) -> list[str]:
    """Nodes to keep in float: the first ``early_convs`` convolutions, and the producers of the ``worst`` tensors.

    Quantization noise entering the first layers is carried and amplified by all the rest, so keeping
    the stem and the first block(s) in float recovers the most accuracy per float MAC.
    An activation (ReLU, clip, hard-swish) goes with the convolution feeding it: ORT fuses the pair.
    """
    with tempfile.TemporaryDirectory(prefix="mobilenets-mixed-") as work:
        graph = onnx.load(str(prepare_for_quantization(Path(fp32_onnx), Path(work) / "fp32.onnx"))).graph
    producers = {output: node for node in graph.node for output in node.output}
    chosen, convs = [], 0
    for node in graph.node:
        if node.op_type == "Conv":
            if convs == early_convs:
                break
            convs += 1
        chosen.append(node.name)
    for error in errors[:worst]:
        chosen.append(error.node)
        node = producers.get(error.tensor)
        if node is not None and node.op_type in ACTIVATION_OPS and node.input[0] in producers:
            chosen.append(producers[node.input[0]].name)
    return list(dict.fromkeys(chosen))
