"""Decoded images on disk (datasets larger than memory) equal the in-memory cache, and are reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobilenets.data.disk_cache import choose_cache, decode_to_disk
from mobilenets.data.folders import decode_samples, scan_folder

ROOT = Path(__file__).resolve().parents[1]


def small_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return tmp_path


def test_disk_cache_equals_memory_cache_and_names_skipped_files(tmp_path):
    samples = scan_folder(small_folder(tmp_path / "images")).samples
    memory = decode_samples(samples, 16)
    disk = decode_to_disk(samples, 16, tmp_path / "cache")
    assert torch.equal(memory.images, disk.images) and torch.equal(memory.labels, disk.labels)
    assert [s.path for s in disk.samples] == [s.path for s in memory.samples]
    assert disk.sha256 == memory.sha256 and disk.perceptual_hash == memory.perceptual_hash
    assert [s.path.name for s in disk.skipped] == ["broken.jpg"] and disk.skipped[0].reason


def test_disk_cache_is_reused_and_invalidated_when_files_change(tmp_path):
    samples = scan_folder(small_folder(tmp_path / "images")).samples
    decode_to_disk(samples, 16, tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.npy")
    written = cached.stat().st_mtime_ns
    decode_to_disk(samples, 16, tmp_path / "cache")
    assert cached.stat().st_mtime_ns == written  # read, not decoded again
    Image.new("RGB", (25, 25), "red").save(samples[0].path)
    changed = decode_to_disk(samples, 16, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert changed.images[0].float().mean() != torch.from_numpy(np.load(cached))[0].float().mean()


def test_auto_chooses_disk_only_for_data_larger_than_a_share_of_memory():
    assert choose_cache("auto", 1_000, 32) == "memory"
    assert choose_cache("auto", 50_000_000, 224) == "disk"  # ~7.5 TB of pixels
    assert choose_cache("disk", 10, 32) == "disk" and choose_cache("memory", 10**9, 224) == "memory"
