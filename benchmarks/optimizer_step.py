"""The optimizer step and the EMA update alone: AdamW per parameter (PyTorch's CPU default), foreach,
and fused; torch's ``AveragedModel`` EMA against the product's ``ExponentialMovingAverage``.

``mobilenets train`` uses ``torch.optim.AdamW(..., fused=True)``: one kernel over every parameter
instead of a handful of small ops per parameter tensor, which on MobileNets' ~150 small tensors is
mostly dispatch overhead. Random gradients on V3-Small's parameters (1000 classes), interleaved rounds.
Its EMA does the same arithmetic as ``AveragedModel(..., get_ema_multi_avg_fn, use_buffers=True)``
from tensor lists built once, instead of regrouping every parameter and buffer at each step.

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/optimizer_step.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Candidate, load_average, machine_info, measure, paired_ratio, print_machine, set_threads, table

from mobilenets.models.factory import create_model
from mobilenets.training.optimization import ExponentialMovingAverage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print_machine(machine_info())
    candidates = []
    for name, options in (("AdamW per parameter", {"foreach": False}), ("AdamW foreach", {"foreach": True}),
                          ("AdamW fused (mobilenets train)", {"fused": True})):  # fmt: skip
        model = create_model(args.model, num_classes=1000)
        parameters = list(model.parameters())
        for parameter in parameters:
            parameter.grad = torch.randn_like(parameter)
        optimizer = torch.optim.AdamW(parameters, lr=1e-3, **options)
        candidates.append(Candidate(name, optimizer.step, 1))
    model = create_model(args.model, num_classes=1000)
    averages = [
        Candidate(
            "AveragedModel EMA (torch)",
            partial(AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True).update_parameters, model),
            1,
        ),
        Candidate("ExponentialMovingAverage (mobilenets train)", partial(ExponentialMovingAverage(model, 0.999).update_parameters, model), 1),
    ]  # fmt: skip
    for average in averages:
        average.run()  # the first update copies the model
    measure(candidates + averages, args.repeats)
    count = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {count:,} parameters, {args.repeats} interleaved rounds, {torch.get_num_threads()} threads")
    for group in (candidates, averages):
        baseline = group[0]
        rows = [[c.name, f"{c.median * 1000:.2f} ±{c.spread:.0%}", f"{paired_ratio(baseline, c):.2f}×"] for c in group]
        print(table(rows, ["candidate", "ms per step", f"vs {baseline.name}"]))
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
