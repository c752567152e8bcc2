"""The whole decision, for a model and its data: PTQ, then another calibration, mixed precision and QAT
while int8 loses more than the threshold, and the best int8 model kept."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_write
from mobilenets.deployment.onnx import copy_metadata, export_onnx
from mobilenets.deployment.quantization.calibration import ImageSet, images_that_fit
from mobilenets.deployment.quantization.comparison import Comparison, LayerError, compare, float_nodes_for, layer_errors
from mobilenets.deployment.quantization.ptq import (
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_THRESHOLD,
    check_methods,
    quantize_ptq,
)
from mobilenets.deployment.quantization.qat import qat_finetune
from mobilenets.deployment.timing import SpeedCheck, speed_check, speed_verdict


@dataclass
class QuantizationResult:
    """The chosen int8 model and every attempt that led to it."""

    path: Path
    method: str
    comparison: Comparison
    threshold: float
    attempts: list[dict] = field(default_factory=list)
    worst_layers: list[LayerError] = field(default_factory=list)
    speed: list[SpeedCheck] = field(default_factory=list)

    @property
    def within_threshold(self) -> bool:
        return self.comparison.drop_points <= self.threshold

    def figures(self) -> dict:
        """The headline numbers, as ``metrics.json`` keys (accuracies are fractions; None when unlabelled)."""
        c = self.comparison
        return {
            "fp32_val_accuracy": c.fp32_accuracy,
            "int8_val_accuracy": c.int8_accuracy,
            "int8_agreement": c.agreement,
            "int8_drop_points": round(c.drop_points, 3),
            "int8_within_threshold": self.within_threshold,
            "int8_method": self.method,
            "int8_path": str(self.path),
            "int8_size_bytes": c.int8_size_bytes,
            "fp32_onnx_size_bytes": c.fp32_size_bytes,
            "fp32_onnx_latency_ms": c.fp32_latency_ms,
            "int8_latency_ms": c.int8_latency_ms,
            "latency_batch": c.latency_batch,
            "int8_eval_images": c.images,
            **{f"int8_speedup_batch{check.batch}": round(check.speedup, 3) for check in self.speed},
            **{
                f"int8_speedup_band_batch{check.batch}": [round(check.low, 3), round(check.high, 3)]
                for check in self.speed
                if check.low is not None
            },
            # Slower beyond the noise band of the repeated runs: a verdict the next run would not reverse.
            "int8_slower_than_fp32": any(check.clearly_slower for check in self.speed) if self.speed else None,
        }

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "method": self.method,
            "threshold_points": self.threshold,
            "within_threshold": self.within_threshold,
            **self.comparison.to_dict(),
            "attempts": self.attempts,
            "worst_layers": [e.to_dict() for e in self.worst_layers[:10]],
            "speed": [check.to_dict() for check in self.speed],
        }


def quantize_model(
    model: nn.Module,
    out: Path | str,
    calibration: ImageSet,
    evaluation: ImageSet,
    method: str = "auto",
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    threshold: float = DEFAULT_THRESHOLD,
    train: ImageSet | Callable[[], ImageSet] | None = None,
    qat_epochs: int = 2,
    fp32_onnx: Path | str | None = None,
    report=print,
    speed_batches: Sequence[int] = (1, 32),
) -> QuantizationResult:
    """PTQ; if it loses more than ``threshold`` points: mixed precision, then QAT (``auto``), best kept.

    ``method``: ``ptq`` (PTQ only, with the diagnosis when it falls short), ``mixed`` (PTQ then mixed
    precision), ``qat`` (QAT only), ``auto`` (PTQ → mixed precision → QAT until one is within threshold).
    """
    check_methods(method, calibration_method)
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix="mobilenets-quantize-"))
    try:
        if fp32_onnx is None:
            fp32_onnx = export_onnx(model, work / "fp32.onnx")
        candidates: list[tuple[str, Path, Comparison]] = []

        def attempt(name: str, path: Path) -> Comparison:
            comparison = compare(fp32_onnx, path, evaluation)
            candidates.append((name, path, comparison))
            report(describe(name, comparison))
            return comparison

        fitted: dict[str, np.ndarray] = {}

        def images_for(calibration_method: str) -> np.ndarray:  # histograms: what fits in memory, said once
            if calibration_method == "minmax":
                return calibration.images
            if "histogram" not in fitted:
                fitted["histogram"] = images_that_fit(calibration.images, fp32_onnx, calibration_method, report)
            return fitted["histogram"]

        worst: list[LayerError] = []
        labelled = not (train is None and calibration.labels is None)  # without labels auto stops before QAT
        if method in ("auto", "ptq", "mixed"):
            ptq = quantize_ptq(fp32_onnx, work / "ptq.onnx", images_for(calibration_method), calibration_method)
            if attempt(f"ptq ({calibration_method})", ptq).drop_points > threshold:
                worst = layer_errors(fp32_onnx, ptq, calibration.images[:32])
                report(warn_drop(candidates[-1][2], threshold, worst, method, labelled=labelled))
            if method in ("auto", "mixed") and candidates[-1][2].drop_points > threshold:
                best_calibration = calibration_method
                for name, options in fallbacks(calibration_method, worst):
                    if name.startswith("ptq"):
                        candidate = quantize_ptq(
                            fp32_onnx, work / "retry.onnx", images_for(options["calibration_method"]), **options
                        )
                        if attempt(name, candidate).drop_points < candidates[0][2].drop_points:
                            best_calibration = options["calibration_method"]  # mixed precision builds on the better one
                        if candidates[-1][2].drop_points <= threshold:
                            break
                        continue
                    float_nodes = float_nodes_for(fp32_onnx, **options)
                    candidate = quantize_ptq(
                        fp32_onnx,
                        work / f"mixed{len(candidates)}.onnx",
                        images_for(best_calibration),
                        best_calibration,
                        nodes_to_exclude=float_nodes,
                        description=f"ptq ({best_calibration}, GPTQ weights), {len(float_nodes)} nodes kept in float",
                        # Where rounding to nearest lost too much, the weights are most of the error (V2).
                        weight_rounding="gptq",
                    )
                    if (
                        attempt(
                            f"{name}, {best_calibration}, GPTQ weights: {len(float_nodes)} nodes in float", candidate
                        ).drop_points
                        <= threshold
                    ):
                        break
        if method == "auto" and not labelled and min(c.drop_points for _, _, c in candidates) > threshold:
            # Distilling fp32 without labels lost to PTQ on MobileNetV2 (63% against 92.5% agreement on
            # held-out crops, BENCHMARKS.md) and took most of the command's time: auto stops here.
            report("QAT skipped: the images have no labels to fine-tune on; pass --method qat to run it anyway")
        elif method == "qat" or (method == "auto" and min(c.drop_points for _, _, c in candidates) > threshold):
            qat_data = (train() if callable(train) else train) or calibration
            how = (
                "cross-entropy on labels"
                if qat_data.labels is not None
                else "distilling fp32's predictions (no labels)"
            )
            report(
                f"QAT: fine-tuning {qat_epochs} epoch(s) on {len(qat_data)} images with fake quantization, {how} ..."
            )
            per_epoch = max(1, len(qat_data) // 32)  # qat_finetune's steps per epoch at its batch of 32

            def progress(step: int, steps: int, loss: float) -> None:
                if step % per_epoch == 0:
                    report(f"QAT: epoch {step // per_epoch}/{qat_epochs} done (loss {loss:.4f})")

            tuned = qat_finetune(model, qat_data, epochs=qat_epochs, progress=progress)
            qat_fp32 = export_onnx(tuned, work / "qat_fp32.onnx")
            copy_metadata(fp32_onnx, qat_fp32)
            qat = quantize_ptq(
                qat_fp32, work / "qat.onnx", images_for(calibration_method), calibration_method, description="qat"
            )
            attempt("qat", qat)
        if not candidates:
            raise MobilenetsError("nothing was quantized")
        # The most accurate int8 model; among equals, the one with the fewest float layers (listed first).
        # Float layers cost size: an attempt more than 25% larger than the plain int8 file (V2's "worst
        # layers in float" made 5.15 MB against 3.92) is kept only if nothing smaller was made.
        smallest = min(c[2].int8_size_bytes for c in candidates)
        compact = [c for c in candidates if c[2].int8_size_bytes <= 1.25 * smallest]
        name, path, comparison = min(compact, key=lambda c: round(c[2].drop_points, 6))
        if comparison.drop_points > threshold:
            report(
                f"WARNING: no int8 model is within {threshold:g} points of fp32; keeping the best ({name}, "
                f"{comparison.drop_points:.2f} points lost)"
            )
        speed = []
        if comparison.latency_batch:  # the verdict at batch 1 and 32, measured on the chosen model
            speed = speed_check(fp32_onnx, path, evaluation.images, speed_batches)
            architecture = getattr(getattr(model, "architecture", None), "name", None)
            report(speed_verdict(speed, architecture))
        out.parent.mkdir(parents=True, exist_ok=True)
        # Never a partial file under the final name (Ctrl-C, a full disk): the previous int8 model stays.
        atomic_write(out, lambda temporary: shutil.copyfile(path, temporary), needed_bytes=path.stat().st_size)
        return QuantizationResult(
            out,
            name,
            comparison,
            threshold,
            attempts=[{"method": n, **c.to_dict()} for n, _, c in candidates],
            worst_layers=worst,
            speed=speed,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fallbacks(calibration_method: str, worst: Sequence[LayerError]) -> list[tuple[str, dict]]:
    """What to try, cheapest first, when PTQ loses too much: another calibration, then float layers."""
    tries = []
    if calibration_method != "percentile":
        tries.append(("ptq (percentile)", {"calibration_method": "percentile"}))
    tries.append(("mixed precision (stem and first block)", {"early_convs": 3}))
    tries.append(
        ("mixed precision (first blocks and worst layers)", {"early_convs": 6, "errors": list(worst), "worst": 4})
    )
    return tries


def describe(name: str, c: Comparison) -> str:
    if c.fp32_accuracy is not None:
        accuracy = f"top-1 fp32 {100 * c.fp32_accuracy:.2f}% int8 {100 * c.int8_accuracy:.2f}% "
    else:
        accuracy = "(unlabelled: accuracy = agreement) "
    latency = ""
    if c.fp32_latency_ms is not None:
        latency = f", batch {c.latency_batch} latency fp32 {c.fp32_latency_ms:.1f} ms int8 {c.int8_latency_ms:.1f} ms"
    return (
        f"{name}: {accuracy}agreement {100 * c.agreement:.2f}% on {c.images} images, "
        f"size {c.fp32_size_bytes / 1e6:.2f} MB -> {c.int8_size_bytes / 1e6:.2f} MB{latency}"
    )


def warn_drop(
    c: Comparison, threshold: float, worst: Sequence[LayerError], method: str = "ptq", *, labelled: bool = True
) -> str:
    """The warning after a first attempt that loses too much; ``method`` says whether the fixes come next, and
    ``labelled`` whether ``auto`` goes on to QAT (without labels it stops before it)."""
    layers = "\n".join(
        f"    {e.where}: loses {e.loss_db:.1f} dB of SQNR vs fp32 (down to {e.sqnr_db:.1f} dB)"
        for e in worst[:5]
    )
    if labelled:
        auto = "  Trying the fixes next: another calibration, layers in float (mixed precision), then QAT."
        other = (
            "  Fixes: keep those layers in float (--method mixed), or quantization-aware training (--method qat); "
            "--method auto (the default) tries both."
        )
    else:
        auto = (
            "  Trying the fixes next: another calibration, then layers in float (mixed precision); QAT is left "
            "out: these images have no labels (--method qat runs it anyway, distilling fp32)."
        )
        other = (
            "  Fixes: keep those layers in float (--method mixed, or auto, the default, which tries that), or "
            "quantization-aware training (--method qat; without labels it distils fp32's predictions)."
        )
    fixes = {
        "auto": auto,
        "mixed": "  Trying the fixes next: another calibration, then layers in float (mixed precision).",
    }.get(method, other)
    return (
        f"WARNING: int8 loses {c.drop_points:.2f} points (threshold {threshold:g}). "
        f"Layers with the largest quantization error:\n{layers}\n{fixes}"
    )
