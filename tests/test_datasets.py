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


def fashion_pair(folder, split: str, seed: int, count: int = 30):
    """A tiny Fashion-MNIST split where the installed one would be; returns its images."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = np.random.default_rng(seed).integers(0, 256, (count, 28, 28))
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return images


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("mobilenets datasets: error: ")
    return err.strip().removeprefix("mobilenets datasets: error: ")


def test_a_second_split_into_the_same_out_is_refused_not_mixed_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    train = fashion_pair(tmp_path, "train", seed=0)
    fashion_pair(tmp_path, "test", seed=1)
    out = tmp_path / "mix"
    command = ["datasets", "fashion-mnist", "--out", str(out), "--limit-per-class", "2"]
    assert main(command) == 0
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    assert len(before) == 20
    capsys.readouterr()

    assert main([*command, "--split", "test"]) == 2
    assert one_line_error(capsys) == (
        f"--out {out}: class folder {out / 'ankle_boot'} already holds 2 files, which this run would overwrite or "
        f"mix with; pass an empty --out, e.g. --out {out}-test"
    )
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before  # nothing overwritten, nothing added
    assert main([*command, "--limit-per-class", "3"]) == 2  # same split, other limit: would mix too
    assert "already holds 2 files" in one_line_error(capsys)

    assert main(command) == 0  # the same command on its own completed output: said, and nothing written
    assert (
        capsys.readouterr().out.strip()
        == f"{out} already holds these 20 images (the same files, pixel for pixel); nothing to do"
    )
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before
    assert np.array_equal(np.asarray(Image.open(out / "bag" / "00008.png")), train[8])

    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(out / "bag" / "00008.png")  # same names, other pixels
    assert main(command) == 2
    assert "already holds 2 files" in one_line_error(capsys)
    (out / "bag" / "00008.png").unlink()  # an incomplete earlier run is not "done"
    assert main(command) == 2
    assert "already holds 2 files" in one_line_error(capsys)

    assert main([*command, "--split", "test", "--out", str(tmp_path / "test")]) == 0  # an empty --out is fine


def test_a_file_where_a_class_folder_goes_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    fashion_pair(tmp_path, "train", seed=0)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "bag").write_text("mine")
    assert main(["datasets", "fashion-mnist", "--out", str(tmp_path / "out")]) == 2
    assert one_line_error(capsys) == (
        f"--out {tmp_path / 'out'}: {tmp_path / 'out' / 'bag'} is a file where class folder 'bag' goes; "
        f"pass an empty --out, e.g. --out {tmp_path / 'out'}-train"
    )
    assert (tmp_path / "out" / "bag").read_text() == "mine"


def test_bad_arguments_are_named_in_the_commands_terms_and_leave_no_out_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    fashion_pair(tmp_path, "train", seed=0)
    out = tmp_path / "deep" / "out"
    labels = str(tmp_path / "train-labels-idx1-ubyte.gz")
    cases = {
        ("fashion-mnist", "--images", "X"): "fashion-mnist: --images given without --labels; pass both --images FILE "
        "and --labels FILE, or neither to use the installed Fashion-MNIST",
        ("fashion-mnist", "--labels", "X"): "fashion-mnist: --labels given without --images; pass both --images FILE "
        "and --labels FILE, or neither to use the installed Fashion-MNIST",
        ("idx", "--images", "X"): "idx: --labels missing; pass --images IMAGES_FILE --labels LABELS_FILE "
        "(IDX files, .gz or raw)",
        ("idx",): "idx: --images and --labels missing; pass --images IMAGES_FILE --labels LABELS_FILE "
        "(IDX files, .gz or raw)",
        ("fashion-mnist", "--classes", "a,b,c"): f"--classes names 3 classes but the labels in {labels} use 10 "
        "(0..9); pass --classes with 10 comma-separated names",
        ("fashion-mnist", "--classes", "a,b,a,c,d,e,f,g,h,i"): "--classes: a named twice; give each class its own name",
        ("fashion-mnist", "--classes", "a,../b,c,d,e,f,g,h,i,j"): "--classes: '../b' cannot be a class folder name; "
        "use a plain name without / \\ or a leading dot",
        ("fashion-mnist", "--limit-per-class", "0"): "--limit-per-class 0: give a whole number ≥ 1",
    }
    for argv, message in cases.items():
        assert main(["datasets", *argv, "--out", str(out)]) == 2, argv
        assert one_line_error(capsys) == message
        assert not (tmp_path / "deep").exists(), argv  # nothing created for a run that was refused


def test_idx_refuses_split_and_names_folders_by_the_labels_present(tmp_path, capsys):
    write_idx(tmp_path / "images.gz", np.zeros((5, 4, 4)))
    write_idx(tmp_path / "labels.gz", np.array([0, 1, 1, 0, 200]))  # one label out of the 0..1 range
    args = ["datasets", "idx", "--images", str(tmp_path / "images.gz"), "--labels", str(tmp_path / "labels.gz")]
    # --split only picks an installed Fashion-MNIST split: with idx it was silently ignored.
    assert main([*args, "--split", "test", "--out", str(tmp_path / "refused")]) == 2
    assert one_line_error(capsys) == (
        "--split test picks one of Fashion-MNIST's installed splits; with idx, --images and --labels name the "
        "files: drop --split"
    )
    assert not (tmp_path / "refused").exists()
    # Label 200 made 201 classes, 198 of them listed with 0 images and no folder.
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0", "1", "200"]
    assert "wrote 5 images in 3 class folders" in captured.out and len(captured.out.splitlines()) == 4
    assert captured.err.strip() == (
        f"warning: the labels in {tmp_path / 'labels.gz'} are not 0..2 but 0, 1, 200: one class folder per label "
        "present, named by it; check the labels file, or pass --classes to name them"
    )


def test_a_header_claiming_a_huge_shape_is_named_without_overflow(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 4_000_000_000, 4_000_000_000)
    (tmp_path / "huge.idx").write_bytes(header + bytes(10))
    try:
        data.read_idx(tmp_path / "huge.idx")
    except data.DatasetError as error:
        assert str(error) == (
            f"{tmp_path / 'huge.idx'}: IDX header says shape (2, 4000000000, 4000000000) (32000000000000000000 bytes) "
            "but the file holds 10; it is truncated or corrupt"
        )
    else:
        raise AssertionError("a header larger than the file was read")
