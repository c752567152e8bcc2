"""Where a CPU training step spends its time: operator shares, and oneDNN's depthwise backward per layer.

    .venv/bin/python benchmarks/training_profile.py --model mobilenet_v3_small
    .venv/bin/python benchmarks/training_profile.py --model mobilenet_v1 --skip-depthwise

Part 1 profiles ``prepare_for_training``'s step (forward, cross-entropy, backward, AdamW; batch 32,
224 px, channels_last, one thread by default so shares do not depend on how threads were scheduled) with
torch.profiler and prints the self time of the largest operators and of the convolutions split by
kind (depthwise, 1×1, other). Part 2 times, per depthwise layer shape of MobileNetV3-Small, oneDNN's
forward, its input gradient and its weight gradient, channels_last and NCHW, and the fused kernels'
conv + BatchNorm + hard-swish forward and backward (mobilenets.kernels). Shares, not absolute times,
are what to read on a shared machine.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from mobilenets.kernels.acceleration import prepare_for_training
from mobilenets.models.factory import create_model

# (channels, input side, kernel, stride) of V3-Small's depthwise convolutions at 224 px
V3_SMALL_DEPTHWISE = ((16, 112, 3, 2), (72, 56, 3, 2), (88, 28, 3, 1), (96, 28, 5, 2), (240, 14, 5, 1), (576, 7, 5, 1))


def conv_kind(weight_shape: list[int]) -> str:
    if len(weight_shape) != 4:
        return "other"
    if weight_shape[1] == 1:
        return "depthwise"
    return "1x1" if weight_shape[2] == 1 else "kxk"


def profile_step(model_name: str, precision: str, batch: int, resolution: int, steps: int = 2) -> None:
    torch.manual_seed(0)
    model = prepare_for_training(create_model(model_name, num_classes=10), compile=False, precision=precision)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as trace:
        for _ in range(steps):
            step()
    events = trace.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / steps / 1000
    print(f"\n{model_name}, precision {precision}: {total:.0f} ms per step (self time, 1 thread)")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        ms = event.self_cpu_time_total / steps / 1000
        print(f"  {event.key:<40} {ms:7.0f} ms  {ms / total:6.1%}")
    by_kind: dict[tuple[str, str], float] = collections.defaultdict(float)
    for event in trace.key_averages(group_by_input_shape=True):
        if event.key in ("aten::convolution_backward", "aten::mkldnn_convolution"):
            weight = event.input_shapes[2] if event.key == "aten::convolution_backward" else event.input_shapes[1]
            direction = "backward" if event.key == "aten::convolution_backward" else "forward"
            by_kind[(conv_kind(weight), direction)] += event.self_cpu_time_total / steps / 1000
    for (kind, direction), ms in sorted(by_kind.items()):
        print(f"  conv {kind:<10} {direction:<9} {ms:7.0f} ms  {ms / total:6.1%}")


def median_ms(function: Callable[[], object], repeats: int = 5) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def depthwise_forward(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    return F.conv2d(x, weight, None, stride, weight.shape[-1] // 2, 1, weight.shape[0])


def depthwise_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, which: str):
    """oneDNN's backward, asked for the input gradient or the weight gradient alone."""
    padding = weight.shape[-1] // 2
    mask = [which == "input", which == "weight", False]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], weight.shape[0], mask
    )


def fused_cells(x: torch.Tensor, weight: torch.Tensor, stride: int) -> list[float]:
    """mobilenets.kernels' depthwise conv + BatchNorm + hard-swish: forward, and backward (dx, dweight, dgamma, dbeta)."""
    ops = torch.ops.mobilenets_kernels
    padding, channels = weight.shape[-1] // 2, weight.shape[0]
    gamma, beta = torch.ones(channels), torch.zeros(channels)
    y, mean, _var, invstd = ops.depthwise_forward(x, weight, stride, padding, 1e-3)
    dz = torch.randn_like(y)

    def forward():
        y, mean, _var, invstd = ops.depthwise_forward(x, weight, stride, padding, 1e-3)
        return ops.bn_act_forward(y, mean, invstd, gamma, beta, 3, torch.float32)

    def backward():
        return ops.depthwise_bn_act_backward(dz, x, weight, y, mean, invstd, gamma, beta, 3, stride, padding, True)

    return [median_ms(forward), median_ms(backward)]


def depthwise_table(batch: int) -> None:
    from mobilenets import kernels

    fused = kernels.available()
    print(f"\nDepthwise convolution, batch {batch}, ms (median of 5), {torch.get_num_threads()} thread(s)")
    print(
        "| channels, side, kernel, stride | forward CL | grad input CL | grad weight CL | grad input NCHW | grad weight NCHW |"
        + (" fused conv+BN+act forward | fused backward |" if fused else "")
    )
    print("|---|---|---|---|---|---|" + ("---|---|" if fused else ""))
    for channels, side, kernel, stride in V3_SMALL_DEPTHWISE:
        x = torch.randn(batch, channels, side, side)
        weight = torch.randn(channels, 1, kernel, kernel)
        grad = torch.randn_like(depthwise_forward(x, weight, stride))
        cl = x.contiguous(memory_format=torch.channels_last)
        cells = [median_ms(partial(depthwise_forward, cl, weight, stride))]
        for layout in (torch.channels_last, torch.contiguous_format):
            xl, gl = x.contiguous(memory_format=layout), grad.contiguous(memory_format=layout)
            for which in ("input", "weight"):
                cells.append(median_ms(partial(depthwise_backward, gl, xl, weight, stride, which)))
        if fused:
            cells += fused_cells(cl, weight, stride)
        row = " | ".join(f"{ms:.1f}" for ms in cells)
        print(f"| {channels}, {side}, {kernel}×{kernel}, {stride} | {row} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--precisions", nargs="+", default=["auto", "fp32"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--skip-depthwise", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as loadavg:
        print(f"load average at start: {' '.join(loadavg.read().split()[:3])}")
    for precision in args.precisions:
        profile_step(args.model, precision, args.batch, args.resolution)
    if not args.skip_depthwise:
        depthwise_table(args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
