"""Training-step time of the product's precisions: fp32 vs `--precision auto` (bf16 where the CPU has it).

Same model, same batch, interleaved repeats, median of the steps after warm-up; the ratio is fp32 time
over auto time (> 1: auto is faster). Through `prepare_for_training`, as `mobilenets train` runs it.

    python benchmarks/training_precision.py [--model mobilenet_v3_small] [--repeats 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mobilenets import create_model
from mobilenets.kernels.acceleration import autocast_for, prepare_for_training, to_model_layout

SETTINGS = ((32, 128), (64, 64), (224, 32))  # (resolution, batch): Fashion-MNIST scales and ImageNet's


def step_seconds(model, optimizer, images, labels) -> float:
    started = time.perf_counter()
    # The product's autocast wraps the step's forward (training.loop), not the model: without it both
    # candidates would run in fp32.
    with autocast_for(model):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    for resolution, batch in SETTINGS:
        candidates = {}
        for precision in ("fp32", "auto"):
            torch.manual_seed(0)
            model = prepare_for_training(create_model(args.model, num_classes=10), "cpu", precision=precision)
            candidates[precision] = (model, torch.optim.AdamW(model.parameters(), 1e-3), model.training_precision)
        images = to_model_layout(torch.randn(batch, 3, resolution, resolution))
        labels = torch.randint(0, 10, (batch,))
        times: dict[str, list[float]] = {p: [] for p in candidates}
        for repeat in range(args.repeats):
            for precision, (model, optimizer, _) in candidates.items():  # interleaved: same conditions
                seconds = step_seconds(model, optimizer, images, labels)
                if repeat >= 3:
                    times[precision].append(seconds)
        fp32, auto = (statistics.median(times[p]) for p in ("fp32", "auto"))
        print(
            f"{args.model} {resolution}px batch {batch}: fp32 {1000 * fp32:.0f} ms, auto ({candidates['auto'][2]}) "
            f"{1000 * auto:.0f} ms, fp32/auto {fp32 / auto:.2f}×, threads {torch.get_num_threads()}"
        )
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
