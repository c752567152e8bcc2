"""Accuracy, per-class precision/recall and confusion matrix, with exact numbers; the HTML report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from mobilenets.reporting.run_report import write_report
from mobilenets.training.evaluation import EvaluationResult, confusion_matrix, evaluate


class BrightestChannel(nn.Module):
    """A 'model' whose prediction is the channel with the largest mean: known answers for any image."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) * 10


def test_confusion_matrix_and_per_class_numbers():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    confusion = confusion_matrix(targets, predictions, 3)
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    result = EvaluationResult(["a", "b", "c"], confusion)
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.precision.tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert result.recall.tolist() == pytest.approx([2 / 3, 0.5, 1.0])
    assert result.f1[0] == pytest.approx(0.8)
    merged = result.merge(result)
    assert merged.count == 12 and merged.accuracy == pytest.approx(4 / 6)
    assert "accuracy" in result.table() and result.to_dict()["per_class"][2]["support"] == 1


def test_evaluate_on_cached_uint8_images():
    images = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    for i, channel in enumerate([0, 1, 2, 2, 0]):
        images[i, channel] = 200
    labels = torch.tensor([0, 1, 2, 1, 0])
    result = evaluate(BrightestChannel(), images, labels, ["r", "g", "b"], mean=(0, 0, 0), std=(1, 1, 1), batch_size=2)
    assert result.confusion.tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert result.accuracy == pytest.approx(0.8)
    assert result.loss > 0


def test_report_is_self_contained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "mobilenet_v3_small", "data": "photos"}))
    (tmp_path / "metrics.json").write_text(json.dumps({"best_val_accuracy": 0.9, "int8_val_accuracy": 0.88}))
    result = EvaluationResult(["a", "b"], np.array([[5, 1], [0, 4]]))
    (tmp_path / "evaluation.json").write_text(json.dumps(result.to_dict()))
    (tmp_path / "skipped.json").write_text(json.dumps(["photos/a/bad.jpg: empty file (0 bytes)"]))
    with open(tmp_path / "epochs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"])
        writer.writerows([[1, 1.0, 0.5, 0.9, 0.6], [2, 0.5, 0.8, 0.4, 0.9]])
    html = write_report(tmp_path).read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "int8 val accuracy" in html and "88.00%" in html  # named and formatted for a reader (issue 17, #21)
    assert "bad.jpg: empty file" in html
    assert (tmp_path / "curves.png").stat().st_size > 1000 and (tmp_path / "confusion.png").exists()
    assert 'src="http' not in html
