"""Images from a user's folder to uint8 tensors in memory, once.

- ``scan_folder``: one subfolder per class; every file is a candidate (extensions lie), hidden files
  and empty class folders are reported, never silently dropped.
- ``split_samples``: a stratified, seeded train/val split.
- ``decode_samples``: decode each file once (any Pillow format, EXIF, odd modes, bombs refused: see
  ``preprocessing.load_image``) to a uint8 CHW tensor at training resolution. A file that cannot be
  used is skipped and named with its reason; it never stops a run. Exact (sha256 of the bytes) and
  near (perceptual hash) duplicates come out of the same pass, for the train/val leakage check.
- ``EpochBatches``: the per-epoch, seeded, shardable order of batches (the seam for distributed
  training: each rank takes its slice of the same permutation).
- IDX (MNIST/Fashion-MNIST) files are read here too, and written out as class folders of PNGs.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import math
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobilenets.core.distributed import sampler_indices
from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.data.images import ImageLoadError, load_image
from mobilenets.models.preprocessing import Preprocessing


class DatasetError(MobilenetsError):
    """A dataset folder or file that cannot be used as given."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class FolderScan:
    """What a class-folder dataset holds, before any image is decoded."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counter = Counter(sample.label for sample in self.samples)
        return {name: counter.get(index, 0) for index, name in enumerate(self.classes)}


# --------------------------------------------------------------------------------------------------
# Scanning and splitting
# --------------------------------------------------------------------------------------------------


def scan_folder(root: Path | str, classes: Sequence[str] | None = None) -> FolderScan:
    """Find ``root/CLASS/**/FILE``. ``classes`` fixes the class list and order (for a separate val folder)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: does not exist; pass a folder with one subfolder of images per class")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; pass a folder with one subfolder of images per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [
        SkippedFile(p, "file directly in the dataset folder; put it in a class subfolder")
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]
    files_by_class = {folder.name: _files_under(folder, skipped) for folder in folders}
    empty = [name for name, files in files_by_class.items() if not files]
    if classes is None:
        classes = [name for name, files in files_by_class.items() if files]
    else:
        classes = list(classes)
        for name in files_by_class:
            if name not in classes and files_by_class[name]:
                skipped.extend(
                    SkippedFile(p, f"class {name!r} is not one of the training classes") for p in files_by_class[name]
                )
    if not classes:
        raise DatasetError(
            f"{root}: no class subfolders with files; expected {root}/CLASS_NAME/image.jpg for each class"
        )
    samples = [Sample(path, index) for index, name in enumerate(classes) for path in files_by_class.get(name, [])]
    return FolderScan(root, list(classes), samples, skipped, empty)


def _files_under(folder: Path, skipped: list[SkippedFile]) -> list[Path]:
    files = []
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if name.startswith("."):
                skipped.append(SkippedFile(path, "hidden file"))
            else:
                files.append(path)
    return files


UNLABELLED = -1  # the label of an image without one (``train --unlabelled``): only a teacher's predictions teach it


def scan_unlabelled(root: Path | str, *, exclude: Collection[Path] = ()) -> tuple[list[Sample], list[SkippedFile], int]:
    """Every file under ``root`` (any sub-folders; their names are not labels) as unlabelled samples.

    Files in ``exclude`` (the labelled training and validation images, by resolved path) are left out, so
    an unlabelled folder that holds the labelled one cannot smuggle validation images into training.
    Returns the samples, the hidden files skipped, and how many files were excluded.
    """
    root = Path(root)
    fix = "pass --unlabelled a folder of images (sub-folders are fine; their names are ignored)"
    if not root.exists():
        raise DatasetError(f"--unlabelled {root}: does not exist; {fix}")
    if not root.is_dir():
        raise DatasetError(f"--unlabelled {root}: not a folder; {fix}")
    skipped: list[SkippedFile] = []
    files = _files_under(root, skipped)
    labelled = {path.resolve() for path in exclude}
    kept = [path for path in files if path.resolve() not in labelled]
    if not kept:
        reason = "holds only the labelled images of --data/--val" if files else "holds no files"
        raise DatasetError(f"--unlabelled {root}: {reason}; {fix}")
    return [Sample(path, UNLABELLED) for path in kept], skipped, len(files) - len(kept)


def split_samples(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified split: each class contributes ``val_fraction`` of its images (at least one when it has 2+)."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    generator = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = generator.permutation(len(members))
        n_val = round(len(members) * val_fraction) if len(members) > 1 else 0
        n_val = max(n_val, 1) if len(members) > 1 else 0
        val.extend(members[i] for i in sorted(order[:n_val]))
        train.extend(members[i] for i in sorted(order[n_val:]))
    return train, val


# --------------------------------------------------------------------------------------------------
# Decoding once, to uint8 at training resolution
# --------------------------------------------------------------------------------------------------


@dataclass
class DecodedImages:
    """Decoded images as one uint8 tensor (N, 3, S, S) with labels, plus what could not be used."""

    images: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample]
    skipped: list[SkippedFile]
    sha256: list[str]
    perceptual_hash: list[int]

    def __len__(self) -> int:
        return len(self.samples)


def fit_square(
    image: Image.Image, size: int, resize_size: int | None = None, interpolation: str = "bilinear"
) -> Image.Image:
    """Short side to ``resize_size`` (default ``size``), center crop ``size``×``size``: ``Preprocessing``'s pixels."""
    resize_size = resize_size or size
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[interpolation]
    width, height = image.size
    if width <= height:
        new_size = (resize_size, max(resize_size, int(resize_size * height / width)))
    else:
        new_size = (max(resize_size, int(resize_size * width / height)), resize_size)
    image = image.resize(new_size, resample)
    left = round((new_size[0] - size) / 2.0)
    top = round((new_size[1] - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: signs of horizontal gradients of a 9×8 grayscale thumbnail; survives resizing and recompression."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _decode_one(
    sample: Sample, size: int, preprocessing: Preprocessing | None
) -> tuple[np.ndarray, str, int] | SkippedFile:
    try:
        data = sample.path.read_bytes()
    except OSError as error:
        return SkippedFile(sample.path, f"cannot read ({error.strerror or error})")
    if not data:
        return SkippedFile(sample.path, "empty file (0 bytes)")
    try:
        image = load_image(sample.path)
    except ImageLoadError as error:
        return SkippedFile(sample.path, error.reason)
    if min(image.size) < 1:
        return SkippedFile(sample.path, f"image has no pixels ({image.size[0]}×{image.size[1]})")
    if preprocessing is None:
        square = fit_square(image, size)
    else:
        square = fit_square(image, preprocessing.input_size, preprocessing.resize_size, preprocessing.interpolation)
    return (
        np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy(),
        hashlib.sha256(data).hexdigest(),
        difference_hash(image),
    )


# Decoding in threads pays only where Pillow's C code (which releases the GIL) outweighs the Python
# around each image. Measured on 2 cores, per image, 1 thread → 2: a 4000×3000 JPEG 122 → 65 ms, a 640×480
# JPEG 4.7 → 2.4 ms, a 160×120 JPEG 0.59 → 0.52 ms, a 28×28 PNG 0.19 → 0.37 ms (slower: the threads queue
# for the GIL). So the first chunk is decoded in this thread and timed, and threads take the rest only
# when an image costs more than this.
THREADS_PAY_ABOVE_SECONDS = 0.5e-3
# Images per thread-pool task: ThreadPoolExecutor.map ignores ``chunksize`` (only process pools use it),
# and one task per image cost more than decoding a 28-px PNG (BENCHMARKS.md, "Sixth round").
DECODE_CHUNK = 64

DecodeResult = tuple[np.ndarray, str, int] | SkippedFile


def decode_chunk(samples: Sequence[Sample], size: int, preprocessing: Preprocessing | None) -> list[DecodeResult]:
    """``_decode_one`` over a chunk of samples: one thread-pool task."""
    return [_decode_one(sample, size, preprocessing) for sample in samples]


def decode_in_chunks(
    samples: Sequence[Sample], size: int, preprocessing: Preprocessing | None = None, workers: int = 1
) -> Iterator[tuple[Sequence[Sample], list[DecodeResult]]]:
    """(chunk, its results) in the input order, so a cache is identical from run to run; threads only
    where they pay (``THREADS_PAY_ABOVE_SECONDS``)."""
    size_of_chunk = max(1, min(DECODE_CHUNK, -(-len(samples) // (4 * max(1, workers)))))
    chunks = [samples[start : start + size_of_chunk] for start in range(0, len(samples), size_of_chunk)]
    if not chunks:
        return
    # The first image pays one-time costs (Pillow loading its format plugins), so it is not timed.
    first = decode_chunk(chunks[0][:1], size, preprocessing)
    started = time.perf_counter()
    first += decode_chunk(chunks[0][1:], size, preprocessing)
    seconds_per_image = (time.perf_counter() - started) / max(1, len(chunks[0]) - 1)
    yield chunks[0], first
    rest = chunks[1:]
    if workers > 1 and len(rest) > 1 and seconds_per_image > THREADS_PAY_ABOVE_SECONDS:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from zip(rest, pool.map(lambda chunk: decode_chunk(chunk, size, preprocessing), rest), strict=True)
    else:
        for chunk in rest:
            yield chunk, decode_chunk(chunk, size, preprocessing)


def decode_samples(
    samples: Sequence[Sample],
    size: int,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    preprocessing: Preprocessing | None = None,
) -> DecodedImages:
    """Decode every sample once to (3, size, size) uint8; files that fail are skipped and named.

    ``preprocessing`` (optional) resizes and crops as a set of weights expects (e.g. 256 → 224) instead.
    """
    if preprocessing is not None:
        size = preprocessing.input_size
    workers = workers or min(4, os.cpu_count() or 1)
    kept: list[Sample] = []
    arrays: list[np.ndarray] = []
    sha: list[str] = []
    phash: list[int] = []
    skipped: list[SkippedFile] = []
    for chunk, results in decode_in_chunks(samples, size, preprocessing, workers):
        for sample, result in zip(chunk, results, strict=True):
            if isinstance(result, SkippedFile):
                skipped.append(result)
            else:
                array, digest, dhash = result
                kept.append(sample)
                arrays.append(array)
                sha.append(digest)
                phash.append(dhash)
        if progress is not None:
            progress(len(chunk))
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 3, size, size), dtype=torch.uint8)
    labels = torch.tensor([s.label for s in kept], dtype=torch.int64)
    return DecodedImages(images, labels, kept, skipped, sha, phash)


@dataclass
class Leakage:
    """Images that appear in both train and val: the seed's "data leakage" check."""

    exact: list[tuple[Path, Path]]
    near: list[tuple[Path, Path]]


def find_leakage(
    train: DecodedImages, val: DecodedImages, max_distance: int = 3, max_pixel_difference: float = 3.0
) -> Leakage:
    """Val images whose bytes (exact) or content (near: resized/recompressed copies) occur in train.

    Near means a dHash within ``max_distance`` bits and decoded pixels within ``max_pixel_difference``
    (mean absolute, of 255; resized or JPEG-recompressed copies measure 0.3–1.6): the hash finds candidates, the pixels reject look-alikes (small images of
    similar objects, e.g. Fashion-MNIST's silhouettes, often share a hash). Hash distances are computed
    for all pairs with vectorized popcounts (10,000 × 60,000 pairs take seconds).
    """
    by_sha = {digest: sample.path for digest, sample in zip(train.sha256, train.samples, strict=True)}
    train_hashes = np.array(train.perceptual_hash, dtype=np.uint64)
    flat = (0, (1 << 64) - 1)  # blank images all hash alike; they are not copies of each other
    exact, near = [], []
    for position, (digest, dhash, sample) in enumerate(zip(val.sha256, val.perceptual_hash, val.samples, strict=True)):
        if digest in by_sha:
            exact.append((by_sha[digest], sample.path))
            continue
        if dhash in flat or not len(train_hashes):
            continue
        distances = np.bitwise_count(train_hashes ^ np.uint64(dhash))
        candidates = np.flatnonzero(distances <= max_distance)
        if len(candidates):
            # Look-alikes can be many; the closest hashes are the likely copies.
            candidates = candidates[np.argsort(distances[candidates], kind="stable")[:16]]
            pixels = val.images[position].float()
            differences = (train.images[torch.from_numpy(candidates)].float() - pixels).abs().mean((1, 2, 3))
            best = int(differences.argmin())
            if differences[best] <= max_pixel_difference:
                near.append((train.samples[int(candidates[best])].path, sample.path))
    return Leakage(exact, near)


# --------------------------------------------------------------------------------------------------
# Batches: seeded per epoch, shardable
# --------------------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int, step: int = 0) -> int:
    """One independent, reproducible seed per (run, epoch, step): resume at any step replays the same randomness."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{epoch}/{step}".encode(), digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class EpochBatches:
    """Batch indices of one epoch: a seeded permutation, this rank's share of it, cut into full batches.

    The share is ``DistributedSampler``'s (every world_size-th index, equal shards), so distributed
    training only passes its rank and world size here, and one process sees the whole permutation.
    """

    num_samples: int
    batch_size: int
    seed: int
    epoch: int
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True

    def indices(self) -> torch.Tensor:
        return sampler_indices(self.num_samples, self.rank, self.world_size, epoch_seed(self.seed, self.epoch))

    def __len__(self) -> int:
        count = self.num_samples // self.world_size
        full, rest = divmod(count, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def __iter__(self) -> Iterator[torch.Tensor]:
        indices = self.indices()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield indices[start : start + self.batch_size]


def sequential_batches(num_samples: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, num_samples, batch_size):
        yield slice(start, min(start + batch_size, num_samples))


# --------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------------

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str) -> np.ndarray:
    """An IDX file (optionally gzipped) as an array: magic ``00 00 TYPE NDIM``, NDIM big-endian sizes, data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DatasetError(f"{path}: cannot read IDX file ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a corrupt header cannot overflow
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds {len(raw) - header}; "
            "it is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def fashion_mnist_files(split: str, root: Path | None = None) -> tuple[Path, Path]:
    root = root or FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}[split]
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    labels = root / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.exists():
            raise DatasetError(
                f"{path}: not found; install Debian's Fashion-MNIST (`apt install dataset-fashion-mnist`) "
                "or pass --images/--labels IDX files"
            )
    return images, labels


@dataclass
class ClassFoldersPlan:
    """An IDX pair, checked, and which image goes to which ``CLASS/NNNNN.png``, before anything is written."""

    images_path: Path
    labels_path: Path
    images: np.ndarray
    names: list[str]
    files: list[tuple[int, str]]  # (index in the IDX pair, class name), in file order
    limit_per_class: int | None

    def counts(self) -> dict[str, int]:
        counter = Counter(name for _, name in self.files)
        return {name: counter.get(name, 0) for name in self.names}

    def relative_paths(self) -> set[str]:
        return {f"{name}/{index:05d}.png" for index, name in self.files}


def check_class_names(classes: Sequence[str], what: str = "--classes") -> list[str]:
    """Class names become folder names: each must be one plain, non-hidden folder name, and unique."""
    names = [str(name).strip() for name in classes]
    for name in names:
        if not name:
            raise DatasetError(f"{what}: an empty class name; give one name per class, separated by commas")
        if name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\"):
            raise DatasetError(
                f"{what}: {name!r} cannot be a class folder name; use a plain name without / \\ or a leading dot"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{what}: {', '.join(duplicates)} named twice; give each class its own name")
    return names


def plan_class_folders(
    images_path: Path | str,
    labels_path: Path | str,
    classes: Sequence[str] | None = None,
    limit_per_class: int | None = None,
    classes_from: str = "--classes",
) -> ClassFoldersPlan:
    """Read and check an IDX pair; ``classes_from`` says where ``classes`` came from, for the error."""
    images_path, labels_path = Path(images_path), Path(labels_path)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{images_path}, {labels_path}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}"
        )
    if len(labels) == 0:
        raise DatasetError(f"{labels_path}: holds no labels (0 images); pass a non-empty IDX pair")
    if not np.issubdtype(labels.dtype, np.integer) or int(labels.min()) < 0:
        raise DatasetError(
            f"{labels_path}: labels must be whole numbers 0..N-1, found {labels.min()}; pass a labels IDX file"
        )
    used = int(labels.max()) + 1
    if classes is None:
        # Folders are named by label, so only the labels present get one (a subset's labels may have gaps).
        present = sorted(set(labels.tolist()))
        names = [str(label) for label in present]
        names_by_label = dict(zip(present, names, strict=True))
    else:
        names = check_class_names(classes, classes_from)
        if used > len(names):
            raise DatasetError(
                f"{classes_from} names {len(names)} classes but the labels in {labels_path} use {used} (0..{used - 1}); "
                f"pass --classes with {used} comma-separated names"
            )
        names_by_label = dict(enumerate(names))
    check_number("--limit-per-class", limit_per_class, at_least=1, whole=True)
    files, taken = [], Counter()
    for index, label in enumerate(labels.tolist()):
        name = names_by_label[label]
        if limit_per_class is None or taken[name] < limit_per_class:
            files.append((index, name))
            taken[name] += 1
    return ClassFoldersPlan(images_path, labels_path, images, names, files, limit_per_class)


def check_class_folders_out(plan: ClassFoldersPlan, out: Path | str, other_out: str | None = None) -> bool:
    """Whether ``out`` may take ``plan``'s images without overwriting or mixing with images already there.

    Returns False when the class folders it would write are absent or empty; True when they already hold
    exactly the files this run would write, pixel for pixel (the same command, completed: nothing to do);
    otherwise raises, naming the class folder in the way. Reads only: nothing is created.
    """
    out = Path(out)
    if not out.is_dir():
        return False  # absent (or a file in the way: check_writable says so)
    other = other_out or f"{out}-2"
    found: set[str] = set()
    for name in plan.counts():
        folder = out / name
        if folder.exists() and not folder.is_dir():
            raise DatasetError(
                f"--out {out}: {folder} is a file where class folder {name!r} goes; pass an empty --out, e.g. --out {other}"
            )
        if folder.is_dir():
            found |= {f"{name}/{p.name}" for p in folder.iterdir() if not p.name.startswith(".")}
    if not found:
        return False
    if found == plan.relative_paths() and _holds_planned_images(plan, out):
        return True
    first = sorted(found)[0].split("/")[0]
    count = sum(1 for path in found if path.startswith(f"{first}/"))
    raise DatasetError(
        f"--out {out}: class folder {out / first} already holds {count:,} files, which this run would overwrite or "
        f"mix with; pass an empty --out, e.g. --out {other}"
    )


def _holds_planned_images(plan: ClassFoldersPlan, out: Path) -> bool:
    for index, name in plan.files:
        try:
            with Image.open(out / name / f"{index:05d}.png") as image:
                if not np.array_equal(np.asarray(image), plan.images[index]):
                    return False
        except Exception:  # a truncated PNG from an interrupted run: not done
            return False
    return True


def write_planned_class_folders(plan: ClassFoldersPlan, out: Path | str) -> dict[str, int]:
    """Write ``plan`` as ``out/CLASS/NNNNN.png`` (check ``out`` first: see ``check_class_folders_out``)."""
    from mobilenets.core.files import DiskFullError, disk_full_message

    out = Path(out)
    for index, name in plan.files:
        folder = out / name
        path = folder / f"{index:05d}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(plan.images[index], dtype=np.uint8), "L").save(path, optimize=True)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(disk_full_message(folder, None)) from None
            reason = error.strerror or str(error)
            raise DatasetError(f"{path}: cannot write ({reason}); pass a writable, empty --out") from None
    return plan.counts()


def write_class_folders(
    images_path: Path | str,
    labels_path: Path | str,
    out: Path | str,
    classes: Sequence[str] | None = None,
    limit_per_class: int | None = None,
) -> dict[str, int]:
    """Write an IDX image/label pair as ``out/CLASS/NNNNN.png``; returns images written per class.

    Refuses (``DatasetError``) when the class folders under ``out`` already hold other images; the same
    pair, classes and limit written there before, completely, is a no-op.
    """
    plan = plan_class_folders(images_path, labels_path, classes, limit_per_class)
    if check_class_folders_out(plan, out):
        return plan.counts()
    return write_planned_class_folders(plan, out)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _hidden(relative: Path) -> bool:
    """A hidden file, or one inside a hidden folder (``.DS_Store``, ``._photo.jpg``, ``.thumbnails/``)."""
    return any(part.startswith(".") for part in relative.parts)


def folder_images(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """A class folder (one sub-folder per class) or a flat folder of unlabelled images."""
    folder = Path(folder)
    if not folder.exists():
        raise MobilenetsError(f"{folder}: does not exist; pass --data a folder of images (or of class folders)")
    if not folder.is_dir():
        raise MobilenetsError(f"{folder}: not a folder; pass --data a folder of images (or of class folders)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        paths, labels = [], []
        for index, name in enumerate(classes):
            found = sorted(
                p
                for p in (folder / name).rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p.relative_to(folder))
            )
            paths += found
            labels += [index] * len(found)
        result = paths, labels, classes
    else:
        result = (
            sorted(
                p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p.relative_to(folder))
            ),
            None,
            None,
        )
    if not result[0]:
        raise MobilenetsError(f"{folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return result
