"""`mobilenets export --format …` and `train --export`: device files written into the run, verified in
their runtimes, recorded in metrics.json's deployment table; bad input is one line (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mobilenets.api as api
from mobilenets.cli.main import main
from mobilenets.core.run_directory import RunDirectory
from mobilenets.deployment.export import FORMATS
from mobilenets.deployment.formats import EXPORT_FORMATS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist-small"
pytest.importorskip("ai_edge_litert", reason="the device toolchains are the optional extra mobilenets[edge]")


def test_the_format_names_and_the_exporters_are_the_same_table():
    assert set(FORMATS) == set(EXPORT_FORMATS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    api.train(EXAMPLES, out=out, model="mobilenet_v1", width=0.25, resolution=32, epochs=2, weights="none", export="tflite")
    return out


def test_train_export_writes_a_verified_tflite_and_records_it(run_dir):
    assert (run_dir / "model.tflite").exists() and RunDirectory(run_dir).is_complete()
    deployment = RunDirectory(run_dir).metrics()["deployment"]
    entry = next(e for e in deployment if e["path"] == "model.tflite")
    assert entry["format"] == "tflite" and entry["partitions"] == 1 and entry["agreement"] == 1.0
    assert entry["bytes"] == (run_dir / "model.tflite").stat().st_size and entry["latency_ms"] > 0
    assert entry["max_abs_diff"] < 1e-3
    assert "model.tflite" in (run_dir / "report.html").read_text()


def test_micro_over_its_ram_budget_is_one_line_naming_the_largest_tensors(run_dir, capsys):
    code = main(["export", str(run_dir), "--format", "tflite-micro", "--ram-kb", "4", "--check-images", "8"])
    assert code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(error) == 1 and "tensor arena" in error[0] and "RAM budget 4 KB" in error[0]
    entry = next(e for e in RunDirectory(run_dir).metrics()["deployment"] if e["format"] == "tflite-micro")
    assert entry["arena_bytes"] > 4 * 1024


def test_a_missing_toolchain_names_the_install_command(run_dir, monkeypatch, capsys):
    import mobilenets.deployment.device_files as device_files

    def missing(module, purpose):
        raise device_files.MobilenetsError(f"{purpose} needs the optional device toolchain; install it with: x")

    monkeypatch.setattr(device_files, "require", missing)
    assert main(["export", str(run_dir), "--format", "executorch"]) == 2
    assert "--format executorch needs the optional device toolchain" in capsys.readouterr().err
    assert not (run_dir / "model.pte").exists()


def test_unknown_formats_are_refused_before_any_work(tmp_path, capsys):
    assert main(["train", "--data", str(EXAMPLES), "--out", str(tmp_path / "r"), "--export", "tfilte"]) == 2
    assert "unknown format 'tfilte'" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(tmp_path), "--format", "onnx2"])
    assert stopped.value.code == 2


def test_without_validation_images_the_files_are_written_and_it_says_what_was_not_verified(run_dir, tmp_path, capsys):
    weights = run_dir / "model.safetensors"
    assert main(["export", "--weights", str(weights), "--format", "coreml", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not verified" in out or "not run" in out
    assert (tmp_path / "model.mlpackage").is_dir()
    assert json.loads((run_dir / "metrics.json").read_text())["complete"] is True


def test_a_file_checked_without_validation_images_records_no_figures(run_dir, tmp_path):
    from mobilenets.deployment.device_export import export_device_format
    from mobilenets.deployment.loading import model_source

    weights = model_source(weights=run_dir / "model.safetensors")  # weights alone: no validation images
    (record,) = export_device_format(weights, format="tflite", out=tmp_path, report=lambda _: None)
    assert record.ran and record.images == 0 and "not verified" in " ".join(record.notes)
    figures = (record.agreement, record.decided_images, record.decided_agreement, record.accuracy, record.max_abs_diff)
    assert figures == (None, None, None, None, None)
