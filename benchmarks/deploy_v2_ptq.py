"""Real ImageNet MobileNetV2 (torchvision weights) to int8 with ORT PTQ: agreement with fp32, size, speed.

Inputs: scikit-image's real colour photos and random crops of them (a fresh seed for calibration).
For every recipe: top-1 agreement with fp32 (all inputs, and those fp32 classifies with p ≥ 0.5), file
size, and ONNX Runtime latency at batch 32 against fp32 ONNX Runtime measured in the same run.

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/deploy_v2_ptq.py [--crops 300] [--repeats 10]
    .venv/bin/python benchmarks/deploy_v2_ptq.py --no-timing   # agreement and size only
    .venv/bin/python benchmarks/deploy_v2_ptq.py --no-timing --recipes pctearly3gptq,clerelu_pctearly3gptq

A recipe prefixed ``cle_``, ``clerelu_`` or ``relu_`` quantizes the fp32 model after cross-layer equalisation
(``deploy_v2_ptq_tried.equalize_cross_layer``; ``TRANSFORMS`` below), still judged against the original fp32 model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from mobilenets.deployment.onnx import INPUT_NAME, export_onnx
from mobilenets.deployment.onnx_runtime import create_session, onnx_logits, softmax
from mobilenets.deployment.quantization import float_nodes_for, quantize_ptq
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import load_model

# A recipe prefix transforms the fp32 model before quantizing (agreement is still judged against the original):
# cross-layer equalisation of the exact pairs only, of every pair with ReLU6 replaced by ReLU (Nagel et al. 2019),
# or that ReLU replacement alone (the control).
TRANSFORMS = {
    "cle_": {},
    "clerelu_": {"relu6_to_relu": True},
    "relu_": {"relu6_to_relu": True, "iterations": 0},
}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "retina", "hubble_deep_field")


def photos() -> list[Image.Image]:
    found = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    return [*found, Image.fromarray(data.stereo_motorcycle()[0]).convert("RGB")]


def random_crops(images: list[Image.Image], count: int, seed: int, smallest: float) -> list[Image.Image]:
    """Crops covering ``smallest``–100% of a photo's area, aspect 3/4–4/3, random horizontal flip."""
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        image = images[index % len(images)]
        width, height = image.size
        area = rng.uniform(smallest, 1.0) * width * height
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = min(width, round(np.sqrt(area * ratio))), min(height, round(np.sqrt(area / ratio)))
        x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        crop = image.crop((x, y, x + w, y + h)).resize((224, 224), Image.BILINEAR)
        crops.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return crops


def median_ms(path: Path, batch: np.ndarray, repeats: int, threads: int) -> tuple[float, float, float]:
    session = create_session(path, threads)
    feed = {INPUT_NAME: batch}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-timing", action="store_true", help="agreement and size only (no lock needed)")
    parser.add_argument("--recipes", default="naive,minmax,percentile,early3,minmax_rr")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()}; threads {args.threads}")
    model = load_model("mobilenet_v2.tv_in1k")
    tensor = Preprocessing(224, 224)  # the crops are already 224×224: resize is a no-op
    preprocessing = Preprocessing.from_dict(model.weights_metadata["preprocessing"])
    images = photos()
    full = np.stack([preprocessing(image).numpy() for image in images])
    sets = {
        "crops 25-100%": np.stack([tensor(c).numpy() for c in random_crops(images, args.crops, 2, 0.25)]),
        "crops 8-100%": np.stack([tensor(c).numpy() for c in random_crops(images, args.crops, 3, 0.08)]),
    }
    sets["crops 25-100%"] = np.concatenate([full, sets["crops 25-100%"]])
    calibration = np.stack([tensor(c).numpy() for c in random_crops(images, args.calibration, 1, 0.25)])
    work = Path(tempfile.mkdtemp(prefix="deploy-v2-"))
    fp32 = export_onnx(model, work / "fp32.onnx")
    references = {name: softmax(onnx_logits(fp32, x)) for name, x in sets.items()}
    batch = sets["crops 25-100%"][:32].copy()
    base = (float("nan"),) * 3 if args.no_timing else median_ms(fp32, batch, args.repeats, args.threads)
    print(
        f"fp32 ORT: {fp32.stat().st_size / 1e6:.2f} MB, batch 32 median {base[0]:.1f} ms ({base[1]:.1f}..{base[2]:.1f})"
    )
    for name, x in sets.items():
        confident = (references[name].max(1) >= 0.5).sum()
        print(f"  set '{name}': {len(x)} inputs, {confident} with fp32 p >= 0.5")
    transformed: dict[str, Path] = {}
    for recipe in args.recipes.split(","):
        start = time.perf_counter()
        out = work / f"{recipe}.onnx"
        source, prefix = fp32, next((p for p in TRANSFORMS if recipe.startswith(p)), "")
        if prefix:
            if prefix not in transformed:
                from deploy_v2_ptq_tried import equalize_cross_layer  # lost: kept with the recipes that lost

                changed = equalize_cross_layer(model, **TRANSFORMS[prefix])
                transformed[prefix] = export_onnx(changed, work / f"{prefix}fp32.onnx")
                figures = []
                for name, x in sets.items():
                    agree = references[name].argmax(1) == onnx_logits(transformed[prefix], x).argmax(1)
                    figures.append(f"{name}: {100 * agree.mean():.1f}%")
                print(f"{prefix}fp32 ({changed.equalized_pairs} pairs) vs fp32: {' | '.join(figures)}", flush=True)
            source = transformed[prefix]
        recipe = recipe.removeprefix(prefix)
        # A "gptq" suffix (e.g. pct9999gptq, minmaxgptq, pctearly3gptq): GPTQ weight rounding instead of nearest.
        rounding = "gptq" if recipe.endswith("gptq") else "nearest"
        kind = recipe.removesuffix("gptq")
        if recipe == "naive":  # per-tensor weights: what REFERENCE §5.1 warns about
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

            from mobilenets.deployment.quantization import ArrayReader, prepare_for_quantization

            prepared = prepare_for_quantization(source, work / "prepared.onnx")
            quantize_static(
                str(prepared), str(out), ArrayReader(calibration), quant_format=QuantFormat.QDQ,
                per_channel=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )  # fmt: skip
        elif recipe == "minmax_rr":
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

            from mobilenets.deployment.quantization import ArrayReader, prepare_for_quantization

            prepared = prepare_for_quantization(fp32, work / "prepared.onnx")
            quantize_static(
                str(prepared), str(out), ArrayReader(calibration), quant_format=QuantFormat.QDQ,
                per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )  # fmt: skip
        elif recipe.startswith("distill"):  # label-free QAT: fake-quant fine-tune towards fp32's predictions
            from mobilenets.deployment.quantization import ImageSet, qat_finetune

            epochs = int(recipe[7:] or 2)
            tuned = qat_finetune(model, ImageSet(calibration, None, "calibration"), epochs=epochs, learning_rate=1e-4)
            tuned.weights_metadata = model.weights_metadata
            qat_fp32 = export_onnx(tuned, work / "distill_fp32.onnx")
            quantize_ptq(qat_fp32, out, calibration, "minmax", description="qat (distillation)")
            model.eval()
        elif kind.startswith("pct9"):  # e.g. pct9999: percentile 99.99
            percentile = float(kind[3:5] + "." + kind[5:])
            quantize_ptq(source, out, calibration, "percentile", percentile=percentile, weight_rounding=rounding)
        elif kind.startswith("early"):
            float_nodes = float_nodes_for(source, int(kind[5:]))
            quantize_ptq(source, out, calibration, "minmax", nodes_to_exclude=float_nodes, weight_rounding=rounding)
        elif kind.startswith("pctearly"):  # e.g. pctearly3: percentile 99.99, stem and first block in float
            float_nodes = float_nodes_for(source, int(kind[8:]))
            quantize_ptq(source, out, calibration, "percentile", nodes_to_exclude=float_nodes, weight_rounding=rounding)
        else:
            quantize_ptq(source, out, calibration, kind, weight_rounding=rounding)
        seconds = time.perf_counter() - start
        figures = []
        for name, x in sets.items():
            agree = references[name].argmax(1) == onnx_logits(out, x).argmax(1)
            confident = references[name].max(1) >= 0.5
            figures.append(f"{name}: {100 * agree.mean():.1f}% all, {100 * agree[confident].mean():.1f}% p>=0.5")
        ms = (float("nan"),) * 3 if args.no_timing else median_ms(out, batch, args.repeats, args.threads)
        print(
            f"{prefix + recipe:<11} {out.stat().st_size / 1e6:.2f} MB | {' | '.join(figures)} | batch 32 {ms[0]:.1f} ms "
            f"({ms[1]:.1f}..{ms[2]:.1f}), {base[0] / ms[0]:.2f}x fp32 ORT | quantized in {seconds:.0f} s",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
