"""Arguments of `mobilenets train` that used to be ignored, replaced or half-applied: each is now applied as
given or refused in one line before anything is written, and a start that fails leaves no run behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import EXAMPLES, TINY, error_of

import mobilenets.api as api
from mobilenets.cli.main import main
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import RunDirectory
from mobilenets.models.factory import create_model
from mobilenets.models.weights import save_weights
from mobilenets.training import configuration
from mobilenets.training.configuration import check_freeze, check_head_epochs, choose_architecture
from mobilenets.training.recipes import dataset_size_warning


@pytest.mark.parametrize(
    ("flag", "value"), [("--mixup", "inf"), ("--mixup", "nan"), ("--lr", "inf"), ("--label-smoothing", "nan")]
)
def test_infinite_and_nan_values_are_refused_before_anything_runs(flag, value, tmp_path, capsys):
    # `--mixup inf` used to hang in the Beta sampler and `--mixup nan` silently turned mixup off.
    code = main(["train", "--data", str(EXAMPLES), *TINY, flag, value, "--out", str(tmp_path / "run")])
    assert error_of(capsys, code) == f"{flag} {value}: give a finite number"
    assert not (tmp_path / "run").exists()


def test_teacher_values_without_a_teacher_are_refused_not_ignored(tmp_path, capsys):
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--distill-weight", "0.9", "--out", str(tmp_path / "a")])
    assert error_of(capsys, code) == (
        "--distill-weight sets knowledge distillation, which needs a teacher: add --teacher RUN_DIR|FILE|MODEL.onnx, "
        "or drop --distill-weight"
    )
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--distill-weight", "0.9", "--temperature", "2"])
    assert "--distill-weight and --temperature set knowledge distillation" in error_of(capsys, code)
    # At its default value (0.5) the option is refused the same way, from the command line and from Python.
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--distill-weight", "0.5", "--out", str(tmp_path / "b")])
    assert error_of(capsys, code).startswith("--distill-weight sets knowledge distillation")
    with pytest.raises(MobilenetsError, match="--temperature sets knowledge distillation"):
        api.train(EXAMPLES, out=tmp_path / "c", model="mobilenet_v3_small", width=0.25, resolution=32,
                         weights="none", temperature=4.0)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_no_flip_without_augmentation_is_refused_like_crop_scale(tmp_path, capsys):
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--augment", "none", "--no-flip", "--out", str(tmp_path / "r")])
    assert "--no-flip turns off the flips of --augment light" in error_of(capsys, code)
    assert not (tmp_path / "r").exists()


def test_a_start_that_fails_after_writing_its_files_removes_them_and_the_same_out_works(tmp_path, capsys):
    out = tmp_path / "run"
    # The teacher is loaded once the run's config.json and split.json are written (before decoding).
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--teacher", str(tmp_path / "missing"), "--out", str(out)])
    assert "missing" in error_of(capsys, code)
    assert not out.exists()
    # A folder the user made keeps what it held before.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--teacher", str(tmp_path / "missing"), "--out", str(out)])
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    capsys.readouterr()
    assert main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert RunDirectory(out).is_complete()


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_the_same_out(tmp_path, capsys):
    finished = tmp_path / "finished"
    assert main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--out", str(finished)]) == 0
    out = tmp_path / "run"
    out.mkdir()
    # What a run killed while decoding leaves: its settings and split, nothing trained.
    for name in ("config.json", "split.json"):
        (out / name).write_bytes((finished / name).read_bytes())
    capsys.readouterr()
    code = main(["train", "--resume", str(out)])
    assert f"nothing was trained: start it again with --out {out}" in error_of(capsys, code)
    assert main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert "its run stopped before its first checkpoint (nothing trained); starting it again" in capsys.readouterr().err
    assert RunDirectory(out).is_complete()
    # Any other config.json (a project's own) is never taken for a run's and overwritten.
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project"}')
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--out", str(project)])
    assert error_of(capsys, code) == f"{project}: already holds a run; choose another --out"
    assert (project / "config.json").read_text() == '{"name": "my project"}'


def test_values_from_a_recipe_file_face_the_same_checks(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mixup: .inf\n")
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--recipe", str(recipe), "--out", str(tmp_path / "a")])
    assert error_of(capsys, code) == "--mixup inf: give a finite number"
    recipe.write_text("distill_weight: 0.9\n")
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--recipe", str(recipe), "--out", str(tmp_path / "b")])
    assert "--distill-weight sets knowledge distillation, which needs a teacher" in error_of(capsys, code)


def test_resume_refuses_fewer_epochs_than_done_and_keeps_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    original = api.Run.finish
    api.Run.finish = lambda self: None  # training ends; its finishing steps (report) never run: a kept checkpoint
    try:
        api.train(EXAMPLES, out=out, model="mobilenet_v3_small", width=0.25, resolution=32, weights="none", epochs=2)
    finally:
        api.Run.finish = original
    capsys.readouterr()
    code = main(["train", "--resume", str(out), "--epochs", "1"])
    assert error_of(capsys, code) == (
        "--epochs 1: this run has already trained 2 epochs; pass at least 2 (--epochs 2 finishes it now with the "
        "epochs done)"
    )
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    # Killed while saving an epoch: weights and epochs.csv written, no checkpoint. Not "nothing was trained".
    (out / "checkpoint.pt").unlink()
    (out / "metrics.json").unlink()
    code = main(["train", "--resume", str(out)])
    assert "it stopped while saving an epoch, so it cannot continue exactly: evaluate or export its " \
        "model.safetensors, or train again with another --out" in error_of(capsys, code)


@pytest.fixture(scope="module")
def narrow_weights(tmp_path_factory) -> Path:
    """A checkpoint of V3-Small at width 0.25 (our format: it records the architecture and the width)."""
    path = tmp_path_factory.mktemp("weights") / "narrow.safetensors"
    save_weights(create_model("mobilenet_v3_small", num_classes=3, width=0.25), path, classes=["a", "b", "c"])
    return path


def test_width_from_the_user_that_contradicts_the_weights_is_refused(narrow_weights, tmp_path, capsys):
    # --width 1.0 used to be taken for "not given", and the run silently trained at the file's 0.25.
    code = main(
        ["train", "--data", str(EXAMPLES), "--resolution", "32", "--quiet", "--weights", str(narrow_weights),
         "--width", "1.0", "--out", str(tmp_path / "run")]
    )  # fmt: skip
    assert error_of(capsys, code) == (
        f"--width 1: --weights {narrow_weights} holds mobilenet_v3_small at width 0.25; drop --width, or pass "
        "--width 0.25"
    )
    assert not (tmp_path / "run").exists()
    code = main(
        ["train", "--data", str(EXAMPLES), "--resolution", "32", "--quiet", "--weights", str(narrow_weights),
         "--width", "0.5", "--out", str(tmp_path / "run")]
    )  # fmt: skip
    assert error_of(capsys, code).startswith(f"--width 0.5: --weights {narrow_weights} holds mobilenet_v3_small at")
    assert choose_architecture(str(narrow_weights), model=None, width=None) == ("mobilenet_v3_small", 0.25)
    assert choose_architecture("auto", model=None, width=None) == ("mobilenet_v3_small", 1.0)


def test_a_published_name_brings_its_width_and_another_width_is_refused():
    name = "mobilenet_v3_small_075.timm_lamb_in1k"
    assert choose_architecture(name, model=None, width=None) == ("mobilenet_v3_small", 0.75)
    assert choose_architecture(name, model="mobilenet_v3_small", width=0.75) == ("mobilenet_v3_small", 0.75)
    with pytest.raises(MobilenetsError) as refused:
        choose_architecture(name, model=None, width=1.0)
    assert str(refused.value) == (
        f"--width 1: --weights {name} is published at width 0.75; drop --width, pass --width 0.75, or pass "
        "--weights mobilenet_v3_small.tv_in1k"
    )
    assert choose_architecture("mobilenet_v2.tv_in1k", model=None, width=None) == ("mobilenet_v2", 1.0)
    with pytest.raises(MobilenetsError) as refused:  # a checkpoint exists at the width asked for: it is named
        choose_architecture("mobilenet_v2.tv_in1k", model=None, width=0.5)
    assert str(refused.value).endswith("pass --width 1, or pass --weights mobilenet_v2_050.timm_lamb_in1k")
    with pytest.raises(MobilenetsError) as refused:  # none at 0.35: a file of that width
        choose_architecture("mobilenet_v2.tv_in1k", model=None, width=0.35)
    assert str(refused.value).endswith("or pass a checkpoint of width 0.35 (--weights FILE)")


def test_a_relative_weights_path_is_recorded_absolute_so_resume_works_from_anywhere(
    narrow_weights, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(narrow_weights.parent)
    out = tmp_path / "run"
    argv = ["train", "--data", str(EXAMPLES), "--resolution", "32", "--epochs", "1", "--quiet"]
    assert main([*argv, "--weights", narrow_weights.name, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == config["initial_weights"] == str(narrow_weights.resolve())
    assert config["width"] == 0.25 and config["model"] == "mobilenet_v3_small"


def test_head_epochs_need_pretrained_weights_and_a_linear_probe_is_said(tmp_path, capsys, monkeypatch):
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--head-epochs", "2", "--out", str(tmp_path / "a")])
    assert "--head-epochs 2 trains only the new head on a pretrained backbone, but this run starts from scratch" in (
        error_of(capsys, code)
    )
    assert not (tmp_path / "a").exists()
    said: list[str] = []
    monkeypatch.setattr(configuration, "say", said.append)
    monkeypatch.setattr(configuration, "warn", said.append)
    # Head-only epochs covering the whole run were asked for: a linear probe, done and said.
    assert check_head_epochs(2, epochs=2, given=True, initial_weights="w") == 2
    # The recipe's head-only epoch (not the user's) gives way to a one-epoch run, and says so.
    assert check_head_epochs(1, epochs=1, given=False, initial_weights="w") == 0
    assert check_head_epochs(1, epochs=2, given=False, initial_weights="w") == 1
    assert check_head_epochs(1, epochs=30, given=False, initial_weights=None) == 0
    assert said == [
        "--head-epochs 2 covers all 2 epochs: only the new head trains (a linear probe); the backbone keeps its "
        "pretrained weights",
        "  no head-only epoch: 1 epoch leaves none to train the backbone after it",
    ]


def test_advice_does_not_send_the_user_back_to_what_just_failed():
    assert "collect more images" in dataset_size_warning(50, pretrained=True)
    assert "--weights" not in dataset_size_warning(50, pretrained=True)
    assert "--model mobilenet_v2" in dataset_size_warning(50, pretrained=False)
    with pytest.raises(MobilenetsError, match=r"\(a checkpoint file \(--weights FILE; auto found none, see above\)\)"):
        check_freeze(3, model="mobilenet_v2", width=1.0, initial_weights=None, weights="auto")


def test_train_shares_the_resolution_bounds_of_every_command(tmp_path, capsys):
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--resolution", "2000", "--out", str(tmp_path / "r")])
    assert error_of(capsys, code) == (
        "--resolution 2000 is too large: use at most 1024 (MobileNets are trained at 224; much larger inputs "
        "exhaust memory)"
    )
    assert not (tmp_path / "r").exists()
