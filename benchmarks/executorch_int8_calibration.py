"""ExecuTorch int8: which calibration settings keep agreement with fp32 robust to the calibration draw?

For a run trained with ``mobilenets train``: several draws of calibration images from the run's training
images; for each draw, int8 ``.pte`` programs that differ only in how they are quantized, each run in
``executorch.runtime`` and compared with PyTorch fp32 on held-out images (``--test-folder DIR``, a class
folder neither training nor calibration saw, or ``val`` for the run's validation images):

- ``product``: what ``mobilenets export --format executorch --int8`` writes (``export_executorch``):
  XNNPACKQuantizer's symmetric config (``HistogramObserver`` activations, batches of 32), with the stem
  and the first block left in float;
- ``all-int8``: the same with every layer quantized (the product until 2026-12-06);
- ``minmax`` / ``moving-average``: ``all-int8`` with ``MinMaxObserver`` / ``MovingAverageMinMaxObserver``
  (averaging constant 0.1) activations;
- ``float-classifier``: ``all-int8`` with the classifier left in float.

Top-1 agreement with fp32 on every image, and on the "decided" images (fp32's top class ahead of the
second by ≥ 5 points of probability, ``deployment.device_files.NEAR_TIE``); then batch-1 latency of each
variant's last program, interleaved, against the first variant.

    .venv/bin/python benchmarks/executorch_int8_calibration.py --run RUN --test-folder DIR --test-images 600 --draws 0,1,2

Needs the edge extra (``pip install 'mobilenets[edge]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info

from mobilenets.data.folders import folder_images
from mobilenets.deployment.device_files import DeviceFile, compare, exportable, reference_logits
from mobilenets.deployment.executorch import _quantize, delegate_count, export_executorch
from mobilenets.deployment.loading import (
    labels_for_model,
    load_source_model,
    model_source,
    named_classes,
    source_images,
)
from mobilenets.deployment.quantization import load_images, sample
from mobilenets.deployment.timing import interleaved_times

VARIANTS = ("product", "all-int8", "minmax", "moving-average", "float-classifier")
# Module paths (in the exported wrapper's nn_module_stack) a float variant leaves unquantized.
FLOAT_MODULES = {"float-classifier": r"(^|\.)classifier$"}


def _variant_program(model, variant: str, calibration: np.ndarray, size: int, path: Path) -> Path:
    """A batch-1 int8 program with every layer quantized, calibrated like the product, and ``variant``'s change."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e import MinMaxObserver, MovingAverageMinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True)
    observer = {"minmax": MinMaxObserver, "moving-average": MovingAverageMinMaxObserver.with_args(averaging_constant=0.1)}
    if variant in observer:
        spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer[variant])
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    quantizer = XNNPACKQuantizer().set_global(config)
    if variant in FLOAT_MODULES:
        # set_module_name(name, None) asserts in executorch 1.5.1; a node filter leaves the module unannotated.
        pattern = re.compile(FLOAT_MODULES[variant])
        quantizer.set_filter_function(
            lambda node: not any(pattern.search(str(v[0])) for v in (node.meta.get("nn_module_stack") or {}).values())
        )
    converted = _quantize(exportable(model), torch.zeros(1, 3, size, size), calibration, quantizer=quantizer)
    lowered = to_edge_transform_and_lower(
        torch.export.export(converted, (torch.zeros(1, 3, size, size),)), partitioner=[XnnpackPartitioner()]
    )
    partitions = delegate_count(lowered)
    if partitions != 1:
        print(f"  {variant}: {partitions} XNNPACK delegate calls (the product requires one)")
    path.write_bytes(lowered.to_executorch().buffer)
    return path


def _method(path: Path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(path).load_method("forward")


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    method = _method(path)
    rows = [method.execute([torch.from_numpy(np.ascontiguousarray(images[i : i + 1]))])[0].numpy() for i in range(len(images))]
    return np.concatenate(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a `mobilenets train` run directory")
    parser.add_argument("--test-folder", default="val", help="held-out class folder, or `val` (the run's validation split)")
    parser.add_argument("--test-images", type=int, default=600)
    parser.add_argument("--calibration-images", type=int, default=256, help="as `export --calibration`")
    parser.add_argument("--draws", default="0,1,2", help="seeds of the calibration draws")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="the first is the timing baseline")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved batch-1 timing rounds")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    print(machine_info(), f"load average {load_average()}", flush=True)
    source = model_source(run_dir=args.run)
    model = load_source_model(source)
    preprocessing = model.metadata.preprocessing
    size = preprocessing.input_size
    train_paths, train_labels = source_images(source, None, "train")
    if args.test_folder == "val":
        paths, labels = source_images(source, None, "val")
        held_out = list(zip(paths, labels, strict=True))
    else:
        folder = Path(args.test_folder)
        paths, labels, classes = folder_images(folder)
        labels = labels_for_model(folder, classes, labels, named_classes(model))
        held_out = sample(list(zip(paths, labels, strict=True)), args.test_images, seed=1)
    test = load_images([p for p, _ in held_out], [y for _, y in held_out], preprocessing, "test")
    reference = reference_logits(model, test.images)
    print(f"{args.run}: {size}px, {len(test.images)} held-out images, fp32 accuracy {np.mean(reference.argmax(1) == test.labels):.1%}")
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in args.variants.split(",")}
    programs: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as folder:
        for draw in (int(d) for d in args.draws.split(",")):
            chosen = sample(list(zip(train_paths, train_labels, strict=True)), args.calibration_images, seed=draw)
            calibration = load_images([p for p, _ in chosen], [y for _, y in chosen], preprocessing, "train").images
            for variant in results:
                started = time.perf_counter()
                path = Path(folder) / f"{variant}.pte"  # the last draw's program stays for the timing below
                if variant == "product":
                    export_executorch(model, path, calibration=calibration, int8=True, input_size=size)
                else:
                    _variant_program(model, variant, calibration, size, path)
                record = compare(
                    DeviceFile("executorch", path, path.stat().st_size, "executorch.runtime", "int8"),
                    _run(path, test.images),
                    reference,
                    test.labels,
                    exact=False,
                )
                decided = record.decided_agreement if record.decided_agreement is not None else float("nan")
                results[variant].append((record.agreement, decided))
                programs[variant] = path
                print(
                    f"draw {draw} {variant:17s} agreement {record.agreement:.1%}, decided {decided:.1%} "
                    f"({record.decided_images} images), accuracy {record.accuracy:.1%} ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        # Batch 1, the variants' last-draw programs timed in alternation (one process, same image).
        image = torch.from_numpy(np.ascontiguousarray(test.images[:1]))
        methods = [_method(programs[variant]) for variant in results]
        times = interleaved_times([lambda m=m: m.execute([image]) for m in methods], repeats=args.repeats)
    medians = {variant: statistics.median(t) for variant, t in zip(results, times, strict=True)}
    baseline = next(iter(medians.values()))
    print(
        "\n| variant | agreement per draw | median | decided agreement per draw | batch-1 ms (vs first) |"
        "\n|---|---|---|---|---|"
    )
    for variant, rows in results.items():
        agreements = " / ".join(f"{100 * a:.1f}%" for a, _ in rows)
        decided = " / ".join(f"{100 * d:.1f}%" for _, d in rows)
        median = 100 * statistics.median(a for a, _ in rows)
        speed = f"{medians[variant]:.2f} ({baseline / medians[variant]:.2f}×)"
        print(f"| {variant} | {agreements} | {median:.1f}% | {decided} | {speed} |")
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
