"""GPTQ weight rounding (Frantar et al. 2022, https://arxiv.org/abs/2210.17323): ORT's int8 weights and
scales, each layer's rounding errors compensated through its calibration inputs."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from mobilenets.deployment.onnx import INPUT_NAME

# On torchvision's ImageNet V2, rounding only the weights to int8 (nearest, per channel) already moves
# the top-1 of 10% of real-photo crops: the weights, not the activations, are most of V2's int8 error
# (BENCHMARKS.md, issue 4). GPTQ (Frantar et al. 2022; OBQ, Frantar & Alistarh 2022) rounds one input
# column of a layer at a time and moves each column's rounding error onto the columns not yet rounded,
# weighted by the inverse Hessian H = Σ xxᵀ of the layer's inputs on calibration images, so that the
# layer's *outputs* change least. The scales stay ORT's, so the file, its size and its speed are unchanged.

WEIGHT_ROUNDINGS = ("nearest", "gptq")


def layer_input_hessians(
    graph_model: onnx.ModelProto, layers: Sequence, images: np.ndarray, batch_size: int = 4
) -> list[torch.Tensor]:
    """H = Σ xxᵀ of each Conv/Gemm's input over ``images`` (one k²×k² per channel for a depthwise conv)."""
    import onnxruntime as ort

    augmented = copy.deepcopy(graph_model)
    present = {o.name for o in augmented.graph.output}
    for name in dict.fromkeys(node.input[0] for node in layers):
        if name not in present:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.enable_mem_pattern = False  # a memory plan for ~100 graph outputs costs more than it saves
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [node.input[0] for node in layers]
    hessians: list = [None] * len(layers)
    for start in range(0, len(images), batch_size):
        values = dict(zip(wanted, session.run(wanted, {INPUT_NAME: images[start : start + batch_size]}), strict=True))
        for index, node in enumerate(layers):
            x = torch.from_numpy(values[node.input[0]])
            if node.op_type == "Gemm":
                h = (x.T @ x)[None]
            else:
                found = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                patches = nn.functional.unfold(
                    x,
                    found["kernel_shape"],
                    dilation=found.get("dilations", [1, 1]),
                    padding=found.get("pads", [0, 0, 0, 0])[:2],
                    stride=found.get("strides", [1, 1]),
                )
                if found.get("group", 1) == 1:
                    columns = patches.transpose(1, 2).reshape(-1, patches.shape[1])
                    h = (columns.T @ columns)[None]
                else:
                    per_channel = patches.view(x.shape[0], x.shape[1], -1, patches.shape[-1])
                    h = torch.einsum("ncil,ncjl->cij", per_channel, per_channel)
            h = h.double()
            hessians[index] = h if hessians[index] is None else hessians[index] + h
        del values
    return hessians


def gptq_round(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """int8 values of ``weight`` (rows: output channels, per-row ``scale``), rounded column by column.

    ``hessian`` is (1, K, K) shared by all rows, or (rows, K, K) for a depthwise layer. A 1% damping of the
    diagonal keeps the inverse stable where an input is constant on the calibration images.
    """
    w, h = weight.double().clone(), hessian.double().clone()
    diagonal = torch.diagonal(h, dim1=1, dim2=2)
    diagonal[diagonal == 0] = 1.0
    diagonal += damping * diagonal.mean(dim=1, keepdim=True)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s, q = scale.double(), torch.zeros_like(w)
    for j in range(w.shape[1]):
        q[:, j] = torch.clamp(torch.round(w[:, j] / s), -127, 127)
        error = (w[:, j] - q[:, j] * s) / upper[:, j, j]
        w[:, j + 1 :] -= error[:, None] * upper[:, j, j + 1 :]
    return q.to(torch.int8)


def gptq_round_weights(prepared: onnx.ModelProto, quantized: onnx.ModelProto, calibration: np.ndarray) -> int:
    """Re-round, in place, every per-channel int8 weight of ``quantized`` (ORT's QDQ model of ``prepared``)
    with GPTQ, from the fp32 layer inputs of ``prepared`` on ``calibration``. Returns the layers changed."""
    floats = {i.name: i for i in prepared.graph.initializer}
    ints = {i.name: i for i in quantized.graph.initializer}
    layers, names = [], []
    for node in prepared.graph.node:
        weight = node.input[1] if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 else ""
        scale = ints.get(f"{weight}_scale")
        if f"{weight}_quantized" in ints and weight in floats and scale is not None and len(scale.dims) == 1:
            layers.append(node)
            names.append(weight)
    write_gptq_weights(floats, ints, names, layer_input_hessians(prepared, layers, calibration))
    return len(names)


def write_gptq_weights(floats: dict, ints: dict, names: Sequence[str], hessians: Sequence[torch.Tensor]) -> None:
    """Replace each ``NAME_quantized`` initializer in ``ints`` by GPTQ's rounding of the float ``NAME``."""
    from onnx import numpy_helper

    for name, hessian in zip(names, hessians, strict=True):
        w = torch.from_numpy(numpy_helper.to_array(floats[name]).copy())
        scale = torch.from_numpy(numpy_helper.to_array(ints[f"{name}_scale"]).astype(np.float64))
        values = gptq_round(w.reshape(w.shape[0], -1), hessian, scale).reshape(w.shape).numpy()
        ints[f"{name}_quantized"].CopyFrom(numpy_helper.from_array(values, f"{name}_quantized"))
