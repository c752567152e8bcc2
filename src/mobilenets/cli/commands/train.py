"""``mobilenets train``: a folder of images in, a small accurate model (and its report) out.

Parses the options into ``TrainOptions`` and makes one library call (``mobilenets.api.train_with_options``);
the work is in ``mobilenets.training.pipeline``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.data.augment_levels import AUGMENT_LEVELS
from mobilenets.models.published import list_weights
from mobilenets.models.registry import list_models
from mobilenets.training.options import DEFAULT_WEIGHT_DECAY, OPTIMIZERS, TEACHER_ENGINES, TrainOptions
from mobilenets.training.recipes import DEFAULTS, bundled_recipes

NOT_PASSED = object()


class AppendTeacher(argparse.Action):
    """``--teacher A [--teacher B ...]``: one teacher is a string, several a list (an ensemble).

    argparse's own ``append`` would extend the parser's default, which here is the NOT_PASSED marker.
    """

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = getattr(namespace, self.dest, NOT_PASSED)
        if given is NOT_PASSED or given is None:
            setattr(namespace, self.dest, values)
        else:
            setattr(namespace, self.dest, [*([given] if isinstance(given, str) else given), values])


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune on a folder of images (one subfolder per class)",
        description="Train or fine-tune a MobileNet on DIR/CLASS/*.jpg; writes a run directory with the model, "
        "metrics, per-class results, curves and report.html. Ctrl-C saves; --resume continues exactly.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="folder with one subfolder of images per class (with --resume: where the run's images are now, if moved)",
    )
    parser.add_argument(
        "--val",
        type=Path,
        help="separate validation folder (default: a stratified split of --data; with --resume: where it is now)",
    )
    parser.add_argument(
        "--model",
        choices=list_models(),
        metavar="NAME",
        help="architecture (default: the one --weights holds, else mobilenet_v3_small)",
    )
    parser.add_argument(
        "--width", type=float, help="width multiplier (default: the width --weights holds, else 1.0)"
    )
    parser.add_argument(
        "--resolution",
        help="input size in pixels, or auto: the images' size rounded up to 32, at most 224",
    )
    parser.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']} (typical: 16–128)")
    parser.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']} (typical: 10–100; more for small datasets)")
    parser.add_argument("--lr", type=float, help=f"peak learning rate, default {DEFAULTS['lr']:g} (typical: 5e-4–5e-3)")
    parser.add_argument(
        "--recipe",
        metavar="auto|FILE",
        help="auto: choose lr/epochs/batch/augmentation by dataset size; a bundled recipe "
        f"({', '.join(bundled_recipes())}) or a YAML FILE whose values replace the defaults; options given "
        "on the command line still win",
    )
    parser.add_argument(
        "--augment",
        choices=AUGMENT_LEVELS,
        help="augmentation strength (default medium); augmix: AugMix with its consistency loss (the paper's ops); "
        "augmix-all: AugMix plus colour/contrast/brightness/sharpness, which overlap the ImageNet-C corruptions",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="adamw (default), rmsprop (MobileNetV3's: momentum 0.9), sgd (Nesterov momentum 0.9: give it an "
        "SGD learning rate, e.g. --lr 0.05); each has its own default --weight-decay",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        help="default: the optimizer's ("
        + ", ".join(f"{name} {decay:g}" for name, decay in DEFAULT_WEIGHT_DECAY.items())
        + ")",
    )
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="evaluate/save raw weights, not their EMA")
    parser.add_argument("--ema-decay", type=float, help="default: averaging horizon of a tenth of the run")
    parser.add_argument("--dropout", type=float, help="classifier dropout (default: the architecture's, 0.2 for V2/V3)")
    parser.add_argument(
        "--weights",
        help="auto (default): the ImageNet checkpoint published for --model at --width, downloaded once "
        "(scratch, with a warning, when there is none or it cannot be fetched); none: from scratch; or a run dir, "
        f"a file, or a published name: {', '.join(list_weights())}",
    )
    parser.add_argument(
        "--teacher",
        action=AppendTeacher,
        metavar="RUN_DIR|FILE|MODEL.onnx",
        help="knowledge distillation: a larger model fine-tuned on the same classes teaches this one; repeat it "
        "for an ensemble (the student learns the mean of their logits)",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        help="with --teacher: share A of the soft-target loss (0–1; default 0.5, which measured as well as or better than 0.9)"
    )
    parser.add_argument("--temperature", type=float, help="with --teacher: softmax temperature T (default 4)")
    parser.add_argument(
        "--teacher-engine",
        choices=TEACHER_ENGINES,
        help="with --teacher: what runs it. auto (default) times PyTorch and ONNX Runtime on a batch and keeps the "
        "faster (on a GPU: PyTorch there); torch or onnxruntime forces one (an .onnx teacher runs only in ONNX Runtime)",
    )
    parser.add_argument(
        "--unlabelled",
        "--unlabeled",
        metavar="DIR",
        help="with --teacher: a folder of images without labels (sub-folders allowed, their names ignored) that "
        "join the training set; the teacher's predictions are their only target. Never used for validation "
        "(with --resume: where they are now, if moved)",
    )
    parser.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="mixup: blend pairs of images and their labels, λ ~ Beta(ALPHA, ALPHA) (timm: 0.8); with --teacher "
        "the teacher labels the blends. Default 0 (off)",
    )
    parser.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        help="no horizontal flips in the augmentation, for images whose left and right differ (text, digits, "
        "shoes that all face one way); the other operations of --augment stay",
    )
    parser.add_argument(
        "--crop-scale",
        type=float,
        metavar="MIN",
        help="the smallest share of each image's area a random training crop keeps (timm's --scale MIN 1); default: "
        "the --augment level's (light 0.64, medium and heavy 0.25)",
    )
    parser.add_argument(
        "--random-erasing",
        type=float,
        metavar="P",
        help="with probability P, replace a random rectangle (2–33%% of each training image) by noise "
        "(Random Erasing; timm's --reprob, e.g. 0.25). Default 0 (off)",
    )
    parser.add_argument(
        "--head-epochs", type=int, help="fine-tuning: train only the new head first (default 0; --recipe auto: 1 when fine-tuning fewer than 5,000 images)"
    )
    parser.add_argument(
        "--freeze",
        type=int,
        metavar="N",
        help="fine-tuning: keep the stem and the first N blocks at their pretrained weights; steps are faster "
        "(no backward pass there), at some accuracy on images unlike ImageNet's. Default 0: train every layer",
    )
    parser.add_argument("--early-stopping", type=int, metavar="EPOCHS", help="stop after EPOCHS without improvement")
    parser.add_argument(
        "--val-every",
        type=int,
        metavar="N",
        help="validate every N epochs and after the last (default 1): saves the per-epoch evaluation on large data; "
        "the kept model.safetensors and --early-stopping see only those epochs",
    )
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, help="run directory (default runs/<model>-<time>)")
    parser.add_argument("--quantize", action="store_true", help="also write an int8 ONNX model and its accuracy")
    parser.add_argument(
        "--export",
        metavar="FORMATS",
        help="at the end also write these formats, each verified in its runtime, comma-separated: "
        "onnx, tflite, executorch, tflite-micro, coreml (int8 too with --quantize)",
    )
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run exactly")
    parser.add_argument("--checkpoint-minutes", type=float, help="also checkpoint mid-epoch this often")
    parser.add_argument("--checkpoint-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar, for logs (`mobilenets -q train …` prints only warnings)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument(
        "--cache",
        choices=["auto", "memory", "disk"],
        help="where decoded images live: memory, or a memory-mapped file for datasets larger than memory "
        "(auto: disk above a quarter of the available memory)",
    )
    parser.add_argument("--cache-dir", type=Path, help="folder for --cache disk (default RUN_DIR/decoded)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="mixed precision: auto = bf16 on CPUs with native bf16 and on GPUs that have it, else fp32; "
        "fp16 (CUDA) uses a gradient scaler",
    )
    parser.add_argument(
        "--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (fine-tuning with small batches)"
    )
    parser.add_argument(
        "--sync-bn", action="store_true", help="with torchrun on GPUs: BatchNorm statistics over the global batch"
    )
    # One source of defaults: the library's TrainOptions (so the CLI and mobilenets.train() agree). The
    # parser's own default is a marker, so that an option passed at its default value still counts as passed.
    parser.set_defaults(**dict.fromkeys(TrainOptions.defaults(), NOT_PASSED))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.api import train_with_options
    from mobilenets.training.loop import Interrupted

    options = options_from(args)
    try:
        train_with_options(options)
    except Interrupted:
        return 130
    return 0


def options_from(args: argparse.Namespace) -> TrainOptions:
    passed = {name: getattr(args, name) for name in TrainOptions.defaults() if getattr(args, name) is not NOT_PASSED}
    return TrainOptions(**passed, passed=frozenset(passed))
