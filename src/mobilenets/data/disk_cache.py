"""Decoded images on disk, for datasets larger than memory: written once, read by every rank and epoch.

The in-memory cache (``data.decode_samples``) holds N × 3 × S × S bytes: 3.9 GB for ImageNet-1k at
32 px but 190 GB at 224 px. Above a share of the available memory the same uint8 array is written to a
``.npy`` file instead and memory-mapped: the page cache keeps what fits, the disk serves the rest, and
no JPEG is decoded twice. Under torchrun every rank decodes its own share of the files into the same
file, so decoding is data-parallel too; rank 0 then drops the rows of unreadable files.

The file name is a digest of the file list, their sizes and modification times and the resolution,
so a cache is reused by later runs and resumes, and never read for data that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mobilenets.core.distributed import DistributedContext
from mobilenets.core.files import atomic_write_text
from mobilenets.data.folders import DecodedImages, Sample, SkippedFile, decode_in_chunks

MEMORY_SHARE = 0.25  # decode to disk when the cache would take more than this share of available memory


def cache_bytes(num_samples: int, size: int) -> int:
    return num_samples * 3 * size * size


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def choose_cache(mode: str, num_samples: int, size: int) -> str:
    """``memory`` or ``disk``: ``auto`` picks disk when the decoded images would not fit comfortably."""
    if mode != "auto":
        return mode
    return "disk" if cache_bytes(num_samples, size) > MEMORY_SHARE * available_memory() else "memory"


def cache_key(samples: Sequence[Sample], size: int) -> str:
    digest = hashlib.sha256(f"v1/{size}".encode())
    for sample in samples:
        try:
            stat = sample.path.stat()
            digest.update(f"{sample.path}|{sample.label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{sample.path}|{sample.label}|missing\n".encode())
    return digest.hexdigest()[:20]


def decode_to_disk(
    samples: Sequence[Sample],
    size: int,
    cache_dir: Path,
    context: DistributedContext | None = None,
    progress: Callable[[int], None] | None = None,
) -> DecodedImages:
    """Decode ``samples`` once into ``cache_dir`` (shared by all ranks) and memory-map the result."""
    context = context or DistributedContext()
    cache_dir = Path(cache_dir)
    key = cache_key(samples, size)
    images_path, index_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not index_path.exists():
        _decode_shards(samples, size, cache_dir, key, context, progress)
    context.barrier()
    index = json.loads(index_path.read_text())
    # Copy-on-write mapping: nothing is read until used, and nothing ever writes back to the cache.
    images = torch.from_numpy(np.load(images_path, mmap_mode="c"))
    kept = [samples[i] for i in index["kept"]]
    return DecodedImages(
        images=images,
        labels=torch.tensor([s.label for s in kept], dtype=torch.int64),
        samples=kept,
        skipped=[SkippedFile(Path(path), reason) for path, reason in index["skipped"]],
        sha256=index["sha256"],
        perceptual_hash=[int(h) for h in index["perceptual_hash"]],
    )


def _decode_shards(
    samples: Sequence[Sample],
    size: int,
    cache_dir: Path,
    key: str,
    context: DistributedContext,
    progress: Callable[[int], None] | None,
) -> None:
    partial = cache_dir / f"{key}.partial.npy"
    if context.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(samples), 3, size, size)).flush()
    context.barrier()
    rows = np.load(partial, mmap_mode="r+")
    results = {}
    positions = list(range(context.rank, len(samples), context.world_size))
    mine = [samples[i] for i in positions]
    done = 0
    for chunk, outcomes in decode_in_chunks(mine, size, workers=max(1, torch.get_num_threads())):
        for position, outcome in zip(positions[done : done + len(chunk)], outcomes, strict=True):
            if isinstance(outcome, SkippedFile):
                results[position] = {"skipped": outcome.reason}
            else:
                array, digest, dhash = outcome
                rows[position] = array
                results[position] = {"sha256": digest, "perceptual_hash": str(dhash)}
        done += len(chunk)
        if progress is not None:
            progress(len(chunk))
    rows.flush()
    del rows
    (cache_dir / f"{key}.rank{context.rank}.json").write_text(json.dumps(results))
    context.barrier()
    if context.is_main:
        _merge_shards(samples, cache_dir, key, context.world_size)


def _merge_shards(samples: Sequence[Sample], cache_dir: Path, key: str, world_size: int) -> None:
    """Rank 0: gather every rank's outcomes, drop unreadable rows, publish the cache atomically."""
    outcomes: dict[int, dict] = {}
    for rank in range(world_size):
        shard = cache_dir / f"{key}.rank{rank}.json"
        outcomes.update({int(k): v for k, v in json.loads(shard.read_text()).items()})
        shard.unlink()
    kept = [i for i in range(len(samples)) if "skipped" not in outcomes[i]]
    partial = cache_dir / f"{key}.partial.npy"
    if len(kept) < len(samples):
        source = np.load(partial, mmap_mode="r")
        compact_path = cache_dir / f"{key}.compact.npy"
        compact = np.lib.format.open_memmap(
            compact_path, mode="w+", dtype=np.uint8, shape=(len(kept), *source.shape[1:])
        )
        for start in range(0, len(kept), 1024):
            compact[start : start + 1024] = source[kept[start : start + 1024]]
        compact.flush()
        del compact, source
        os.replace(compact_path, partial)
    os.replace(partial, cache_dir / f"{key}.npy")
    index = {
        "kept": kept,
        "skipped": [
            [str(samples[i].path), outcomes[i]["skipped"]] for i in sorted(set(range(len(samples))) - set(kept))
        ],
        "sha256": [outcomes[i]["sha256"] for i in kept],
        "perceptual_hash": [outcomes[i]["perceptual_hash"] for i in kept],
    }
    atomic_write_text(cache_dir / f"{key}.json", json.dumps(index))
