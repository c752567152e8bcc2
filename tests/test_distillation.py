"""Knowledge distillation: the loss, class matching, renormalization, teachers from a run and from ONNX, and
mixup ("function matching": the teacher labels the blended batch the student sees)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilenets.core.errors import MobilenetsError
from mobilenets.training.distillation import (
    DistillationSettings,
    Teacher,
    TeacherInput,
    class_order,
    distillation_loss,
    load_teacher,
)
from mobilenets.training.mixup import check_mixup, mixup


def test_loss_is_hintons_formula():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(8, 5, generator=generator)
    teacher = torch.randn(8, 5, generator=generator) * 3
    labels = torch.randint(0, 5, (8,), generator=generator)
    a, t = 0.7, 4.0
    p_teacher = F.softmax(teacher / t, dim=1)
    log_p_student = F.log_softmax(student / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(1).mean()
    expected = (1 - a) * F.cross_entropy(student, labels) + a * t * t * kl
    actual = distillation_loss(student, teacher, labels, weight=a, temperature=t)
    assert torch.allclose(actual, expected, atol=1e-6)
    assert torch.allclose(
        distillation_loss(student, teacher, labels, weight=0.0, temperature=t), F.cross_entropy(student, labels)
    )


def test_no_gradient_flows_into_the_teacher():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0, 1, 2, 0]), weight=0.5, temperature=2.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_student_matching_the_teacher_has_no_soft_loss():
    logits = torch.randn(6, 4)
    loss = distillation_loss(logits, logits, torch.zeros(6, dtype=torch.long), weight=1.0, temperature=3.0)
    assert abs(float(loss)) < 1e-5


def test_mixup_blends_each_image_and_its_label_with_its_mirror_partner():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 4, 4, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed = mixup(images, labels, alpha=1.0, num_classes=3, generator=torch.Generator().manual_seed(0))
    lam = float(mixed.targets[0, 0])  # image 0 (class 0) is blended with image 5 (class 2)
    assert 0.05 < lam < 0.95, "choose a seed whose λ blends both images visibly"
    assert torch.allclose(mixed.images, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    assert torch.allclose(mixed.targets[0], torch.tensor([lam, 0.0, 1 - lam]))
    assert torch.allclose(mixed.targets.sum(1), torch.ones(6))
    assert mixed.labels.tolist() == (labels if lam >= 0.5 else labels.flip(0)).tolist()
    again = mixup(images, labels, alpha=1.0, num_classes=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.images, mixed.images)  # drawn from the step's generator: resumable


def test_hard_term_of_a_mixed_batch_is_the_blend_of_both_labels_losses():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    a, b, lam = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 0, 1, 1]), 0.3
    targets = lam * F.one_hot(a, 3).float() + (1 - lam) * F.one_hot(b, 3).float()
    hard = lam * F.cross_entropy(student, a) + (1 - lam) * F.cross_entropy(student, b)
    soft = distillation_loss(student, teacher, a, weight=1.0, temperature=2.0)
    actual = distillation_loss(student, teacher, targets, weight=0.4, temperature=2.0)
    assert torch.allclose(actual, 0.6 * hard + 0.4 * soft, atol=1e-6)


def test_mixup_refuses_negative_alphas_and_augmix():
    check_mixup(0.0, augment="augmix")  # off: nothing to refuse
    check_mixup(1.0, augment="heavy")
    with pytest.raises(MobilenetsError, match="cannot be combined"):
        check_mixup(0.4, augment="augmix")
    with pytest.raises(MobilenetsError, match="--mixup"):
        check_mixup(-1.0, augment="light")


def test_the_teacher_labels_the_very_mixed_batch_the_student_sees(tmp_path):
    from mobilenets import create_model
    from mobilenets.data.folders import DecodedImages
    from mobilenets.models.preprocessing import Preprocessing
    from mobilenets.training.configuration import TrainConfig
    from mobilenets.training.loop import Trainer

    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = DecodedImages(images, torch.arange(8) % 2, [None] * 8, [], [""] * 8, [0] * 8)
    config = TrainConfig(data="synthetic", width=0.25, resolution=16, batch_size=8, epochs=1, warmup_epochs=0,
                         augment="none", precision="fp32", ema=False, teacher="spy", mixup=1.0)  # fmt: skip
    preprocessing = Preprocessing(16, 16)
    seen = {}

    def spy(batch):
        seen["teacher"] = batch.clone()
        return torch.zeros(len(batch), 2)

    wants = TeacherInput(resolution=16, mean=tuple(preprocessing.mean), std=tuple(preprocessing.std))
    teacher = Teacher(spy, source="spy", engine="torch", wants=wants)
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=2, width=0.25)
    trainer = Trainer(config, model, data, data, ["a", "b"], tmp_path, preprocessing, log=lambda _: None,
                      show_progress=False, teacher=teacher)  # fmt: skip
    trainer.model.register_forward_pre_hook(lambda _module, args: seen.setdefault("student", args[0].clone()))
    indices = next(iter(trainer.batches(0)))
    trainer.train_step(indices, 0, 0)
    clean = (images[indices].float() / 255 - torch.tensor(preprocessing.mean).view(1, 3, 1, 1)) / torch.tensor(
        preprocessing.std
    ).view(1, 3, 1, 1)
    partner = clean.flip(0)
    lam = float(((seen["teacher"] - partner) * (clean - partner)).sum() / ((clean - partner) ** 2).sum())
    assert 0.05 < lam < 0.95, "both images must be visible in the blend"
    assert torch.allclose(seen["teacher"], lam * clean + (1 - lam) * partner, atol=1e-4)
    assert torch.allclose(seen["student"], seen["teacher"], atol=1e-5)


def test_settings_are_checked():
    with pytest.raises(MobilenetsError, match="--distill-weight"):
        DistillationSettings(weight=1.5)
    with pytest.raises(MobilenetsError, match="--temperature"):
        DistillationSettings(temperature=0)


def test_class_order_matches_by_name():
    assert class_order(["a", "b", "c"], ["a", "b", "c"], "t") is None
    assert class_order(["c", "a", "b"], ["a", "b", "c"], "t") == [1, 2, 0]
    with pytest.raises(MobilenetsError, match="no class d"):
        class_order(["a", "b", "c"], ["a", "d"], "t")
    with pytest.raises(MobilenetsError, match="ImageNet's 1,000 classes"):
        class_order("imagenet", ["a", "b"], "mobilenet_v2.tv_in1k")


def test_teacher_sees_its_own_normalization_resolution_and_class_order():
    seen = {}

    def run(images):
        seen["images"] = images
        return torch.tensor([[1.0, 2.0, 3.0]]).expand(len(images), 3)

    wants = TeacherInput(resolution=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    teacher = Teacher(run, source="x", engine="torch", wants=wants, class_order=[2, 0, 1])
    pixels = torch.full((2, 3, 8, 8), 0.75)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    student_batch = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    logits = teacher(student_batch, mean, std)
    assert seen["images"].shape == (2, 3, 16, 16)
    assert torch.allclose(seen["images"], torch.full((2, 3, 16, 16), 0.5), atol=1e-5)  # (0.75 - 0.5) / 0.5
    assert logits[0].tolist() == [3.0, 1.0, 2.0]
    assert not logits.is_inference()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from mobilenets import create_model, save_weights
    from mobilenets.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=3, width=0.35).eval()
    run_dir = tmp_path_factory.mktemp("teacher")
    save_weights(model, run_dir / "model.safetensors", ["c", "a", "b"], Preprocessing(32, 32))
    return run_dir


def test_teacher_from_a_run_directory_in_pytorch(teacher_run):
    teacher = load_teacher(str(teacher_run), student_classes=["a", "b", "c"], engine="torch", log=lambda _: None)
    assert teacher.engine == "torch" and teacher.wants.resolution == 32
    logits = teacher(torch.randn(4, 3, 32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()


@pytest.mark.slow  # the ONNX export takes ~15 s on 2 cores
def test_onnx_and_pytorch_teachers_agree(teacher_run, tmp_path):
    from mobilenets import load_model
    from mobilenets.deployment.onnx import export_onnx

    model = load_model(teacher_run / "model.safetensors")
    onnx_path = export_onnx(model, tmp_path / "teacher.onnx")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    from_torch = load_teacher(str(teacher_run), student_classes=["a", "b", "c"], engine="torch", log=lambda _: None)
    from_onnx = load_teacher(str(onnx_path), student_classes=["a", "b", "c"], log=lambda _: None)
    assert from_onnx.engine == "onnxruntime"
    assert torch.allclose(from_torch(batch, mean, std), from_onnx(batch, mean, std), atol=1e-3)
    exported = load_teacher(
        str(teacher_run),
        student_classes=["a", "b", "c"],
        engine="onnxruntime",
        log=lambda _: None,
    )
    assert exported.engine == "onnxruntime"
    assert torch.allclose(from_torch(batch, mean, std), exported(batch, mean, std), atol=1e-3)


def test_teacher_is_measured_on_the_students_validation_images():
    from mobilenets.training.distillation import Teacher, TeacherInput, measure_teacher

    # A teacher that answers class 1 for bright images, in its own normalization (mean 0.5, std 0.5):
    # it sees the pixels only if measure_teacher normalizes the uint8 images as the student does.
    wants = TeacherInput(resolution=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def bright_is_class_1(x: torch.Tensor) -> torch.Tensor:
        bright = (x.mean(dim=(1, 2, 3)) > 0).float()  # pixel > 0.5 after the teacher's normalization
        return torch.stack([1 - bright, bright], dim=1)

    teacher = Teacher(bright_is_class_1, source="t", engine="torch", wants=wants)
    images = torch.tensor([20, 230, 230, 20, 20], dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 8, 8)
    labels = torch.tensor([0, 1, 0, 1, 0])  # right on images 0, 1 and 4
    quality = measure_teacher(
        teacher,
        images.contiguous(),
        labels,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        val_paths=["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"],
        teacher_train_paths=["b.jpg", "x.jpg"],
        batch_size=2,
    )
    assert quality.val_accuracy == 0.6 and quality.val_images == 5 and quality.saw_validation == 1
    assert quality.unseen_accuracy == 0.5  # images 0, 2, 3, 4: right on 0 and 4


def test_published_teacher_explains_how_to_fine_tune_it_first():
    with pytest.raises(MobilenetsError, match="fine-tune it on this folder first"):
        load_teacher("mobilenet_v2.tv_in1k", student_classes=["a", "b"])


def test_missing_teacher_is_one_clear_line(tmp_path):
    with pytest.raises(MobilenetsError, match="no such run directory"):
        load_teacher(str(tmp_path / "nothing"), student_classes=["a", "b"])


@pytest.mark.slow  # two short runs and one ONNX export: ~40 s on 2 cores
@pytest.mark.parametrize("augment", ["light", "augmix"])
def test_train_with_a_teacher_end_to_end(tmp_path, augment):
    import json

    import numpy as np
    from PIL import Image

    from mobilenets.cli.main import main

    rng = np.random.default_rng(0)
    for index in range(120):
        label = index % 3
        pixels = np.full((32, 32, 3), 60 * label + 40, dtype=np.uint8) + rng.integers(
            0, 30, (32, 32, 3), dtype=np.uint8
        )
        folder = tmp_path / "data" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    tiny = ["--data", str(tmp_path / "data"), "--quiet", "--epochs", "2", "--resolution", "32", "--weights", "none"]
    teacher = tmp_path / "teacher"
    assert main(["train", *tiny, "--model", "mobilenet_v3_small", "--width", "0.5", "--out", str(teacher)]) == 0
    student = tmp_path / "student"
    arguments = ["--model", "mobilenet_v3_small", "--width", "0.25", "--teacher", str(teacher), "--augment", augment]
    assert main(["train", *tiny, *arguments, "--out", str(student), "--distill-weight", "0.7"]) == 0
    config = json.loads((student / "config.json").read_text())
    assert config["teacher"] == str(teacher) and config["distill_weight"] == 0.7
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] >= 0
    # Same folder, seed and split as the teacher's run: it never saw these validation images.
    assert metrics["teacher"]["source"] == str(teacher) and metrics["teacher"]["saw_validation"] == 0
    assert metrics["teacher"]["val_images"] == metrics["val_images"] and 0 <= metrics["teacher"]["val_accuracy"] <= 1


# --------------------------------------------------------------------------------------------------
# Bad teachers: each is one clear line naming --teacher's value, what is wrong and what it needs,
# found when the teacher is loaded (before training), never a traceback or an "internal error".
# --------------------------------------------------------------------------------------------------

NEEDS = "--teacher needs a run directory or model file of a classifier fine-tuned on the same classes"


def _onnx_teacher(path, nodes, output_shape, labels=("a", "b", "c"), batch="N"):
    """A tiny hand-made ONNX graph image [batch, 3, 32, 32] → output, with labels stored as `mobilenets export` does."""
    import json

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "teacher",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, output_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if labels is not None:
        helper.set_model_props(model, {"mobilenets.labels": json.dumps(list(labels))})
    onnx.save(model, str(path))
    return path


def _classifier(path, **kwargs):
    """Global average pool + flatten: a [N, 3] output for three labels (a valid, if useless, classifier)."""
    from onnx import helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["out"]),
    ]
    return _onnx_teacher(path, nodes, ["N", 3], **kwargs)


def _flatten(path):
    from onnx import helper

    return _onnx_teacher(path, [helper.make_node("Flatten", ["image"], ["out"], axis=1)], ["N", 3072])


def _load(path, classes=("a", "b", "c")):
    return load_teacher(str(path), student_classes=list(classes), log=lambda _: None)


def test_corrupt_onnx_teacher_is_one_clear_line(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(MobilenetsError) as error:
        _load(path)
    message = str(error.value)  # the parser's own first line, whose wording varies with protobuf's backend
    assert message.startswith(f"--teacher {path}: not a readable ONNX model (Error parsing message")
    assert message.endswith(f"); {NEEDS}") and "\n" not in message


def test_onnx_teacher_that_is_not_a_classifier_is_refused_before_training(tmp_path):
    from onnx import helper

    identity = _onnx_teacher(tmp_path / "identity.onnx", [helper.make_node("Identity", ["image"], ["out"])],
                             ["N", 3, 32, 32])  # fmt: skip
    with pytest.raises(MobilenetsError) as error:
        _load(identity)
    assert str(error.value) == (
        f"--teacher {identity}: not a classifier of its labels: its output has 3072 values per image "
        f"(shape 2×3×32×32), its labels name 3 classes; {NEEDS}"
    )
    flat = _flatten(tmp_path / "flat.onnx")
    with pytest.raises(MobilenetsError) as error:
        _load(flat)
    assert str(error.value) == (
        f"--teacher {flat}: not a classifier of its labels: its output has 3072 values per image "
        f"(shape 2×3072), its labels name 3 classes; {NEEDS}"
    )


def test_onnx_teacher_with_a_fixed_batch_is_refused(tmp_path):
    path = _classifier(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(MobilenetsError) as error:
        _load(path)
    assert str(error.value) == (
        f"--teacher {path}: its input takes a fixed batch of 1 image(s), but training feeds it batches of any "
        "size; export it with a dynamic batch (`mobilenets export`)"
    )


def test_onnx_teacher_is_recognised_by_content_without_its_suffix(tmp_path):
    good = _classifier(tmp_path / "model")
    teacher = _load(good, classes=["b", "c", "a"])
    assert teacher.engine == "onnxruntime" and teacher.wants.resolution == 32
    assert teacher(torch.zeros(4, 3, 32, 32), (0.5,) * 3, (0.5,) * 3).shape == (4, 3)
    flat = _flatten(tmp_path / "flat.bin")
    with pytest.raises(MobilenetsError, match=r"its output has 3072 values per image \(shape 2×3072\)"):
        _load(flat)


def test_a_file_that_is_no_model_says_what_teacher_accepts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    config = run / "config.json"
    config.write_text('{"model": "mobilenet_v3_small", "epochs": 1}')
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for path, fix in ((config, f"pass its run directory: --teacher {run}"), (notes, NEEDS)):
        with pytest.raises(MobilenetsError) as error:
            _load(path)
        assert str(error.value) == (
            f"--teacher {path}: not a run directory, a weights file (.safetensors, .pth) or an ONNX model; {fix}"
        )


def test_a_pickled_teacher_checkpoint_names_teacher(tmp_path):
    import argparse

    path = tmp_path / "teacher.pth"
    torch.save(argparse.Namespace(weights=1), path)
    with pytest.raises(MobilenetsError) as error:
        _load(path)
    assert str(error.value).startswith(f"--teacher {path}: cannot load: it contains pickled code or objects")


def test_cli_reports_a_bad_teacher_as_one_line_and_exit_2(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from mobilenets.cli.main import main

    for index in range(12):
        folder = tmp_path / "data" / "abc"[index % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 20 * index, dtype=np.uint8)).save(folder / f"{index}.png")
    flat = _flatten(tmp_path / "flat.onnx")
    arguments = ["train", "--data", str(tmp_path / "data"), "--model", "mobilenet_v3_small", "--width", "0.25",
                 "--resolution", "32", "--epochs", "1", "--weights", "none", "--teacher", str(flat),
                 "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(arguments) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"mobilenets train: error: --teacher {flat}: not a classifier of its labels: its output has 3072 values "
        f"per image (shape 2×3072), its labels name 3 classes; {NEEDS}"
    )
    assert not any("Traceback" in line or "internal error" in line for line in err)


# --------------------------------------------------------------------------------------------------
# --teacher-engine: what runs the teacher, chosen by the user
# --------------------------------------------------------------------------------------------------


def _abc_folder(root):
    import numpy as np
    from PIL import Image

    for index in range(12):
        folder = root / "abc"[index % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 20 * index, dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def test_teacher_engine_torch_is_what_the_run_uses_and_records(teacher_run, tmp_path, capsys):
    import json

    from mobilenets.cli.main import main

    data, out = _abc_folder(tmp_path / "data"), tmp_path / "run"
    arguments = ["train", "--data", str(data), "--model", "mobilenet_v3_small", "--width", "0.25", "--resolution",
                 "32", "--epochs", "1", "--weights", "none", "--quiet", "--teacher", str(teacher_run),
                 "--teacher-engine", "torch", "--out", str(out)]  # fmt: skip
    assert main(arguments) == 0
    assert f"teacher {teacher_run}: mobilenet_v3_small (width 0.35) at 32px, PyTorch" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["teacher_engine"] == "torch"
    assert json.loads((out / "metrics.json").read_text())["teacher"]["engine"] == "torch"


def test_an_onnx_teacher_cannot_run_in_pytorch(tmp_path):
    path = _classifier(tmp_path / "teacher.onnx")
    with pytest.raises(MobilenetsError) as error:
        load_teacher(str(path), student_classes=["a", "b", "c"], engine="torch", log=lambda _: None)
    assert str(error.value) == (
        f"--teacher {path}: an ONNX file runs only in ONNX Runtime, not with --teacher-engine torch; pass the "
        "teacher's run directory or weights file, or --teacher-engine auto"
    )
    assert load_teacher(str(path), student_classes=["a", "b", "c"], engine="onnxruntime", log=print).engine == (
        "onnxruntime"
    )


def test_teacher_engine_without_a_teacher_is_refused(tmp_path, capsys):
    from cli_helpers import TINY, error_of

    from mobilenets.cli.main import main

    data = _abc_folder(tmp_path / "data")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--teacher-engine", "torch", *TINY])
    assert error_of(capsys, code) == (
        "--teacher-engine torch chooses what runs the teacher, and no --teacher is given: add "
        "--teacher RUN_DIR|FILE|MODEL.onnx, or drop --teacher-engine"
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as stopped:  # argparse's choices
        main(["train", "--data", str(data), "--teacher-engine", "tensorrt", *TINY])
    assert stopped.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err
