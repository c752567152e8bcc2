"""Timing harness shared by the CPU benchmarks: interleaved repeats, medians, spread, ratios, machine info.

Candidates are timed round-robin (A B C, B C A, ...) rather than one after the other, so that a burst of
load from another process on a shared machine hits every candidate alike; ratios are computed repeat by
repeat (baseline time / candidate time in the same round) and then summarised by their median.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def import_torchvision_oracle():
    """torchvision and timm, imported as benchmark oracles (REFERENCE §4: their C++ ops cannot load)."""
    try:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision_oracle.library = library  # keep the definitions alive
    except RuntimeError:
        pass  # already defined in this process
    import timm
    import torchvision

    return torchvision, timm


@dataclass
class Candidate:
    """One thing to time: ``run()`` processes ``images`` images; ``setup`` is timed once (e.g. compile)."""

    name: str
    run: Callable[[], object]
    images: int
    macs_per_image: int = 0
    flop_factor: int = 1  # 1 for inference, 3 for training (forward + backward ≈ 3 × forward)
    setup_seconds: float = 0.0
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median (a robust ± for noisy machines)."""
        if len(self.times) < 4:
            return (max(self.times) - min(self.times)) / 2 / self.median
        q1, _, q3 = statistics.quantiles(self.times, n=4)
        return (q3 - q1) / 2 / self.median

    @property
    def images_per_second(self) -> float:
        return self.images / self.median

    @property
    def gflops(self) -> float:
        return 2 * self.macs_per_image * self.flop_factor * self.images_per_second / 1e9


def measure(
    candidates: list[Candidate], repeats: int, warmup: int = 2, calls_per_repeat: int = 1, settle_calls: int = 0
) -> None:
    """Warm every candidate up, then time ``repeats`` interleaved rounds; fills ``candidate.times``.

    ``settle_calls`` untimed calls precede each timed one. Thread pools keep spinning for a while after
    a call (ONNX Runtime's by default, OpenMP's too), so the candidate timed right after another engine
    shares the cores with the other engine's spinning threads: measured here, one ONNX Runtime session
    ran V3-Small at batch 32 in 55 ms right after another session and in 29 ms right after itself
    (benchmarks/ort_session_interference.py).
    """
    for candidate in candidates:
        for _ in range(warmup):
            candidate.run()
    for round_index in range(repeats):
        order = candidates[round_index % len(candidates) :] + candidates[: round_index % len(candidates)]
        for candidate in order:
            gc.collect()
            for _ in range(settle_calls):
                candidate.run()
            start = time.perf_counter()
            for _ in range(calls_per_repeat):
                candidate.run()
            candidate.times.append((time.perf_counter() - start) / calls_per_repeat)


def paired_ratio(baseline: Candidate, candidate: Candidate) -> float:
    """Median over rounds of baseline time / candidate time: >1 means the candidate is faster."""
    return statistics.median(b / c for b, c in zip(baseline.times, candidate.times, strict=False))


def set_threads(threads: int | None) -> int:
    """The product's thread choice (``configure_threads``), or a fixed count for a reproducible table."""
    from mobilenets.kernels.acceleration import configure_threads

    return configure_threads(threads)


def measure_fp32_peak(size: int = 2048, repeats: int = 7) -> float:
    """Achievable fp32 GFLOP/s of this machine: the median of large square matmuls (2n³ flops each)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    from mobilenets.kernels.acceleration import cpu_supports_bf16

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0))),
        "torch threads": str(torch.get_num_threads()),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "native bf16": str(cpu_supports_bf16()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "commit": commit,
        "load average at start": load_average(),
    }


def print_machine(info: dict[str, str]) -> None:
    print("machine: " + "; ".join(f"{key} {value}" for key, value in info.items()))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated_for_memory(argv: list[str]) -> float:
    """Run a benchmark entry point in a fresh interpreter and return its peak RSS in MB.

    Peak memory is per process and only grows, so each candidate gets its own process.
    """
    result = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return float(result.stdout.strip().splitlines()[-1])


def table(rows: list[list[str]], header: list[str]) -> str:
    """A GitHub-markdown table, so output pastes straight into BENCHMARKS.md."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# The same architecture in each library. torchvision has no MobileNet v1, so timm's is v1's baseline.
PEERS: dict[str, dict[str, str]] = {
    "mobilenet_v1": {"timm": "mobilenetv1_100"},
    "mobilenet_v2": {"torchvision": "mobilenet_v2", "timm": "mobilenetv2_100"},
    "mobilenet_v3_small": {"torchvision": "mobilenet_v3_small", "timm": "mobilenetv3_small_100"},
    "mobilenet_v3_large": {"torchvision": "mobilenet_v3_large", "timm": "mobilenetv3_large_100"},
}


def baseline_library(model_name: str) -> str:
    return "torchvision" if "torchvision" in PEERS[model_name] else "timm"


def build_peer(library: str, model_name: str, num_classes: int) -> torch.nn.Module:
    """The peer library's version of ``model_name``, randomly initialised."""
    torchvision, timm = import_torchvision_oracle()
    peer_name = PEERS[model_name][library]
    if library == "torchvision":
        return getattr(torchvision.models, peer_name)(num_classes=num_classes)
    return timm.create_model(peer_name, pretrained=False, num_classes=num_classes)


def macs_per_image(model_name: str, resolution: int, num_classes: int) -> int:
    from mobilenets.models.factory import create_model
    from mobilenets.models.profiling import profile_model

    return profile_model(create_model(model_name, num_classes=num_classes), resolution).macs
