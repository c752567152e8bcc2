"""Data-parallel training throughput on CPU: 1 process × N threads vs torchrun N processes × 1 thread.

Runs the real command (`mobilenets train`, and `torchrun -m mobilenets train`) on the dataset shipped
in examples/, repeats each configuration, and prints medians of `train_images_per_second` from each
run's metrics.json, with the ratio against the one-process baseline measured in the same run.

    python benchmarks/distributed_cpu.py [--repeats 3] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--data", str(ROOT / "examples" / "fashion-mnist-small"), "--model", "mobilenet_v3_small",
         "--width", "0.5", "--resolution", "64", "--epochs", "3", "--augment", "light", "--quiet"]  # fmt: skip


def one_run(processes: int, global_batch: int, out: Path) -> float:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    batch = ["--batch-size", str(global_batch // processes), "--out", str(out)]
    if processes == 1:
        command = [sys.executable, "-m", "mobilenets", *TRAIN, *batch]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   "-m", "mobilenets", *TRAIN, *batch]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text())["train_images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"load average before: {os.getloadavg()}")
    results: dict[int, list[float]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for processes in results:
                out = Path(scratch) / f"p{processes}-{repeat}"
                results[processes].append(one_run(processes, args.global_batch, out))
    baseline = statistics.median(results[1])
    print(f"global batch {args.global_batch}, {args.repeats} runs each, train images/s (median [min–max]):")
    for processes, values in results.items():
        label = "1 process × all threads (baseline)" if processes == 1 else f"torchrun {processes} processes × 1 thread"
        median = statistics.median(values)
        print(f"  {label:40s} {median:7.1f} [{min(values):.1f}–{max(values):.1f}]  ×{median / baseline:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
