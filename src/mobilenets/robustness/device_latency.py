"""What SE and hard-swish cost where a phone runs the model: LiteRT and ExecuTorch, fp32 and int8.

The MobileNetV3 paper (Howard et al. 2019, §5.2 and §5.3, https://arxiv.org/abs/1905.02244) picks SE and
hard-swish for their latency on phones, and hard-swish for being friendlier to quantization than swish.
PyTorch eager on a PC says little about either, so each latency variant (full, SE removed, hard-swish
replaced by ReLU, both) is exported to every device runtime installed and timed there at batch 1, the
variants of one runtime and precision in the same interleaved rounds.

Hard-swish's share of the int8 error: the LiteRT int8 file as exported (hard-swish kept in float, so that
XNNPACK takes the whole graph) against the same file with hard-swish in int8 too, both judged against
PyTorch fp32 on images not used to calibrate them:
share = (error with int8 hard-swish − error with float hard-swish) / error with int8 hard-swish,
for the top-1 disagreement and the mean absolute logit error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from torch import nn

from mobilenets.core.console import native_output_silenced
from mobilenets.deployment.timing import interleaved_times

Runner = Callable[[], object]


def installed_runtimes() -> list[str]:
    """The device runtimes this environment has (the ``edge`` extra brings both)."""
    wanted = {"litert": ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"), "executorch": ("executorch",)}
    return [name for name, modules in wanted.items() if all(importlib.util.find_spec(m) for m in modules)]


def device_latency_attribution(
    variants: dict[str, nn.Module],
    calibration: np.ndarray,
    *,
    runtimes: list[str] | None = None,
    rounds: int = 10,
    calls_per_round: int = 10,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Batch-1 latency of each variant in each device runtime and precision (fp32, int8), medians in ms.

    ``calibration``: float32 NCHW normalized images for the int8 files (a few dozen suffice for timing).
    """
    runtimes = installed_runtimes() if runtimes is None else runtimes
    size = int(calibration.shape[-1])
    image = np.ascontiguousarray(calibration[:1])
    tables: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mobilenets-device-latency-") as work:
        for runtime in runtimes:
            for precision in ("fp32", "int8"):
                runners = {
                    name: _runner(
                        runtime,
                        model,
                        stem=Path(work) / f"{runtime}-{precision}-{name}",
                        int8=precision == "int8",
                        calibration=calibration,
                        image=image,
                        threads=threads,
                    )
                    for name, model in variants.items()
                }
                times = interleaved_times(list(runners.values()), repeats=rounds * calls_per_round, warmup=5)
                full = statistics.median(times[0])
                rows = []
                for name, samples in zip(runners, times, strict=True):
                    median = statistics.median(samples)
                    rows.append(
                        {
                            "variant": name,
                            "median_ms": median,
                            "min_ms": min(samples),
                            "saving_vs_full_ms": full - median,
                            "saving_vs_full_percent": 100 * (full - median) / full,
                        }
                    )
                tables.append({"runtime": runtime, "precision": precision, "variants": rows})
                log(f"device latency: {runtime} {precision} timed ({len(rows)} variants, {size}×{size})")
    return {
        "resolution": size,
        "batch": 1,
        "samples_per_variant": rounds * calls_per_round,
        "method": "interleaved batch-1 runs in each runtime (XNNPACK), medians",
        "tables": tables,
    }


@contextlib.contextmanager
def _converters_quiet() -> Iterator[None]:
    """The converters' and runtimes' own log lines and deprecation warnings are not for users."""
    with native_output_silenced(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _runner(
    runtime: str,
    model: nn.Module,
    *,
    stem: Path,
    int8: bool,
    calibration: np.ndarray,
    image: np.ndarray,
    threads: int | None,
) -> Runner:
    """Export ``model`` to ``runtime`` and return a callable that runs one image through the file
    (the callables ``bench`` times, ``deployment.device_runners``)."""
    from mobilenets.deployment.device_runners import executorch_runner, litert_runner

    with _converters_quiet():
        if runtime == "litert":
            from mobilenets.deployment.litert import export_litert

            path = export_litert(model, stem.with_suffix(".tflite"), int8=int8, calibration=calibration)
            make = litert_runner
        else:
            from mobilenets.deployment.executorch import export_executorch

            path = export_executorch(model, stem.with_suffix(".pte"), int8=int8, calibration=calibration)
            make = executorch_runner
        return make(path, image, threads=threads, notes=[], engine=f"{runtime} {'int8' if int8 else 'fp32'}")


def hardswish_int8_error_share(model: nn.Module, calibration: np.ndarray, evaluation: np.ndarray) -> dict | None:
    """How much of LiteRT int8's error hard-swish would add if it were int8 too (None: no hard-swish)."""
    if not any(isinstance(m, nn.Hardswish) for m in model.modules()):
        return None
    from mobilenets.deployment.device_files import reference_logits
    from mobilenets.deployment.litert import _interpreter, convert_fp32, quantize_int8, run_nhwc

    with _converters_quiet():
        fp32 = convert_fp32(model, int(calibration.shape[-1]))
    nhwc = np.ascontiguousarray(calibration.transpose(0, 2, 3, 1))
    reference = reference_logits(model, evaluation)
    errors = {}
    for name, float_ops in (("hardswish_float", ("HARD_SWISH",)), ("hardswish_int8", ())):
        with _converters_quiet():
            content = quantize_int8(fp32, nhwc, float_ops=float_ops)
        logits = run_nhwc(_interpreter(content), evaluation)
        errors[name] = {
            "disagreement": float(np.mean(logits.argmax(1) != reference.argmax(1))),
            "mean_abs_logit_error": float(np.mean(np.abs(logits - reference))),
        }

    def share(key: str) -> float | None:
        with_int8 = errors["hardswish_int8"][key]
        return None if with_int8 == 0 else (with_int8 - errors["hardswish_float"][key]) / with_int8

    return {
        "images": len(evaluation),
        "calibration_images": len(calibration),
        **errors,
        "share_of_disagreement": share("disagreement"),
        "share_of_logit_error": share("mean_abs_logit_error"),
    }
