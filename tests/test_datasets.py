"""`mobilenets datasets`: IDX pairs to class folders (tests build their own tiny IDX pair)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
from PIL import Image

from mobilenets.cli.main import main
from mobilenets.data import folders as data


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_layout_from_any_idx_pair(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28))
    labels = np.arange(30) % 10
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    code = main(
        ["datasets", "fashion-mnist", "--split", "test", "--out", str(tmp_path / "out"), "--limit-per-class", "2"]
    )
    assert code == 0
    assert "wrote 20 images in 10 class folders" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(data.FASHION_MNIST_CLASSES)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "ankle_boot" / "00009.png")), images[9])


def test_idx_with_own_class_names_and_missing_files(tmp_path, monkeypatch, capsys):
    write_idx(tmp_path / "images.gz", np.zeros((4, 5, 5)))
    write_idx(tmp_path / "labels.gz", np.array([0, 1, 1, 0]))
    out = tmp_path / "out"
    args = ["datasets", "idx", "--images", str(tmp_path / "images.gz"), "--labels", str(tmp_path / "labels.gz")]
    assert main([*args, "--out", str(out), "--classes", "no,yes"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["no", "yes"]
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "absent")
    assert main(["datasets", "fashion-mnist", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mobilenets datasets: error:") and "apt install dataset-fashion-mnist" in error
    assert "\n" not in error
