"""What a search was asked and what it found (``search.json``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilenets.search.candidates import (
    FAMILIES,
    RECOMMENDATION_RULE,
    Budget,
    Candidate,
)


@dataclass
class SearchSettings:
    data: Path
    out: Path
    target: str = "onnx"
    int8: bool = False
    budget: Budget = field(default_factory=Budget)
    time_budget_s: float = 1800.0
    val: Path | None = None
    models: Sequence[str] = FAMILIES
    widths: Sequence[float] | None = None
    resolutions: Sequence[int] | None = None
    max_candidates: int = 12
    seed: int = 0

    def signature(self) -> dict:
        """What must match for a saved search to be resumed (not the time budget: a resume gets a new one).

        The device budget is part of it: the saved measurements were judged, and the plan's pool chosen,
        against the saved budget, so another budget in the same ``--out`` would report candidates as
        fitting a budget nobody checked them against. So is ``--max-candidates``, the plan's pool size.
        """
        return {
            "data": str(Path(self.data).resolve()),
            "val": str(Path(self.val).resolve()) if self.val else None,
            "target": self.target,
            "int8": self.int8,
            "models": list(self.models),
            "widths": list(self.widths) if self.widths else None,
            "resolutions": list(self.resolutions) if self.resolutions else None,
            "seed": self.seed,
            "max_latency_ms": self.budget.max_latency_ms,
            "max_flash_bytes": self.budget.max_flash_bytes,
            "max_ram_bytes": self.budget.max_ram_bytes,
            "max_candidates": self.max_candidates,
        }


# Each signature key as the user gives it: the option, and how its value is written on the command line.
SIGNATURE_OPTIONS: dict[str, tuple[str, Callable[[object], str]]] = {
    "data": ("--data", str),
    "val": ("--val", str),
    "target": ("--target", str),
    "int8": ("--int8", lambda given: "given" if given else "not given"),
    "models": ("--models", lambda names: ",".join(names)),
    "widths": ("--widths", lambda values: ",".join(f"{v:g}" for v in values)),
    "resolutions": ("--resolutions", lambda values: ",".join(str(v) for v in values)),
    "seed": ("--seed", str),
    "max_latency_ms": ("--max-latency-ms", lambda value: f"{value:g}"),
    "max_flash_bytes": ("--max-flash-kb", lambda value: f"{value / 1024:.6g}"),
    "max_ram_bytes": ("--max-ram-kb", lambda value: f"{value / 1024:.6g}"),
    "max_candidates": ("--max-candidates", str),
}


def signature_differences(saved: dict, current: dict) -> list[str]:
    """'--max-latency-ms: not given there, 0.001 here' for each setting of ``current`` that ``saved`` differs in."""
    differences = []
    for key in dict.fromkeys([*current, *saved]):
        there, here = saved.get(key, MISSING), current.get(key, MISSING)
        if there == here:
            continue
        option, show = SIGNATURE_OPTIONS.get(key, (key, str))
        differences.append(f"{option}: {_written(there, show)} there, {_written(here, show)} here")
    return differences


MISSING = object()


def _written(value: object, show: Callable[[object], str]) -> str:
    if value is MISSING:
        return "not recorded"
    if value is None:
        return "not given"
    try:
        return show(value)
    except (TypeError, ValueError):  # a hand-edited state file: its value as it is
        return repr(value)


@dataclass
class DataSummary:
    classes: int
    images: int
    native_size: int  # median short side of a sample of the images


@dataclass
class Plan:
    """The successive-halving schedule, fixed once so that a resumed search reuses its finished runs."""

    pool: list[str]  # candidate keys, in priority order
    rung_epochs: list[int]
    rung_sizes: list[int]
    overhead_s: float  # per run: start-up, data scan and decode, evaluation, report
    image_epoch_s: float  # seconds per training image per epoch of the calibration candidate
    calibration_macs: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    settings: SearchSettings
    data: DataSummary
    candidates: list[Candidate]
    recommended: Candidate | None
    command: str | None
    plan: Plan | None
    elapsed_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        budget = self.settings.budget
        return {
            "target": self.settings.target,
            "int8": self.settings.int8,
            "budget": {
                "max_latency_ms": budget.max_latency_ms,
                "max_flash_bytes": budget.max_flash_bytes,
                "max_ram_bytes": budget.max_ram_bytes,
            },
            "time_budget_s": self.settings.time_budget_s,
            "elapsed_s": round(self.elapsed_s, 1),
            "data": {"folder": str(self.settings.data), **asdict(self.data)},
            "machine": machine_description(),
            "measurement": {
                "latency_ms": f"batch 1, median of repeated runs, {runtime_name(self.settings)} on this machine",
                "flash_bytes": "size of the deployed file" + (" (int8)" if self.settings.int8 else " (fp32)"),
                "ram_bytes": "the exact TFLite Micro tensor arena"
                if self.settings.target == "tflite-micro"
                else "estimate: the largest input + output activation of one layer at batch 1",
                "accuracy": "validation accuracy (fp32) of the candidate's longest finished training",
            },
            "rule": RECOMMENDATION_RULE,
            "plan": self.plan.to_dict() if self.plan else None,
            "candidates": [c.to_dict() for c in self.candidates],
            "recommended": self.recommended.to_dict() if self.recommended else None,
            "command": self.command,
            "notes": self.notes,
        }


def runtime_name(settings: SearchSettings) -> str:
    names = {
        "onnx": "ONNX Runtime",
        "tflite": "LiteRT (XNNPACK)",
        "executorch": "ExecuTorch (XNNPACK)",
        "tflite-micro": "TFLite Micro reference kernels",
    }
    return names[settings.target] + (" int8" if settings.int8 else " fp32")


def machine_description() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in load]}
