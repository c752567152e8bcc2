"""One thread or all cores? The same training step at each thread count, interleaved, at the current load.

A MobileNet step is hundreds of short parallel regions that each wait for their slowest thread; when
other processes hold cores, that wait dominates. This is the measurement behind
``acceleration.configure_threads``'s probe. Run it both on a quiet machine and under load:

    uptime; flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/cpu_threads.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Candidate, load_average, measure, paired_ratio, table

from mobilenets.kernels.acceleration import prepare_for_training, to_model_layout
from mobilenets.models.factory import create_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average at start {load_average()}")
    model = prepare_for_training(create_model(args.model, num_classes=10), precision="fp32", compile=False).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = to_model_layout(torch.randn(args.batch, 3, args.resolution, args.resolution))
    labels = torch.randint(0, 10, (args.batch,))

    def step_with(threads: int):
        def step():
            torch.set_num_threads(threads)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        return step

    candidates = [Candidate(f"{threads} thread(s)", step_with(threads), args.batch) for threads in sorted({1, cores})]
    measure(candidates, args.repeats, warmup=1)
    baseline = candidates[0]
    rows = [
        [
            c.name,
            f"{c.median * 1000:.0f} ±{c.spread:.0%}",
            f"{c.images_per_second:.1f}",
            f"{paired_ratio(baseline, c):.2f}×",
        ]
        for c in candidates
    ]
    print(f"{args.model} training step, batch {args.batch}, {args.resolution} px, fp32 channels_last")
    print(table(rows, ["threads", "ms/step", "images/s", f"vs {baseline.name}"]))
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
