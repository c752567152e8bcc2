"""int8 models that are checked, never silently broken: PTQ, mixed precision and QAT, all to one ONNX form.

The deployed form is always an ONNX Runtime QDQ model: int8 weights quantized per output channel
(per-tensor weights collapse MobileNets' depthwise layers: Krishnamoorthi 2018, https://arxiv.org/abs/1806.08342), uint8 activations calibrated on training
images, BatchNorm already folded into the convolutions by the exporter. Before quantizing, hard-swish,
hard-sigmoid and spatial means are rewritten in a form ORT runs in int8 (``int8_friendly_form``: no float
islands in MobileNetV3), and the classifier keeps float logits (``float_logits``).

- **PTQ**: ``onnxruntime.quantization.quantize_static`` with min-max, percentile or entropy calibration.
- **Mixed precision**: when PTQ loses more than the threshold, the layers whose activations carry the
  largest quantization error (ORT's ``qdq_loss_debug``) are kept in float (``nodes_to_exclude``), and so
  are the stem and the classifier: the first and last layers are where int8 hurts most.
- **QAT**: a short fine-tune of the BN-folded network in PyTorch with fake-quantized weights (the same
  per-channel symmetric int8 grid ORT will use) and fake-quantized activations, whose learned weights then
  go through the very same ORT QDQ path. See docs/deployment.md for why not ``torch.ao`` or PT2E.

After every conversion the int8 model is evaluated next to fp32 on held-out images (``compare``).

Modules, in the order the data flows:

- ``calibration``: the images, sampled and fed to ORT's calibrator; histogram calibration fitted to memory.
- ``graph_form``: the int8-friendly ONNX form, constant scales folded, float logits; ORT's pre-processing.
- ``gptq``: GPTQ rounding of the int8 weights.
- ``ptq``: the methods and defaults, the argument checks, ``quantize_ptq``.
- ``comparison``: int8 next to fp32, whole model and layer by layer; the layers kept in float.
- ``qat``: fake-quantized fine-tuning.
- ``methods``: the whole decision (``quantize_model``) and its report lines.
- ``runs``: run directories and image folders (``quantize_run``, ``quantize_folder``), the int8 engine's calibration.
"""

from mobilenets.deployment.quantization.calibration import (
    HISTOGRAM_MEMORY_FACTOR,
    HISTOGRAM_MEMORY_SHARE,
    ArrayReader,
    ImageSet,
    activation_bytes_per_image,
    calibration_stride,
    images_that_fit,
    load_images,
    sample,
)
from mobilenets.deployment.quantization.comparison import (
    Comparison,
    LayerError,
    compare,
    float_nodes_for,
    layer_errors,
    model_layer,
)
from mobilenets.deployment.quantization.gptq import gptq_round, layer_input_hessians, write_gptq_weights
from mobilenets.deployment.quantization.graph_form import (
    constant_scale_nodes,
    float_logits,
    fold_constant_scales,
    int8_friendly_form,
    prepare_for_quantization,
)
from mobilenets.deployment.quantization.methods import quantize_model, warn_drop
from mobilenets.deployment.quantization.ptq import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_THRESHOLD,
    int8_out_path,
    quantize_ptq,
)
from mobilenets.deployment.quantization.qat import FakeQuantizeWeight, qat_finetune
from mobilenets.deployment.quantization.runs import quantize_folder, quantize_run

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_METHOD",
    "DEFAULT_THRESHOLD",
    "HISTOGRAM_MEMORY_FACTOR",
    "HISTOGRAM_MEMORY_SHARE",
    "ArrayReader",
    "Comparison",
    "FakeQuantizeWeight",
    "ImageSet",
    "LayerError",
    "activation_bytes_per_image",
    "calibration_stride",
    "compare",
    "constant_scale_nodes",
    "float_logits",
    "float_nodes_for",
    "fold_constant_scales",
    "gptq_round",
    "images_that_fit",
    "int8_friendly_form",
    "int8_out_path",
    "layer_errors",
    "layer_input_hessians",
    "load_images",
    "model_layer",
    "prepare_for_quantization",
    "qat_finetune",
    "quantize_folder",
    "quantize_model",
    "quantize_ptq",
    "quantize_run",
    "sample",
    "warn_drop",
    "write_gptq_weights",
]
