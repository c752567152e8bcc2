"""Mistakes a new user made in a review, each refused in one line before any work (exit 2), never an
internal error after the scan."""

from __future__ import annotations

import pytest
from cli_helpers import EXAMPLES, TINY, error_of

import mobilenets.api as api
from mobilenets.cli.main import main


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("a_file", "--out {out}: a file is in the way; pass a folder path"),
        ("a_file/run", "--out {out}: a file is in the way; pass a folder path"),
        ("/proc/mobilenets-run", "--out {out}: cannot write there ("),
    ],
)
def test_an_out_that_cannot_be_a_folder_is_refused_before_the_scan(out, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    error = error_of(capsys, main(["train", "--data", str(EXAMPLES), *TINY, "--out", out]))
    assert error.startswith(message.format(out=out))
    assert "training data" not in capsys.readouterr().out  # said before the scan


def test_a_cache_dir_with_a_file_in_the_way_is_refused(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--cache", "disk", "--cache-dir", str(tmp_path / "a_file"),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert error_of(capsys, code) == f"--cache-dir {tmp_path / 'a_file'}: a file is in the way; pass a folder path"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ema-decay", "2"], "--ema-decay is the share of the running average each step keeps, in [0, 1), got 2"),
        (["--ema-decay", "1"], "--ema-decay is the share of the running average each step keeps, in [0, 1), got 1"),
        (["--early-stopping", "0"], "--early-stopping 0: give a whole number > 0"),
        (["--teacher", "t", "--distill-weight", "1.5"], "--distill-weight must be between 0 and 1, got 1.5"),
        (["--teacher", "t", "--temperature", "0"], "--temperature must be positive, got 0"),
    ],
)
def test_values_that_cannot_be_meant_are_refused_before_the_scan(argv, message, tmp_path, capsys):
    code = main(["train", "--data", str(EXAMPLES), *TINY, *argv, "--out", str(tmp_path / "run")])
    assert error_of(capsys, code).startswith(message)
    assert not (tmp_path / "run").exists()


def test_a_run_config_passed_as_weights_names_its_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    (run / "config.json").write_text('{"model": "mobilenet_v3_small"}')
    message = f"{run / 'config.json'}: a text file, not model weights; pass its run directory: {run}"
    assert error_of(capsys, main(["evaluate", str(run / "config.json"), "--data", str(EXAMPLES)])) == message
    image = next((EXAMPLES / "bag").iterdir())
    assert error_of(capsys, main(["predict", str(image), "--weights", str(run / "config.json")])) == message


def test_a_resume_whose_teacher_moved_says_to_put_it_back(tmp_path, capsys):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--out", str(teacher)]) == 0
    original = api.Run.finish
    api.Run.finish = lambda self: None  # a checkpoint kept, as if interrupted while finishing
    try:
        code = main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--teacher", str(teacher),
                     "--distill-weight", "0", "--out", str(student)])  # fmt: skip
    finally:
        api.Run.finish = original
    assert code == 0
    assert "--distill-weight 0: the teacher's predictions carry no weight" in capsys.readouterr().err
    teacher.rename(tmp_path / "moved")
    message = error_of(capsys, main(["train", "--resume", str(student), "--epochs", "2"]))
    assert message == (
        f"--resume {student}: its teacher {teacher} (config.json) is missing; put it back there (a run's teacher "
        "cannot change on resume)"
    )
    refused = error_of(capsys, main(["train", "--resume", str(student), "--seed", "1"]))
    assert "--seed cannot change on resume" in refused and "--checkpoint-steps" not in refused  # a hidden option


def test_a_diverging_run_is_one_line_naming_the_learning_rate(tmp_path, capsys):
    code = main(["train", "--data", str(EXAMPLES), *TINY, "--weights", "none", "--lr", "1e6", "--no-ema",
                 "--epochs", "1", "--out", str(tmp_path / "run")])  # fmt: skip
    error = error_of(capsys, code)
    assert "training diverged; train again with a lower --lr (this run: 1e+06)" in error
    assert "internal error" not in error


def test_the_resolution_bounds_are_checked_before_the_scan(tmp_path, capsys):
    error = error_of(capsys, main(["train", "--data", str(EXAMPLES), "--resolution", "2048", "--out", str(tmp_path / "r")]))
    assert error.startswith("--resolution 2048 is too large: use at most 1024")
    assert "training data" not in capsys.readouterr().out
