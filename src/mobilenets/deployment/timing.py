"""The timing harness: interleaved runs, so that machine noise hits every engine alike, and the noise band
measured from those same runs, so that a verdict ("int8 is faster") never follows the machine's mood.

Everything in the package that times engines against each other (``quantize``'s speed check, the int8
engine's check, ``bench``) goes through ``interleaved_times``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilenets.deployment.onnx import INPUT_NAME
from mobilenets.deployment.onnx_runtime import create_session

# The paired per-round speed ratios' 10th–90th percentiles are the noise band; it is never narrower than
# ±3% of the median ratio, the run-to-run drift of one engine alone on the 2-core reference machine (two
# `quantize --method auto` runs on the same model gave int8 1.01× and 0.81×: issue 17).
BAND_PERCENTILES = (10.0, 90.0)
MIN_RELATIVE_BAND = 0.03


def median_latency_ms(path: Path | str, images: np.ndarray, batch_size: int, repeats: int = 5) -> float:
    """Median wall time of one batch in ORT after one warm-up run (a quick figure; ``speed_check`` compares)."""
    session = create_session(path)
    batch = np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])))
    (found,) = interleaved_times([lambda: session.run(None, {INPUT_NAME: batch})], repeats=repeats)
    return statistics.median(found)


def interleaved_times(
    runs: Sequence[Callable[[], object]], repeats: int = 7, warmup: int = 1
) -> list[list[float]]:
    """Milliseconds of each callable's ``repeats`` timed runs, timed in alternation after ``warmup`` rounds.

    With several engines, each timed run follows a 50 ms pause and an untimed run of the same engine:
    ONNX Runtime's threads keep spinning for a while after a run and would share the cores with the next
    engine's (benchmarks/ort_session_interference.py: V3-Small fp32 at batch 32 took 55 ms right after
    another session, 29 ms after itself). Without the pause the demo's V2 at 96 px timed the engine at
    20 ms a batch of 32, with it at 13 ms (`make demo`, then `mobilenets quantize runs/demo/... --method ptq`).
    """
    times: list[list[float]] = [[] for _ in runs]
    alternating = len(runs) > 1
    for round_index in range(warmup + repeats):
        for run, found in zip(runs, times, strict=True):
            if alternating:
                time.sleep(0.05)  # the previous engine's idle threads stop spinning (ORT's spin for a while)
                run()
            start = time.perf_counter()
            run()
            if round_index >= warmup:
                found.append(1000.0 * (time.perf_counter() - start))
    return times


def interleaved_medians(runs: Sequence[Callable[[], object]], repeats: int = 7) -> list[float]:
    """Median ms of each callable, timed in alternation (``interleaved_times``)."""
    return [statistics.median(found) for found in interleaved_times(runs, repeats)]


def ratio_band(numerator_ms: Sequence[float], denominator_ms: Sequence[float]) -> tuple[float, float]:
    """The noise band of ``numerator / denominator`` (e.g. a speed-up), from runs timed in the same rounds.

    Each round's pair saw the same machine load, so the spread of the per-round ratios is the noise
    the comparison itself is subject to (widened to at least ±``MIN_RELATIVE_BAND``).
    """
    ratios = np.asarray(numerator_ms, dtype=float) / np.asarray(denominator_ms, dtype=float)
    low, high = (float(v) for v in np.percentile(ratios, BAND_PERCENTILES))
    middle = float(np.median(ratios))
    return min(low, middle * (1 - MIN_RELATIVE_BAND)), max(high, middle * (1 + MIN_RELATIVE_BAND))


@dataclass
class Timing:
    """One engine at one batch size: the median of the timed runs and their spread."""

    engine: str
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch / self.median_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_second": round(self.images_per_second, 1)}


def time_engines(runs: dict[str, Callable[[], object]], batch: int, repeats: int, warmup: int) -> list[Timing]:
    """``Timing`` of each named engine, all timed in the same interleaved rounds."""
    found = interleaved_times(list(runs.values()), repeats=repeats, warmup=warmup)
    return [
        Timing(name, batch, statistics.median(times), min(times), max(times), repeats)
        for name, times in zip(runs, found, strict=True)
    ]


@dataclass
class SpeedCheck:
    """fp32 and int8 latency at one batch size, measured interleaved in one process.

    ``low``/``high``: the noise band of the speed-up (``ratio_band``); None when it was not measured.
    """

    batch: int
    fp32_ms: float
    int8_ms: float
    low: float | None = None
    high: float | None = None

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    @property
    def clearly_faster(self) -> bool:
        return self.low > 1.0 if self.low is not None else self.speedup >= 1.0

    @property
    def clearly_slower(self) -> bool:
        return (self.high if self.high is not None else self.speedup) < 1.0

    def describe(self) -> str:
        band = "" if self.low is None else f", noise band {self.low:.2f}–{self.high:.2f}×"
        return f"batch {self.batch}: {self.speedup:.2f}×{band} ({self.int8_ms:.1f} vs {self.fp32_ms:.1f} ms)"

    def to_dict(self) -> dict:
        band = {} if self.low is None else {"low": round(self.low, 3), "high": round(self.high, 3)}
        return {"batch": self.batch, "fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms, **band, "speedup": round(self.speedup, 3)}


def compare_speed(
    batch: int, fp32_run: Callable[[], object], int8_run: Callable[[], object], repeats: int = 7
) -> SpeedCheck:
    """fp32 against int8 at one batch size, interleaved, with the noise band of the speed-up."""
    fp32_times, int8_times = interleaved_times([fp32_run, int8_run], repeats=repeats)
    low, high = ratio_band(fp32_times, int8_times)
    return SpeedCheck(batch, statistics.median(fp32_times), statistics.median(int8_times), low, high)


def speed_check(
    fp32_onnx: Path | str, int8_onnx: Path | str, images: np.ndarray, batches: Sequence[int] = (1, 32), repeats: int = 7
) -> list[SpeedCheck]:
    """Median latency of both models per batch size, runs alternating so both see the same machine load."""
    fp32, int8 = create_session(fp32_onnx), create_session(int8_onnx)
    checks = []
    for batch_size in batches:
        feed = {INPUT_NAME: np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])))}
        checks.append(
            compare_speed(batch_size, lambda f=feed: fp32.run(None, f), lambda f=feed: int8.run(None, f), repeats)
        )
    return checks


def speed_verdict(checks: Sequence[SpeedCheck], architecture: str | None = None) -> str:
    """One plain sentence: is int8 faster than fp32 ONNX Runtime here, at which batch sizes, and what to do if not.

    Inside the noise band (the speed-up's spread over the interleaved runs) the answer is "no measurable
    difference", never a verdict that the next run would reverse.
    """
    figures = ", ".join(check.describe() for check in checks)
    slower = [c.batch for c in checks if c.clearly_slower]
    unclear = [c.batch for c in checks if not c.clearly_slower and not c.clearly_faster]
    faster = [c.batch for c in checks if c.clearly_faster]
    if not slower and not unclear:
        return f"speed: int8 is faster than fp32 ONNX Runtime on this machine ({figures})"
    if not slower:
        also = f"; faster at batch {', '.join(map(str, faster))}" if faster else ""
        return (
            f"speed: no measurable difference between int8 and fp32 ONNX Runtime on this machine at batch "
            f"{', '.join(map(str, unclear))} (the speed-up is inside the noise band of the repeated runs){also} "
            f"({figures}); int8 still gives the smaller file"
        )
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
