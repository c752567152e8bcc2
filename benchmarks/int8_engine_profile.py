"""Where mobilenets' int8 engine spends an image: each op's time, one thread, summed by kind.

    python benchmarks/int8_engine_profile.py [--model mobilenet_v3_small] [--resolution 224] [--images 16]
        [--runs 7] [--per-op]

Times come from the engine itself (``int8_forward(..., op_seconds)``: the images run on one thread and
each op's wall time is added up); the minimum over ``--runs`` runs is reported, per image. The model is
untrained (speed does not depend on the weights) with BatchNorm statistics from a few random batches.
Also prints the multiply-adds per kind, and for the convolutions the rate they ran at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info, print_machine, table

from mobilenets.deployment.int8_engine import DEPTHWISE, POINTWISE, SQUEEZE_EXCITE, STEM, Int8Engine
from mobilenets.models.factory import create_model

KINDS = {STEM: "stem", POINTWISE: "1×1", DEPTHWISE: "depthwise", SQUEEZE_EXCITE: "squeeze-excite"}


def op_label(op) -> str:
    if op.kind == DEPTHWISE:
        return f"depthwise {op.kernel}×{op.kernel} s{op.stride}"
    return KINDS[op.kind]


def multiply_adds(engine: Int8Engine, resolution: int) -> list[int]:
    height = width = resolution
    counts = []
    for op in engine.ops:
        if op.kind in (STEM, DEPTHWISE):
            height, width = (height - 1) // op.stride + 1, (width - 1) // op.stride + 1
        pixels = height * width
        if op.kind == STEM:
            counts.append(pixels * op.in_channels * op.kernel**2 * op.out_channels)
        elif op.kind == DEPTHWISE:
            counts.append(pixels * op.in_channels * op.kernel**2)
        elif op.kind == POINTWISE:
            counts.append(pixels * op.in_channels * op.out_channels)
        else:
            counts.append(2 * op.in_channels * op.hidden)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--per-op", action="store_true", help="also print every op")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    size = args.resolution
    model = create_model(args.model, num_classes=1000).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    engine = Int8Engine(model.eval(), [torch.randn(8, 3, size, size)])
    images = torch.randn(args.images, 3, size, size)
    print_machine(machine_info())
    print(f"{args.model} at {size} px, {args.images} images, one thread, min of {args.runs} runs; vnni {engine.vnni}")
    seconds = torch.zeros(len(engine.ops), dtype=torch.float64)
    runs = []
    for _ in range(args.runs + 1):  # the first warms up
        seconds.zero_()
        torch.ops.mobilenets_kernels.int8_forward(images, engine.ints, engine.floats, engine.tensors, seconds)
        runs.append(seconds.clone())
    per_image_ms = torch.stack(runs[1:]).min(0).values * 1000 / args.images
    macs = multiply_adds(engine, size)
    if args.per_op:
        rows = [
            [
                str(i),
                op_label(op),
                f"{op.in_channels}→{op.out_channels}",
                f"{per_image_ms[i]:.3f}",
                f"{macs[i] / 1e6:.2f}",
            ]
            for i, op in enumerate(engine.ops)
        ]
        print(table(rows, ["op", "kind", "channels", "ms/image", "M multiply-adds"]))
    kinds: dict[str, list[float]] = {}
    for i, op in enumerate(engine.ops):
        found = kinds.setdefault(op_label(op), [0.0, 0.0])
        found[0] += float(per_image_ms[i])
        found[1] += macs[i]
    total = float(per_image_ms.sum())
    rows = [
        [
            kind,
            f"{ms:.3f}",
            f"{ms / total:.0%}",
            f"{count / 1e6:.1f}",
            f"{count / (ms / 1000) / 1e9:.0f}" if kind != "squeeze-excite" else "",
        ]
        for kind, (ms, count) in sorted(kinds.items(), key=lambda item: -item[1][0])
    ]
    rows.append(
        ["all ops", f"{total:.3f}", "100%", f"{sum(macs) / 1e6:.1f}", f"{sum(macs) / (total / 1000) / 1e9:.0f}"]
    )
    print(table(rows, ["kind", "ms/image", "share", "M multiply-adds", "G multiply-adds/s"]))
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
