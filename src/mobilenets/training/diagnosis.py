"""After training: what went wrong, measured, and the product's advice for it, made concrete for this run.

The symptoms and advice are the MobileNetV3-Small product description's "Common issues and solutions"
(accuracy lower than desired, model not learning, overfitting or leakage, training too slow), and its
expected accuracy by dataset size (500 images / 5 classes: 70–80%; 1,500 / 20: 75–82%; 3,000 / 10:
83–88%). Everything here is a pure function of a ``RunFacts`` (the epoch history and a few numbers
of the run), so each symptom can be built on purpose in a test without training anything.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mobilenets.core.console import warn
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import RunDirectory
from mobilenets.training.options import teacher_sources

if TYPE_CHECKING:
    from torch import nn

    from mobilenets.training.loop import Trainer

NOT_LEARNING = "not_learning"
OVERFITTING = "overfitting"
POSSIBLE_LEAKAGE = "possible_leakage"
BELOW_EXPECTATION = "below_expectation"
SLOW_TRAINING = "slow_training"
WEAK_TEACHER = "weak_teacher"
SYMPTOMS = (NOT_LEARNING, OVERFITTING, POSSIBLE_LEAKAGE, BELOW_EXPECTATION, SLOW_TRAINING, WEAK_TEACHER)

# Train accuracy is measured on augmented batches (harder than the clean validation images), so a gap
# this large is not an artefact of augmentation.
OVERFITTING_GAP = 0.15
# A validation loss that rose by less than this (in nats) is noise, whatever the ratio: a fine-tune at
# 100% validation accuracy went from 0.056 to 0.082.
MATERIAL_LOSS_RISE = 0.05
# Above this share of step time, the data pipeline rather than the model is what is slow.
DATA_SHARE_LIMIT = 0.25
# Validating after every epoch is worth its time until it takes this share of the run (train --val-every),
# and at least this long: on a small folder it is a third of a one-minute run, and its per-epoch figures
# choose the kept epoch.
VALIDATION_SHARE_LIMIT = 0.2
VALIDATION_MIN_SECONDS = 60.0
VALIDATION_SHARE_TARGET = 0.05
# A validation set whose 3 standard errors at chance (``chance_margin``) are wider than this cannot tell
# learning from chance: with 6 images of 3 classes the margin is 58 points, and 83% would still be "near
# chance". From 144·p·(1 − p) images up (p = 1/classes: 36 for 2 classes, 32 for 3, 24 for 5) it can.
MAX_CHANCE_MARGIN = 0.25
# Fewer validation images the teacher did not train on than this cannot judge it (one image is over 5
# points, and two standard errors of a 50% accuracy are over 22).
MIN_TEACHER_IMAGES = 20


@dataclass(frozen=True)
class ExpectedRange:
    """The product description's expected accuracy for a use case of this size."""

    images: int
    classes: int
    low: float
    high: float


# The seed's three example use cases (quick prototyping, plant identifier, IoT camera).
EXPECTED_RANGES = (
    ExpectedRange(images=500, classes=5, low=0.70, high=0.80),
    ExpectedRange(images=1_500, classes=20, low=0.75, high=0.82),
    ExpectedRange(images=3_000, classes=10, low=0.83, high=0.88),
)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None  # None: not validated (train --val-every)
    val_accuracy: float | None

    @classmethod
    def from_dict(cls, row: dict) -> EpochStats:
        validated = row.get("val_accuracy") is not None
        return cls(
            epoch=int(row["epoch"]),
            train_loss=float(row["train_loss"]),
            train_accuracy=float(row["train_accuracy"]),
            val_loss=float(row["val_loss"]) if validated else None,
            val_accuracy=float(row["val_accuracy"]) if validated else None,
        )

    @property
    def validated(self) -> bool:
        return self.val_accuracy is not None and self.val_loss is not None


@dataclass(frozen=True)
class ConfidentMistake:
    """A validation image predicted, with high probability, as a class other than its label."""

    path: str
    label: str
    predicted: str
    probability: float


@dataclass(frozen=True)
class RunFacts:
    """What the diagnosis looks at; built by the train command from the run, or by hand in tests."""

    num_classes: int
    train_images: int
    val_images: int
    history: tuple[EpochStats, ...]
    model: str = "mobilenet_v3_small"
    width: float = 1.0
    resolution: int = 224
    median_image_side: int | None = None  # of the source images, when known
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 32
    augment: str = "medium"
    initial_weights: str | None = None
    teacher: str | None = None
    teacher_val_accuracy: float | None = None  # measured before training on the validation images it did not train on
    teacher_saw_validation: int = 0  # validation images the teacher was trained on (excluded from the figure above)
    distill_weight: float = 0.5
    unlabelled_images: int = 0  # train --unlabelled: images the teacher alone labels
    leakage_exact: tuple[tuple[str, str], ...] = ()  # (train path, val path)
    leakage_near: tuple[tuple[str, str], ...] = ()
    augment_share: float | None = None  # of step time
    train_seconds: float | None = None  # in training steps
    validation_seconds: float | None = None  # in PreciseBN and evaluation at the end of epochs
    val_every: int = 1
    images_per_second: float | None = None
    threads: int | None = None  # per process
    cpu_count: int | None = None
    local_processes: int = 1  # training processes on this machine (torchrun --nproc-per-node)
    device: str = "cpu"
    cuda_available: bool = False
    precision: str | None = None  # the training precision in use: float32, bfloat16, float16
    confident_mistakes: tuple[ConfidentMistake, ...] = ()
    # From scratch: the published checkpoint --weights auto would use at this width, when it is neither cached
    # nor installed offline (config.json cannot tell a failed --weights auto from --weights none; this can).
    auto_weights_missing: str | None = None

    @property
    def validated_history(self) -> tuple[EpochStats, ...]:
        """The epochs that ended with a validation (every one, unless the run passed --val-every)."""
        return tuple(e for e in self.history if e.validated)

    @property
    def best_val_accuracy(self) -> float:
        return max((e.val_accuracy for e in self.validated_history), default=0.0)

    @property
    def total_images(self) -> int:
        return self.train_images + self.val_images


@dataclass(frozen=True)
class Finding:
    symptom: str
    evidence: str
    advice: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"symptom": self.symptom, "evidence": self.evidence, "advice": list(self.advice)}


def expected_range(total_images: int) -> ExpectedRange:
    """The seed's use case closest in size (on a log scale: 900 images is nearer 500 than 1,500 is)."""
    return min(EXPECTED_RANGES, key=lambda r: abs(math.log(max(total_images, 1) / r.images)))


def chance_margin(num_classes: int, val_images: int) -> float:
    """How far above chance an accuracy must be to count as learning: 3 binomial standard errors, at least 5 points."""
    chance = 1 / max(num_classes, 1)
    return max(0.05, 3 * math.sqrt(chance * (1 - chance) / max(val_images, 1)))


def images_to_tell_chance(num_classes: int) -> int:
    """The fewest validation images whose ``chance_margin`` is at most ``MAX_CHANCE_MARGIN``."""
    chance = 1 / max(num_classes, 1)
    return max(1, math.ceil(9 * chance * (1 - chance) / MAX_CHANCE_MARGIN**2 - 1e-9))


def missing_auto_weights(model: str, width: float) -> str | None:
    """The checkpoint ``--weights auto`` would fine-tune, when it is neither cached nor installed offline.

    A run from scratch with it missing may have asked for ``--weights auto`` and fallen back because the
    download failed; pointing it at ``--weights auto`` again would not help.
    """
    from mobilenets.core.files import cache_dir
    from mobilenets.models.published import PUBLISHED_WEIGHTS, default_published, offline_copy

    name = default_published(model, width).name
    if name is None:
        return None
    published = PUBLISHED_WEIGHTS[name]
    if (cache_dir() / published.filename).exists():
        return None
    if any(offline_copy(package, inner) is not None for package, inner in published.offline_copies):
        return None
    return name


def diagnose(facts: RunFacts) -> list[Finding]:
    """Every symptom that applies, most fundamental first."""
    findings = [
        finding
        for check in (not_learning, possible_leakage, overfitting, below_expectation, weak_teacher, slow_training)
        if (finding := check(facts)) is not None
    ]
    # A model that does not learn is also below expectation; saying it twice adds nothing.
    if any(f.symptom == NOT_LEARNING for f in findings):
        findings = [f for f in findings if f.symptom != BELOW_EXPECTATION]
    return findings


# --------------------------------------------------------------------------------------------------
# The symptoms
# --------------------------------------------------------------------------------------------------


def not_learning(facts: RunFacts) -> Finding | None:
    """Validation accuracy near chance, or a training loss that did not go down.

    On a validation set too small to tell learning from chance (``MAX_CHANCE_MARGIN``) accuracy is no
    evidence either way, so only a flat training loss makes the finding, which then says the set is too
    small. Not firing on accuracy there rather than firing with "cannot tell": the symptom's name is a
    claim that the model does not learn, and 83% on 6 images of 3 classes is no evidence of that.
    """
    if not facts.history:
        return None
    chance = 1 / max(facts.num_classes, 1)
    best = facts.best_val_accuracy
    margin = chance_margin(facts.num_classes, facts.val_images)
    resolvable = margin <= MAX_CHANCE_MARGIN
    near_chance = resolvable and best < chance + margin
    first, last = facts.history[0].train_loss, facts.history[-1].train_loss
    flat = len(facts.history) >= 3 and last > 0.95 * first
    if not (near_chance or flat):
        return None
    parts = []
    if near_chance:
        parts.append(
            f"best validation accuracy {best:.1%} is near chance ({chance:.1%} for {facts.num_classes} classes)"
        )
    if flat:
        parts.append(f"training loss went from {first:.3f} to {last:.3f} in {len(facts.history)} epochs")
    if not resolvable:
        parts.append(
            f"{facts.val_images} validation images cannot tell learning from chance "
            f"(3 standard errors = {100 * margin:.0f} points), so their accuracy ({best:.1%}) is no evidence either way"
        )
    memorizing = near_chance and facts.history[-1].train_accuracy > chance + 0.25
    if memorizing:
        parts.append(
            f"while training accuracy reached {facts.history[-1].train_accuracy:.1%}: the model memorizes "
            "images but finds nothing that carries over, which is what wrong or random labels look like"
        )
    advice = [_check_labels_advice(facts)]
    if not resolvable:
        advice.append(
            f"add validation images (at least {images_to_tell_chance(facts.num_classes)} for "
            f"{facts.num_classes} classes; this run: {facts.val_images}), or validate on separately collected "
            "images: --val DIR"
        )
    if facts.lr < 2e-3:
        advice.append(f"increase the learning rate to 2e-3: --lr 2e-3 (this run: {facts.lr:g})")
    if facts.augment in ("heavy", "augmix", "augmix-all", "medium"):
        advice.append(f"reduce augmentation intensity: --augment light (this run: {facts.augment})")
    advice.append(
        f"train for many more epochs (small models converge slowly): --epochs {min(100, max(2 * facts.epochs, 50))} "
        f"(this run: {facts.epochs})"
    )
    if facts.initial_weights is None:
        advice.append(_pretrained_advice(facts))
    per_class = facts.train_images / max(facts.num_classes, 1)
    advice.append(
        f"verify sufficient data variation: {per_class:.0f} training images per class; each class needs varied "
        "examples (backgrounds, angles, lighting), not near copies of a few"
    )
    return Finding(NOT_LEARNING, "; ".join(parts), tuple(advice))


def overfitting(facts: RunFacts) -> Finding | None:
    """Training accuracy much above validation accuracy, or validation loss rising while training loss falls."""
    history = facts.validated_history
    if len(history) < 2 or not facts.history[-1].validated:
        return None
    last = history[-1]
    best = facts.best_val_accuracy
    gap = last.train_accuracy - best
    position = min(range(len(history)), key=lambda i: history[i].val_loss)
    lowest = history[position]
    # Two validations past its minimum, clearly higher, while the training loss still fell: memorizing.
    rising = (
        position < len(history) - 2
        and last.val_loss > 1.25 * lowest.val_loss
        and last.val_loss - lowest.val_loss >= MATERIAL_LOSS_RISE
        and last.train_loss < lowest.train_loss
    )
    if gap <= OVERFITTING_GAP and not rising:
        return None
    parts = []
    if gap > OVERFITTING_GAP:
        measured_on = "training images, no augmentation" if facts.augment == "none" else "augmented images"
        parts.append(
            f"training accuracy {last.train_accuracy:.1%} (on {measured_on}) against {best:.1%} best on validation: "
            f"a gap of {100 * gap:.0f} points"
        )
    if rising:
        parts.append(
            f"validation loss rose from {lowest.val_loss:.3f} (epoch {lowest.epoch}) to {last.val_loss:.3f} "
            "while training loss kept falling"
        )
    stronger = {"none": "light", "light": "medium", "medium": "heavy"}.get(facts.augment)
    advice = []
    if stronger:
        advice.append(f"add more aggressive augmentation: --augment {stronger} (this run: {facts.augment})")
    else:
        advice.append(f"augmentation is already {facts.augment}; more data is the stronger lever")
    per_class = facts.train_images / max(facts.num_classes, 1)
    advice.append(
        f"collect more data: {facts.train_images:,} training images ({per_class:.0f} per class); "
        "the product's sweet spot is 500–2,000 images, up to 5,000"
    )
    if facts.leakage_exact or facts.leakage_near:
        advice.append("the train/val split has copies (see possible_leakage); fix those before trusting any gap")
    else:
        advice.append(
            "it may indicate data leakage: check the train/val split (the scan found no copies, but the same "
            "object photographed twice is not a copy)"
        )
    if facts.initial_weights is None:
        advice.append("fine-tune from pretrained weights (--weights auto): they generalize from far fewer images")
    if facts.teacher is None:
        advice.append("distil from a larger fine-tuned model (--teacher RUN_DIR): soft targets regularize")
    if rising:
        advice.append(f"stop earlier: --early-stopping 5, or --epochs {lowest.epoch + 2}")
    return Finding(OVERFITTING, "; ".join(parts), tuple(advice))


def possible_leakage(facts: RunFacts) -> Finding | None:
    """Validation images that are copies of training images (found by the scan before training)."""
    copies = len(facts.leakage_exact) + len(facts.leakage_near)
    if not copies:
        return None
    examples = [*facts.leakage_exact, *facts.leakage_near][:3]
    share = copies / max(facts.val_images, 1)
    evidence = (
        f"{copies:,} of {facts.val_images:,} validation images ({_percent(share)}%) are copies of training images "
        f"({len(facts.leakage_exact)} exact, {len(facts.leakage_near)} resized or recompressed), e.g. "
        + "; ".join(f"{val} = {train}" for train, val in examples)
    )
    advice = (
        f"validation accuracy is optimistic by up to {_percent(share)} points: the copies are scored as if unseen",
        "remove duplicates from the folder (RUN_DIR/leakage.json lists every pair), or keep one copy per class folder",
        "or validate on separately collected images: --val DIR",
    )
    return Finding(POSSIBLE_LEAKAGE, evidence, advice)


def _percent(share: float) -> str:
    """A share in percent, to two significant digits below 10%: 8 copies in 10,000 are 0.08%, not 0%."""
    value = 100 * share
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def below_expectation(facts: RunFacts) -> Finding | None:
    """Best validation accuracy under the product's expected range for a dataset of this size."""
    if not facts.history:
        return None
    expected = expected_range(facts.total_images)
    best = facts.best_val_accuracy
    if best >= expected.low:
        return None
    evidence = (
        f"best validation accuracy {best:.1%} is below the {expected.low:.0%}–{expected.high:.0%} expected for "
        f"about {expected.images:,} images in {expected.classes} classes (this run: {facts.total_images:,} images, "
        f"{facts.num_classes} classes)"
    )
    advice = []
    if facts.initial_weights is None:
        advice.append("fine-tune from pretrained ImageNet weights: --weights auto (the default) or a published name")
        # Before reaching for a teacher: from scratch on 1,200 images, 40 → 100 epochs gave +4–5 points on
        # held-out images, while a teacher added +1.4 at 40 epochs and +0.8 at 200 (BENCHMARKS.md).
        if facts.epochs < 100:
            advice.append(
                f"train longer: from scratch, small folders keep gaining to --epochs 100 (this run: {facts.epochs})"
            )
    if facts.teacher is None and facts.model in ("mobilenet_v3_small", "mobilenet_v3_small_minimal"):
        advice.append(
            "distil from a larger model: fine-tune mobilenet_v3_large or mobilenet_v2 on this folder, then "
            "--teacher RUN_DIR"
        )
    if facts.median_image_side and facts.resolution < min(224, facts.median_image_side):
        advice.append(
            f"raise --resolution (this run: {facts.resolution}px; the images are about {facts.median_image_side}px)"
        )
    elif facts.resolution < 96 and facts.initial_weights is not None:
        advice.append(
            f"raise --resolution: ImageNet weights were trained at 224px and transfer better above {facts.resolution}px"
        )
    # The seed's sizes (the expected range above, and "up to 5,000") count the whole folder.
    if facts.total_images < 5_000:
        advice.append(
            f"collect more training data (this run: {facts.total_images:,} images, {facts.train_images:,} for "
            "training; up to 5,000 images helps)"
        )
    if facts.augment in ("none", "light"):
        advice.append(f"increase augmentation: --augment medium or heavy (this run: {facts.augment})")
    if facts.epochs < 50 and facts.initial_weights is not None:
        advice.append(f"train longer: --epochs 50 (this run: {facts.epochs})")
    if facts.width < 1.0:
        advice.append(f"a wider model: --width 1.0 (this run: {facts.width:g})")
    if facts.model not in ("mobilenet_v2", "mobilenet_v3_large"):
        advice.append("if accuracy is critical, a larger architecture: --model mobilenet_v3_large or mobilenet_v2")
    if facts.confident_mistakes:
        advice.append(_check_labels_advice(facts))
    width = f" at width {facts.width:g}" if facts.width != 1.0 else ""
    advice.append(f"some of the gap is expected: {facts.model}{width} trades accuracy for size and speed")
    return Finding(BELOW_EXPECTATION, evidence, tuple(advice))


def weak_teacher(facts: RunFacts) -> Finding | None:
    """A teacher not clearly better than the student it taught: distillation's ceiling is the teacher.

    "Clearly" is two binomial standard errors of the teacher's accuracy on these validation images: a
    smaller lead cannot be told from the noise of the split. The student is pulled toward the teacher's
    predictions (with weight ``--distill-weight``), mistakes included, so once it is level with the
    teacher there is little left to learn from it and it may do better alone. The student's figure is
    its best epoch, chosen on these same images, and the teacher's a single measurement: the comparison
    leans toward firing, which for advice that says "compare with the student alone" is the safe side.
    ``teacher_val_accuracy`` counts only validation images the teacher was not trained on; when it was
    trained on some, the evidence names that count, and under ``MIN_TEACHER_IMAGES`` of them the finding
    says the teacher could not be judged instead of calling it weak.
    """
    if facts.teacher is None or not facts.history:
        return None
    saw = min(max(facts.teacher_saw_validation, 0), facts.val_images)
    unseen = facts.val_images - saw
    teacher, student = facts.teacher_val_accuracy, facts.best_val_accuracy
    if saw and unseen < MIN_TEACHER_IMAGES:
        return _unjudged_teacher(facts, saw=saw, unseen=unseen)
    if teacher is None:
        return None
    noise = 2 * math.sqrt(max(teacher * (1 - teacher), 0.0025) / max(unseen, 1))
    if teacher - student >= noise:
        return None
    images = (
        f"the {unseen} validation images it did not train on (it trained on the other {saw})"
        if saw
        else "the validation images"
    )
    lead = (
        f"{100 * (teacher - student):.1f} points ahead, within the {100 * noise:.1f} points these "
        f"{unseen} validation images can resolve"
        if teacher > student
        else "no better"
    )
    evidence = (
        f"the teacher ({facts.teacher}) scores {teacher:.1%} on {images} and the student it taught "
        f"{student:.1%}: the teacher is {lead}"
    )
    advice = (
        "train the same student without --teacher (same --seed and --epochs) and keep the better run: "
        "distillation pulls the student toward the teacher's predictions, mistakes included",
        "a stronger teacher: train it longer (--recipe auto, or --epochs 30), at a higher --resolution, or a larger "
        "model (--model mobilenet_v3_large or mobilenet_v2, --width 1.0), or an ensemble of several (repeat "
        "--teacher; vary --model or --resolution, keep the student's --seed so they share its split); check its "
        "accuracy before distilling",
        f"give the labels more weight: --distill-weight {round(facts.distill_weight / 2, 2):g} "
        f"(this run: {facts.distill_weight:g})",
    )
    if not facts.unlabelled_images:
        # On the labelled images alone a teacher a few points ahead added nothing (six seeds); images it alone
        # labels did (BENCHMARKS.md, rounds 12-15 and 21).
        advice += (
            "give the teacher images to label: --unlabelled DIR, photos of the same kinds without labels (on "
            "Fashion-MNIST folders, +1.2 to +3.2 points over the student alone, where the labelled images alone "
            "gained nothing with a teacher 4 points ahead)",
        )
    return Finding(WEAK_TEACHER, evidence, advice)


def _unjudged_teacher(facts: RunFacts, *, saw: int, unseen: int) -> Finding:
    """The teacher trained on (nearly) all the validation images: too few are left to judge it by."""
    if unseen:
        measured = (
            f"on the {unseen} it did not train on it scores {facts.teacher_val_accuracy:.1%}"
            if facts.teacher_val_accuracy is not None
            else f"{unseen} it did not train on"
        )
        left = f"{measured}, too few to judge it (under {MIN_TEACHER_IMAGES})"
    else:
        left = "none is left to judge it by"
    evidence = (
        f"the teacher ({facts.teacher}) was trained on {saw} of the {facts.val_images} validation images; {left}, "
        f"so whether it is better than the student it taught ({facts.best_val_accuracy:.1%}) is unknown"
    )
    advice = (
        "measure the teacher on images it did not train on: train teacher and student on the same folder with the "
        "same --seed and --val-fraction (they then share a split), or validate both on separately collected "
        "images: --val DIR",
        "train the same student without --teacher (same --seed and --epochs) and keep the better run",
    )
    return Finding(WEAK_TEACHER, evidence, advice)


def slow_training(facts: RunFacts) -> Finding | None:
    """The data pipeline, the thread count or an idle GPU, rather than the model, limits speed."""
    parts, advice = [], []
    if facts.augment_share is not None and facts.augment_share > DATA_SHARE_LIMIT:
        parts.append(f"data preparation took {facts.augment_share:.0%} of each step")
        advice.append(
            f"check the data loading pipeline: a lighter --augment (this run: {facts.augment}) or a lower "
            f"--resolution (this run: {facts.resolution}px) cuts preparation time"
        )
    used = facts.threads * facts.local_processes if facts.threads is not None else None
    if used is not None and facts.cpu_count and used < facts.cpu_count and facts.device == "cpu":
        if facts.local_processes > 1:
            parts.append(
                f"{facts.local_processes} processes × {facts.threads} thread{'s' if facts.threads > 1 else ''} "
                f"used {used} of {facts.cpu_count} CPU threads"
            )
            # torchrun sets OMP_NUM_THREADS=1 in each process unless the user set it.
            advice.append(
                f"give each torchrun process its share of the cores: "
                f"OMP_NUM_THREADS={facts.cpu_count // facts.local_processes} torchrun …"
            )
        else:
            parts.append(f"PyTorch used {facts.threads} of {facts.cpu_count} CPU threads")
            advice.append(
                "let PyTorch use every core: unset OMP_NUM_THREADS / torch.set_num_threads limits, or stop other jobs"
            )
    share = validation_share(facts)
    if share is not None and share > VALIDATION_SHARE_LIMIT and facts.validation_seconds >= VALIDATION_MIN_SECONDS:
        validations = len(facts.validated_history)
        parts.append(
            f"validating took {share:.0%} of the run ({facts.validation_seconds:.0f} s over {validations} "
            f"validation{'s' if validations != 1 else ''} of {facts.val_images:,} images)"
        )
        # Every N epochs, so that validation takes about VALIDATION_SHARE_TARGET of the time; no more than the
        # run's epochs (it then validates only the last), and only when that is less often than this run.
        ratio = facts.validation_seconds / validations / (facts.train_seconds / max(len(facts.history), 1))
        every = min(math.ceil(ratio * (1 - VALIDATION_SHARE_TARGET) / VALIDATION_SHARE_TARGET), facts.epochs)
        smaller = "a smaller validation set (--val-fraction, or --val DIR)"
        if every > facts.val_every:
            advice.append(
                f"validate less often: --val-every {every} (this run: {facts.val_every}; the last epoch is always "
                f"validated), or {smaller}"
            )
        else:
            advice.append(f"validate on fewer images: {smaller}")
    if facts.cuda_available and facts.device == "cpu":
        parts.append("a CUDA GPU is present but training ran on the CPU")
        advice.append("ensure the GPU is being utilized: --device cuda")
    if facts.device.startswith("cuda") and facts.precision == "float32":
        parts.append("training on the GPU in fp32")
        advice.append("use mixed precision: --precision auto (bf16) or fp16")
    if not parts:
        return None
    if facts.batch_size < 64:
        advice.append(f"increase --batch-size to 64 or 128 (this run: {facts.batch_size})")
    speed = f" ({facts.images_per_second:.0f} images/s)" if facts.images_per_second else ""
    return Finding(SLOW_TRAINING, "; ".join(parts) + speed, tuple(advice))


def validation_share(facts: RunFacts) -> float | None:
    """The share of the run's training and validation time spent validating (None: not measured)."""
    if not facts.train_seconds or facts.validation_seconds is None or not facts.validated_history:
        return None
    return facts.validation_seconds / (facts.train_seconds + facts.validation_seconds)


def _pretrained_advice(facts: RunFacts) -> str:
    """Where pretrained weights for this run would come from (it trained from scratch)."""
    from mobilenets.models.published import published_widths

    widths = published_widths(facts.model)
    if not widths:
        return (
            f"start from pretrained weights: no ImageNet checkpoint is published for {facts.model}, so --weights auto "
            "trains it from scratch; pass a checkpoint file of this model (--weights FILE), or pick a model that "
            "has one (--model mobilenet_v3_small, mobilenet_v3_large, mobilenet_v2)"
        )
    if facts.width not in widths:
        listed = " or ".join(f"{w:g}" for w in widths)
        return (
            f"start from pretrained ImageNet weights (--weights auto, the default) at --width {listed} (checkpoints "
            f"exist only there; this run: {facts.width:g}): they learn from few images"
        )
    if facts.auto_weights_missing:
        return (
            f"start from pretrained ImageNet weights: place the checkpoint file on this machine and pass --weights FILE "
            f"(--weights auto needs {facts.auto_weights_missing}, which is neither cached nor installed here; when "
            "its download fails the run falls back to scratch): they learn from few images"
        )
    return "start from pretrained ImageNet weights (--weights auto, the default): they learn from few images"


def _check_labels_advice(facts: RunFacts) -> str:
    if not facts.confident_mistakes:
        return (
            "check data loading and labels: open a few images of every class folder and make sure each folder holds "
            "only its class"
        )
    examples = ", ".join(
        f"{m.path} (labelled {m.label}, predicted {m.predicted} at {m.probability:.0%})"
        for m in facts.confident_mistakes[:5]
    )
    return (
        f"check labels: these {min(5, len(facts.confident_mistakes))} validation images are predicted confidently "
        f"as another class: {examples}"
    )


# --------------------------------------------------------------------------------------------------
# Helpers for the caller
# --------------------------------------------------------------------------------------------------


def confident_mistakes(
    probabilities: Sequence[Sequence[float]],
    labels: Sequence[int],
    *,
    paths: Sequence[str],
    classes: Sequence[str],
    threshold: float = 0.8,
    limit: int = 5,
) -> tuple[ConfidentMistake, ...]:
    """The ``limit`` most confident wrong predictions above ``threshold``: the likeliest mislabelled images."""
    mistakes = []
    for row, label, path in zip(probabilities, labels, paths, strict=True):
        predicted = max(range(len(row)), key=row.__getitem__)
        if predicted != label and row[predicted] >= threshold:
            mistakes.append(
                ConfidentMistake(
                    path=str(path),
                    label=classes[label],
                    predicted=classes[predicted],
                    probability=float(row[predicted]),
                )
            )
    mistakes.sort(key=lambda m: -m.probability)
    return tuple(mistakes[:limit])


def findings_to_json(findings: Sequence[Finding]) -> list[dict]:
    return [f.to_dict() for f in findings]


def format_findings(findings: Sequence[Finding]) -> str:
    """The console block printed after training."""
    if not findings:
        return "diagnosis: nothing to report (accuracy in or above the expected range, no leakage, no overfitting)"
    lines = ["diagnosis:"]
    for finding in findings:
        lines.append(f"  {finding.symptom}: {finding.evidence}")
        lines.extend(f"    - {advice}" for advice in finding.advice)
    return "\n".join(lines)


def findings_html(findings: Sequence[dict]) -> str:
    """A report section from ``metrics.json``'s ``diagnosis`` list."""
    if not findings:
        return "<h2>Diagnosis</h2><p>Nothing to report.</p>"
    parts = ["<h2>Diagnosis</h2>"]
    for finding in findings:
        items = "".join(f"<li>{html.escape(a)}</li>" for a in finding.get("advice", []))
        parts.append(
            f"<h3>{html.escape(finding['symptom'])}</h3><p>{html.escape(finding.get('evidence', ''))}</p><ul>{items}</ul>"
        )
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# From a finished run
# --------------------------------------------------------------------------------------------------


def diagnose_run(trainer: Trainer, *, best: nn.Module, run: RunDirectory) -> list[Finding]:
    """Collect a finished run's facts (history, leakage.json, speed, confident mistakes of ``best``) and diagnose."""
    import os

    import torch

    from mobilenets.data.augment import normalize_batch
    from mobilenets.kernels.acceleration import model_device, to_model_layout

    config, state = trainer.config, trainer.state
    leakage = {}
    try:
        leakage = run.read_json(RunDirectory.LEAKAGE, {})
    except MobilenetsError as damaged:  # only advice depends on it: the finished training is not refused over it
        warn(str(damaged))
    val = trainer.val_data
    probabilities = []
    model = best.eval()
    with torch.no_grad():
        for start in range(0, len(val.images), 256):
            batch = normalize_batch(
                val.images[start : start + 256], trainer.preprocessing.mean, trainer.preprocessing.std
            )
            logits = model(to_model_layout(batch, model_device(model)))
            probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
    rows = torch.cat(probabilities).tolist() if probabilities else []
    mistakes = confident_mistakes(
        rows,
        val.labels.tolist(),
        paths=[str(s.path) for s in val.samples],
        classes=trainer.classes,
    )
    # The loop probes and may choose fewer threads than cores on purpose; only a user's limit is a symptom.
    limit = os.environ.get("OMP_NUM_THREADS")
    facts = RunFacts(
        num_classes=len(trainer.classes),
        train_images=trainer.labelled_images,  # the seed's sizes count labelled images
        val_images=len(val),
        history=tuple(EpochStats.from_dict(row) for row in state.history),
        model=config.model,
        width=config.width,
        resolution=config.resolution,
        lr=config.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        augment=config.augment,
        initial_weights=config.initial_weights,
        teacher=" + ".join(teacher_sources(config.teacher)) or None,
        # On the validation images the teacher did not train on (None if it trained on all of them).
        teacher_val_accuracy=quality.unseen_accuracy
        if (quality := getattr(trainer.teacher, "quality", None))
        else None,
        teacher_saw_validation=quality.saw_validation if quality else 0,
        distill_weight=config.distill_weight,
        unlabelled_images=trainer.unlabelled_images,
        leakage_exact=tuple(tuple(pair) for pair in leakage.get("exact", [])),
        leakage_near=tuple(tuple(pair) for pair in leakage.get("near", [])),
        augment_share=state.augment_seconds / max(state.train_seconds, 1e-9),
        train_seconds=state.train_seconds,
        validation_seconds=state.validation_seconds,
        val_every=config.val_every,
        images_per_second=state.images_seen / max(state.train_seconds, 1e-9),
        threads=torch.get_num_threads() if limit else None,
        cpu_count=os.cpu_count() if limit else None,
        local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        device=str(trainer.context.device),
        cuda_available=torch.cuda.is_available(),
        precision=getattr(trainer.model, "training_precision", None),
        confident_mistakes=mistakes,
        auto_weights_missing=missing_auto_weights(config.model, config.width)
        if config.initial_weights is None
        else None,
    )
    return diagnose(facts)
