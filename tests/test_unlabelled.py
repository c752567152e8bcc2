"""``train --teacher RUN --unlabelled DIR``: images without labels, taught by the teacher alone (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import EXAMPLES, TINY, error_of
from PIL import Image

import mobilenets.api as api
from mobilenets.cli.main import main
from mobilenets.core.run_directory import LabelledFile, RunDirectory, Split
from mobilenets.data.folders import UNLABELLED, DatasetError, scan_folder, scan_unlabelled, split_samples
from mobilenets.training.distillation import distillation_loss
from mobilenets.training.options import TrainOptions
from mobilenets.training.pipeline import read_resume


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Random 28-px images, half of them one sub-folder down (its name must not become a label)."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / ("nested" if index % 2 else "") / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
        paths.append(path)
    return sorted(paths)


# ---- the loss -------------------------------------------------------------------------------------


def test_an_unlabelled_image_learns_from_the_teacher_alone_at_full_weight():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 4, generator=generator)
    teacher = torch.randn(6, 4, generator=generator) * 3
    labels = torch.tensor([2, UNLABELLED, 0, UNLABELLED, 3, 1])
    a, t = 0.7, 4.0
    p_teacher = F.softmax(teacher / t, dim=1)
    kl_rows = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=1))).sum(1)
    ce_rows = F.cross_entropy(student, labels.clamp(min=0), reduction="none", label_smoothing=0.1)
    expected = torch.where(labels == UNLABELLED, t * t * kl_rows, (1 - a) * ce_rows + a * t * t * kl_rows).mean()
    actual = distillation_loss(student, teacher, labels, weight=a, temperature=t, label_smoothing=0.1)
    assert torch.allclose(actual, expected, atol=1e-6)
    # All unlabelled: T²·KL whatever the weight, even 0 (the labels' share has no labels to use).
    unlabelled = torch.full((6,), UNLABELLED)
    for weight in (0.0, 0.5, 1.0):
        assert torch.allclose(
            distillation_loss(student, teacher, unlabelled, weight=weight, temperature=t), t * t * kl_rows.mean()
        )


def test_a_batch_without_unlabelled_images_has_the_loss_it_always_had():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    labels = torch.tensor([0, 1, 2, 1, 0])
    soft = F.kl_div(F.log_softmax(student / 2, 1), F.log_softmax(teacher / 2, 1), reduction="batchmean", log_target=True)
    expected = 0.5 * F.cross_entropy(student, labels) + 0.5 * 4 * soft
    assert torch.equal(distillation_loss(student, teacher, labels, weight=0.5, temperature=2.0), expected)


def test_mixup_blends_unlabelled_images_and_their_share_of_the_loss_is_the_teachers():
    from mobilenets.training.mixup import mixup

    generator = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 4, 4, generator=generator)
    labels = torch.tensor([2, UNLABELLED, UNLABELLED, 0])  # partners: 0↔3 both labelled, 1↔2 both unlabelled
    mixed = mixup(images, labels, alpha=1.0, num_classes=3, generator=torch.Generator().manual_seed(0))
    lam = float(mixed.targets[0, 2])
    assert 0.05 < lam < 0.95
    assert torch.allclose(mixed.targets.sum(1), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    # A labelled image blended with an unlabelled one: label mass λ, or 1 − λ for its partner.
    half = mixup(images, torch.tensor([2, 1, UNLABELLED, UNLABELLED]), alpha=1.0, num_classes=3,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.allclose(half.targets, torch.tensor([[0, 0, lam], [0, lam, 0], [0, 1 - lam, 0], [0, 0, 1 - lam]]))
    assert half.labels.tolist() == ([2, 1, UNLABELLED, UNLABELLED] if lam >= 0.5 else [UNLABELLED, UNLABELLED, 1, 2])

    student, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator) * 2
    a, t = 0.4, 3.0
    p_teacher = F.softmax(teacher / t, dim=1)
    kl_rows = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=1))).sum(1)
    mass = half.targets.sum(1)
    ce_rows = F.cross_entropy(student, half.targets / mass.unsqueeze(1), reduction="none", label_smoothing=0.1)
    expected = (mass * ((1 - a) * ce_rows + a * t * t * kl_rows) + (1 - mass) * t * t * kl_rows).mean()
    actual = distillation_loss(student, teacher, half.targets, weight=a, temperature=t, label_smoothing=0.1)
    assert torch.allclose(actual, expected, atol=1e-6)
    # Whole label mass: the loss of a mixed labelled batch, unchanged (test_distillation checks its formula).
    whole = torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.3, 0.7], [0.7, 0.0, 0.3], [0.0, 0.0, 1.0]])
    hard = F.cross_entropy(student, whole)
    soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
    assert torch.allclose(
        distillation_loss(student, teacher, whole, weight=a, temperature=t), (1 - a) * hard + a * t * t * soft
    )


# ---- the folder -----------------------------------------------------------------------------------


def test_every_file_under_the_folder_is_unlabelled_and_the_labelled_ones_are_left_out(tmp_path):
    paths = write_images(tmp_path / "pool", 6)
    (tmp_path / "pool" / ".DS_Store").write_text("hidden")
    samples, skipped, excluded = scan_unlabelled(tmp_path / "pool", exclude=paths[:2])
    assert [s.path for s in samples] == paths[2:] and {s.label for s in samples} == {UNLABELLED}
    assert excluded == 2 and [s.path.name for s in skipped] == [".DS_Store"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "nope", "does not exist"),
        (lambda root: (root / "f.png").write_bytes(b"x") and root / "f.png", "not a folder"),
        (lambda root: (root / "empty").mkdir() or root / "empty", "holds no files"),
    ],
)
def test_an_unusable_folder_is_one_clear_line(tmp_path, make, message):
    folder = make(tmp_path)
    with pytest.raises(DatasetError) as error:
        scan_unlabelled(folder)
    assert str(error.value).startswith(f"--unlabelled {folder}: {message}; pass --unlabelled a folder of images")


def test_a_folder_holding_only_the_labelled_images_is_refused(tmp_path):
    paths = write_images(tmp_path / "data", 3)
    with pytest.raises(DatasetError, match="holds only the labelled images of --data/--val"):
        scan_unlabelled(tmp_path / "data", exclude=paths)


def test_the_split_records_the_unlabelled_images_relative_to_their_folder(tmp_path):
    pool = write_images(tmp_path / "a" / "pool", 3)
    run = RunDirectory(tmp_path / "a" / "run")
    run.path.mkdir()
    data = tmp_path / "data"
    labelled = [LabelledFile(data / "a" / "1.png", 0)]
    run.write_split(Split(classes=["a"], train=labelled, val=labelled, train_root=data, unlabelled=pool,
                          unlabelled_root=tmp_path / "a" / "pool"))  # fmt: skip
    assert run.read_json(run.SPLIT)["unlabelled"] == ["000.png", "002.png", "nested/001.png"]
    # Moved together with the run, the folder is found again at the same place relative to it.
    shutil.move(tmp_path / "a", tmp_path / "b")
    split = RunDirectory(tmp_path / "b" / "run").read_split()
    assert split.unlabelled == [tmp_path / "b" / "pool" / name for name in ("000.png", "002.png", "nested/001.png")]
    assert all(path.is_file() for path in split.unlabelled)
    # A run without unlabelled images writes split.json as it always did.
    other = RunDirectory(tmp_path / "other")
    other.path.mkdir()
    other.write_split(Split(classes=["a"], train=labelled, val=labelled, train_root=data))
    assert "unlabelled" not in other.read_json(other.SPLIT) and other.read_split().unlabelled == []


def test_labelled_images_found_in_the_unlabelled_folder_keep_their_labels_and_it_is_said(tmp_path, caplog):
    from mobilenets.data.folders import scan_folder
    from mobilenets.training.pipeline import scan_unlabelled_images

    pool = tmp_path / "pool"
    extra = write_images(pool, 4)
    (pool / "bag").symlink_to(EXAMPLES / "bag")  # the labelled files themselves, by another path
    labelled = scan_folder(EXAMPLES).samples
    with caplog.at_level("INFO", logger="mobilenets"):
        samples = scan_unlabelled_images(pool, labelled=labelled)
    assert [s.path for s in samples] == extra
    bags = sum(1 for s in labelled if s.path.parent.name == "bag")
    assert f"--unlabelled {pool}: {bags} of its files are labelled training or validation images" in caplog.text


# ---- the command ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A (random) teacher of the examples' ten classes, at 32 px."""
    from mobilenets import create_model, save_weights
    from mobilenets.data.folders import scan_folder
    from mobilenets.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=10, width=0.35).eval()
    run_dir = tmp_path_factory.mktemp("teacher")
    save_weights(model, run_dir / "model.safetensors", scan_folder(EXAMPLES).classes, Preprocessing(32, 32))
    return run_dir


def test_without_a_teacher_unlabelled_images_are_refused(tmp_path, capsys):
    pool = tmp_path / "pool"
    write_images(pool, 4)
    base = ["train", "--data", str(EXAMPLES), *TINY, "--unlabelled", str(pool), "--out", str(tmp_path / "run")]
    message = error_of(capsys, main(base))
    assert message.endswith(
        f"--unlabelled {pool}: images without labels learn from a teacher's predictions; add --teacher "
        "RUN_DIR|FILE|MODEL.onnx (a larger model fine-tuned on --data), or drop --unlabelled"
    )
    assert not (tmp_path / "run").exists()


def test_unlabelled_images_train_with_the_teacher_and_never_validate(tmp_path, teacher, capsys):
    pool = tmp_path / "pool"
    pool_paths = write_images(pool, 40)
    # A copy of a validation image: the leakage check sees unlabelled images as training images.
    scan = scan_folder(EXAMPLES)
    validation_image = split_samples(scan.samples, 0.2, 0)[1][0].path
    shutil.copy(validation_image, pool / "copy.png")
    out = tmp_path / "run"
    original = api.Run.finish
    api.Run.finish = lambda self: None  # a checkpoint kept, as if interrupted while finishing
    try:
        code = main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--teacher", str(teacher),
                     "--unlabeled", str(pool), "--out", str(out)])  # fmt: skip  (the US spelling works too)
    finally:
        api.Run.finish = original
    assert code == 0
    printed = capsys.readouterr().out
    assert f"unlabelled images: {pool}: 41 files" in printed and "on 400 images and 41 unlabelled" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["unlabelled"] == str(pool.resolve())
    metrics = RunDirectory(out).metrics()
    assert (metrics["train_images"], metrics["unlabelled_images"], metrics["val_images"]) == (400, 41, 100)
    split = RunDirectory(out).read_split()
    assert sorted(split.unlabelled) == sorted([*pool_paths, pool / "copy.png"]) and len(split.train) == 400
    assert not {f.path for f in split.val} & set(split.unlabelled)
    assert json.loads((out / "leakage.json").read_text())["exact"] == [[str(pool / "copy.png"), str(validation_image)]]
    # The resumed run reads the same unlabelled images back from split.json.
    options = TrainOptions(resume=out)
    _, images, _, relocated = read_resume(RunDirectory(out), options)
    assert [s.path for s in images.unlabelled] == split.unlabelled and {s.label for s in images.unlabelled} == {-1}
    assert relocated is None
    # A moved folder would change every epoch's batches: the resume refuses rather than drop the images.
    shutil.move(pool, tmp_path / "moved")
    message = error_of(capsys, main(["train", "--resume", str(out), "--epochs", "2"]))
    assert f"{out}: 41 of the 41 unlabelled images it trains on are missing (first: " in message
    assert f"put the --unlabelled folder back at {pool.resolve()}" in message
    assert "or pass --unlabelled DIR where the same files are now" in message
    # --unlabelled names where they are now: the same files, all of them, or the resume is refused.
    message = error_of(capsys, main(["train", "--resume", str(out), "--unlabelled", str(EXAMPLES)]))
    assert message.startswith(f"--unlabelled {EXAMPLES}: 41 of the run's 41 unlabelled images are not in it (first: ")
    _, images, changes, relocated = read_resume(RunDirectory(out), TrainOptions(resume=out, unlabelled=tmp_path / "moved"))
    assert changes == [f"--unlabelled {pool.resolve()} → {(tmp_path / 'moved').resolve()}"]
    assert sorted(s.path for s in images.unlabelled) == sorted(
        (tmp_path / "moved").resolve() / path.relative_to(pool.resolve()) for path in split.unlabelled
    )
    assert relocated.unlabelled_root == (tmp_path / "moved").resolve()


def test_mixup_trains_on_blends_of_labelled_and_unlabelled_images(tmp_path):
    from mobilenets import create_model
    from mobilenets.data.folders import DecodedImages
    from mobilenets.models.preprocessing import Preprocessing
    from mobilenets.training.checks import check_distillation_options
    from mobilenets.training.configuration import TrainConfig
    from mobilenets.training.distillation import Teacher, TeacherInput
    from mobilenets.training.loop import Trainer

    check_distillation_options(TrainOptions(data=EXAMPLES, teacher=str(tmp_path), unlabelled=tmp_path, mixup=0.4))
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, UNLABELLED, UNLABELLED, 0, UNLABELLED, 1, UNLABELLED])
    data = DecodedImages(images, labels, [None] * 8, [], [""] * 8, [0] * 8)
    config = TrainConfig(data="synthetic", width=0.25, resolution=16, batch_size=8, epochs=1, warmup_epochs=0,
                         augment="none", precision="fp32", ema=False, teacher="fixed", mixup=1.0)  # fmt: skip
    preprocessing = Preprocessing(16, 16)
    wants = TeacherInput(resolution=16, mean=tuple(preprocessing.mean), std=tuple(preprocessing.std))
    teacher = Teacher(lambda batch: torch.tensor([[2.0, -2.0]]).repeat(len(batch), 1), source="fixed",
                      engine="torch", wants=wants)  # fmt: skip
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=2, width=0.25)
    trainer = Trainer(config, model, data, data, ["a", "b"], tmp_path, preprocessing, log=lambda _: None,
                      show_progress=False, teacher=teacher)  # fmt: skip
    loss_sum, correct, count = trainer.train_step(next(iter(trainer.batches(0))), 0, 0)
    assert np.isfinite(loss_sum) and count == 8 and 0 <= correct <= 8
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_out_inside_the_unlabelled_folder_is_refused(tmp_path, teacher, capsys):
    pool = tmp_path / "pool"
    write_images(pool, 4)
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--teacher", str(teacher), "--unlabelled", str(pool),
                 "--out", str(pool / "run")])  # fmt: skip
    assert error_of(capsys, code).endswith(
        f"--out {pool / 'run'} is inside --unlabelled {pool}; the run's files would become training images. "
        "Choose an --out outside the data folder"
    )
    assert sorted(p.name for p in pool.iterdir()) == ["000.png", "002.png", "nested"]


def test_an_unlabelled_folder_inside_the_labelled_one_is_refused(tmp_path, teacher, capsys):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES, data)
    write_images(data / "unlabelled", 4)
    code = main(["train", "--data", str(data), *TINY, "--teacher", str(teacher), "--unlabelled",
                 str(data / "unlabelled"), "--out", str(tmp_path / "run")])  # fmt: skip
    assert error_of(capsys, code).endswith(
        f"--unlabelled {data / 'unlabelled'} is inside --data {data}, where it would be read as a class of its own; "
        "move it outside the labelled folder"
    )


def test_a_folder_without_a_single_readable_image_is_one_line_and_leaves_nothing(tmp_path, teacher, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "notes.txt").write_text("not an image")
    (pool / "broken.png").write_bytes(b"\x89PNG\r\n")
    out = tmp_path / "run"
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--teacher", str(teacher), "--unlabelled", str(pool),
                 "--out", str(out)])  # fmt: skip
    assert error_of(capsys, code).endswith(
        f"--unlabelled {pool.resolve()}: none of its 2 files is a readable image (see the skipped files above); "
        "pass a folder of images"
    )
    assert not out.exists()


def test_a_recipe_file_cannot_set_folders(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 3\nunlabelled: /somewhere\ncache_dir: ''\n")
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--recipe", str(recipe), "--out", str(tmp_path / "run")])
    assert error_of(capsys, code).endswith(
        f"--recipe {recipe}: cache_dir, unlabelled name files or folders, which a recipe cannot set; pass "
        "--cache-dir, --unlabelled on the command line"
    )


def test_recipe_auto_says_its_epochs_are_for_the_labelled_images(caplog):
    from mobilenets.training.configuration import make_config

    samples = scan_folder(EXAMPLES).samples
    options = TrainOptions(data=EXAMPLES, model="mobilenet_v3_small", weights="none", recipe="auto", resolution=32)
    with caplog.at_level("INFO", logger="mobilenets"):
        config = make_config(options, 400, samples, num_unlabelled=1_000)
    assert (
        f"--recipe auto chose {config.epochs} epochs for the 400 labelled images; with the 1,000 unlabelled ones "
        "each epoch is 3.5× longer: pass --epochs to size the run yourself"
    ) in caplog.text
