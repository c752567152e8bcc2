"""``evaluate``'s work as one library call: a trained model on a labelled folder, by the fastest engine."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mobilenets.core.errors import MobilenetsError, check_number


@dataclass
class FolderEvaluation:
    result: object  # training.evaluation's result: .table(), .to_dict()
    engine: str
    engine_path: str | None
    images: int

    def to_dict(self) -> dict:
        return {"engine": self.engine, **self.result.to_dict()}


def evaluate_folder(
    *,
    run_dir: Path,
    data: Path,
    bn_adapt: bool = False,
    batch_size: int = 128,
    engine: str = "auto",
    report: Callable[[str], None] | None = None,
) -> FolderEvaluation:
    """Accuracy, per-class results and confusion matrix of ``run_dir``'s model on ``data`` (one folder per class)."""
    from mobilenets.data.folders import decode_samples, scan_folder
    from mobilenets.deployment.engines import load_engine
    from mobilenets.deployment.loading import summarize_skipped
    from mobilenets.models.preprocessing import Preprocessing
    from mobilenets.models.weights import load_model
    from mobilenets.training.evaluation import evaluate

    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    check_number("--batch-size", batch_size, at_least=1, whole=True)
    if bn_adapt and engine == "int8":
        raise MobilenetsError(
            "--bn-adapt changes the fp32 weights; the int8 engine runs the weights it was calibrated for: "
            "use --engine onnxruntime or torch with --bn-adapt"
        )
    model = load_model(run_dir)
    metadata = model.weights_metadata
    classes = metadata.get("classes")
    if not isinstance(classes, list):
        raise MobilenetsError(
            f"{run_dir}: the weights do not list their class names, so folders cannot be matched to outputs; "
            "evaluate a run directory written by `mobilenets train`"
        )
    preprocessing = Preprocessing.from_dict(metadata.get("preprocessing", {}))
    scan = scan_folder(data, classes=classes)
    if not scan.samples:  # one line naming both class lists, not a warning per file of the wrong classes first
        found = sorted({Path(s.path).relative_to(data).parts[0] for s in scan.skipped if Path(s.path).is_relative_to(data)})
        found = [name for name in found if (Path(data) / name).is_dir()]
        if not found and any(path.is_file() for path in Path(data).iterdir()):
            raise MobilenetsError(
                f"{data}: holds files but no class subfolders; evaluate needs one folder per class, "
                f"named like the model's classes: DIR/CLASS/*.jpg ({', '.join(classes[:3])}"
                f"{', …' if len(classes) > 3 else ''})"
            )
        raise MobilenetsError(
            f"{data}: no images of the model's classes ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''}); "
            f"its class folders are {', '.join(found[:5]) or 'none'}{', …' if len(found) > 5 else ''}"
        )
    for line in summarize_skipped([(str(s.path), s.reason) for s in scan.skipped]):
        report(f"warning: {line}")
    decoded = decode_samples(scan.samples, preprocessing.input_size, preprocessing=preprocessing)
    for line in summarize_skipped([(str(s.path), s.reason) for s in decoded.skipped]):
        report(f"warning: {line}")
    if len(decoded) == 0:
        raise MobilenetsError(f"{data}: no readable images of the classes {', '.join(classes)}")
    if bn_adapt:
        report(f"re-estimating BatchNorm statistics on {len(decoded)} images (test-time adaptation) ...")
        model = adapt(model, decoded.images, preprocessing, batch_size, report)
    # BN-adapted weights are a one-off: exporting them to the cache would only fill it.
    choice = "torch" if bn_adapt and engine == "auto" else engine
    runner = load_engine(
        model, choice, planned_images=len(decoded), batch_size=batch_size, run_dir=run_dir if run_dir.is_dir() else None
    )
    result = evaluate(runner, decoded.images, decoded.labels, classes, preprocessing.mean, preprocessing.std, batch_size)
    return FolderEvaluation(result, runner.name, None if runner.path is None else str(runner.path), len(decoded))


def adapt(model, images, preprocessing, batch_size: int, report: Callable[[str], None]):
    from mobilenets.data.augment import normalize_batch
    from mobilenets.models.batchnorm import reestimate_batchnorm

    batches = [
        normalize_batch(images[i : i + batch_size], preprocessing.mean, preprocessing.std)
        for i in range(0, len(images), batch_size)
    ]
    adapted = copy.deepcopy(model)
    reestimate_batchnorm(adapted, batches)
    adapted.eval()
    report(f"BatchNorm re-estimated on {sum(len(b) for b in batches)} images in {len(batches)} batch(es)")
    return adapted
