"""The graph form ONNX Runtime runs entirely in int8 (hard-swish, hard-sigmoid and spatial means rewritten,
constant scales folded, float logits), and ORT's pre-processing onto it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process

# ORT's CPU provider has no int8 kernel for HardSigmoid (nor for HardSwish, which the quantizer inlines
# as x·HardSigmoid(x)) and quantizes no ReduceMean: in MobileNetV3 every hard-swish, every SE gate and
# every SE pooling became a float island, DequantizeLinear → op → QuantizeLinear, 39 of each in
# V3-Small, costing more than the int8 convolutions saved (benchmarks/deploy_v3_profile.py). Written as
# the V3 paper defines them (§5.2), hard-swish x·ReLU6(x+3)/6 and hard-sigmoid ReLU6(x+3)/6 need only
# Add and Mul, which ORT runs as QLinearAdd/QLinearMul, and Clip(0, 6), which the quantizer absorbs into
# the uint8 range of the Add. The remaining multiplication by the constant 1/6 is exact on a quantized
# tensor: it is a change of scale, so it is folded into the scale of the DequantizeLinear that reads it.
# A mean over H×W is GlobalAveragePool, which ORT runs as QLinearGlobalAveragePool.

CONSTANT_SCALE_PREFIX = "int8_form_scale/"


def graph_index(graph: onnx.GraphProto) -> tuple[dict, dict, dict[str, list]]:
    """Initializers by name, the node producing each tensor, and the nodes reading each tensor."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {output: node for node in graph.node for output in node.output}
    return {i.name: i for i in graph.initializer}, producers, readers


def int8_friendly_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function with hard-swish/hard-sigmoid as Add/Clip/Mul and spatial ReduceMean as GlobalAveragePool."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers, producers, readers = graph_index(graph)
    nodes, constants = [], []

    def constant(name: str, value: float) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def attributes(node) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    for node in graph.node:
        prefix = node.name or node.output[0]
        if node.op_type == "HardSwish":  # x · ReLU6(x + 3) / 6
            (x,), (y,) = node.input, node.output
            nodes += [
                helper.make_node("Add", [x, constant(f"{prefix}/three", 3.0)], [f"{prefix}/x+3"], name=f"{prefix}/add"),
                helper.make_node(
                    "Clip",
                    [f"{prefix}/x+3", constant(f"{prefix}/zero", 0.0), constant(f"{prefix}/six", 6.0)],
                    [f"{prefix}/relu6"],
                    name=f"{prefix}/relu6",
                ),
                helper.make_node("Mul", [x, f"{prefix}/relu6"], [f"{prefix}/6y"], name=f"{prefix}/mul"),
                helper.make_node(
                    "Mul",
                    [f"{prefix}/6y", constant(f"{prefix}/sixth", 1 / 6)],
                    [y],
                    name=CONSTANT_SCALE_PREFIX + prefix,
                ),
            ]
        elif node.op_type == "HardSigmoid":  # clip(αz + β, 0, 1) = α · clip(z + β/α, 0, 1/α)
            found = attributes(node)
            alpha, beta = float(found.get("alpha", 0.2)), float(found.get("beta", 0.5))
            (z,), (y,) = node.input, node.output
            conv = producers.get(z)
            bias = initializers.get(conv.input[2]) if conv is not None and len(conv.input) == 3 else None
            if (
                bias is not None
                and conv.op_type == "Conv"
                and len(readers.get(z, ())) == 1
                and len(readers.get(bias.name, ())) == 1
            ):
                # The SE's second conv alone reads z: the shift goes into its bias, no Add at all.
                bias.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(beta / alpha), bias.name)
                )
                shifted = z
            else:
                shifted = f"{prefix}/shifted"
                nodes.append(
                    helper.make_node(
                        "Add", [z, constant(f"{prefix}/shift", beta / alpha)], [shifted], name=f"{prefix}/add"
                    )
                )
            nodes += [
                helper.make_node(
                    "Clip",
                    [shifted, constant(f"{prefix}/zero", 0.0), constant(f"{prefix}/top", 1 / alpha)],
                    [f"{prefix}/clipped"],
                    name=f"{prefix}/clip",
                ),
                helper.make_node(
                    "Mul",
                    [f"{prefix}/clipped", constant(f"{prefix}/alpha", alpha)],
                    [y],
                    name=CONSTANT_SCALE_PREFIX + prefix,
                ),
            ]
        elif node.op_type == "ReduceMean" and is_spatial_mean(node, initializers):
            (y,) = node.output
            if attributes(node).get("keepdims", 1):
                nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [y], name=f"{prefix}/pool"))
            else:
                nodes += [
                    helper.make_node("GlobalAveragePool", [node.input[0]], [f"{prefix}/pooled"], name=f"{prefix}/pool"),
                    helper.make_node("Flatten", [f"{prefix}/pooled"], [y], name=f"{prefix}/flatten", axis=1),
                ]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in read]  # the means' axes (ORT would warn about them)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *constants])
    return model


def float_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the QuantizeLinear → DequantizeLinear pair on the model's outputs: the classifier writes float logits.

    Rounding 1000 logits to 256 levels (a step of ~0.15 on ImageNet V2) decides between near-tied classes
    by that rounding alone; ORT's QGemm computes the float output directly at no cost, and the file is
    unchanged (the classifier's weights stay int8). On real-photo crops this alone took V2's top-1 agreement
    with fp32 from 89.3% to 90.9% (BENCHMARKS.md).
    """
    graph = model.graph
    _, producers, readers = graph_index(graph)
    removed: set[int] = set()
    for output in graph.output:
        dequantize = producers.get(output.name)
        quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or quantize is None:
            continue
        source = producers.get(quantize.input[0])
        if quantize.op_type != "QuantizeLinear" or source is None or len(readers.get(quantize.output[0], ())) != 1:
            continue
        if len(readers.get(quantize.input[0], ())) != 1:
            continue
        source.output[list(source.output).index(quantize.input[0])] = output.name
        removed |= {id(quantize), id(dequantize)}
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def is_spatial_mean(node, initializers: dict) -> bool:
    """A ReduceMean over exactly the two spatial axes of an NCHW tensor (axes as an input, opset ≥ 18)."""
    from onnx import numpy_helper

    if len(node.input) != 2 or node.input[1] not in initializers:
        return False
    return sorted(numpy_helper.to_array(initializers[node.input[1]]).tolist()) in ([2, 3], [-2, -1])


def constant_scale_nodes(model: onnx.ModelProto) -> list[str]:
    """The multiplications by a constant that ``fold_constant_scales`` removes (kept out of quantization)."""
    return [node.name for node in model.graph.node if node.name.startswith(CONSTANT_SCALE_PREFIX)]


def fold_constant_scales(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove each float ``DequantizeLinear → Mul(c > 0) → QuantizeLinear``: its readers dequantize with scale·c.

    A uint8 tensor q with scale s and zero point z means s·(q − z); multiplied by c it is (s·c)·(q − z),
    so the multiplication needs no op, and no second rounding, at all.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers, producers, readers = graph_index(graph)
    outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    for node in graph.node:
        if node.op_type != "Mul" or not node.name.startswith(CONSTANT_SCALE_PREFIX):
            continue
        dequantize = producers.get(node.input[0])
        factor = initializers.get(node.input[1])
        quantizes = readers.get(node.output[0], [])
        if (
            dequantize is None
            or dequantize.op_type != "DequantizeLinear"
            or factor is None
            or numpy_helper.to_array(factor).size != 1
            or float(numpy_helper.to_array(factor)) <= 0
            or not quantizes
            or any(q.op_type != "QuantizeLinear" or q.output[0] in outputs for q in quantizes)
            or node.output[0] in outputs
        ):
            continue
        scale = numpy_helper.to_array(initializers[dequantize.input[1]])
        folded = f"{node.name}/folded_scale"
        graph.initializer.append(
            numpy_helper.from_array((scale * numpy_helper.to_array(factor)).astype(scale.dtype), folded)
        )
        for quantize in quantizes:
            for reader in readers.get(quantize.output[0], []):
                reader.input[0], reader.input[1] = dequantize.input[0], folded
                if len(dequantize.input) > 2:
                    if len(reader.input) > 2:
                        reader.input[2] = dequantize.input[2]
                    else:
                        reader.input.append(dequantize.input[2])
            removed.add(id(quantize))
        removed.add(id(node))
        if len(readers.get(dequantize.output[0], [])) == 1:
            removed.add(id(dequantize))
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def prepare_for_quantization(fp32_onnx: Path, out: Path, int8_form: bool = True) -> Path:
    """ORT's recommended pre-processing (BN and constant folding, shapes), on the graph form ORT runs in int8.

    ``int8_form``: hard-swish, hard-sigmoid and spatial means rewritten as ops with int8 kernels
    (``int8_friendly_form``); ``quantize_ptq`` then folds their constant scales away. Off only to
    reproduce the earlier form in benchmarks.
    """
    source = Path(fp32_onnx)
    if int8_form:
        source = out.with_name(out.stem + ".form.onnx")
        onnx.save(int8_friendly_form(onnx.load(str(fp32_onnx))), str(source))
    quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    return out
