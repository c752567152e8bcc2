"""What batch augmentation costs per training step, and what its two rewrites save.

The training loop augments whole uint8 batches (mobilenets.data.augment.BatchAugment). This times, on one
32-image 224-px batch and in interleaved rounds:

  sampling grid    PyTorch's F.affine_grid (a batched matmul over every pixel; the baseline)
                   against ``affine_sampling_grid`` (the same grid by broadcasting a row and a column term)
  colour jitter    adjust_brightness → adjust_contrast → adjust_saturation out of place (the baseline)
                   against ``color_jitter_`` (the same three in the batch's own memory)
  whole pipeline   each --augment level, uint8 cache → normalised channels_last batch: the PyTorch
                   operations, and ``BatchAugment.normalized`` (what Trainer.train_step runs: one C++
                   kernel for none / light / medium where mobilenets.kernels is built)

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/augmentation.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Candidate, load_average, machine_info, measure, paired_ratio, print_machine, set_threads, table

from mobilenets.data.augment import (
    AUGMENT_LEVELS,
    BatchAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    affine_sampling_grid,
    augment_config,
    color_jitter_,
    flip_affine,
    normalize_batch,
    random_resized_crop_affine,
)
from mobilenets.kernels.acceleration import to_model_layout

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pairs(batch: int, size: int) -> list[tuple[str, list[Candidate]]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator)
    matrices = random_resized_crop_affine(batch, (0.25, 1.0), (3 / 4, 4 / 3), generator) @ flip_affine(batch, generator)
    factors = [torch.rand(batch, generator=generator) * 0.6 + 0.7 for _ in range(3)]
    shape = [batch, 3, size, size]

    def out_of_place_jitter():
        return adjust_saturation(adjust_contrast(adjust_brightness(images, factors[0]), factors[1]), factors[2])

    return [
        (
            "sampling grid",
            [
                Candidate("F.affine_grid", lambda: F.affine_grid(matrices[:, :2], shape, align_corners=False), batch),
                Candidate(
                    "affine_sampling_grid", lambda: affine_sampling_grid(matrices, size, size, images.dtype), batch
                ),
            ],
        ),
        (
            "colour jitter (includes one batch copy for the in-place candidate)",
            [
                Candidate("adjust_* out of place", out_of_place_jitter, batch),
                Candidate("color_jitter_ in place", lambda: color_jitter_(images.clone(), *factors), batch),
            ],
        ),
    ]


def pipeline(level: str, batch: int, size: int) -> list[Candidate]:
    cache = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    augment = BatchAugment(augment_config(level, size))

    def pytorch_operations():
        x = augment(cache, torch.Generator().manual_seed(2))
        return to_model_layout(normalize_batch(x, IMAGENET_MEAN, IMAGENET_STD, inplace=True))

    def training_step_input():
        return augment.normalized(cache, torch.Generator().manual_seed(2), IMAGENET_MEAN, IMAGENET_STD)

    views = batch * augment.views
    return [Candidate(f"{level}: PyTorch ops", pytorch_operations, views), Candidate(level, training_step_input, views)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print_machine(machine_info())
    print(
        f"batch {args.batch}, {args.resolution} px, {args.repeats} interleaved rounds, {torch.get_num_threads()} threads"
    )
    for title, candidates in pairs(args.batch, args.resolution):
        measure(candidates, args.repeats)
        baseline = candidates[0]
        rows = [
            [c.name, f"{c.median * 1000:.1f} ±{c.spread:.0%}", f"{paired_ratio(baseline, c):.2f}×"] for c in candidates
        ]
        print(f"\n{title}\n" + table(rows, ["candidate", "ms per batch", f"vs {baseline.name}"]))
    levels = [pipeline(level, args.batch, args.resolution) for level in AUGMENT_LEVELS]
    measure([c for pair in levels for c in pair], max(3, args.repeats // 3))
    rows = [
        [
            ours.name,
            f"{baseline.median * 1000:.1f} ±{baseline.spread:.0%}",
            f"{ours.median * 1000:.1f} ±{ours.spread:.0%}",
            f"{paired_ratio(baseline, ours):.2f}×",
            f"{ours.images_per_second:.0f}",
        ]
        for baseline, ours in levels
    ]
    print("\nwhole pipeline, uint8 cache → normalised channels_last batch\n")
    header = ["--augment", "PyTorch ops, ms", "BatchAugment.normalized, ms", "speed-up", "images/s"]
    print(table(rows, header))
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
