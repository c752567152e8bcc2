"""Folder scan, split, decoding once to uint8, leakage check, seeded batches, IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.data import folders
from mobilenets.data.augment import normalize_batch
from mobilenets.data.folders import (
    DatasetError,
    EpochBatches,
    Sample,
    decode_samples,
    find_leakage,
    read_idx,
    scan_folder,
    split_samples,
    write_class_folders,
)
from mobilenets.data.images import load_image
from mobilenets.models.preprocessing import Preprocessing


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    pixels = (x * rng.random(3) + y * rng.random(3)) / 2 + rng.integers(0, 30, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_scan_reports_classes_empty_folders_hidden_and_stray_files(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name / "nested").mkdir(parents=True)
    gradient_image(10, 10).save(tmp_path / "cat" / "a.png")
    gradient_image(10, 10).save(tmp_path / "dog" / "nested" / "b.jpg")
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "stray.jpg").write_bytes(b"x")
    scan = scan_folder(tmp_path)
    assert scan.classes == ["cat", "dog"]
    assert [(s.path.name, s.label) for s in scan.samples] == [("a.png", 0), ("b.jpg", 1)]
    assert scan.empty_classes == ["empty"]
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons[".hidden.png"] == "hidden file"
    assert "put it in a class subfolder" in reasons["stray.jpg"]
    # A validation folder is read with the training classes, in their order; unknown classes are named.
    (tmp_path / "val" / "dog").mkdir(parents=True)
    (tmp_path / "val" / "bird").mkdir()
    gradient_image(10, 10).save(tmp_path / "val" / "dog" / "c.png")
    gradient_image(10, 10).save(tmp_path / "val" / "bird" / "d.png")
    val = scan_folder(tmp_path / "val", classes=scan.classes)
    assert [(s.path.name, s.label) for s in val.samples] == [("c.png", 1)]
    assert "not one of the training classes" in val.skipped[0].reason


def test_scan_refuses_a_folder_without_classes(tmp_path):
    with pytest.raises(DatasetError, match="no class subfolders"):
        scan_folder(tmp_path)
    with pytest.raises(DatasetError, match="nope: does not exist"):  # issue 17: a missing folder is named as missing
        scan_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_folder(tmp_path / "file.txt")


def test_split_is_stratified_seeded_and_disjoint():
    samples = [Sample(Path(f"{label}/{i}.png"), label) for label, n in ((0, 50), (1, 10), (2, 1)) for i in range(n)]
    train, val = split_samples(samples, 0.2, seed=3)
    assert sorted(s.label for s in val) == [0] * 10 + [1] * 2  # a single image stays in train
    assert len(train) + len(val) == len(samples) and not set(train) & set(val)
    assert split_samples(samples, 0.2, seed=3) == (train, val)
    assert split_samples(samples, 0.2, seed=4)[1] != val
    with pytest.raises(DatasetError):
        split_samples(samples, 1.5, seed=0)


def test_decoded_pixels_are_exactly_the_preprocessing_pipelines(tmp_path):
    path = tmp_path / "wide.png"
    gradient_image(90, 50).save(path)
    decoded = decode_samples([Sample(path, 0)], 32)
    assert decoded.images.dtype == torch.uint8 and decoded.images.shape == (1, 3, 32, 32)
    preprocessing = Preprocessing(input_size=32, resize_size=32)
    expected = preprocessing(load_image(path))
    actual = normalize_batch(decoded.images, preprocessing.mean, preprocessing.std)[0]
    assert torch.allclose(actual, expected, atol=1e-6)
    # With a weights' preprocessing (resize 37, crop 32) the same holds.
    preprocessing = Preprocessing.for_resolution(32)
    decoded = decode_samples([Sample(path, 0)], 0, preprocessing=preprocessing)
    actual = normalize_batch(decoded.images, preprocessing.mean, preprocessing.std)[0]
    assert torch.allclose(actual, preprocessing(load_image(path)), atol=1e-6)


def test_every_pillow_mode_decodes_and_bad_files_are_named(tmp_path):
    base = gradient_image(40, 30)
    files = {
        "cmyk.jpg": base.convert("CMYK"),
        "gray.png": base.convert("L"),
        "palette.gif": base.convert("P"),
        "alpha.png": base.convert("RGBA"),
        "la.png": base.convert("LA"),
        "sixteen.png": Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257),
        "float.tiff": Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32)),
    }
    samples = []
    for name, image in files.items():
        image.save(tmp_path / name)
        samples.append(Sample(tmp_path / name, 0))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "cmyk.jpg").read_bytes()[:30])
    bad = [Sample(tmp_path / n, 0) for n in ("empty.jpg", "text.png", "truncated.jpg", "missing.png")]
    decoded = decode_samples(samples + bad, 16)
    assert [s.path.name for s in decoded.samples] == list(files)
    assert decoded.images.shape == (len(files), 3, 16, 16)
    reasons = {s.path.name: s.reason for s in decoded.skipped}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "not an image" in reasons["text.png"]
    assert "truncated" in reasons["truncated.jpg"] or "not an image" in reasons["truncated.jpg"]
    assert "cannot read" in reasons["missing.png"]
    # Grayscale in, three equal channels out; 16-bit scaled, not clipped to white.
    gray = decoded.images[list(files).index("sixteen.png")]
    assert torch.equal(gray[0], gray[1]) and 20 < gray.float().mean() < 235


@pytest.mark.parametrize("threads_pay_above", [0.0, float("inf")])
def test_decoding_in_threads_or_not_gives_the_same_cache_in_order(tmp_path, monkeypatch, threads_pay_above):
    # Both paths of decode_in_chunks: threads forced (0 s) and refused (inf); a bad file in the middle.
    monkeypatch.setattr(folders, "THREADS_PAY_ABOVE_SECONDS", threads_pay_above)
    samples = []
    for index in range(23):
        path = tmp_path / f"{index:02d}.png"
        gradient_image(20 + index, 18, seed=index).save(path)
        samples.append(Sample(path, index % 3))
    (tmp_path / "11.png").write_text("not an image")
    decoded = decode_samples(samples, 12, workers=2)
    one_by_one = [folders._decode_one(sample, 12, None) for sample in samples]
    kept = [result for result in one_by_one if not isinstance(result, folders.SkippedFile)]
    assert [s.path.name for s in decoded.samples] == [f"{i:02d}.png" for i in range(23) if i != 11]
    assert [s.path.name for s in decoded.skipped] == ["11.png"]
    assert torch.equal(decoded.images, torch.from_numpy(np.stack([array for array, _, _ in kept])))
    assert decoded.sha256 == [digest for _, digest, _ in kept]
    assert decoded.labels.tolist() == [s.label for s in decoded.samples]


def test_exif_orientation_is_applied(tmp_path):
    image = gradient_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.jpg", quality=95)
    decoded = decode_samples([Sample(tmp_path / "rotated.jpg", 0), Sample(tmp_path / "upright.jpg", 0)], 16)
    difference = (decoded.images[0].float() - decoded.images[1].float()).abs().mean()
    assert difference < 6  # the same picture up to JPEG noise (a wrong orientation differs by ~60)


def test_leakage_finds_exact_and_resized_copies(tmp_path, real_photos):
    originals = [real_photos[name] for name in ("chelsea", "coffee", "astronaut")]
    (tmp_path / "exact.png").write_bytes(originals[0].read_bytes())
    Image.open(originals[1]).resize((300, 200)).save(tmp_path / "resized.jpg", quality=80)
    Image.open(real_photos["rocket"]).save(tmp_path / "other.png")
    train = decode_samples([Sample(p, 0) for p in originals], 16)
    val = decode_samples([Sample(tmp_path / n, 0) for n in ("exact.png", "resized.jpg", "other.png")], 16)
    leakage = find_leakage(train, val)
    assert [(a.name, b.name) for a, b in leakage.exact] == [("chelsea.png", "exact.png")]
    assert [(a.name, b.name) for a, b in leakage.near] == [("coffee.png", "resized.jpg")]


def test_epoch_batches_are_seeded_full_and_shard_exactly():
    batches = EpochBatches(103, 10, seed=1, epoch=0)
    first = list(batches)
    assert len(first) == len(batches) == 10 and all(len(b) == 10 for b in first)
    assert [b.tolist() for b in EpochBatches(103, 10, seed=1, epoch=0)] == [b.tolist() for b in first]
    assert [b.tolist() for b in EpochBatches(103, 10, seed=1, epoch=1)] != [b.tolist() for b in first]
    shards = [EpochBatches(103, 10, seed=1, epoch=0, rank=r, world_size=4).indices() for r in range(4)]
    together = torch.cat(shards)
    # Equal shards (DDP needs every rank to take the same number of steps): the uneven tail of 3 is dropped.
    assert {len(s) for s in shards} == {25} and len(set(together.tolist())) == 100
    assert torch.equal(shards[1], batches.indices()[1::4][:25])


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_idx_pair_round_trip_and_class_folders(tmp_path):
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    labels = np.array([0, 1, 0, 2, 0], dtype=np.uint8)
    write_idx(tmp_path / "images.gz", images, compress=True)
    write_idx(tmp_path / "labels", labels, compress=False)
    assert np.array_equal(read_idx(tmp_path / "images.gz"), images)
    assert np.array_equal(read_idx(tmp_path / "labels"), labels)
    written = write_class_folders(tmp_path / "images.gz", tmp_path / "labels", tmp_path / "out", ["a", "b", "c"], 2)
    assert written == {"a": 2, "b": 1, "c": 1}
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["00000.png", "00002.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "c" / "00003.png")), images[3])


def test_broken_idx_files_are_named(tmp_path):
    write_idx(tmp_path / "full", np.zeros((4, 2, 2)), compress=False)
    (tmp_path / "truncated").write_bytes((tmp_path / "full").read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "truncated")
    (tmp_path / "text").write_text("not idx")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "text")
