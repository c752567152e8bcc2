"""`quantize RUN` and `robustness RUN` refresh the run's report.html, and the report shows robustness: each
figure named for the corruptions and severities it covers, with a link to the full robustness report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from deploy_helpers import tiny_run_dir, write_class_folder

from mobilenets.cli.main import main
from mobilenets.reporting.run_report import write_report

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("refresh") / "data", classes=3, per_class=6)


def report_text(run: Path) -> str:
    """report.html without its tags and embedded images: what a reader sees."""
    page = re.sub(r"<img[^>]*>", "", (run / "report.html").read_text())
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_quantize_refreshes_the_report(tmp_path, data, capsys):
    run = tiny_run_dir(tmp_path / "run", data)
    write_report(run)
    assert "not quantized" in report_text(run)
    assert main(["quantize", str(run), "--method", "ptq", "--calibration", "8"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    text = report_text(run)
    assert "not quantized" not in text
    assert f"int8 accuracy: {100 * metrics['int8_val_accuracy']:.2f}% (ptq (minmax);" in text
    assert "model_int8.onnx" in text


def test_robustness_refreshes_the_report_with_its_figures(tmp_path, data, capsys):
    run = tiny_run_dir(tmp_path / "run", data)
    base = tiny_run_dir(tmp_path / "base", data)
    write_report(run)
    assert "Robustness" not in report_text(run)
    args = ["robustness", str(run), "--quick", "--baseline", str(base), "--corruptions", "fog", "--max-images", "6"]
    assert main([*args, "--bn-adapt", "--bn-samples", "4", "--no-shifts", "--no-adversarial"]) == 0
    capsys.readouterr()
    figures = json.loads((run / "metrics.json").read_text())["robustness"]
    page = (run / "report.html").read_text()
    assert '<a href="robustness/robustness.html">robustness/robustness.html</a>' in page
    text = report_text(run)
    assert " Robustness Measured by mobilenets robustness (a --quick first look). Full report:" in text
    assert f"clean accuracy {100 * figures['clean_accuracy']:.2f}%" in text
    scope = "1 of the 15 common corruptions, severity 3"
    assert f"mean corrupted accuracy over {scope} {100 * figures['mean_corrupted_accuracy']:.2f}%" in text
    assert (
        f"mean CE over {scope} (not mCE: that needs severities 1–5) vs baseline {base} {figures['mean_ce']:.1f}" in text
    )
    assert "| mCE" not in text and " mCE over" not in text
    adapted = figures["bn_adapt_mean_corrupted_accuracy"]
    assert f"BN-adapted (4 images per re-estimation) mean corrupted accuracy over {scope} {100 * adapted:.2f}%" in text
    assert f"BN-adapted (4 images per re-estimation) mean CE over {scope}" in text


def test_a_robustness_report_elsewhere_is_named_not_linked(tmp_path, data, capsys):
    run = tiny_run_dir(tmp_path / "run", data)
    out = tmp_path / "elsewhere"
    args = ["robustness", str(run), "--quick", "--corruptions", "fog", "--max-images", "4", "--out", str(out)]
    assert main([*args, "--no-shifts", "--no-adversarial"]) == 0
    capsys.readouterr()
    page = (run / "report.html").read_text()
    assert "<a href=" not in page
    assert f"Full report (outside the run directory): {(out / 'robustness.html').resolve()}." in page


def test_report_command_shows_a_robustness_record_without_its_scope(tmp_path, data, capsys):
    """A metrics.json written before the scope was recorded: its figures shown, not named for a scope."""
    run = tiny_run_dir(tmp_path / "run", data)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["robustness"] = {"images": 200, "clean_accuracy": 0.9, "mean_corrupted_accuracy": 0.7, "mce": 50.5}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.json").write_text(json.dumps({"model": "mobilenet_v3_small", "data": str(data)}))
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    text = report_text(run)
    assert "clean accuracy 90.00%" in text
    assert "mean corrupted accuracy (corruptions and severities not recorded; rerun" in text and "70.00%" in text
    assert "mCE" not in text  # not named an mCE without the severities it came from
