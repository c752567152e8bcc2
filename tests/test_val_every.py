"""`train --val-every N`: validation every N epochs and after the last, and what reads the epochs it skipped."""

from __future__ import annotations

import json

import pytest
from cli_helpers import TINY, small_copy

from mobilenets.cli.main import main
from mobilenets.reporting.run_report import read_epochs


def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path, capsys):
    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    run_dir = tmp_path / "run"
    arguments = ["--data", str(data), "--out", str(run_dir), "--epochs", "5", "--val-every", "2", "--batch-size", "5"]
    assert main(["train", *arguments, *TINY]) == 0
    epochs = read_epochs(run_dir)
    assert [row["val_accuracy"] is not None for row in epochs] == [False, True, False, True, True]
    assert all((row["val_loss"] is None) == (row["val_accuracy"] is None) for row in epochs)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["best_epoch"] in (2, 4, 5)
    assert metrics["final_val_accuracy"] == epochs[-1]["val_accuracy"]
    assert json.loads((run_dir / "config.json").read_text())["val_every"] == 2
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["1"]]
    assert lines and lines[0][3:5] == ["-", "-"]  # epoch 1: no validation, said as such
    assert "<td>—</td>" in (run_dir / "report.html").read_text()


def test_val_every_and_early_stopping_judge_only_validated_epochs(tmp_path, capsys):
    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    run_dir = tmp_path / "run"
    # No epoch beats the first validated one (epoch 2); patience 1 runs out at the next validation, epoch 4,
    # not at the unvalidated epoch 3.
    arguments = ["--data", str(data), "--out", str(run_dir), "--epochs", "8", "--lr", "1e-12", "--early-stopping", "1"]
    assert main(["train", *arguments, "--val-every", "2", "--batch-size", "5", "--no-ema", *TINY]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "early stopping: no val improvement for 2 epochs (best " in out and "--early-stopping 1)" in out
    # Epoch 4 can win on a loss lower by rounding (is_better's tie-break); the stop then comes at epoch 6.
    assert metrics["best_epoch"] in (2, 4) and metrics["epochs_completed"] == metrics["best_epoch"] + 2
    assert metrics["final_val_accuracy"] is not None


@pytest.mark.parametrize("value", ["0", "-1"])
def test_val_every_must_be_positive(tmp_path, capsys, value):
    data = small_copy(tmp_path / "data", per_class=2, classes=2)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--val-every", value, *TINY]) == 2
    err = capsys.readouterr().err
    assert "--val-every" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_run_resumed_to_end_on_an_epoch_it_skipped_validates_that_epoch(tmp_path, capsys):
    from mobilenets.training.loop import Trainer

    data = small_copy(tmp_path / "data", per_class=6, classes=2)
    run_dir = tmp_path / "run"
    arguments = ["--data", str(data), "--out", str(run_dir), "--epochs", "6", "--val-every", "2", "--batch-size", "5"]
    finish_epoch = Trainer.finish_epoch

    def stop_after_epoch_3(self, epoch):
        record = finish_epoch(self, epoch)
        if epoch == 2:
            raise KeyboardInterrupt
        return record

    Trainer.finish_epoch = stop_after_epoch_3
    try:
        assert main(["train", *arguments, *TINY]) == 130
    finally:
        Trainer.finish_epoch = finish_epoch
    assert read_epochs(run_dir)[-1]["val_accuracy"] is None  # epoch 3 was not validated
    # --epochs 3 ends the run on epoch 3: validated now, so the final figures are the final weights'.
    assert main(["train", "--resume", str(run_dir), "--epochs", "3", "--quiet"]) == 0
    epochs = read_epochs(run_dir)
    assert [row["val_accuracy"] is not None for row in epochs] == [False, True, True]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["final_val_accuracy"] == epochs[-1]["val_accuracy"]
    assert metrics["best_epoch"] in (2, 3)
