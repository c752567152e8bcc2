"""Knowledge distillation: a small student learns from the labels and from a larger teacher's soft predictions.

Loss (Hinton, Vinyals & Dean 2015, https://arxiv.org/abs/1503.02531):

    (1 − A) · CE(student, labels) + A · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

The T² keeps the soft term's gradients on the scale of the hard term's whatever the temperature. The
teacher runs in inference on the very batch the student sees (after augmentation), so it is a
function of the same pixels; it cannot be precomputed once per image because augmentation differs
every step. A teacher is a fine-tuned run directory, a weights file, or an exported ``.onnx`` file,
and must predict the student's classes (matched by name, in any order).

Several teachers make an ensemble (``--teacher A --teacher B``): the student learns the mean of their
logits, i.e. the (renormalized) geometric mean of their predicted distributions at any temperature, one
of the two ways Hinton et al. 2015 give to combine an ensemble's predictions.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.data.augment import normalize_batch
from mobilenets.data.folders import UNLABELLED
from mobilenets.training.mixup import label_distribution
from mobilenets.training.options import TEACHER_ENGINES

DEFAULT_WEIGHT = 0.5
DEFAULT_TEMPERATURE = 4.0


@dataclass(frozen=True)
class DistillationSettings:
    """``--distill-weight`` A (the soft term's share) and ``--temperature`` T."""

    weight: float = DEFAULT_WEIGHT
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise MobilenetsError(f"--distill-weight must be between 0 and 1, got {self.weight:g}")
        if self.temperature <= 0:
            raise MobilenetsError(f"--temperature must be positive, got {self.temperature:g}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 − A)·CE(labels) + A·T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch.

    ``labels`` are class indices, or class probabilities (a mixup batch's blended labels). An image whose
    label is ``UNLABELLED`` (``train --unlabelled``) has no hard term: its loss is T²·KL alone, the
    teacher being its only target (Hinton et al. 2015's "transfer set"). A blend of a labelled and an
    unlabelled image (mixup) carries label mass m < 1: its loss is m·(the labelled loss, against its labels
    renormalized) + (1 − m)·T²·KL, which is both cases above at m = 1 and m = 0.
    """
    student_logits = student_logits.float()
    if labels.dim() == 1 and bool((labels == UNLABELLED).any()):
        labels = label_distribution(labels, student_logits.shape[1])
    mass = labels.sum(dim=1) if labels.dim() == 2 else None
    if mass is not None and bool((mass < 1 - 1e-4).any()):
        soft_rows = F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.log_softmax(teacher_logits.detach().float() / temperature, dim=1),
            reduction="none",
            log_target=True,
        ).sum(dim=1) * temperature**2
        hard_rows = F.cross_entropy(
            student_logits,
            labels / mass.clamp(min=1e-12).unsqueeze(1),
            label_smoothing=label_smoothing,
            reduction="none",
        )
        labelled_rows = (1 - weight) * hard_rows + weight * soft_rows
        return (mass * labelled_rows + (1 - mass) * soft_rows).mean()
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if weight == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach().float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * hard + weight * temperature**2 * soft


# --------------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherInput:
    """How the teacher wants its pixels: its input size and normalization."""

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Teacher:
    """Logits of a frozen model for the student's normalized batch, in the student's class order.

    The student's batch is normalized with the student's mean/std; it is mapped back to pixels and
    normalized again with the teacher's own (timm's 0.5 vs ImageNet's), and resized when the teacher
    was trained at another resolution.
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        *,
        source: str,
        engine: str,
        wants: TeacherInput,
        class_order: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self._run = run
        self.source = source
        self.engine = engine
        self.wants = wants
        self.device = torch.device(device)  # where ``run`` takes its batches and gives its logits: CPU or GPU
        self.class_order = (
            torch.as_tensor(list(class_order), device=self.device) if class_order is not None else None
        )
        self.quality: TeacherQuality | None = None  # measured on the student's validation images (measure_teacher)

    def describe(self) -> dict:
        """Where the teacher came from and what runs it (``metrics.json``'s ``teacher``)."""
        return {"source": self.source, "engine": self.engine}

    def prepare(self, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        images = images.float()
        if tuple(mean) != self.wants.mean or tuple(std) != self.wants.std:
            shape = (1, -1, 1, 1)

            def column(values: Sequence[float]) -> torch.Tensor:
                return torch.tensor(values, device=images.device).view(shape)

            pixels = images * column(std) + column(mean)
            images = (pixels - column(self.wants.mean)) / column(self.wants.std)
        if images.shape[-1] != self.wants.resolution or images.shape[-2] != self.wants.resolution:
            images = F.interpolate(
                images, size=(self.wants.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
        return images

    # no_grad, not inference_mode: inference tensors cannot enter the student's autograd graph.
    @torch.no_grad()
    def __call__(self, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        # ONNX Runtime runs on the CPU, PyTorch where the student trains; the logits go to the student's device.
        logits = self._run(self.prepare(images.to(self.device), mean, std)).float()
        if self.class_order is not None:
            logits = logits[:, self.class_order]
        return logits.to(images.device)


class TeacherEnsemble:
    """Several teachers as one: the mean of their logits, each in the student's class order.

    Each member keeps its own engine, input size and normalization; all see the same batch.
    """

    def __init__(self, members: Sequence[Teacher]) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two teachers")
        self.members = list(members)
        self.source = " + ".join(member.source for member in self.members)
        self.engine = " + ".join(member.engine for member in self.members)
        self.quality: TeacherQuality | None = None

    def describe(self) -> dict:
        """Each teacher's source and engine, in order (``metrics.json``'s ``teacher``)."""
        return {
            "source": [member.source for member in self.members],
            "engine": [member.engine for member in self.members],
        }

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        return torch.stack([member(images, mean, std) for member in self.members]).mean(0)


@dataclass(frozen=True)
class TeacherQuality:
    """The teacher's top-1 on the student's validation images, measured before training.

    A teacher no better than the student it teaches can only pull the student toward its own mistakes;
    the run's diagnosis compares the two (``weak_teacher``). ``saw_validation`` counts validation images
    the teacher was trained on (from its run's split), which make ``val_accuracy`` optimistic;
    ``unseen_accuracy`` is the top-1 on the others (None when it trained on all of them).
    """

    val_accuracy: float
    val_images: int
    saw_validation: int = 0
    unseen_accuracy: float | None = None

    def to_dict(self) -> dict:
        return {
            "val_accuracy": self.val_accuracy,
            "val_images": self.val_images,
            "saw_validation": self.saw_validation,
            "unseen_accuracy": self.unseen_accuracy,
        }


def measure_teacher(
    teacher: Teacher | TeacherEnsemble,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    val_paths: Sequence[str] = (),
    teacher_train_paths: Sequence[str] = (),
    batch_size: int = 64,
) -> TeacherQuality:
    """Top-1 of ``teacher`` on cached uint8 validation images (N, 3, S, S), normalized like the student's.

    ``val_paths`` name the images in order; those also in ``teacher_train_paths`` are counted as seen.
    """
    hits = []
    for start in range(0, len(images), batch_size):
        batch = normalize_batch(images[start : start + batch_size], mean, std)
        hits.append(teacher(batch, mean, std).argmax(1) == labels[start : start + batch_size])
    correct = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    trained_on = set(map(str, teacher_train_paths))
    seen = torch.tensor([str(path) in trained_on for path in val_paths] or [False] * len(correct), dtype=torch.bool)
    unseen = correct[~seen]
    return TeacherQuality(
        val_accuracy=int(correct.sum()) / len(correct) if len(correct) else 0.0,
        val_images=len(correct),
        saw_validation=int(seen.sum()),
        unseen_accuracy=int(unseen.sum()) / len(unseen) if len(unseen) else None,
    )


def class_order(teacher_classes: Sequence[str] | None, student_classes: Sequence[str], source: str) -> list[int] | None:
    """Indices that put the teacher's logits in the student's class order (None: already in order)."""
    if teacher_classes is None or isinstance(teacher_classes, str):
        raise MobilenetsError(
            f"--teacher {source}: it predicts "
            + ("ImageNet's 1,000 classes" if teacher_classes == "imagenet" else "unnamed classes")
            + f", not this folder's {len(student_classes)}; fine-tune it on this folder first "
            f"(mobilenets train --data DIR --model mobilenet_v2 --out runs/teacher) and pass --teacher runs/teacher"
        )
    teacher_classes, student_classes = list(teacher_classes), list(student_classes)
    if teacher_classes == student_classes:
        return None
    missing = sorted(set(student_classes) - set(teacher_classes))
    if missing:
        raise MobilenetsError(
            f"--teacher {source}: has no class {', '.join(missing[:5])} (its classes: {', '.join(teacher_classes[:10])}); "
            "a teacher must be trained on the same class folders"
        )
    return [teacher_classes.index(name) for name in student_classes]


def _torch_runner(model: nn.Module, device: torch.device | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    model = model.eval().float()
    if device is not None:
        model = model.to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    from mobilenets.kernels.acceleration import to_model_layout

    with contextlib.suppress(RuntimeError):
        model = model.to(memory_format=torch.channels_last)

    def run(images: torch.Tensor) -> torch.Tensor:
        return model(to_model_layout(images, device))

    return run


def _onnx_runner(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    # The session is built here rather than by deployment.onnx_runtime: training is a lower stage.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        array = images.contiguous().numpy()
        return torch.from_numpy(session.run(None, {input_name: array})[0])

    return run


TEACHER_NEEDS = "--teacher needs a run directory or model file of a classifier fine-tuned on the same classes"
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")
CHECK_BATCH = 2  # images in the dummy batch every teacher must classify before training starts


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0].strip() if text else "") or type(error).__name__


def _parse_onnx(path: Path):  # -> onnx.ModelProto
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _is_onnx(path: Path) -> bool:
    """Whether a file without the ``.onnx`` suffix is an ONNX model (a protobuf that parses as one)."""
    if not path.is_file() or path.suffix in (".safetensors", ".json", ".yaml", ".yml", ".txt"):
        return False
    with path.open("rb") as file:
        head = file.read(4)
    if head.startswith((b"PK", b"\x80")):  # torch.save's zip, or a legacy pickle
        return False
    try:
        model = _parse_onnx(path)
    except Exception:
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0 and len(model.graph.output) > 0


def _onnx_metadata(path: Path, source: str) -> tuple[list[str] | None, TeacherInput]:
    import json

    try:
        model = _parse_onnx(path)
    except Exception as error:  # protobuf's DecodeError and friends: cut short, or not ONNX at all
        raise MobilenetsError(
            f"--teacher {source}: not a readable ONNX model ({_first_line(error)}); {TEACHER_NEEDS}"
        ) from None
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        labels = json.loads(meta["mobilenets.labels"]) if "mobilenets.labels" in meta else None
        pre = json.loads(meta.get("mobilenets.preprocessing", "{}"))
    except json.JSONDecodeError as error:
        raise MobilenetsError(
            f"--teacher {source}: its mobilenets metadata is not valid JSON ({error}); export it again with "
            "`mobilenets export`"
        ) from None
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise MobilenetsError(
            f"--teacher {source}: its mobilenets.labels metadata is not a list of class names; export it again "
            "with `mobilenets export`"
        )
    if not isinstance(pre, dict):
        pre = {}
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs or not model.graph.output:
        raise MobilenetsError(
            f"--teacher {source}: the ONNX graph has no {'input' if not inputs else 'output'}; {TEACHER_NEEDS}"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    if dims and dims[0].dim_value > 0:
        raise MobilenetsError(
            f"--teacher {source}: its input takes a fixed batch of {dims[0].dim_value} image(s), but training feeds "
            "it batches of any size; export it with a dynamic batch (`mobilenets export`)"
        )
    size = (dims[-1].dim_value if dims else 0) or pre.get("input_size", 224)
    try:
        wants = TeacherInput(
            resolution=int(size),
            mean=tuple(float(x) for x in pre.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(float(x) for x in pre.get("std", (0.229, 0.224, 0.225))),
        )
    except (TypeError, ValueError):
        raise MobilenetsError(
            f"--teacher {source}: its mobilenets.preprocessing metadata is malformed; export it again with "
            "`mobilenets export`"
        ) from None
    return labels, wants


def check_teacher_output(
    run: Callable[[torch.Tensor], torch.Tensor], wants: TeacherInput, num_classes: int, source: str
) -> None:
    """One forward pass on a dummy batch: the output must be [batch, classes] (its labels' count)."""
    batch = torch.zeros(CHECK_BATCH, 3, wants.resolution, wants.resolution)
    try:
        with torch.no_grad():
            output = run(batch)
    except Exception as error:
        raise MobilenetsError(
            f"--teacher {source}: fails on a batch of {CHECK_BATCH} images of 3×{wants.resolution}×{wants.resolution} "
            f"({_first_line(error)}); {TEACHER_NEEDS}"
        ) from None
    shape = tuple(output.shape)
    if shape == (CHECK_BATCH, num_classes):
        return
    per_image = output[0].numel() if len(shape) and shape[0] == CHECK_BATCH else None
    what = (
        f"its output has {per_image} values per image (shape {'×'.join(map(str, shape))})"
        if per_image is not None
        else f"its output for {CHECK_BATCH} images has shape {'×'.join(map(str, shape)) or 'scalar'}"
    )
    raise MobilenetsError(
        f"--teacher {source}: not a classifier of its labels: {what}, its labels name {num_classes} classes; "
        f"{TEACHER_NEEDS}"
    )


def _not_a_model(path: Path, source: str) -> MobilenetsError:
    run_dir = path.parent
    if path.name == "config.json" and any(run_dir.glob("*.safetensors")):
        hint = f"pass its run directory: --teacher {run_dir}"
    else:
        hint = TEACHER_NEEDS
    return MobilenetsError(
        f"--teacher {source}: not a run directory, a weights file (.safetensors, .pth) or an ONNX model; {hint}"
    )


def missing_teacher(source: str) -> MobilenetsError:
    """The line for a teacher that is neither on disk nor a published name (said before the folder is scanned,
    and again here for callers of ``load_teacher``)."""
    return MobilenetsError(
        f"--teacher {source}: no such run directory or file (a fine-tuned run dir, its model.safetensors, "
        "or an exported .onnx)"
    )


def _load_teacher_model(path: Path, source: str) -> nn.Module:
    from mobilenets.models.weights import load_model

    weights = path / "model.safetensors" if path.is_dir() and (path / "model.safetensors").exists() else path
    try:
        return load_model(weights)
    except MobilenetsError as error:
        if path.is_file() and path.suffix not in WEIGHTS_SUFFIXES:
            raise _not_a_model(path, source) from None
        reason = str(error).removeprefix(f"{weights}: ").removeprefix(f"{weights}:")
        if "--model" in reason:  # the student's flag: a teacher's checkpoint must say its architecture itself
            reason = "a checkpoint without mobilenets metadata (its architecture and classes are unknown)"
            raise MobilenetsError(f"--teacher {source}: {reason}; {TEACHER_NEEDS}") from None
        raise MobilenetsError(f"--teacher {source}: {reason}") from None
    except Exception as error:
        if path.is_file() and path.suffix not in WEIGHTS_SUFFIXES:
            raise _not_a_model(path, source) from None
        raise MobilenetsError(
            f"--teacher {source}: cannot be loaded as a model ({_first_line(error)}); {TEACHER_NEEDS}"
        ) from None


def _time(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, repeats: int = 3) -> float:
    run(batch)  # warm-up: first-call allocations, ORT's graph initialisation
    started = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return (time.perf_counter() - started) / repeats


def load_teacher(
    source: str,
    *,
    student_classes: Sequence[str],
    example_batch: torch.Tensor | None = None,
    engine: str = "auto",
    device: torch.device | str = "cpu",
    exporter: Callable[[nn.Module, Path], Path] | None = None,
    log: Callable[[str], None] = print,
) -> Teacher:
    """A run directory, weights file, ``.onnx`` file or published name → a ``Teacher``.

    A ``.onnx`` file runs in ONNX Runtime. A run directory or weights file is, with ``engine`` auto,
    exported once to a temporary ONNX file (``exporter``, default ``export_for_teacher``), both engines
    are timed on ``example_batch`` and the faster is kept (V2 at 64 px on 2 cores: ONNX Runtime 134 ms
    against PyTorch 571 ms per batch of 32); ``torch`` or ``onnxruntime`` forces one. When the student
    trains on a GPU (``device``), auto and ``torch`` run the teacher in PyTorch there (ONNX Runtime's
    package here runs on the CPU only).
    """
    if engine not in TEACHER_ENGINES:
        raise MobilenetsError(f"--teacher-engine must be one of {', '.join(TEACHER_ENGINES)}, got {engine!r}")
    device = torch.device(device)
    path = Path(source)
    if path.suffix == ".onnx" or _is_onnx(path):
        if not path.is_file():
            raise MobilenetsError(f"--teacher {source}: no such file")
        if engine == "torch":
            raise MobilenetsError(
                f"--teacher {source}: an ONNX file runs only in ONNX Runtime, not with --teacher-engine torch; pass "
                "the teacher's run directory or weights file, or --teacher-engine auto"
            )
        labels, wants = _onnx_metadata(path, source)
        order = class_order(labels, student_classes, source)
        try:
            runner = _onnx_runner(path)
        except Exception as error:  # parses as protobuf, but ONNX Runtime cannot build a session from it
            raise MobilenetsError(
                f"--teacher {source}: not a valid ONNX model ({_first_line(error)}); {TEACHER_NEEDS}"
            ) from None
        check_teacher_output(runner, wants, len(labels or ()), source)
        log(f"teacher {source}: ONNX Runtime, {wants.resolution}px")
        return Teacher(runner, source=source, engine="onnxruntime", wants=wants, class_order=order)
    from mobilenets.models.published import PUBLISHED_WEIGHTS

    if source in PUBLISHED_WEIGHTS:
        class_order("imagenet", student_classes, source)  # raises with the command to fine-tune it first
    if not path.exists():
        raise missing_teacher(source)
    model = _load_teacher_model(path, source)
    metadata = getattr(model, "weights_metadata", {}) or {}
    order = class_order(metadata.get("classes"), student_classes, source)
    pre = metadata.get("preprocessing", {})
    wants = TeacherInput(
        resolution=int(pre.get("input_size", 224)),
        mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pre.get("std", (0.229, 0.224, 0.225))),
    )
    on_gpu = device.type != "cpu" and engine != "onnxruntime"
    runner, chosen = _torch_runner(model, device if on_gpu else None), "torch"
    if engine == "onnxruntime" or (engine == "auto" and not on_gpu):
        runner, chosen = _maybe_onnx(
            model=model,
            torch_runner=runner,
            wants=wants,
            example_batch=example_batch,
            engine=engine,
            exporter=exporter or export_for_teacher,
            log=log,
        )
    check_teacher_output(runner, wants, len(metadata.get("classes") or ()), source)
    arch = model.architecture
    where = f" on {device}" if on_gpu else ""
    log(
        f"teacher {source}: {arch.name} (width {arch.options.get('width', 1.0):g}) at {wants.resolution}px, "
        f"{'ONNX Runtime' if chosen == 'onnxruntime' else 'PyTorch'}{where}"
    )
    return Teacher(
        runner, source=source, engine=chosen, wants=wants, class_order=order, device=device if on_gpu else "cpu"
    )


def load_teachers(
    sources: Sequence[str],
    *,
    student_classes: Sequence[str],
    engine: str = "auto",
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> Teacher | TeacherEnsemble:
    """One teacher, or several as a ``TeacherEnsemble`` (``load_teacher`` for each, in order)."""
    teachers = [
        load_teacher(source, student_classes=student_classes, engine=engine, device=device, log=log)
        for source in sources
    ]
    if len(teachers) == 1:
        return teachers[0]
    log(f"teachers: an ensemble of {len(teachers)}, the mean of their logits")
    return TeacherEnsemble(teachers)


def export_for_teacher(model: nn.Module, path: Path) -> Path:
    """A plain fp32 ONNX graph with a dynamic batch, for ONNX Runtime inference during training.

    Not ``deployment.onnx.export_onnx`` (a higher stage, and it adds deployment metadata nobody reads
    here); the same exporter settings otherwise.
    """
    import warnings

    size = int((getattr(model, "weights_metadata", None) or {}).get("preprocessing", {}).get("input_size", 224))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        program = torch.onnx.export(
            model.eval(),
            (torch.randn(2, 3, size, size),),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    program.save(str(path))
    return path


def _maybe_onnx(
    *,
    model: nn.Module,
    torch_runner: Callable[[torch.Tensor], torch.Tensor],
    wants: TeacherInput,
    example_batch: torch.Tensor | None,
    engine: str,
    exporter: Callable[[nn.Module, Path], Path],
    log: Callable[[str], None],
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """Export the teacher to a temporary ONNX file and keep ONNX Runtime when it is faster here."""
    # The session holds the graph in memory; the file is not needed after it is built. A failure to clean up
    # must not replace the export's own error.
    with tempfile.TemporaryDirectory(prefix="mobilenets-teacher-", ignore_cleanup_errors=True) as folder:
        path = Path(folder) / "teacher.onnx"
        try:
            exporter(model, path)
            onnx_runner = _onnx_runner(path)
        except Exception as error:
            if engine == "onnxruntime":
                raise MobilenetsError(
                    f"--teacher-engine onnxruntime: the teacher cannot be exported to ONNX ({_first_line(error)}); "
                    "pass --teacher-engine torch or auto"
                ) from None
            log(f"teacher: ONNX export failed ({type(error).__name__}); running it in PyTorch")
            return torch_runner, "torch"
    if engine == "onnxruntime":
        return onnx_runner, "onnxruntime"
    batch = (
        example_batch
        if example_batch is not None
        else torch.randn(32, 3, wants.resolution, wants.resolution, generator=torch.Generator().manual_seed(0))
    )
    with torch.no_grad():
        torch_seconds = _time(torch_runner, batch)
        onnx_seconds = _time(onnx_runner, batch)
    log(
        f"teacher speed on a batch of {len(batch)}: PyTorch {1000 * torch_seconds:.0f} ms, "
        f"ONNX Runtime {1000 * onnx_seconds:.0f} ms"
    )
    return (onnx_runner, "onnxruntime") if onnx_seconds < torch_seconds else (torch_runner, "torch")
