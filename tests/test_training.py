"""The training loop and `mobilenets train`, on tiny models and real Fashion-MNIST images from examples/."""

from __future__ import annotations

import copy
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import small_copy
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mobilenets.cli.main import main
from mobilenets.core.run_directory import RunDirectory
from mobilenets.models.factory import create_model
from mobilenets.training.configuration import TrainConfig
from mobilenets.training.loop import is_better
from mobilenets.training.optimization import (
    ExponentialMovingAverage,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    recompute_batchnorm_statistics,
    replay_schedule,
    schedule_plan,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist-small"
TINY = ["--model", "mobilenet_v3_small", "--width", "0.25", "--resolution", "32", "--quiet"]


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------


def test_the_kept_epoch_breaks_accuracy_ties_by_validation_loss():
    # 500 Fashion-MNIST images: epochs 5 and 18-27 all scored 95% on 100 validation images; the first
    # of them was half-trained (loss 0.246 against 0.181 at epoch 19).
    assert is_better(0.95, 0.181, best_accuracy=0.95, best_loss=0.246)
    assert not is_better(0.95, 0.246, best_accuracy=0.95, best_loss=0.181)
    assert not is_better(0.94, 0.100, best_accuracy=0.95, best_loss=0.246)  # accuracy first
    assert is_better(0.96, 0.900, best_accuracy=0.95, best_loss=0.246)
    assert is_better(0.0, 2.3, best_accuracy=-1.0, best_loss=float("inf"))  # the first epoch always counts


def test_no_weight_decay_on_depthwise_batchnorm_and_biases():
    model = create_model("mobilenet_v3_small", 10, width=0.5)
    decay, no_decay = parameter_groups(model, 0.05)
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1:
            assert id(module.weight) not in decayed, module_name
        if isinstance(module, nn.BatchNorm2d):
            assert id(module.weight) not in decayed and id(module.bias) not in decayed
    assert id(model.blocks[1].expand.conv.weight) in decayed  # pointwise convolutions decay
    assert id(model.classifier.weight) in decayed and id(model.classifier.bias) not in decayed
    assert all(not names[id(p)].endswith("bias") for p in decay["params"])


@pytest.mark.parametrize(
    ("optimizer", "kind", "weight_decay"),
    [("adamw", torch.optim.AdamW, 0.02), ("rmsprop", torch.optim.RMSprop, 1e-5), ("sgd", torch.optim.SGD, 4e-5)],
)
def test_each_optimizer_has_its_default_weight_decay_on_the_decayed_group_only(optimizer, kind, weight_decay):
    model = create_model("mobilenet_v3_small", 10, width=0.25)
    built = make_optimizer(model, TrainConfig(data="unused", optimizer=optimizer, lr=0.01))
    assert isinstance(built, kind)
    assert [g["weight_decay"] for g in built.param_groups] == [weight_decay, 0.0]
    if optimizer == "sgd":  # timm's and torchvision's: Nesterov momentum 0.9
        assert built.defaults["momentum"] == 0.9 and built.defaults["nesterov"]
    given = make_optimizer(model, TrainConfig(data="unused", optimizer=optimizer, lr=0.01, weight_decay=0.5))
    assert [g["weight_decay"] for g in given.param_groups] == [0.5, 0.0]


def test_warmup_then_cosine_schedule():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    config = TrainConfig(data="x", epochs=10, lr=1e-3, warmup_epochs=1.0, min_lr_ratio=0.01)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=10)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-5)  # 1% of the peak
    assert rates[10] == pytest.approx(1e-3)  # peak after one epoch of warm-up
    assert rates[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-3)  # cosine midpoint
    assert rates[-1] < 2e-5
    assert all(a <= b for a, b in itertools.pairwise(rates[:11]))
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


@pytest.mark.parametrize("warmup_epochs", [1.0, 0.0])
def test_a_resumed_schedule_is_the_uninterrupted_one_of_the_new_length(warmup_epochs):
    def rates_after(config, steps, optimizer, scheduler, more):
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return [optimizer.param_groups[0]["lr"], *(step_and_read(optimizer, scheduler) for _ in range(more))]

    def step_and_read(optimizer, scheduler):
        optimizer.step()
        scheduler.step()
        return optimizer.param_groups[0]["lr"]

    def fresh(config):
        optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
        return optimizer, make_scheduler(optimizer, config, steps_per_epoch=10)

    short, long = (TrainConfig(data="x", epochs=e, lr=1e-3, warmup_epochs=warmup_epochs) for e in (2, 4))
    # A 2-epoch run stopped after 15 steps, its optimizer state carried into a resume with --epochs 4.
    optimizer, scheduler = fresh(short)
    rates_after(short, 15, optimizer, scheduler, 0)
    resumed_optimizer, _ = fresh(long)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    assert schedule_plan(scheduler.state_dict()) != schedule_plan(fresh(long)[1].state_dict())
    resumed = replay_schedule(resumed_optimizer, long, 10, steps=15)
    resumed_rates = [resumed_optimizer.param_groups[0]["lr"], *(step_and_read(resumed_optimizer, resumed) for _ in range(25))]
    # Exactly the 4-epoch run's rates from step 15 on: stretched, not restarted.
    assert resumed_rates == rates_after(long, 15, *fresh(long), 25)
    assert all(a >= b for a, b in itertools.pairwise(resumed_rates))
    assert schedule_plan(fresh(short)[1].state_dict()) == schedule_plan(scheduler.state_dict())


def test_recomputed_batchnorm_statistics_are_the_exact_batch_averages():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    recompute_batchnorm_statistics(model, images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), batch_size=64)
    with torch.no_grad():
        features = model[0](images.float() / 255)
    assert torch.allclose(model[1].running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, features.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert model[1].momentum == 0.1  # restored


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def messy_folder(root: Path) -> dict[str, str]:
    """Real images plus every kind of file a user's folder really holds; returns bad file → expected reason."""
    small_copy(root, per_class=12, classes=3)
    classes = sorted(p.name for p in root.iterdir())
    photo = np.asarray(Image.open(next((root / classes[0]).iterdir())).convert("RGB"))
    Image.fromarray(photo).convert("CMYK").save(root / classes[0] / "cmyk.jpg")
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(root / classes[0] / "sixteen_bit.png")
    Image.fromarray(photo).convert("P").save(root / classes[1] / "palette.gif")
    Image.fromarray(photo).convert("RGBA").save(root / classes[1] / "alpha.webp")
    Image.fromarray(photo).save(root / classes[2] / "tiny.bmp")
    (root / "empty_class").mkdir()
    good = root / classes[0] / "cmyk.jpg"
    bad = {
        "corrupt.jpg": (root / classes[1] / "corrupt.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg body" * 3),
        "truncated.png": (root / classes[2] / "truncated.png", good.read_bytes()[:40]),
        "empty.png": (root / classes[2] / "empty.png", b""),
        "notes.txt": (root / classes[0] / "notes.txt", b"label me later"),
    }
    for path, content in bad.values():
        path.write_bytes(content)
    (root / classes[0] / ".DS_Store").write_bytes(b"\x00\x01")
    # 90 megapixels (a few kB as a 1-bit PNG): over Pillow's bomb limit, refused without decoding.
    Image.new("1", (9500, 9500)).save(root / classes[1] / "huge.png")
    return {**{name: str(path) for name, (path, _) in bad.items()}, "huge.png": str(root / classes[1] / "huge.png")}


def test_messy_folder_trains_and_names_every_skipped_file(tmp_path, capsys):
    bad = messy_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    arguments = ["--data", str(tmp_path / "data"), "--out", str(run_dir), "--epochs", "2", "--batch-size", "8"]
    code = main(["train", *arguments, "--augment", "augmix", *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for path in bad.values():
        assert f"skipped {path}" in captured.err
    assert "empty file (0 bytes)" in captured.err
    assert "huge.png: refused as a possible decompression bomb" in captured.err
    assert ".DS_Store: hidden file" in captured.err
    assert "empty_class: empty class folder" in captured.err
    assert "the recommended minimum is 200" in captured.err
    for name in (
        "model.safetensors",
        "model.json",
        "config.json",
        "split.json",
        "metrics.json",
        "epochs.csv",
        "report.html",
        "curves.png",
        "confusion.png",
        "evaluation.json",
        "last.safetensors",
    ):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "checkpoint.pt").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["final_val_accuracy"] <= metrics["best_val_accuracy"] <= 1
    assert metrics["train_images_per_second"] > 0 and metrics["epochs_completed"] == 2
    # The saved best model, reloaded, scores exactly what training reported for it.
    assert json.loads((run_dir / "evaluation.json").read_text())["accuracy"] == metrics["best_val_accuracy"]
    split = json.loads((run_dir / "split.json").read_text())
    assert split["classes"] == sorted(p.name for p in EXAMPLES.iterdir())[:3]
    # Stored relative to the data folder (a run can move), read back as absolute paths.
    assert not any(Path(p).is_absolute() for p, _ in split["train"] + split["val"])
    resolved = RunDirectory(run_dir).read_split()
    listed = {str(f.path) for f in resolved.train + resolved.val}
    assert all(Path(p).is_absolute() for p in listed)
    # The odd-but-valid formats are trained on; the broken ones are in the split but skipped at decode.
    assert any(p.endswith("cmyk.jpg") for p in listed) and any(p.endswith("sixteen_bit.png") for p in listed)
    metadata = json.loads((run_dir / "model.json").read_text())
    assert metadata["classes"] == split["classes"]
    assert metadata["preprocessing"]["input_size"] == 32
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "corrupt.jpg" in html
    # evaluate and predict work on the run directory
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "data"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 36 + 5 and len(result["per_class"]) == 3
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "data"), "--json", "--bn-adapt"]) == 0
    adapted = json.loads(capsys.readouterr().out)
    assert adapted["bn_adapt"] is True and adapted["count"] == 41
    assert (
        main(["predict", bad["notes.txt"].replace("notes.txt", "cmyk.jpg"), "--weights", str(run_dir), "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["label"] in split["classes"]


def test_recipe_auto_and_range_warnings(tmp_path, capsys):
    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--recipe",
            "auto",
            "--epochs",
            "1",
            "--lr",
            "0.1",
            *TINY,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "recipe 'tiny' for 10 training images" in captured.out
    assert "kept from the command line: epochs, lr" in captured.out
    assert "--lr 0.1 is outside the recommended 0.0005–0.005" in captured.err
    assert "--epochs 1 is outside the recommended 10–100" in captured.err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["batch_size"], config["augment"], config["epochs"]) == (10, "heavy", 1)  # 16 capped at 10 images


def test_fine_tuning_from_real_imagenet_weights_infers_the_model(tmp_path, capsys, real_v2_weights):
    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(run_dir),
            "--weights",
            "mobilenet_v2.tv_in1k",
            "--resolution",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "5",
            "--head-epochs",
            "1",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "fine-tuning from mobilenet_v2.tv_in1k: new 2-class head" in captured.out
    metadata = json.loads((run_dir / "model.json").read_text())
    assert metadata["architecture"] == "mobilenet_v2" and metadata["num_classes"] == 2
    assert metadata["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    # --head-epochs trained the new head alone: the backbone is exactly ImageNet's.
    tuned = load_file(run_dir / "last.safetensors")
    pretrained = create_model("mobilenet_v2", weights="mobilenet_v2.tv_in1k").state_dict()
    assert torch.equal(tuned["blocks.3.depthwise.conv.weight"], pretrained["blocks.3.depthwise.conv.weight"])
    assert not torch.equal(tuned["classifier.bias"], torch.zeros(2))


def test_freeze_keeps_the_first_blocks_and_trains_the_rest(tmp_path, capsys, real_v2_weights):
    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    run_dir = tmp_path / "run"
    arguments = ["--data", str(data), "--out", str(run_dir), "--weights", "mobilenet_v2.tv_in1k", "--resolution", "32"]
    code = main(["train", *arguments, "--epochs", "1", "--batch-size", "5", "--freeze", "3", "--no-ema", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((run_dir / "config.json").read_text())["freeze"] == 3
    tuned = load_file(run_dir / "last.safetensors")
    pretrained = create_model("mobilenet_v2", weights="mobilenet_v2.tv_in1k").state_dict()
    # The stem and blocks 0-2 keep ImageNet's weights; block 3 on learns. Batch statistics still adapt everywhere.
    for name in ("stem.conv.weight", "blocks.2.depthwise.conv.weight", "blocks.2.depthwise.bn.weight"):
        assert torch.equal(tuned[name], pretrained[name]), name
    assert not torch.equal(tuned["blocks.3.depthwise.conv.weight"], pretrained["blocks.3.depthwise.conv.weight"])
    assert not torch.equal(tuned["stem.bn.running_mean"], pretrained["stem.bn.running_mean"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--weights", "none", "--freeze", "2"],
            "--freeze 2 keeps pretrained layers fixed, but this run starts from scratch",
        ),
        (
            ["--weights", "mobilenet_v2.tv_in1k", "--freeze", "18"],
            "mobilenet_v2 has 17 blocks after its stem; pass at most 17",
        ),
        (["--freeze", "-1"], "--freeze -1: give a whole number ≥ 0"),
        (["--random-erasing", "1.5"], "--random-erasing is a probability in [0, 1], got 1.5"),
        (["--crop-scale", "0"], "--crop-scale is the smallest share of an image's area a crop keeps, in (0, 1], got 0"),
        (["--crop-scale", "1.2"], "in (0, 1], got 1.2"),
        (
            ["--augment", "none", "--crop-scale", "0.8"],
            "--crop-scale 0.8 sets the random crop of --augment light, medium, heavy or augmix, but this run's "
            "augmentation is none: pick one of those levels, or drop --crop-scale",
        ),
    ],
)
def test_freeze_random_erasing_and_crop_scale_refuse_what_cannot_work(tmp_path, capsys, real_v2_weights, arguments, message):
    data = small_copy(tmp_path / "data", per_class=2, classes=2)
    assert (
        main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "mobilenet_v2", *arguments]) == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_early_stopping(tmp_path, capsys):
    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    run_dir = tmp_path / "run"
    # A learning rate too small to change any prediction: no epoch beats the first.
    arguments = ["--data", str(data), "--out", str(run_dir), "--epochs", "5", "--lr", "1e-12", "--early-stopping", "1"]
    assert main(["train", *arguments, "--batch-size", "5", "--no-ema", *TINY]) == 0
    assert "early stopping: no val improvement for 1 epoch (best " in capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and metrics["best_epoch"] == 1


def test_resuming_an_early_stopped_run_finishes_it_without_another_epoch(tmp_path, capsys, monkeypatch):
    import mobilenets.training.pipeline as pipeline

    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    run_dir = tmp_path / "run"
    arguments = ["--data", str(data), "--out", str(run_dir), "--epochs", "5", "--lr", "1e-12", "--early-stopping", "1"]
    finish_run = pipeline.finish_run

    def ctrl_c_while_finishing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "finish_run", ctrl_c_while_finishing)
    assert main(["train", *arguments, "--batch-size", "5", "--no-ema", *TINY]) != 0
    monkeypatch.setattr(pipeline, "finish_run", finish_run)
    weights = (run_dir / "model.safetensors").read_bytes()
    # Usually 2 epochs; a third when epoch 2's loss came out lower by rounding (the tie-break of is_better).
    epochs = (run_dir / "epochs.csv").read_text()
    assert 2 <= len(epochs.strip().splitlines()) - 1 < 5
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["epochs_completed"] == len(epochs.strip().splitlines()) - 1
    assert (run_dir / "epochs.csv").read_text() == epochs  # the same epochs, none added
    assert (run_dir / "model.safetensors").read_bytes() == weights


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing")]) == 2
    assert "missing: does not exist" in capsys.readouterr().err  # issue 17: not "not a folder"
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    assert main(["train", "--data", str(tmp_path / "flat")]) == 2
    err = capsys.readouterr().err
    assert "no class subfolders with files" in err and err.count("\n") <= 2
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# SIGKILL mid-epoch, resume, and get exactly the uninterrupted run
# --------------------------------------------------------------------------------------------------


def train_command(data: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mobilenets",
        "train",
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--epochs",
        "6",  # the kill lands in epoch 2: with 3 epochs the fused kernels' run sometimes ended first
        "--batch-size",
        "8",
        "--augment",
        "heavy",
        "--checkpoint-steps",
        "1",
        "--seed",
        "7",
        *TINY,
    ]


RESUME_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> tuple[Path, Path]:
    """A seeded tiny run that nobody interrupts; the runs below must end exactly like it."""
    root = tmp_path_factory.mktemp("resume")
    data = small_copy(root / "data", per_class=12, classes=4)  # 40 train images: 5 steps per epoch
    subprocess.run(
        train_command(data, root / "reference"), check=True, env=RESUME_ENV, capture_output=True, timeout=300
    )
    return data, root / "reference"


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, uninterrupted_run):
    data, reference = uninterrupted_run
    env = RESUME_ENV
    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(data, killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.monotonic() + 240
    # Kill once the run is past its first epoch (history written), mid-way through a later one.
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists():
            state = torch.load(checkpoint, weights_only=True)["state"]
            if state["epoch"] >= 1 and state["step_in_epoch"] >= 1:
                break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; the test needs a slower run"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "mobilenets", "train", "--resume", str(killed), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing at epoch" in resumed.stdout

    assert_same_run(reference, killed)


def assert_same_run(reference: Path, resumed: Path) -> None:
    expected = json.loads((reference / "metrics.json").read_text())
    actual = json.loads((resumed / "metrics.json").read_text())
    for key in ("best_val_accuracy", "final_val_accuracy", "final_val_loss", "best_epoch", "epochs_completed"):
        assert actual[key] == expected[key], key
    expected_rows = [r.split(",")[:5] for r in (reference / "epochs.csv").read_text().splitlines()]
    actual_rows = [r.split(",")[:5] for r in (resumed / "epochs.csv").read_text().splitlines()]
    assert len(actual_rows) == 7 and actual_rows == expected_rows  # every epoch's losses/accuracies, every digit
    expected_weights = load_file(reference / "last.safetensors")
    actual_weights = load_file(resumed / "last.safetensors")
    for name, tensor in expected_weights.items():
        assert torch.equal(actual_weights[name], tensor), name


def test_ctrl_c_saves_exits_cleanly_and_resumes(tmp_path, uninterrupted_run):
    data, reference = uninterrupted_run
    env = RESUME_ENV
    interrupted = tmp_path / "interrupted"
    # A suite run as a background job (`nohup … &`) inherits an ignored SIGINT, which a child would inherit
    # too, and Python then installs no Ctrl-C handler. A handled signal is reset to its default on exec, so
    # while this process handles SIGINT the child starts as a command typed by a user does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            train_command(data, interrupted), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not (interrupted / "epochs.csv").exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert f"continue with `mobilenets train --resume {interrupted}`" in out
    assert "Traceback" not in err
    resumed = subprocess.run(
        [sys.executable, "-m", "mobilenets", "train", "--resume", str(interrupted), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference, interrupted)


def test_the_ema_equals_torchs_averaged_model_step_for_step():
    """ExponentialMovingAverage is AveragedModel + get_ema_multi_avg_fn + use_buffers, only faster."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=3, width=0.25).train()
    ours = ExponentialMovingAverage(model, decay=0.9)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(4):
        loss = model(torch.randn(4, 3, 32, 32)).square().mean()  # also moves the BatchNorm buffers
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.update_parameters(model)
        torchs.update_parameters(model)
    assert list(ours.state_dict()) == list(torchs.state_dict())
    for name, value in torchs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    assert int(ours.n_averaged) == 4
    twin = copy.deepcopy(ours)  # EMA copies do not carry the training model
    assert twin._lists is None and torch.equal(twin.n_averaged, ours.n_averaged)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU path is every other test)")
def test_training_on_a_gpu_moves_each_batch_to_the_model(tmp_path, capsys):
    # Batches are decoded and augmented on the CPU; the step, BatchNorm re-estimation, evaluation, the
    # teacher's logits and the diagnosis each take them to the model's device.
    data = small_copy(tmp_path / "data", per_class=10, classes=3)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main(["train", "--data", str(data), *TINY, "--weights", "none", "--epochs", "1", "--batch-size", "8",
                 "--device", "cuda", "--out", str(teacher)]) == 0  # fmt: skip
    assert main(["train", "--data", str(data), *TINY, "--weights", "none", "--epochs", "1", "--batch-size", "8",
                 "--device", "cuda", "--teacher", str(teacher), "--out", str(student)]) == 0  # fmt: skip
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["complete"] and metrics["epochs_completed"] == 1


def test_the_epoch_totals_of_a_checkpoint_read_back_typed_also_from_earlier_versions_lists():
    from dataclasses import asdict

    from mobilenets.training.loop import EpochTotals, TrainingState

    state = TrainingState(epoch=1, step_in_epoch=3)
    state.epoch_totals.add(loss_sum=2.5, correct=7, images=12, seconds=0.5)
    assert TrainingState(**asdict(state)) == state  # what save_checkpoint writes and load_checkpoint reads
    earlier = TrainingState(**{**asdict(state), "epoch_totals": [2.5, 7.0, 12.0, 0.5]})
    assert earlier.epoch_totals == EpochTotals(loss_sum=2.5, correct=7.0, images=12.0, seconds=0.5)
