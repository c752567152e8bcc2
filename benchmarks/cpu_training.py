"""Training throughput on CPU: our models against torchvision's and timm's, in one run, side by side.

One training step = forward + cross-entropy + backward + SGD(momentum) step on a fixed batch of random
images (model-only: the data pipeline is measured by benchmarks/cpu_training_loop.py). Every candidate
uses the same batch, resolution, optimizer and thread count; candidates are timed in interleaved rounds.

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/cpu_training.py --models mobilenet_v3_small mobilenet_v1

Candidates:
  <peer> channels_last eager    torchvision's (timm's for v1) model, channels_last, fp32: the baseline
  <peer> NCHW eager             the same in the default layout (what most users run)
  timm channels_last eager      timm's model, channels_last, fp32
  ours fp32 eager               our model, channels_last, fp32
  ours default                  ``prepare_for_training(model)``: what ``mobilenets train`` runs (bf16 autocast
                                on CPUs with native bf16, eager for short runs)
  ours default compiled         the same plus torch.compile, as chosen for long runs (--compile)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

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

from mobilenets.kernels.acceleration import prepare_for_training, to_model_layout
from mobilenets.models.factory import create_model

NUM_CLASSES = 1000


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def candidates_for(model_name: str, batch: int, resolution: int, compile: bool) -> list[Candidate]:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, resolution, resolution)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    nhwc = images.contiguous(memory_format=torch.channels_last)
    macs = macs_per_image(model_name, resolution, NUM_CLASSES)
    peer = baseline_library(model_name)
    built: list[tuple[str, nn.Module, torch.Tensor]] = [
        (
            f"{peer} channels_last eager",
            build_peer(peer, model_name, NUM_CLASSES).to(memory_format=torch.channels_last),
            nhwc,
        ),
        (f"{peer} NCHW eager", build_peer(peer, model_name, NUM_CLASSES), images),
    ]
    if peer != "timm":
        built.append(
            (
                "timm channels_last eager",
                build_peer("timm", model_name, NUM_CLASSES).to(memory_format=torch.channels_last),
                nhwc,
            )
        )
    ours = create_model(model_name, num_classes=NUM_CLASSES)
    built.append(("ours fp32 eager", prepare_for_training(ours, precision="fp32", compile=False), nhwc))
    built.append(
        (
            "ours default",
            prepare_for_training(create_model(model_name, num_classes=NUM_CLASSES), compile=False),
            to_model_layout(images),
        )
    )
    if compile:
        built.append(
            (
                "ours default compiled",
                prepare_for_training(create_model(model_name, num_classes=NUM_CLASSES), compile=True),
                nhwc,
            )
        )
    candidates = []
    for name, model, batch_images in built:
        step = training_step(model.train(), batch_images, labels)
        start = time.perf_counter()
        step()  # first step: oneDNN primitive creation, and for compiled models the whole compile
        candidates.append(Candidate(name, step, batch, macs, flop_factor=3, setup_seconds=time.perf_counter() - start))
    return candidates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["mobilenet_v3_small", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large"]
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (one step per candidate each)")
    parser.add_argument("--compile", action="store_true", help="also time the compiled default (compiles take minutes)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the product's choice)")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    print_machine(machine_info())
    peak = measure_fp32_peak()
    print(f"measured fp32 peak (2048² matmul, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s")
    print(
        f"training step, batch {args.batch}, {args.resolution} px, SGD momentum 0.9, {args.repeats} interleaved rounds"
    )
    rows = []
    for model_name in args.models:
        candidates = candidates_for(model_name, args.batch, args.resolution, args.compile)
        measure(candidates, args.repeats, warmup=1)
        baseline = candidates[0]
        eager_default = next(c for c in candidates if c.name == "ours default")
        for candidate in candidates:
            note = ""
            if candidate.name == "ours default compiled":
                saved = eager_default.median - candidate.median
                overhead = candidate.setup_seconds - eager_default.setup_seconds
                note = (
                    f"compile {overhead:.0f} s; pays back after {overhead / saved:.0f} steps"
                    if saved > 0
                    else f"compile {overhead:.0f} s; never pays back"
                )
            rows.append(
                [
                    model_name,
                    candidate.name,
                    f"{candidate.median * 1000:.0f} ±{candidate.spread:.0%}",
                    f"{candidate.images_per_second:.1f}",
                    f"{paired_ratio(baseline, candidate):.2f}×",
                    f"{candidate.gflops:.0f} ({candidate.gflops / peak:.1%})",
                    note,
                ]
            )
        print(
            table(
                rows[-len(candidates) :],
                ["model", "candidate", "ms/step", "images/s", f"vs {baseline.name}", "GFLOP/s (of peak)", "note"],
            )
        )
        sys.stdout.flush()
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
