"""Candidates, budgets and the choice among them: the grid, the Pareto front, the recommendation rule.

The MobileNet paper's width α and resolution ρ trade accuracy for latency and size "smoothly" so that a
builder can "choose the right sized model for their application" (Howard et al. 2017,
https://arxiv.org/abs/1704.04861, §3.3–3.4 and Tables 6–7). A search candidate is one point of that
choice: a family (v1, V2, V3-Small/Large and their minimal variants), a width and a resolution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from mobilenets.core.errors import MobilenetsError, split_items

# The families a search covers by default; the v1 ablations (full_conv, shallow) are for the paper's tables.
FAMILIES = (
    "mobilenet_v3_small",
    "mobilenet_v3_small_minimal",
    "mobilenet_v3_large",
    "mobilenet_v3_large_minimal",
    "mobilenet_v2",
    "mobilenet_v1",
)

# Widths each family's papers publish (v1: Table 6; V2: §6.1 and torchvision/timm; V3: §6.1.1 and timm).
FAMILY_WIDTHS: dict[str, tuple[float, ...]] = {
    "mobilenet_v1": (1.0, 0.75, 0.5, 0.25),
    "mobilenet_v2": (1.0, 0.75, 0.5, 0.35),
    "mobilenet_v3_small": (1.0, 0.75, 0.5),
    "mobilenet_v3_small_minimal": (1.0, 0.75, 0.5),
    "mobilenet_v3_large": (1.0, 0.75, 0.5),
    "mobilenet_v3_large_minimal": (1.0, 0.75, 0.5),
}

# Input sizes a search may pick from. Every model takes ≥ 32 px (32× downsampling, global pooling).
RESOLUTION_LADDER = (32, 48, 64, 96, 128, 160, 192, 224)
MAX_RESOLUTIONS = 4  # the paper's four ρ (224, 192, 160, 128); more multiplies the search for little


@dataclass(frozen=True)
class Budget:
    """The device's limits; None means no limit on that resource."""

    max_latency_ms: float | None = None
    max_flash_bytes: int | None = None
    max_ram_bytes: int | None = None

    def limits(self) -> dict[str, float]:
        """Resource name (a Candidate attribute) → limit, for the limits that are set."""
        pairs = (
            ("latency_ms", self.max_latency_ms),
            ("flash_bytes", self.max_flash_bytes),
            ("ram_bytes", self.max_ram_bytes),
        )
        return {name: float(limit) for name, limit in pairs if limit is not None}

    def misses(self, candidate: Candidate) -> dict[str, float]:
        """Resource → how far over its limit the candidate is, as a fraction (0.25: 25% over); unmeasured ones omitted."""
        over = {}
        for name, limit in self.limits().items():
            value = getattr(candidate, name)
            if value is not None and value > limit:
                over[name] = value / limit - 1.0 if limit > 0 else math.inf
        return over

    def allows(self, candidate: Candidate) -> bool | None:
        """True when every limited resource is measured and within its limit; None while one is unmeasured."""
        if self.misses(candidate):
            return False
        if any(getattr(candidate, name) is None for name in self.limits()):
            return None
        return True

    def describe(self) -> str:
        parts = []
        if self.max_latency_ms is not None:
            parts.append(f"latency ≤ {self.max_latency_ms:g} ms")
        if self.max_flash_bytes is not None:
            parts.append(f"flash ≤ {self.max_flash_bytes / 1024:.6g} KB")
        if self.max_ram_bytes is not None:
            parts.append(f"RAM ≤ {self.max_ram_bytes / 1024:.6g} KB")
        return ", ".join(parts) or "no budget"


@dataclass
class RunRecord:
    """One training of a candidate: a run directory written by ``mobilenets train``."""

    rung: int
    epochs: int
    run_dir: str
    accuracy: float | None = None
    seconds: float | None = None
    complete: bool = False
    error: str | None = None


@dataclass
class Candidate:
    """One (model, width, resolution) point, with what has been measured of it so far."""

    model: str
    width: float
    resolution: int
    params: int = 0
    macs: int = 0
    weights: str | None = None  # the published checkpoint it fine-tunes, None: from scratch
    latency_ms: float | None = None  # batch 1, in the target runtime on this machine
    flash_bytes: int | None = None  # the deployed file (int8 with --int8)
    ram_bytes: int | None = None  # TFLM arena for tflite-micro, else an activation-memory estimate
    accuracy: float | None = None  # validation accuracy of its longest finished training
    epochs: int | None = None  # the epochs that accuracy was reached in
    within_budget: bool | None = None
    status: str = "profiled"
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def key(self) -> str:
        return candidate_key(model=self.model, width=self.width, resolution=self.resolution)

    def best_run(self) -> RunRecord | None:
        """The finished run with the most epochs (the most trustworthy accuracy)."""
        done = [r for r in self.runs if r.complete and r.accuracy is not None]
        return max(done, key=lambda r: (r.epochs, r.rung)) if done else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["id"] = self.key
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Candidate:
        data = {k: v for k, v in data.items() if k != "id"}
        runs = [RunRecord(**r) for r in data.pop("runs", [])]
        return cls(**data, runs=runs)


def candidate_key(*, model: str, width: float, resolution: int) -> str:
    return f"{model}-w{width:g}-r{resolution}"


# --------------------------------------------------------------------------------------------------
# Parsing the command line's budget and lists
# --------------------------------------------------------------------------------------------------


DURATION_EXAMPLES = "30m, 1h, 90s or 1h30m"


def parse_duration(text: str) -> float:
    """Seconds in '30m', '1h', '90s' or '1h30m'. A unit is required: a bare '30' could mean seconds or minutes."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        if float(text) == 0:
            raise MobilenetsError(f"--time-budget {text}: must be longer than zero, e.g. 30m")
        raise MobilenetsError(
            f"--time-budget {text}: give a unit: {text}m (minutes), {text}s (seconds) or {text}h (hours)"
        )
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", text):
        raise MobilenetsError(f"--time-budget {text!r}: give a duration such as {DURATION_EXAMPLES}")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not seconds > 0:
        raise MobilenetsError(f"--time-budget {text}: must be longer than zero, e.g. 30m")
    if not math.isfinite(seconds):
        raise MobilenetsError(f"--time-budget {text}: too long to be meant; give e.g. 30m, 8h")
    return seconds


def format_duration(seconds: float) -> str:
    """'45s', '1.5m', '2h' — the units --time-budget takes."""
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:.3g}h"


def parse_list(text: str | None, kind: Callable[[str], float], option: str) -> list | None:
    """Comma-separated numbers (finite, each once, in the order given); None when the option is not given."""
    if text is None:
        return None
    example = "1,0.75,0.5" if kind is float else "224,160,128"
    parts = split_items(text, option, what="numbers", example=example)
    try:
        values = [kind(part) for part in parts]
    except ValueError:
        raise MobilenetsError(f"{option} {text!r}: give comma-separated numbers, e.g. {example}") from None
    for value in values:
        if not math.isfinite(value):
            raise MobilenetsError(f"{option} {text!r}: {value:g} is not a finite number; give e.g. {example}")
    return list(dict.fromkeys(values))


def parse_names(text: str | None, option: str, known: Sequence[str]) -> list[str] | None:
    """Comma-separated names, each one of ``known`` (each once, in the order given); None when not given."""
    if text is None:
        return None
    example = "mobilenet_v3_small,mobilenet_v2"
    names = list(dict.fromkeys(split_items(text, option, what="names", example=f"{option} {example}")))
    for name in names:
        if name not in known:
            raise MobilenetsError(f"{option}: unknown model {name!r}; choose from {', '.join(known)}")
    return names


# --------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------


def resolution_grid(native_size: int, at_most: int = MAX_RESOLUTIONS) -> list[int]:
    """Input sizes worth trying for images whose short side is ``native_size`` pixels.

    Large photos: the paper's 224/192/160/128. Small images (e.g. 28 px Fashion-MNIST): from 32 up to
    twice the native size, because upsampling a tiny image gives the network's deep layers a map larger
    than 1×1 to work with and often gains accuracy (README: V3-Small 89.0% at 32 px, 91.0% at 48 px).
    """
    low = max(32, min(native_size // 2, 128))
    high = min(224, max(64, 2 * native_size))
    ladder = [r for r in RESOLUTION_LADDER if low <= r <= high] or [32]
    if len(ladder) <= at_most:
        return ladder
    # Evenly spaced, both ends kept: the largest (most accurate) and the smallest (fastest) matter most.
    picks = {ladder[round(i * (len(ladder) - 1) / (at_most - 1))] for i in range(at_most)}
    return sorted(picks)


MAX_SEARCH_WIDTH = 2.0


def check_grid(
    *, models: Sequence[str], widths: Sequence[float] | None = None, resolutions: Sequence[int] | None = None
) -> None:
    """Refuse, in one line, a model, width or resolution the search cannot build."""
    from mobilenets.models.preprocessing import check_resolution
    from mobilenets.models.profiling import check_width
    from mobilenets.models.registry import list_models

    known = list_models()
    if not models:
        raise MobilenetsError(f"--models: give at least one model, e.g. --models {','.join(FAMILIES[:2])}")
    for name in models:
        if name not in known:
            raise MobilenetsError(f"--models: unknown model {name!r}; choose from {', '.join(known)}")
    for resolution in resolutions or ():
        check_resolution(resolution, "--resolutions")
    for width in widths or ():
        check_width(width, "--widths", at_most=MAX_SEARCH_WIDTH)


def generate_candidates(
    *,
    models: Sequence[str] = FAMILIES,
    widths: Sequence[float] | None = None,
    resolutions: Sequence[int],
) -> list[Candidate]:
    """Every (model, width, resolution): the widths its paper reports unless ``widths`` is given."""
    check_grid(models=models, widths=widths, resolutions=resolutions)
    candidates = []
    for name in models:
        for width in widths or FAMILY_WIDTHS.get(name, (1.0, 0.75, 0.5)):
            for resolution in sorted(set(resolutions), reverse=True):
                candidates.append(Candidate(model=name, width=float(width), resolution=int(resolution)))
    return candidates


# --------------------------------------------------------------------------------------------------
# Choosing
# --------------------------------------------------------------------------------------------------


def pareto_front(points: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: cost no higher and accuracy no lower, one strictly.

    ``points`` are (cost, accuracy); the front is returned in order of increasing cost.
    """
    indexed = sorted(enumerate(points), key=lambda item: (item[1][0], -item[1][1]))
    front, best = [], -math.inf
    for index, (_cost, accuracy) in indexed:
        if accuracy > best:
            front.append(index)
            best = accuracy
    return front


# Near-ties: validation accuracy of a few hundred images moves by a point between equal models, so among
# the in-budget candidates within this many points of the best we take the fastest (then the smallest).
NEAR_TIE_POINTS = 1.0
RECOMMENDATION_RULE = (
    f"the fastest in-budget candidate within {NEAR_TIE_POINTS:g} point of the best in-budget accuracy "
    "(ties: smaller file, then fewer MACs)"
)


def recommend(candidates: Sequence[Candidate]) -> Candidate | None:
    """The candidate to ship: in budget, within NEAR_TIE_POINTS of the best in-budget accuracy, fastest."""
    eligible = [c for c in candidates if c.within_budget and c.accuracy is not None]
    if not eligible:
        return None
    best = max(c.accuracy for c in eligible)
    near = [c for c in eligible if 100.0 * (best - c.accuracy) <= NEAR_TIE_POINTS + 1e-9]
    return min(
        near,
        key=lambda c: (
            c.latency_ms if c.latency_ms is not None else math.inf,
            c.flash_bytes if c.flash_bytes is not None else math.inf,
            c.macs,
        ),
    )


def closest_misses(candidates: Sequence[Candidate], budget: Budget, count: int = 3) -> list[tuple[Candidate, dict]]:
    """The candidates nearest to the budget (smallest worst overrun) with their overruns."""
    scored = []
    for candidate in candidates:
        over = budget.misses(candidate)
        if over:
            scored.append((max(over.values()), candidate, over))
    scored.sort(key=lambda item: item[0])
    return [(candidate, over) for _, candidate, over in scored[:count]]


def format_amount(value: float) -> str:
    """A measured amount or a limit: one decimal from 10 up (205.2), three significant digits below (0.123, 1e-09)."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def format_overrun(fraction: float) -> str:
    """How far over a limit: '+25%', or for wild overruns '126× the limit' rather than '+12500%'."""
    if fraction < 10:
        return f"+{100 * fraction:.0f}%"
    return f"{fraction + 1:.3g}× the limit"


def describe_miss(candidate: Candidate, over: dict[str, float], budget: Budget) -> str:
    limits = budget.limits()
    units = {"latency_ms": ("latency", 1.0, "ms"), "flash_bytes": ("flash", 1024.0, "KB"), "ram_bytes": ("RAM", 1024.0, "KB")}
    pieces = []
    for name, fraction in over.items():
        label, scale, unit = units[name]
        value = format_amount(getattr(candidate, name) / scale)
        # Not exported: the flash figure is the weights alone, a lower bound of the file.
        floor = name == "flash_bytes" and candidate.latency_ms is None
        shown = f"≥ {value} {unit} (weights alone)" if floor else f"{value} {unit}"
        pieces.append(f"{label} {shown} > {format_amount(limits[name] / scale)} {unit} ({format_overrun(fraction)})")
    return f"{candidate.key}: " + ", ".join(pieces)


def select_pool(candidates: Sequence[Candidate], size: int) -> list[Candidate]:
    """Up to ``size`` in-budget candidates to train, spread over families and costs.

    Pretrained candidates come first (on small data they usually win by far). Then each family in turn
    gives its next candidate from a cost-sorted list visited ends-first (largest, smallest, middle, …):
    the largest is the likely accuracy winner, the smallest the likely latency winner, and the search
    needs both ends of each family's curve to place its Pareto front.
    """
    usable = [c for c in candidates if c.within_budget is not False and c.status != "not measured"]
    pool: list[Candidate] = [c for c in usable if c.weights][:size]
    queues: dict[str, list[Candidate]] = {}
    for candidate in usable:
        if candidate not in pool:
            queues.setdefault(candidate.model, []).append(candidate)
    for model, queue in queues.items():
        queue.sort(key=lambda c: c.macs, reverse=True)
        queues[model] = _ends_first(queue)
    while len(pool) < size and any(queues.values()):
        for model in list(queues):
            if queues[model] and len(pool) < size:
                pool.append(queues[model].pop(0))
    return pool


def _ends_first(items: list) -> list:
    """Largest, smallest, then repeatedly the middle of the widest remaining gap."""
    if len(items) <= 2:
        return list(items)
    order = [0, len(items) - 1]
    gaps = [(0, len(items) - 1)]
    while len(order) < len(items):
        gaps.sort(key=lambda g: g[1] - g[0], reverse=True)
        low, high = gaps.pop(0)
        if high - low < 2:
            continue
        middle = (low + high) // 2
        order.append(middle)
        gaps.extend([(low, middle), (middle, high)])
    return [items[i] for i in order]
