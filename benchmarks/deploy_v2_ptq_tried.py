"""The V2 PTQ recipes tried in the second round that lost, on the same inputs as ``deploy_v2_ptq.py``.

Same photos, crop generator, seeds and 256 calibration crops as ``deploy_v2_ptq.py``; accuracy only (no lock
needed). Recipes (``--recipes``), each on top of the product's ``pctearly3`` (percentile 99.99, stem and first
block in float) or ``minmax`` quantization:

- ``biascorr``: Nagel et al. 2019 bias correction of the weight rounding (the mean output shift E[ΔW·x] of
  each conv, measured on the calibration images, subtracted from its bias), then ``pctearly3``;
- ``mse``: per-tensor activation ranges minimising the quantization MSE of ORT's |x| histograms instead of
  the 99.99th percentile;
- ``othercal``: ``pctearly3`` calibrated on 18 photos unlike the evaluation photos;
- ``gptq_fp32h`` / ``gptq_int8h``: min-max PTQ whose int8 weights are re-rounded with GPTQ (Frantar et al.
  2022) from each layer's input Hessian, taken from fp32's inputs or from the int8 model's own;
- ``weights_only``: PyTorch, only the weights rounded to int8 (nearest, per-channel), activations in float;
- ``fresh``: the product's ``pctearly3`` on three new crop sets (seeds 4, 5, 6).

Cross-layer equalisation (Nagel et al. 2019, ``equalize_cross_layer`` below) lost in the third round and is
kept here too; it runs as a prefix of ``deploy_v2_ptq.py``'s recipes (``cle_pct9999``, ``clerelu_minmax``, …).

    .venv/bin/python benchmarks/deploy_v2_ptq_tried.py --recipes biascorr,mse,othercal,gptq_fp32h,gptq_int8h,weights_only,fresh
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from deploy_v2_ptq import photos, random_crops
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator
from PIL import Image
from torch import nn

from mobilenets.deployment.onnx import export_onnx
from mobilenets.deployment.onnx_runtime import onnx_logits, softmax
from mobilenets.deployment.quantization import (
    ArrayReader,
    FakeQuantizeWeight,
    constant_scale_nodes,
    float_logits,
    float_nodes_for,
    fold_constant_scales,
    layer_input_hessians,
    prepare_for_quantization,
    quantize_ptq,
    write_gptq_weights,
)
from mobilenets.models.fusion import fold_batchnorm
from mobilenets.models.layers import ConvBNAct, InvertedResidual
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import load_model

# --------------------------------------------------------------------------------------------------
# Cross-layer equalisation (third round, 2026-12-06): measured through deploy_v2_ptq.py's cle_/clerelu_/relu_
# recipe prefixes; it lost on the product's recipe (BENCHMARKS.md), so it is not in the package.
# --------------------------------------------------------------------------------------------------
#
# Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction",
# https://arxiv.org/abs/1906.04721, §4.1.
#
# For two convolutions in a row, y = W₂·f(W₁x + b₁) + b₂, with f positively homogeneous (f(s·z) = s·f(z)
# for s > 0: the identity, ReLU), dividing output channel i of the first layer (weights and bias) by sᵢ and
# multiplying input channel i of the second by sᵢ leaves y unchanged. sᵢ = √(r₁ᵢ / r₂ᵢ), with rᵢ the largest
# |weight| of channel i in each layer, gives both layers the same per-channel range √(r₁ᵢ r₂ᵢ); repeated over
# a chain of pairs (expand → depthwise → project) it converges. It matters for per-tensor weight grids, where
# one wide channel of a depthwise layer sets the step of all the others.
#
# ReLU6 is not positively homogeneous (min(max(s·z, 0), 6) ≠ s·min(max(z, 0), 6)): ``relu6_to_relu=True``
# replaces it by ReLU in the pairs it equalises, as the paper does (that changes the fp32 function where an
# activation exceeds 6); without it only pairs whose activation is exact are equalised: in MobileNetV2, a
# projection feeding the next block's first convolution where neither side has a residual connection.

EXACT_ACTIVATIONS = (nn.Identity, nn.ReLU)


def first_conv(block: nn.Module) -> ConvBNAct | None:
    """The first ``ConvBNAct`` a block's input goes through (an inverted residual's expansion or depthwise)."""
    if isinstance(block, ConvBNAct):
        return block
    if isinstance(block, InvertedResidual):
        return block.depthwise if isinstance(block.expand, nn.Identity) else block.expand
    return None


def equalization_pairs(model: nn.Module) -> list[tuple[ConvBNAct, ConvBNAct]]:
    """Consecutive (first, second) layers whose composition CLE may rescale: nothing but the first layer's
    activation between them, no squeeze-excitation, and no residual connection reading the first's output."""
    chain = [model.stem, *model.blocks, model.last_conv]
    pairs = []
    for index, block in enumerate(chain):
        if isinstance(block, InvertedResidual):
            if not isinstance(block.squeeze_excite, nn.Identity):
                continue
            if not isinstance(block.expand, nn.Identity):
                pairs.append((block.expand, block.depthwise))
            pairs.append((block.depthwise, block.project))
        following = chain[index + 1] if index + 1 < len(chain) else None
        if following is None or (isinstance(following, InvertedResidual) and following.use_residual):
            continue
        if isinstance(block, InvertedResidual) and block.use_residual:
            continue
        last = block.project if isinstance(block, InvertedResidual) else block
        nxt = first_conv(following)
        if nxt is not None and isinstance(last, ConvBNAct):
            pairs.append((last, nxt))
    return pairs


def input_channel_ranges(conv: nn.Conv2d) -> torch.Tensor:
    """Largest |weight| per input channel (for a depthwise conv, input channel i is output channel i)."""
    weight = conv.weight.detach().abs()
    if conv.groups == 1:
        return weight.amax(dim=(0, 2, 3))
    if conv.groups == conv.in_channels == conv.out_channels:
        return weight.amax(dim=(1, 2, 3))
    raise ValueError(f"cannot equalise a grouped convolution with {conv.groups} groups")


def rescale(first: nn.Conv2d, second: nn.Conv2d, scale: torch.Tensor) -> None:
    """Divide ``first``'s output channels by ``scale`` and multiply ``second``'s input channels by it."""
    first.weight.div_(scale.view(-1, 1, 1, 1))
    if first.bias is not None:
        first.bias.div_(scale)
    shape = (1, -1, 1, 1) if second.groups == 1 else (-1, 1, 1, 1)
    second.weight.mul_(scale.view(shape))


@torch.no_grad()
def equalize_cross_layer(model: nn.Module, *, relu6_to_relu: bool = False, iterations: int = 20) -> nn.Module:
    """A BN-folded copy of ``model`` with its consecutive layers' per-channel weight ranges equalised.

    The same function as ``fold_batchnorm(model)`` (up to float rounding) when ``relu6_to_relu`` is off;
    with it, the same function as the folded model whose equalised pairs' ReLU6 became ReLU.
    ``model.equalized_pairs`` says how many pairs were rescaled.
    """
    folded = fold_batchnorm(model)
    pairs = []
    for first, second in equalization_pairs(folded):
        if relu6_to_relu and isinstance(first.act, nn.ReLU6):
            first.act = nn.ReLU(inplace=True)
        if isinstance(first.act, EXACT_ACTIVATIONS):
            pairs.append((first.conv, second.conv))
    for _ in range(iterations):
        for first, second in pairs:
            r1, r2 = first.weight.detach().abs().amax(dim=(1, 2, 3)), input_channel_ranges(second)
            scale = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-30)), torch.ones_like(r1))
            rescale(first, second, scale)
    folded.weights_metadata = getattr(model, "weights_metadata", None)
    folded.equalized_pairs = len(pairs)
    return folded


def other_photos() -> list[Image.Image]:
    """Photos unlike the evaluation ones: scikit-image's grey photos, Grace Hopper, the frost images."""
    import matplotlib
    from skimage import data

    found = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("camera", "moon", "coins", "brick")]
    found += [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("grass", "gravel", "clock", "cell")]
    found.append(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    found.append(Image.fromarray(data.stereo_motorcycle()[1]).convert("RGB"))
    frost = Path(__file__).resolve().parents[1] / "src" / "mobilenets" / "robustness" / "frost"
    return found + [Image.open(p).convert("RGB") for p in sorted(frost.glob("*.jpg"))]


def bias_corrected(model: nn.Module, calibration: np.ndarray, batch_size: int = 32) -> nn.Module:
    """BN-folded copy whose conv biases absorb the mean output shift of int8 weight rounding (Nagel et al. 2019)."""
    folded = fold_batchnorm(model)
    shifts: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}
    handles = []
    for module in folded.modules():
        if isinstance(module, nn.Conv2d):
            delta = FakeQuantizeWeight()(module.weight).detach() - module.weight.detach()

            def hook(conv, inputs, delta=delta):
                y = nn.functional.conv2d(inputs[0], delta, None, conv.stride, conv.padding, conv.dilation, conv.groups)
                shifts[conv] = shifts.get(conv, 0) + y.sum((0, 2, 3)).double()
                counts[conv] = counts.get(conv, 0) + y.shape[0] * y.shape[2] * y.shape[3]

            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for start in range(0, len(calibration), batch_size):
            folded(torch.from_numpy(calibration[start : start + batch_size]))
        for handle in handles:
            handle.remove()
        for conv, shift in shifts.items():
            conv.bias -= (shift / counts[conv]).float()
    folded.weights_metadata = model.weights_metadata
    return folded


def mse_threshold(hist: np.ndarray, edges: np.ndarray, signed: bool) -> float:
    """The clipping threshold t minimising clipping + rounding MSE for 256 levels over [−t, t] or [0, t]."""
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_t = np.inf, float(edges[-1])
    for t in np.unique(np.concatenate([edges[1::8], edges[-1:]])):
        step = (2 * t if signed else t) / 255
        over = centers > t
        mse = (hist[over] * (centers[over] - t) ** 2).sum() + hist[~over].sum() * step**2 / 12
        if mse < best:
            best, best_t = mse, float(t)
    return best_t


def quantize_mse(fp32: Path, out: Path, calibration: np.ndarray, nodes_to_exclude: list[str]) -> Path:
    with tempfile.TemporaryDirectory() as work:
        prepared = prepare_for_quantization(fp32, Path(work) / "prepared.onnx")
        calibrator = create_calibrator(
            str(prepared), None, str(Path(work) / "augmented.onnx"), CalibrationMethod.Percentile,
            extra_options={"symmetric": True, "num_bins": 2048},
        )  # fmt: skip
        calibrator.collect_data(ArrayReader(calibration))
        overrides = {}
        for tensor, (hist, edges, low, high) in calibrator.collector.histogram_dict.items():
            signed = float(low) < 0
            t = mse_threshold(hist.astype(np.float64), edges.astype(np.float64), signed)
            rmin = max(-t, float(low)) if signed else 0.0
            overrides[tensor] = [{"rmin": np.float32(rmin), "rmax": np.float32(min(t, float(high)))}]
        temporary = Path(work) / "int8.onnx"
        quantize_static(
            str(prepared), str(temporary), ArrayReader(calibration[:16]), quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=[*nodes_to_exclude, *constant_scale_nodes(onnx.load(str(prepared)))],
            calibrate_method=CalibrationMethod.MinMax, extra_options={"TensorQuantOverrides": overrides},
        )  # fmt: skip
        onnx.save(float_logits(fold_constant_scales(onnx.load(str(temporary)))), str(out))
    return out


def gptq_rounded(fp32: Path, int8_path: Path, out: Path, calibration: np.ndarray, int8_inputs: bool) -> Path:
    """``int8_path`` with every per-channel int8 weight re-rounded by GPTQ (scales and graph unchanged)."""
    with tempfile.TemporaryDirectory() as work:
        prepared = onnx.load(str(prepare_for_quantization(fp32, Path(work) / "prepared.onnx")))
    int8 = onnx.load(str(int8_path))
    floats = {i.name: i for i in prepared.graph.initializer}
    quantized = {i.name: i for i in int8.graph.initializer}
    source = int8 if int8_inputs else prepared
    producers = {output: node for node in source.graph.node for output in node.output}
    layers, names = [], []
    for node in source.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = node.input[1]
        if int8_inputs:
            dequantize = producers.get(weight)
            weight = dequantize.input[0].removesuffix("_quantized") if dequantize is not None else ""
        if f"{weight}_quantized" in quantized and weight in floats:
            layers.append(node)
            names.append(weight)
    write_gptq_weights(floats, quantized, names, layer_input_hessians(source, layers, calibration))
    onnx.save(int8, str(out))
    return out


def agreement(reference: np.ndarray, logits: np.ndarray) -> str:
    agree = reference.argmax(1) == logits.argmax(1)
    confident = reference.max(1) >= 0.5
    return f"{100 * agree.mean():.1f}% all, {100 * agree[confident].mean():.1f}% p>=0.5 ({confident.sum()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="biascorr,mse,othercal,gptq_fp32h,gptq_int8h,weights_only,fresh")
    parser.add_argument("--crops", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("mobilenet_v2.tv_in1k").eval()
    tensor = Preprocessing(224, 224)  # the crops are already 224×224
    preprocessing = Preprocessing.from_dict(model.weights_metadata["preprocessing"])
    images = photos()

    def crops(count: int, seed: int, smallest: float, source=images) -> np.ndarray:
        return np.stack([tensor(c).numpy() for c in random_crops(source, count, seed, smallest)])

    full = np.stack([preprocessing(image).numpy() for image in images])
    sets = {
        "crops 25-100%": np.concatenate([full, crops(args.crops, 2, 0.25)]),
        "crops 8-100%": crops(args.crops, 3, 0.08),
    }
    calibration = crops(256, 1, 0.25)
    work = Path(tempfile.mkdtemp(prefix="deploy-v2-tried-"))
    fp32 = export_onnx(model, work / "fp32.onnx")
    references = {name: softmax(onnx_logits(fp32, x)) for name, x in sets.items()}
    early3 = float_nodes_for(fp32, 3)

    def report(recipe: str, path: Path, chosen: dict | None = None) -> None:
        chosen = chosen or sets
        refs = references if chosen is sets else {k: softmax(onnx_logits(fp32, x)) for k, x in chosen.items()}
        figures = " | ".join(f"{k}: {agreement(refs[k], onnx_logits(path, x))}" for k, x in chosen.items())
        print(f"{recipe:<13} {path.stat().st_size / 1e6:.2f} MB | {figures}", flush=True)

    for recipe in args.recipes.split(","):
        out = work / f"{recipe}.onnx"
        if recipe == "biascorr":
            corrected = export_onnx(bias_corrected(model, calibration), work / "corrected.onnx")
            report(recipe, quantize_ptq(corrected, out, calibration, "percentile", float_nodes_for(corrected, 3)))
        elif recipe == "mse":
            report(recipe, quantize_mse(fp32, out, calibration, early3))
        elif recipe == "othercal":
            report(recipe, quantize_ptq(fp32, out, crops(256, 1, 0.25, other_photos()), "percentile", early3))
        elif recipe == "gptq_pct":
            # GPTQ on the product's recipe (percentile, stem + first block float, float logits), fp32 Hessians,
            # scored on the two table sets and the three fresh ones.
            product = quantize_ptq(fp32, work / "pct.onnx", calibration, "percentile", early3)
            rounded = gptq_rounded(fp32, product, out, calibration, int8_inputs=False)
            fresh = {
                f"seed {seed}, crops {lo:.0%}-100%": crops(300, seed, lo)
                for seed, lo in ((4, 0.25), (5, 0.08), (6, 0.25))
            }
            for name, chosen in (("product", product), ("gptq_pct", rounded)):
                report(name, chosen)
                report(name + " fresh", chosen, fresh)
        elif recipe.startswith("gptq"):
            plain = quantize_ptq(fp32, work / "minmax.onnx", calibration, "minmax")
            report(recipe, gptq_rounded(fp32, plain, out, calibration, int8_inputs=recipe.endswith("int8h")))
        elif recipe == "weights_only":
            folded, rounded = fold_batchnorm(model), fold_batchnorm(model)
            with torch.no_grad():
                for module in rounded.modules():
                    if isinstance(module, (nn.Conv2d, nn.Linear)):
                        module.weight.copy_(FakeQuantizeWeight()(module.weight))
                for name, x in sets.items():
                    batches = [torch.from_numpy(x[i : i + 32]) for i in range(0, len(x), 32)]
                    reference = torch.cat([folded(b) for b in batches]).softmax(1).numpy()
                    print(
                        f"weights_only  {name}: {agreement(reference, torch.cat([rounded(b) for b in batches]).numpy())}"
                    )
        elif recipe == "fresh":
            fresh = {
                f"seed {seed}, crops {lo:.0%}-100%": crops(300, seed, lo)
                for seed, lo in ((4, 0.25), (5, 0.08), (6, 0.25))
            }
            report("fresh", quantize_ptq(fp32, out, calibration, "percentile", early3), fresh)
        else:
            raise SystemExit(f"unknown recipe {recipe!r}")


if __name__ == "__main__":
    main()
