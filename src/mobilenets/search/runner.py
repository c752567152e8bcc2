"""The search: measure every candidate's cost, train the promising ones, keep training the best.

1. Profile the grid (parameters, MACs) — milliseconds each.
2. Measure cost on the target (batch-1 latency, file size, memory) per (model, width); a candidate whose
   file already cannot fit (its weights alone are over the flash limit) is not even exported. Candidates
   over the budget are never trained.
3. Successive halving (Jamieson & Talwalkar 2016, https://arxiv.org/abs/1502.07943): a short training of
   a pool of in-budget candidates spread over families and costs, then the better half trained twice as
   long, then the better half of those again. The epochs are chosen from one measured calibration epoch
   so that the whole plan fits the time budget. Every training is a fresh ``mobilenets train`` run from
   the initial weights, so the longest run of the recommended candidate is reproduced by one command.

Every candidate's training is a run directory under ``OUT/runs``; the state (measurements, plan, runs)
is saved after every step, so an interrupted search started again with the same ``--out`` skips what is
finished and resumes a half-trained run with ``mobilenets train --resume``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_write_text, check_writable
from mobilenets.core.run_directory import RunDirectory
from mobilenets.search.candidates import (
    Candidate,
    RunRecord,
    candidate_key,
    closest_misses,
    describe_miss,
    format_duration,
    generate_candidates,
    recommend,
    resolution_grid,
    select_pool,
)
from mobilenets.search.measure import Measurement, check_target, measure_device_group, measure_onnx_group
from mobilenets.search.result import (
    SIGNATURE_OPTIONS,
    DataSummary,
    Plan,
    SearchResult,
    SearchSettings,
    runtime_name,
    signature_differences,
)

STATE = "search_state.json"
RESULT = "search.json"
REPORT = "report.html"
MEASURE_SHARE = 0.25  # at most this share of the time budget goes to measuring latency and size
RESERVE_S = 20.0  # kept back for the report and the final files
ETA = 2  # successive halving: each rung keeps the better 1/ETA and trains ETA× longer
MAX_RUNGS = 3






def rung_sizes(candidates: int, *, rungs: int) -> list[int] | None:
    """How many candidates each rung of successive halving trains; None when ``rungs`` cannot halve.

    Each rung keeps the better 1/ETA, and the last compares at least two. A rung that would keep as many
    candidates as the one before it only repeats it at more epochs (2 candidates in 2 rungs, or 4 in 3),
    so such plans are refused and a shorter one trains the same candidates longer instead.
    """
    sizes = [max(1, math.ceil(candidates / ETA**k)) for k in range(rungs)]
    if rungs > 1 and sizes[-1] < 2 <= candidates:
        sizes[-1] = 2
    if any(later >= earlier for earlier, later in itertools.pairwise(sizes)):
        return None
    return sizes


@dataclass
class TrainRequest:
    """One ``mobilenets train`` run of a candidate."""

    model: str
    width: float
    resolution: int
    epochs: int
    weights: str | None
    run_dir: Path
    data: Path
    val: Path | None = None
    seed: int = 0
    timeout_s: float | None = None

    def arguments(self, *, quantize: bool = False) -> list[str]:
        """``mobilenets train`` arguments that train exactly this candidate."""
        arguments = ["train", "--data", str(self.data)]
        if self.val is not None:
            arguments += ["--val", str(self.val)]
        arguments += [
            "--model", self.model,
            "--width", f"{self.width:g}",
            "--resolution", str(self.resolution),
            "--recipe", "auto",
            "--epochs", str(self.epochs),
            "--weights", self.weights or "none",
            "--seed", str(self.seed),
            "--out", str(self.run_dir),
        ]  # fmt: skip
        return arguments + (["--quantize"] if quantize else [])


@dataclass
class TrainOutcome:
    accuracy: float | None
    seconds: float  # wall time of the whole command
    complete: bool
    train_seconds: float | None = None  # the training loop alone (metrics.json)
    train_images: int | None = None
    error: str | None = None
    timed_out: bool = False  # stopped at its timeout (not a failure of the run itself)


Trainer = Callable[[TrainRequest], TrainOutcome]
Measurer = Callable[..., dict[int, Measurement]]










# --------------------------------------------------------------------------------------------------
# Data, weights, profiles
# --------------------------------------------------------------------------------------------------


def check_data_folder(path: Path, option: str) -> None:
    """A folder of class folders: refuse, in one line, a path that is missing or a file."""
    path = Path(path)
    if not path.exists():
        raise MobilenetsError(f"{option} {path}: does not exist; pass a folder with one subfolder of images per class")
    if not path.is_dir():
        raise MobilenetsError(
            f"{option} {path}: is a file, not a folder; pass the folder that holds one subfolder of images per class"
        )


# What ``mobilenets train`` writes first and last: a folder holding one of these is a training run.
RUN_MARKERS = (RunDirectory.CONFIG, RunDirectory.CHECKPOINT, RunDirectory.MODEL, RunDirectory.METRICS)


def check_out_folder(out: Path) -> None:
    """``--out`` must be a new or empty folder, or an earlier search's: refused in one line before any work.

    A file (or a path under one) cannot be a folder. A training run's folder would get its report.html
    replaced and the search's folders added; any other folder with files in it could have its own
    report.html, runs/ or search.json replaced, so only a folder holding a search (its state file) is reused.
    """
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                which = "is a file" if path == out else f"is under {path}, a file"
                raise MobilenetsError(
                    f"--out {out}: {which}; pass a folder (a new one, or an earlier search's to resume it)"
                )
            break
    if out.is_dir():
        held = [name for name in RUN_MARKERS if (out / name).exists()]
        if held:
            raise MobilenetsError(
                f"--out {out}: holds a training run ({held[0]}); choose another --out for the search "
                "(a new folder, or an earlier search's to resume it)"
            )
        if not (out / STATE).exists():
            entries = sorted(entry.name for entry in out.iterdir() if not entry.name.startswith("."))
            if entries:
                shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
                raise MobilenetsError(
                    f"--out {out}: holds other files and no search ({shown}); choose another --out "
                    "(a new or empty folder, or an earlier search's to resume it)"
                )
    check_writable(out, "--out", create=False)  # a read-only place, before any candidate trains


def summarize_data(data: Path, val: Path | None) -> DataSummary:
    from PIL import Image

    from mobilenets.data.folders import scan_folder

    check_data_folder(data, "--data")
    scan = scan_folder(data)
    samples = scan.samples
    if len(scan.classes) < 2:
        raise MobilenetsError(f"--data {data}: {len(scan.classes)} class folder(s); a classifier needs at least 2")
    if val is not None:
        check_data_folder(val, "--val")
        held_out = scan_folder(val, classes=scan.classes)
        if not held_out.samples:
            raise MobilenetsError(
                f"--val {val}: no images in folders named like --data's classes ({', '.join(scan.classes[:5])}"
                f"{', …' if len(scan.classes) > 5 else ''})"
            )
    step = max(1, len(samples) // 24)
    sizes = []
    for sample in samples[::step][:24]:
        try:
            with Image.open(sample.path) as image:
                sizes.append(min(image.size))
        except OSError:
            continue  # train's own scan reports broken files; a size sample can skip them
    sizes.sort()
    native = sizes[len(sizes) // 2] if sizes else 224
    images = len(samples) if val is not None else round(len(samples) * 0.8)
    return DataSummary(classes=len(scan.classes), images=images, native_size=native)


def available_weights(model: str, width: float) -> str | None:
    """A published checkpoint for (model, width) that is on this machine already (cache or offline package).

    Offline, ``train --weights auto`` would fall back to scratch with a warning; the search passes an
    explicit name or ``none`` so that the recommended command means the same thing everywhere.
    """
    from mobilenets.core.files import cache_dir
    from mobilenets.models.published import PUBLISHED_WEIGHTS, default_published, offline_copy

    choice = default_published(model, width)
    if choice.name is None:
        return None
    published = PUBLISHED_WEIGHTS[choice.name]
    for name, entry in [(choice.name, published)] + [
        (n, w) for n, w in PUBLISHED_WEIGHTS.items() if (w.architecture, w.width) == (model, width) and n != choice.name
    ]:
        if (cache_dir() / entry.filename).exists():
            return name
        if any(offline_copy(package, inner) is not None for package, inner in entry.offline_copies):
            return name
    return None


def profile_candidates(candidates: Sequence[Candidate], num_classes: int) -> None:
    """Parameters and MACs of each candidate (one model built per model and width)."""
    from mobilenets.models.factory import create_model
    from mobilenets.models.profiling import profile_model

    built: dict[tuple[str, float], tuple[object, str | None]] = {}
    for candidate in candidates:
        key = (candidate.model, candidate.width)
        if key not in built:
            network = create_model(candidate.model, num_classes=num_classes, width=candidate.width)
            built[key] = (network, available_weights(candidate.model, candidate.width))
        network, weights = built[key]
        profile = profile_model(network, candidate.resolution)
        candidate.params, candidate.macs, candidate.weights = profile.params, profile.macs, weights


def weights_floor_bytes(model: str, width: float, num_classes: int, int8: bool) -> int:
    """A lower bound of the deployed file: the conv and linear weights alone, 1 or 4 bytes each."""
    from mobilenets.models.factory import create_model
    from mobilenets.models.profiling import layer_type

    network = create_model(model, num_classes=num_classes, width=width)
    values = sum(m.weight.numel() for m in network.modules() if layer_type(m) is not None)
    return values * (1 if int8 else 4)


# --------------------------------------------------------------------------------------------------
# Training a candidate: a ``mobilenets train`` subprocess
# --------------------------------------------------------------------------------------------------


def read_outcome(run_dir: Path, *, seconds: float, error: str | None = None) -> TrainOutcome:
    run = RunDirectory(run_dir)
    try:
        metrics = run.metrics()
    except MobilenetsError:  # a candidate's damaged metrics.json: the candidate failed, not the search
        metrics = {}
    accuracy = metrics.get("best_val_accuracy")
    complete = accuracy is not None and bool(metrics.get("complete")) and error is None
    return TrainOutcome(
        accuracy=accuracy,
        seconds=seconds,
        complete=complete,
        train_seconds=metrics.get("train_seconds"),
        train_images=metrics.get("train_images"),
        error=error if error else (None if complete else "the run did not finish"),
    )


def subprocess_trainer(request: TrainRequest) -> TrainOutcome:
    """Run ``python -m mobilenets train`` (or ``--resume`` a half-done run); its output goes to a log file."""
    run_dir = Path(request.run_dir)
    run = RunDirectory(run_dir)
    if run.metrics_path.exists() and run.is_complete():
        return read_outcome(run_dir, seconds=0.0)  # finished before the search was interrupted
    resume = run.checkpoint.exists() and run.config.exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume, start again
    arguments = ["train", "--resume", str(run_dir)] if resume else request.arguments()
    log = run_dir.with_name(run_dir.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    error = None
    timed_out = False
    with open(log, "a") as output:
        output.write(f"$ mobilenets {shlex.join(arguments)}\n")
        output.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "mobilenets", *arguments, "--quiet"], stdout=output, stderr=subprocess.STDOUT
        )
        try:
            process.wait(timeout=request.timeout_s)
        except subprocess.TimeoutExpired:
            error = "stopped at the time budget (a later search with the same --out resumes it)"
            timed_out = True
            _interrupt(process)
        except BaseException:
            _interrupt(process)  # Ctrl-C of the search: the run checkpoints, the next search resumes it
            raise
    seconds = time.monotonic() - start
    if error is None and process.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        last = lines[-1][:300] if lines else "(no output)"
        error = f"exit code {process.returncode}: {last} (log: {log})"
    outcome = read_outcome(run_dir, seconds=seconds, error=error)
    outcome.timed_out = timed_out
    return outcome


def _interrupt(process: subprocess.Popen) -> None:
    """SIGINT is train's Ctrl-C: it saves a checkpoint and exits; kill only if it does not within a minute."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------


class Search:
    """One search's state and steps. ``run()`` does everything; the steps are separate for tests."""

    def __init__(
        self,
        settings: SearchSettings,
        *,
        trainer: Trainer = subprocess_trainer,
        measurer: Measurer | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = print,
    ) -> None:
        if settings.target == "tflite-micro" and not settings.int8:
            settings.int8 = True  # TFLite Micro runs fully integer files only
        self.settings = settings
        self.trainer = trainer
        if measurer is None:
            measurer = (
                measure_onnx_group
                if settings.target == "onnx"
                else functools.partial(measure_device_group, target=settings.target)
            )
        self.measurer = measurer
        self.clock = clock
        self.log = log
        self.start = clock()
        self.deadline = self.start + settings.time_budget_s
        self.out = Path(settings.out)
        self.candidates: list[Candidate] = []
        self.plan: Plan | None = None
        self.data: DataSummary | None = None
        self.notes: list[str] = []
        # Measured seconds per image-epoch of each trained candidate, relative to the plan's MAC scaling.
        self.cost_ratios: list[float] = []

    # -- state ------------------------------------------------------------------------------------

    @property
    def by_key(self) -> dict[str, Candidate]:
        return {c.key: c for c in self.candidates}

    def save_state(self) -> None:
        state = {
            "signature": self.settings.signature(),
            "data": asdict(self.data) if self.data else None,
            "plan": self.plan.to_dict() if self.plan else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / STATE, json.dumps(state, indent=1))

    def load_state(self) -> bool:
        path = self.out / STATE
        if not path.exists():
            return False
        # Deleting the state would leave a folder of files and no search, which check_out_folder refuses.
        unreadable = MobilenetsError(f"{path}: unreadable search state; pick another --out")
        try:
            state = json.loads(path.read_text())
        except ValueError:
            raise unreadable from None
        saved = state.get("signature") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            raise unreadable
        current = self.settings.signature()
        if saved != current:
            unrecorded = [SIGNATURE_OPTIONS.get(key, (key,))[0] for key in current if key not in saved]
            if unrecorded:
                raise MobilenetsError(
                    f"{self.out}: holds a search saved by an earlier mobilenets, which did not record its "
                    f"{', '.join(unrecorded)}; pick another --out"
                )
            raise MobilenetsError(
                f"{self.out}: holds a search with other settings ({'; '.join(signature_differences(saved, current))}); "
                "pick another --out, or repeat that search's settings to resume it"
            )
        self.data = DataSummary(**state["data"]) if state.get("data") else None
        self.plan = Plan(**state["plan"]) if state.get("plan") else None
        self.candidates = [Candidate.from_dict(c) for c in state.get("candidates", [])]
        return True

    def remaining(self) -> float:
        return self.deadline - self.clock()

    # -- steps --------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Data summary and the profiled grid (or the saved state of an interrupted search)."""
        from mobilenets.training.options import check_seed

        check_target(self.settings.target)
        check_seed(self.settings.seed)
        check_out_folder(self.out)
        check_data_folder(Path(self.settings.data), "--data")
        if self.settings.val is not None:
            check_data_folder(Path(self.settings.val), "--val")
        if self.load_state():
            finished = sum(1 for c in self.candidates for r in c.runs if r.complete)
            self.log(f"resuming the search in {self.out}: {finished} finished run(s) are reused")
        if self.data is None:
            self.data = summarize_data(Path(self.settings.data), self.settings.val)
        if not self.candidates:
            resolutions = self.settings.resolutions or resolution_grid(self.data.native_size)
            self.candidates = generate_candidates(
                models=self.settings.models, widths=self.settings.widths, resolutions=resolutions
            )
            profile_candidates(self.candidates, self.data.classes)
            self.save_state()  # the first write to --out: every argument has been checked by now
        self.log(
            f"{len(self.candidates)} candidates: {len({c.model for c in self.candidates})} model(s) × widths × "
            f"resolutions {sorted({c.resolution for c in self.candidates})} for {self.data.classes} classes, "
            f"~{self.data.images:,} training images (median short side {self.data.native_size} px); "
            f"budget: {self.settings.budget.describe()}; time: {format_duration(self.settings.time_budget_s)}"
        )

    def measure(self) -> None:
        """Latency, file size and memory of every candidate that could fit; at most MEASURE_SHARE of the time."""
        settings, budget = self.settings, self.settings.budget
        groups: dict[tuple[str, float], list[Candidate]] = {}
        for candidate in self.candidates:
            groups.setdefault((candidate.model, candidate.width), []).append(candidate)
        order = _round_robin(groups)
        phase_end = self.clock() + MEASURE_SHARE * max(0.0, self.remaining())
        work = self.out / "measure"
        for key in order:
            members = [c for c in groups[key] if c.latency_ms is None and c.status != "over budget"]
            if not members:
                continue
            model, width = key
            if budget.max_flash_bytes is not None:
                floor = weights_floor_bytes(model, width, self.data.classes, settings.int8)
                if floor > budget.max_flash_bytes:
                    for c in members:
                        c.flash_bytes, c.within_budget = floor, False
                        c.status = "over budget"
                    self.save_state()
                    continue
            if self.clock() > phase_end:
                for c in members:
                    c.status = "not measured"
                continue
            measured = self.measurer(
                model_name=model,
                width=width,
                resolutions=[c.resolution for c in members],
                num_classes=self.data.classes,
                int8=settings.int8,
                work=work,
            )
            for c in members:
                m = measured[c.resolution]
                c.latency_ms, c.flash_bytes, c.ram_bytes = round(m.latency_ms, 3), m.flash_bytes, m.ram_bytes
                c.within_budget = budget.allows(c)
                c.status = "measured" if c.within_budget else "over budget"
            self.log(
                f"measured {model} width {width:g}: "
                + ", ".join(f"{c.resolution}px {c.latency_ms:.2f} ms" for c in members)
                + f", {members[0].flash_bytes / 1024:,.0f} KB"
            )
            self.save_state()
        skipped = [c for c in self.candidates if c.status == "not measured"]
        if skipped:
            self.notes.append(
                f"{len(skipped)} candidate(s) not measured: measuring stops at {MEASURE_SHARE:.0%} of the time budget"
            )
        for c in self.candidates:
            if c.status == "not measured":
                c.within_budget = None
        for c in self.candidates:
            if c.within_budget is False and c.status == "over budget" and c.latency_ms is None:
                c.status = "over budget (flash: its weights alone exceed the limit; not exported)"

    def check_feasible(self) -> None:
        """A budget nothing meets: one line with the closest candidates and what they miss by.

        Candidates the time budget left unmeasured are named as such: the advice is then a longer
        --time-budget, not a looser device budget."""
        if any(c.within_budget for c in self.candidates):
            return
        budget = self.settings.budget
        misses = closest_misses(self.candidates, budget)
        unmeasured = [c for c in self.candidates if c.status == "not measured"]
        self.write_result(recommended=None, command=None)
        time_budget = format_duration(self.settings.time_budget_s)
        if not misses and unmeasured:
            raise MobilenetsError(
                f"no candidate was measured: the time budget (--time-budget {time_budget}) ran out before the "
                f"first measurement (measuring may use {MEASURE_SHARE:.0%} of it); raise --time-budget, e.g. 30m"
            )
        closest = "; ".join(describe_miss(c, over, budget) for c, over in misses) or "none measured"
        advice = ["Relax the budget"]
        if unmeasured:
            advice.append(f"raise --time-budget (now {time_budget}) to measure the other {len(unmeasured)}")
        missed = {name for _, over in misses for name in over}
        if not self.settings.int8 and missed & {"flash_bytes", "ram_bytes"}:
            smaller = " and ".join(
                what for name, what in (("flash_bytes", "files"), ("ram_bytes", "activations")) if name in missed
            )
            advice.append(f"add --int8 (about 4× smaller {smaller})")
        unmeasured_note = (
            f"; {len(unmeasured)} of {len(self.candidates)} candidates not measured within the time budget"
            if unmeasured
            else ""
        )
        raise MobilenetsError(
            f"no candidate meets the budget ({budget.describe()}, {runtime_name(self.settings)}); closest: {closest}"
            f"{unmeasured_note}. " + ", or ".join(advice)
        )

    def in_budget(self) -> list[Candidate]:
        return [c for c in self.candidates if c.within_budget]

    def loop_estimate_s(self, candidate: Candidate, epochs: int) -> float:
        """Training-loop seconds predicted from the calibration epoch, scaled by MACs."""
        plan = self.plan
        assert plan is not None
        # Cost per image grows slower than MACs: per-layer overhead dominates small models at small sizes.
        relative = (max(candidate.macs, 1) / max(plan.calibration_macs, 1)) ** 0.75
        return epochs * self.data.images * plan.image_epoch_s * relative

    def estimate_run_s(self, candidate: Candidate, epochs: int) -> float:
        """Predicted wall time of one training: start-up plus the loop, corrected by the runs measured so far."""
        ratios = sorted(self.cost_ratios)
        correction = ratios[len(ratios) // 2] if ratios else 1.0
        return self.plan.overhead_s + correction * self.loop_estimate_s(candidate, epochs)

    def calibrate(self, pool: list[Candidate]) -> tuple[float, float, int]:
        """One epoch of the pool's median-cost candidate: per-run overhead and seconds per image-epoch."""
        chosen = sorted(pool, key=lambda c: c.macs)[len(pool) // 2]
        run_dir = self.out / "calibration" / chosen.key
        shutil.rmtree(run_dir, ignore_errors=True)  # its wall time is the measurement: always a fresh run
        request = self.request(chosen, epochs=1, run_dir=run_dir)
        request.timeout_s = max(30.0, 0.3 * self.remaining())
        self.log(f"calibration: 1 epoch of {chosen.key} to time training on this data")
        outcome = self.trainer(request)
        if outcome.error and outcome.train_seconds is None:
            log = f"{request.run_dir}.log"
            if outcome.timed_out:  # the run itself did not fail: the time it was given was too short
                raise MobilenetsError(
                    f"calibration run of {chosen.key} did not finish its one epoch in {request.timeout_s:.0f} s (its "
                    f"share of --time-budget {format_duration(self.settings.time_budget_s)}); raise --time-budget or "
                    f"pass fewer images (log: {log})"
                )
            # The run's own error (its last line) says what went wrong; its log has the rest.
            where = "" if log in outcome.error else f" (log: {log})"
            raise MobilenetsError(f"calibration run of {chosen.key} failed: {outcome.error}{where}")
        train_seconds = outcome.train_seconds or outcome.seconds
        images = outcome.train_images or self.data.images
        overhead = max(1.0, outcome.seconds - train_seconds)
        return overhead, train_seconds / max(images, 1), chosen.macs

    def make_plan(self) -> Plan:
        """The largest schedule that fits the remaining time: rungs, their sizes and epochs."""
        pool = select_pool(self.in_budget(), self.settings.max_candidates)
        overhead, image_epoch, macs = self.calibrate(pool)
        self.plan = Plan(
            pool=[c.key for c in pool],
            rung_epochs=[],
            rung_sizes=[],
            overhead_s=overhead,
            image_epoch_s=image_epoch,
            calibration_macs=macs,
        )
        available = max(0.0, self.remaining() - RESERVE_S) * 0.9  # 10% margin for estimate error
        from mobilenets.training.recipes import choose_recipe

        pretrained = any(c.weights for c in pool)
        full_epochs = choose_recipe(self.data.images, pretrained=pretrained).epochs
        best: tuple[list[int], list[int], list[Candidate]] | None = None
        members = list(pool)
        while members and best is None:
            for rungs in range(min(MAX_RUNGS, 1 + int(math.log(max(len(members), 1), ETA))), 0, -1):
                sizes = rung_sizes(len(members), rungs=rungs)
                if sizes is None:
                    continue
                for first in range(max(1, full_epochs // ETA ** (rungs - 1)), 0, -1):
                    epochs = [first * ETA**k for k in range(rungs)]
                    if self.plan_seconds(members, sizes=sizes, epochs=epochs) <= available:
                        best = (epochs, sizes, members)
                        break
                if best:
                    break
            if best is None:
                members = members[:-1]  # the least promising (last selected) goes
        if best is None:
            raise MobilenetsError(
                f"--time-budget {format_duration(self.settings.time_budget_s)} is too short to train even one "
                f"candidate once on this data (one run ≈ {overhead + self.data.images * image_epoch:.0f} s); "
                "raise it or pass fewer images"
            )
        epochs, sizes, members = best
        if len(members) < len(pool):
            self.notes.append(f"the time budget trains {len(members)} of {len(pool)} selected candidates")
        self.plan.pool = [c.key for c in members]
        self.plan.rung_epochs, self.plan.rung_sizes = epochs, sizes
        self.save_state()
        return self.plan

    def plan_seconds(self, members: Sequence[Candidate], *, sizes: Sequence[int], epochs: Sequence[int]) -> float:
        """Predicted time of a schedule; later rungs are costed at the pool's mean candidate (not known yet)."""
        total = sum(self.estimate_run_s(c, epochs[0]) for c in members)
        for size, rung_epochs in zip(sizes[1:], epochs[1:], strict=True):
            mean = sum(self.estimate_run_s(c, rung_epochs) for c in members) / len(members)
            total += size * mean
        return total

    def request(self, candidate: Candidate, *, epochs: int, run_dir: Path) -> TrainRequest:
        return TrainRequest(
            model=candidate.model,
            width=candidate.width,
            resolution=candidate.resolution,
            epochs=epochs,
            weights=candidate.weights,
            run_dir=run_dir,
            data=Path(self.settings.data),
            val=self.settings.val,
            seed=self.settings.seed,
        )

    def train(self, candidate: Candidate, *, rung: int, epochs: int) -> RunRecord:
        run_dir = self.out / "runs" / candidate.key / f"e{epochs}"
        for record in candidate.runs:
            if record.run_dir == str(run_dir) and record.complete:
                return record  # finished in an earlier, interrupted search
        request = self.request(candidate, epochs=epochs, run_dir=run_dir)
        predicted = self.estimate_run_s(candidate, epochs)
        request.timeout_s = max(1.0, self.remaining() - RESERVE_S)
        self.log(
            f"rung {rung + 1}: {candidate.key}, {epochs} epoch(s), ≈{predicted:.0f} s "
            f"({max(0.0, self.remaining()) / 60:.1f} min left)"
        )
        outcome = self.trainer(request)
        record = RunRecord(
            rung=rung,
            epochs=epochs,
            run_dir=str(run_dir),
            accuracy=outcome.accuracy,
            seconds=round(outcome.seconds, 1),
            complete=outcome.complete,
            error=outcome.error,
        )
        candidate.runs = [r for r in candidate.runs if r.run_dir != str(run_dir)] + [record]
        if outcome.complete and outcome.train_seconds:
            self.cost_ratios.append(outcome.train_seconds / max(self.loop_estimate_s(candidate, epochs), 1e-9))
        self.refresh(candidate)
        self.save_state()
        if outcome.complete:
            self.log(f"  {candidate.key}: accuracy {100 * outcome.accuracy:.1f}% in {outcome.seconds:.0f} s")
        else:
            self.log(f"  {candidate.key}: {outcome.error}")
        return record

    def refresh(self, candidate: Candidate) -> None:
        best = candidate.best_run()
        if best is not None:
            candidate.accuracy, candidate.epochs = best.accuracy, best.epochs
            candidate.status = "trained"
        elif candidate.runs:
            candidate.status = f"training failed: {candidate.runs[-1].error}"

    def halving(self) -> None:
        plan = self.plan
        assert plan is not None
        members = [self.by_key[key] for key in plan.pool]
        for rung, (size, epochs) in enumerate(zip(plan.rung_sizes, plan.rung_epochs, strict=True)):
            if rung:
                # Promotion by the previous rung's accuracy (same epochs for all, so comparable).
                scored = [(c, _rung_accuracy(c, rung - 1)) for c in members]
                scored = [(c, a) for c, a in scored if a is not None]
                scored.sort(key=lambda item: item[1], reverse=True)
                members = [c for c, _ in scored[:size]]
            for candidate in members:
                finished = _rung_accuracy(candidate, rung) is not None
                # A run that cannot get half-way in the time left is not started (its estimate has a ±2× error).
                if not finished and self.remaining() - RESERVE_S < 0.5 * self.estimate_run_s(candidate, epochs):
                    self.notes.append(
                        f"rung {rung + 1} stopped early at the time budget ({candidate.key} and later not trained)"
                    )
                    return
                self.train(candidate, rung=rung, epochs=epochs)
                if self.remaining() <= RESERVE_S:
                    self.notes.append(f"stopped at the time budget during rung {rung + 1}")
                    return

    # -- results ----------------------------------------------------------------------------------

    def recommended_command(self, candidate: Candidate) -> str:
        best = candidate.best_run()
        assert best is not None
        run_dir = Path("runs") / f"{candidate.key}"
        request = self.request(candidate, epochs=best.epochs, run_dir=run_dir)
        onnx_int8 = self.settings.int8 and self.settings.target == "onnx"
        train = ["mobilenets", *request.arguments(quantize=onnx_int8)]
        if onnx_int8:
            # --quantize writes RUN/model.onnx and RUN/model_int8.onnx itself (evaluated against fp32);
            # a separate `export --int8` would refuse to replace that chosen int8 file.
            return shlex.join(train)
        export_format = self.export_format()
        export = ["mobilenets", "export", str(run_dir), "--format", export_format]
        if self.settings.int8 and export_format not in ("onnx", "tflite-micro", "micro"):
            export.append("--int8")
        return f"{shlex.join(train)} && {shlex.join(export)}"

    def export_format(self) -> str:
        """The ``mobilenets export --format`` that writes the target's file, ONNX while export cannot yet."""
        from mobilenets.deployment.export import FORMATS

        names = {"tflite": ("tflite", "litert"), "executorch": ("executorch",), "tflite-micro": ("tflite-micro", "micro")}
        for name in names.get(self.settings.target, ("onnx",)):
            if name in FORMATS:
                return name
        self.notes.append(f"`mobilenets export` cannot write {self.settings.target} files yet: the command exports ONNX")
        return "onnx"

    def write_result(self, *, recommended: Candidate | None, command: str | None) -> SearchResult:
        from mobilenets.search.report import write_report

        result = SearchResult(
            settings=self.settings,
            data=self.data,
            candidates=self.candidates,
            recommended=recommended,
            command=command,
            plan=self.plan,
            elapsed_s=self.clock() - self.start,
            notes=self.notes,
        )
        atomic_write_text(self.out / RESULT, json.dumps(result.to_dict(), indent=1))
        write_report(result, self.out / REPORT)
        return result

    def run(self) -> SearchResult:
        self.prepare()
        self.measure()
        self.check_feasible()
        if self.plan is None or not self.plan.rung_epochs:
            self.make_plan()
        else:
            self.log("reusing the saved plan")
        plan = self.plan
        self.log(
            f"plan: {len(plan.pool)} candidates; rungs of {plan.rung_sizes} candidate(s) × {plan.rung_epochs} epochs "
            f"(successive halving, the better 1/{ETA} goes on)"
        )
        self.halving()
        for candidate in self.candidates:
            if candidate.status == "measured":
                candidate.status = "in budget, not trained"
        recommended = recommend(self.candidates)
        command = self.recommended_command(recommended) if recommended else None
        if recommended is None:
            self.notes.append("no in-budget candidate finished training in the time budget")
        return self.write_result(recommended=recommended, command=command)


def _rung_accuracy(candidate: Candidate, rung: int) -> float | None:
    for record in candidate.runs:
        if record.rung == rung and record.complete:
            return record.accuracy
    return None


def _round_robin(groups: dict[tuple[str, float], list[Candidate]]) -> list[tuple[str, float]]:
    """(model, width) groups alternating between models, widest first: a cut-off still covers every family."""
    by_model: dict[str, list[tuple[str, float]]] = {}
    for key in groups:
        by_model.setdefault(key[0], []).append(key)
    for keys in by_model.values():
        keys.sort(key=lambda k: -k[1])
    order = []
    while any(by_model.values()):
        for keys in by_model.values():
            if keys:
                order.append(keys.pop(0))
    return order


def run_search(settings: SearchSettings, **options) -> SearchResult:
    return Search(settings, **options).run()


__all__ = [
    "Search",
    "SearchResult",
    "SearchSettings",
    "TrainOutcome",
    "TrainRequest",
    "candidate_key",
    "run_search",
]
