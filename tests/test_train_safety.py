"""The end of a run and the train command's arguments: nothing lost, nothing silently wrong (issue 17)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import EXAMPLES, TINY, error_of

import mobilenets.api as api
from mobilenets.cli.main import main
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import DiskFullError
from mobilenets.core.run_directory import RunDirectory


def train_cli(*args: str) -> int:
    return main(["train", "--data", str(EXAMPLES), *TINY, *args])


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size", "--lr", "--width"])
def test_zero_is_refused_like_a_negative_never_replaced_by_the_default(flag, tmp_path, capsys):
    code = main(["train", "--data", str(EXAMPLES), *TINY, flag, "0", "--out", str(tmp_path / "run")])
    message = error_of(capsys, code)
    assert f"{flag} 0: give a " in message and message.endswith(" > 0")
    assert not (tmp_path / "run").exists()


def test_out_inside_the_data_folder_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES, data)
    for out in (data / "runs" / "x", data):
        code = main(["train", "--data", str(data), *TINY, "--out", str(out)])
        assert "inside --data" in error_of(capsys, code)
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in EXAMPLES.iterdir())


def test_fp16_on_a_cpu_is_refused_with_the_reason(tmp_path, capsys):
    code = train_cli("--precision", "fp16", "--device", "cpu", "--out", str(tmp_path / "run"))
    assert "--precision fp16 needs a CUDA GPU" in error_of(capsys, code)


def test_data_that_does_not_exist_says_so(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nope"), *TINY])
    assert "does not exist" in error_of(capsys, code)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert train_cli("--epochs", "1", "--out", str(out)) == 0
    return out


def test_a_finished_run_is_complete_and_keeps_no_checkpoint(finished_run):
    run = RunDirectory(finished_run)
    assert run.is_complete() and not run.checkpoint.exists() and run.report.exists()


def test_resume_refuses_flags_it_cannot_change_instead_of_ignoring_them(tmp_path, capsys):
    out = tmp_path / "run"
    interrupted_run(out)
    code = main(["train", "--resume", str(out), "--lr", "0.01"])
    message = error_of(capsys, code)
    assert "--lr cannot change on resume" in message and "--epochs" in message
    # A flag that turns an option off is named as the user typed it.
    message = error_of(capsys, main(["train", "--resume", str(out), "--no-flip", "--no-ema"]))
    assert "--no-flip, --no-ema cannot change on resume" in message
    # Passed at its default value, an option is still passed: it was silently ignored when the run's differs.
    message = error_of(capsys, main(["train", "--resume", str(out), "--seed", "0", "--label-smoothing", "0.1"]))
    assert "--label-smoothing, --seed cannot change on resume" in message


def test_resume_applies_more_epochs_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    interrupted_run(out)
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert "--epochs 1 → 2" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert RunDirectory(out).metrics()["epochs_completed"] == 2


def test_resume_may_validate_less_often(tmp_path, capsys):
    out = tmp_path / "run"
    interrupted_run(out)
    assert main(["train", "--resume", str(out), "--epochs", "4", "--val-every", "2"]) == 0
    assert "--val-every 1 → 2" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["val_every"] == 2
    rows = (out / "epochs.csv").read_text().strip().splitlines()[1:]
    assert [row.split(",")[4] != "" for row in rows] == [True, True, False, True]  # epoch 1 was done before


def test_resume_refuses_a_teacher_engine_for_a_run_without_teacher(tmp_path, capsys):
    out = tmp_path / "run"
    interrupted_run(out)
    config = (out / "config.json").read_bytes()
    message = error_of(capsys, main(["train", "--resume", str(out), "--teacher-engine", "torch"]))
    assert message == (
        f"--resume {out}: --teacher-engine chooses what runs a teacher, and this run has none (a run's teacher "
        "cannot change on resume); drop --teacher-engine"
    )
    assert (out / "config.json").read_bytes() == config


def test_resume_finds_moved_images_where_data_says_they_are_now(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(EXAMPLES, data)
    interrupted_run(out, data)
    moved = tmp_path / "disk2" / "fashion"
    moved.parent.mkdir()
    shutil.move(data, moved)
    split_before = json.loads((out / "split.json").read_text())
    # Without --data the resume says where the images were and how to say where they are now.
    message = error_of(capsys, main(["train", "--resume", str(out)]))
    assert message.startswith(f"{out}: 400 of the 400 training images it trains on are missing (first: {data}")
    assert f"put the --data folder back at {data}, or beside the run where it was, or pass --data DIR" in message
    message = error_of(capsys, main(["train", "--resume", str(out), "--data", str(tmp_path / "nowhere")]))
    assert message == (
        f"--data {tmp_path / 'nowhere'}: no such folder; with --resume, --data names the folder that now holds the "
        "run's training images"
    )
    # A folder without all of the run's images: fewer would change every epoch's batches.
    partial = tmp_path / "partial"
    shutil.copytree(moved, partial)
    next(next(partial.iterdir()).iterdir()).unlink()
    message = error_of(capsys, main(["train", "--resume", str(out), "--data", str(partial)]))
    assert message.startswith(
        f"--data {partial}: 1 of the run's 500 training and validation images are not in it (first: {partial}/"
    )
    message = error_of(capsys, main(["train", "--resume", str(out), "--val", str(moved)]))
    assert message.startswith(f"--val {moved}: this run's validation images are a share of its --data folder")
    assert json.loads((out / "split.json").read_text()) == split_before  # nothing written by a refusal

    assert main(["train", "--resume", str(out), "--data", str(moved), "--epochs", "2"]) == 0
    assert f"--data {data.resolve()} → {moved.resolve()}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["data"] == str(moved.resolve())
    split = json.loads((out / "split.json").read_text())
    assert split["train_root"]["absolute"] == split["val_root"]["absolute"] == str(moved.resolve())
    assert (split["train"], split["val"]) == (split_before["train"], split_before["val"])  # the same files
    assert RunDirectory(out).metrics()["complete"] and RunDirectory(out).metrics()["epochs_completed"] == 2
    assert all(f.path.is_file() for f in RunDirectory(out).read_split().val)  # found there by later commands


def test_resume_without_a_checkpoint_refuses_and_lists_what_is_there(tmp_path, capsys):
    out = tmp_path / "run"
    interrupted_run(out)
    (out / "checkpoint.pt").unlink()
    (out / "metrics.json").unlink(missing_ok=True)
    before = sorted(p.name for p in out.iterdir())
    code = main(["train", "--resume", str(out)])
    message = error_of(capsys, code)
    assert "no checkpoint.pt to resume from" in message and "config.json" in message
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x04cos\nsystem\n."])
def test_an_unreadable_checkpoint_is_one_line_pointing_to_the_last_weights(tmp_path, capsys, content):
    out = tmp_path / "run"
    interrupted_run(out)
    (out / "checkpoint.pt").write_bytes(content)
    code = main(["train", "--resume", str(out)])
    message = error_of(capsys, code)
    assert "unreadable checkpoint" in message and "weights_only" not in message


def test_ctrl_c_while_finishing_loses_nothing_and_resume_finishes(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(api.Run, "report", interrupt)
    with pytest.raises(KeyboardInterrupt):
        api.train(EXAMPLES, out=out, model="mobilenet_v3_small", width=0.25, resolution=32, weights="none", epochs=1)
    run = RunDirectory(out)
    assert run.checkpoint.exists() and run.model.exists() and not run.is_complete()
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert run.is_complete() and run.report.exists() and not run.checkpoint.exists()


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from mobilenets.training import checkpoints

    path = tmp_path / "checkpoint.pt"
    checkpoints.atomic_torch_save({"model": torch.zeros(3)}, path)
    good = path.read_bytes()

    def full_disk(obj, target):
        Path(target).write_bytes(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(DiskFullError, match="no space left on the disk holding"):
        checkpoints.atomic_torch_save({"model": torch.zeros(1000)}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_closed_stdout_pipe_never_stops_training(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mobilenets", "train", "--data", str(EXAMPLES), *TINY, "--epochs", "1"]
    with subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.readline()
        process.stdout.close()  # `| head -1`
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=300) == 0, stderr
    assert "BrokenPipe" not in stderr and "Traceback" not in stderr
    assert RunDirectory(out).is_complete()


def test_api_rejects_unknown_options():
    with pytest.raises(MobilenetsError, match="unknown training option"):
        api.train(EXAMPLES, epoch=3)


def interrupted_run(out: Path, data: Path = EXAMPLES) -> None:
    """A run whose training ended but whose finishing steps (int8, report) never ran: a kept checkpoint."""
    original = api.Run.finish
    api.Run.finish = lambda self: None
    try:
        api.train(data, out=out, model="mobilenet_v3_small", width=0.25, resolution=32, weights="none", epochs=1)
    finally:
        api.Run.finish = original
    assert RunDirectory(out).checkpoint.exists()


def test_a_resume_trains_where_the_run_did_unless_told_otherwise(tmp_path):
    from mobilenets.training.options import TrainOptions
    from mobilenets.training.pipeline import resumed_placement

    (tmp_path / "config.json").write_text(json.dumps({"device": "cpu", "sync_bn": False}))
    # Not passing --device keeps config.json's, where the default "auto" would take a GPU the run never used.
    assert resumed_placement(TrainOptions(resume=tmp_path)) == ("cpu", False)
    assert resumed_placement(TrainOptions(resume=tmp_path, device="auto", passed=frozenset({"device"}))) == ("auto", False)
    # A run trained on GPUs with SyncBatchNorm (CUDA only) can be finished on a CPU: it is turned off, and said.
    (tmp_path / "config.json").write_text(json.dumps({"device": "cuda", "sync_bn": True}))
    on_cpu = TrainOptions(resume=tmp_path, device="cpu", passed=frozenset({"device"}))
    assert resumed_placement(on_cpu) == ("cpu", False)
    if torch.cuda.is_available():
        assert resumed_placement(TrainOptions(resume=tmp_path)) == ("cuda", True)


def test_a_moved_split_keeps_each_file_at_its_place_in_its_own_folder(tmp_path):
    from mobilenets.core.run_directory import LabelledFile, Split

    train_root, val_root, outside = tmp_path / "train", tmp_path / "val", tmp_path / "elsewhere" / "x.png"
    split = Split(
        classes=["a", "b"],
        train=[LabelledFile(train_root / "a" / "1.png", 0), LabelledFile(outside, 1)],
        val=[LabelledFile(val_root / "b" / "2.png", 1)],
        train_root=train_root,
        val_root=val_root,
    )
    moved = split.moved(train_root=tmp_path / "new")
    # A file recorded outside its folder stays where it is; a folder not given (val) too.
    assert [f.path for f in moved.train] == [tmp_path / "new" / "a" / "1.png", outside]
    assert [f.path for f in moved.val] == [val_root / "b" / "2.png"] and moved.val_root == val_root
    assert [f.label for f in moved.train] == [0, 1] and moved.train_root == tmp_path / "new"
    assert [f.path for f in split.moved(val_root=tmp_path / "v2").val] == [tmp_path / "v2" / "b" / "2.png"]


def test_an_earlier_split_format_cannot_be_relocated_and_says_so(tmp_path):
    from mobilenets.core.run_directory import LabelledFile, Split
    from mobilenets.training.configuration import TrainConfig
    from mobilenets.training.options import TrainOptions
    from mobilenets.training.pipeline import relocate_split

    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    old = tmp_path / "old" / "a" / "1.png"
    (run.path / "split.json").write_text(json.dumps({"classes": ["a"], "train": [[str(old), 0]], "val": []}))
    split = Split(classes=["a"], train=[LabelledFile(old, 0)])
    options = TrainOptions(resume=run.path, data=tmp_path, passed=frozenset({"data"}))
    with pytest.raises(MobilenetsError) as error:
        relocate_split(split, config=TrainConfig(data=str(tmp_path / "old")), options=options, run=run)
    assert str(error.value) == (
        f"--data: {run.path}'s split.json is of an earlier format that records each image's absolute path and not "
        "its folder, so its images cannot be found in another; put them back where it says to resume"
    )
