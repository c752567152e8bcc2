"""The timing harness: interleaved medians, so that machine noise hits every engine alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilenets.deployment.onnx import INPUT_NAME
from mobilenets.deployment.onnx_runtime import create_session


def median_latency_ms(path: Path | str, images: np.ndarray, batch_size: int, repeats: int = 5) -> float:
    """Median wall time of one batch in ORT after one warm-up run (a quick figure; benchmarks/ measures properly)."""
    session = create_session(path)
    batch = np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])))
    session.run(None, {INPUT_NAME: batch})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: batch})
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


@dataclass
class SpeedCheck:
    """fp32 and int8 ONNX Runtime latency at one batch size, measured interleaved in one process."""

    batch: int
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": round(self.speedup, 3)}


def interleaved_medians(runs: Sequence[Callable[[], object]], repeats: int = 7) -> list[float]:
    """Median ms of each callable, timed in alternation so that all see the same machine load.

    Each timed run follows a 50 ms pause and an untimed run of the same engine: ONNX Runtime's threads
    keep spinning for a while after a run and would share the cores with the next engine's
    (benchmarks/ort_session_interference.py: V3-Small fp32 at batch 32 took 55 ms right after another
    session, 29 ms after itself). Without the pause the demo's V2 at 96 px timed the engine at 20 ms a
    batch of 32, with it at 13 ms (`make demo`, then `mobilenets quantize runs/demo/... --method ptq`).
    """
    times: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats + 1):  # the first round warms up
        for run, found in zip(runs, times, strict=True):
            time.sleep(0.05)  # the previous engine's idle threads stop spinning (ORT's spin for a while)
            run()
            start = time.perf_counter()
            run()
            if repeat:
                found.append(1000.0 * (time.perf_counter() - start))
    return [statistics.median(found) for found in times]


def speed_check(
    fp32_onnx: Path | str, int8_onnx: Path | str, images: np.ndarray, batches: Sequence[int] = (1, 32), repeats: int = 7
) -> list[SpeedCheck]:
    """Median latency of both models per batch size, runs alternating so both see the same machine load."""
    sessions = [create_session(fp32_onnx), create_session(int8_onnx)]
    checks = []
    for batch_size in batches:
        feed = {INPUT_NAME: np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])))}
        fp32_ms, int8_ms = interleaved_medians([lambda s=s, f=feed: s.run(None, f) for s in sessions], repeats)
        checks.append(SpeedCheck(batch_size, fp32_ms, int8_ms))
    return checks


def speed_verdict(checks: Sequence[SpeedCheck], architecture: str | None = None) -> str:
    """One plain sentence: is int8 faster than fp32 ONNX Runtime here, at which batch sizes, and what to do if not."""
    figures = ", ".join(f"batch {c.batch}: {c.speedup:.2f}× ({c.int8_ms:.1f} vs {c.fp32_ms:.1f} ms)" for c in checks)
    slower = [c.batch for c in checks if c.speedup < 1.0]
    if not slower:
        return f"speed: int8 is faster than fp32 ONNX Runtime on this machine ({figures})"
    advice = "for speed at that batch size deploy the fp32 ONNX model; int8 still gives the smaller file"
    if architecture and architecture.startswith("mobilenet_v3") and not architecture.endswith("_minimal"):
        advice += (
            f"; {architecture}_minimal (ReLU, no squeeze-excite: the V3 paper's int8-friendly variant) is the "
            "V3 that int8 speeds up most"
        )
    return (
        f"WARNING: int8 is SLOWER than fp32 ONNX Runtime on this machine at batch "
        f"{', '.join(map(str, slower))} ({figures}); {advice}. Check with `mobilenets bench`."
    )
