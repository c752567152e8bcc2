"""What a search was asked and what it found (``search.json``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
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
        """What must match for a saved search to be resumed (not the time budget: a resume gets a new one)."""
        return {
            "data": str(Path(self.data).resolve()),
            "val": str(Path(self.val).resolve()) if self.val else None,
            "target": self.target,
            "int8": self.int8,
            "models": list(self.models),
            "widths": list(self.widths) if self.widths else None,
            "resolutions": list(self.resolutions) if self.resolutions else None,
            "seed": self.seed,
        }


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
