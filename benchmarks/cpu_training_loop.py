"""The full ``mobilenets train`` step, data pipeline included, for our model and for torchvision's.

Each candidate runs the product's own ``Trainer.train_step`` on the same decoded uint8 cache (as
``mobilenets train`` keeps it in memory): batch augmentation (default "medium"), normalisation, layout,
forward, label-smoothed loss, backward, AdamW, LR schedule and EMA update. Only the model and the
acceleration differ:

  <peer> channels_last eager fp32   torchvision's model (timm's for v1) in our loop, bf16, compile and the
                                     fused kernels off
  ours default                       our model exactly as ``mobilenets train`` runs it: channels_last, bf16
                                     1×1 convolutions, the fused C++ ConvBNAct / SE kernels (mobilenets.kernels)
  ours, PyTorch kernels              the same with MOBILENETS_FUSED_KERNELS=0 (--ablation): what the kernels add
  ours, compiled                     torch.compile instead of the fused kernels (--compile; compile time
                                     reported, not in the medians)

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/cpu_training_loop.py --models mobilenet_v3_small mobilenet_v1

The images are random pixels: throughput does not depend on content, and CI machines have no dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Candidate,
    baseline_library,
    build_peer,
    load_average,
    machine_info,
    macs_per_image,
    measure,
    measure_fp32_peak,
    paired_ratio,
    print_machine,
    set_threads,
    table,
)

from mobilenets.data.folders import DecodedImages
from mobilenets.models.factory import create_model
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.training.configuration import TrainConfig
from mobilenets.training.loop import Trainer

NUM_CLASSES = 10


@contextlib.contextmanager
def environment(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cached_dataset(count: int, resolution: int) -> DecodedImages:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, resolution, resolution), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % NUM_CLASSES
    return DecodedImages(images, labels, samples=[None] * count, skipped=[], sha256=[], perceptual_hash=[])


def trainer_step(trainer: Trainer):
    """One product training step per call, walking through the epoch's batches."""
    batches = list(trainer.batches(0))
    trainer.model.train()
    position = {"step": 0}

    def step():
        index = position["step"] % len(batches)
        position["step"] += 1
        return trainer.train_step(batches[index], 0, index)

    return step


def candidates_for(
    model_name: str,
    batch: int,
    resolution: int,
    steps: int,
    run_dir: Path,
    compile: bool = False,
    ablation: bool = False,
) -> list[Candidate]:
    data = cached_dataset(batch * steps, resolution)
    config = TrainConfig(data="(cached)", model=model_name, resolution=resolution, batch_size=batch, epochs=10)
    preprocessing = Preprocessing.for_resolution(resolution)
    classes = [str(i) for i in range(NUM_CLASSES)]
    peer = baseline_library(model_name)

    def trainer(model, folder: str) -> Trainer:
        return Trainer(config, model, data, data, classes, run_dir / folder, preprocessing, show_progress=False)

    with environment(MOBILENETS_BF16="0", MOBILENETS_COMPILE="0", MOBILENETS_FUSED_KERNELS="0"):
        baseline = trainer(build_peer(peer, model_name, NUM_CLASSES), "peer")
    ours = trainer(create_model(model_name, num_classes=NUM_CLASSES), "ours")
    runs = [(f"{peer} channels_last eager fp32", baseline), ("ours default (mobilenets train)", ours)]
    if ablation:
        with environment(MOBILENETS_FUSED_KERNELS="0"):
            runs.append(("ours, PyTorch kernels", trainer(create_model(model_name, num_classes=NUM_CLASSES), "plain")))
    if compile:
        with environment(MOBILENETS_COMPILE="1"):
            runs.append(("ours, compiled", trainer(create_model(model_name, num_classes=NUM_CLASSES), "long")))
    macs = macs_per_image(model_name, resolution, NUM_CLASSES)
    candidates = []
    for name, each in runs:
        step = trainer_step(each)
        start = time.perf_counter()
        step()
        candidates.append(Candidate(name, step, batch, macs, flop_factor=3, setup_seconds=time.perf_counter() - start))
    return candidates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "mobilenet_v1"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (one step per candidate each)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the product's choice)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile's path (minutes)")
    parser.add_argument("--ablation", action="store_true", help="also time ours with the fused kernels off")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    print_machine(machine_info())
    peak = measure_fp32_peak()
    print(f"measured fp32 peak (2048² matmul, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s")
    print(
        f"full training step (Trainer.train_step), batch {args.batch}, {args.resolution} px, AdamW, augment medium, EMA"
    )
    for model_name in args.models:
        with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as folder:
            candidates = candidates_for(
                model_name, args.batch, args.resolution, args.repeats + 2, Path(folder), args.compile, args.ablation
            )
            measure(candidates, args.repeats, warmup=1)
        baseline = candidates[0]
        rows = [
            [
                model_name,
                c.name,
                f"{c.median * 1000:.0f} ±{c.spread:.0%}",
                f"{c.images_per_second:.1f}",
                f"{paired_ratio(baseline, c):.2f}×",
                f"{c.gflops:.0f} ({c.gflops / peak:.1%})",
            ]
            for c in candidates
        ]
        print(table(rows, ["model", "candidate", "ms/step", "images/s", f"vs {baseline.name}", "GFLOP/s (of peak)"]))
        for c in candidates:
            if "compiled" in c.name:
                print(f"({c.name}: compile + first step {c.setup_seconds:.0f} s)")
        sys.stdout.flush()
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
