"""The inference engine: ONNX Runtime when an exported copy of the exact weights exists, else PyTorch."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from deploy_helpers import WORK, tiny_run_dir, write_class_folder

from mobilenets.cli.main import main
from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment import engines as inference
from mobilenets.deployment.engines import load_engine
from mobilenets.deployment.onnx import read_metadata
from mobilenets.models.weights import load_model, weights_fingerprint


@pytest.fixture(scope="module", autouse=True)
def private_cache():
    # One cache for the module: the tiny model is exported once (an export takes seconds).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_HOME", str(WORK / "inference-home"))
        yield


@pytest.fixture(scope="module")
def run_dir():
    data = write_class_folder(WORK / "inference-data", classes=3, per_class=6)
    return tiny_run_dir(WORK / "inference-run", data, model="mobilenet_v3_small", width=0.25)


def refuse_export(model):
    raise AssertionError("exported although a copy of these weights exists")


def test_fingerprint_follows_weights_and_metadata(run_dir):
    model = load_model(run_dir)
    same = load_model(run_dir)
    assert weights_fingerprint(model) == weights_fingerprint(same)
    with torch.no_grad():
        same.classifier.bias[0] += 1e-3
    assert weights_fingerprint(model) != weights_fingerprint(same)
    assert weights_fingerprint(load_model(run_dir / "model.safetensors")) == weights_fingerprint(model)
    renamed = load_model(run_dir)
    renamed.weights_metadata = {**renamed.weights_metadata, "classes": ["a", "b", "c"]}
    assert weights_fingerprint(model) != weights_fingerprint(renamed)


def test_small_job_without_export_runs_in_torch(run_dir):
    engine = load_engine(load_model(run_dir), "auto", planned_images=10)
    assert engine.name == "torch" and engine.path is None


def test_onnxruntime_engine_exports_once_and_matches_torch(run_dir, monkeypatch):
    model = load_model(run_dir)
    images = torch.randn(5, 3, 48, 48)
    ort = load_engine(model, "onnxruntime")
    assert ort.name == "onnxruntime" and ort.path.parent == inference.onnx_cache_dir()
    assert read_metadata(ort.path)["weights_sha256"] == weights_fingerprint(model)
    reference = load_engine(model, "torch")(images)
    torch.testing.assert_close(ort(images), reference, rtol=1e-4, atol=1e-4)
    # The cached copy is found again, even for a one-image job, and nothing is exported twice.
    monkeypatch.setattr(inference, "export_to_cache", refuse_export)
    again = load_engine(load_model(run_dir), "auto", planned_images=1)
    assert again.name == "onnxruntime" and again.path == ort.path


def test_big_job_exports_under_auto(run_dir, monkeypatch):
    model = load_model(run_dir)
    cached = load_engine(model, "onnxruntime").path
    exports = []
    monkeypatch.setattr(inference, "exported_copy", lambda model, run_dir=None: None)
    monkeypatch.setattr(inference, "export_to_cache", lambda model: exports.append(model) or cached)
    assert load_engine(model, "auto", planned_images=inference.EXPORT_PAYS_BACK_IMAGES - 1).name == "torch"
    assert load_engine(model, "auto", planned_images=inference.EXPORT_PAYS_BACK_IMAGES).name == "onnxruntime"
    assert len(exports) == 1


def test_run_dir_model_onnx_is_used_only_for_its_own_weights(run_dir, monkeypatch):
    model = load_model(run_dir)
    shutil.copyfile(load_engine(model, "onnxruntime").path, run_dir / "model.onnx")
    monkeypatch.setattr(inference, "export_to_cache", refuse_export)
    engine = load_engine(model, "auto", planned_images=1, run_dir=run_dir)
    assert engine.path == run_dir / "model.onnx"
    with torch.no_grad():
        model.classifier.weight.mul_(2)  # retrained weights: the old file no longer stands for them
    assert load_engine(model, "auto", planned_images=1, run_dir=run_dir).name == "torch"
    (run_dir / "model.onnx").unlink()


def test_failed_export_falls_back_under_auto_and_fails_loudly_when_asked(run_dir, monkeypatch, capsys):
    def broken(model):
        raise RuntimeError("exporter says no")

    monkeypatch.setattr(inference, "exported_copy", lambda model, run_dir=None: None)
    monkeypatch.setattr(inference, "export_to_cache", broken)
    model = load_model(run_dir)
    assert load_engine(model, "auto", planned_images=10**6).name == "torch"
    assert "ONNX export failed" in capsys.readouterr().err
    with pytest.raises(MobilenetsError, match="--engine torch"):
        load_engine(model, "onnxruntime")


def test_evaluate_and_predict_give_the_same_answers_in_both_engines(run_dir, capsys):
    data = WORK / "inference-data"
    results = {}
    for engine in ("torch", "onnxruntime"):
        assert main(["evaluate", str(run_dir), "--data", str(data), "--engine", engine, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["engine"] == engine
        results[engine] = out
    assert results["torch"]["confusion_matrix"] == results["onnxruntime"]["confusion_matrix"]
    images = sorted(str(p) for p in data.rglob("*.png"))[:4]
    predictions = {}
    for engine in ("torch", "onnxruntime"):
        assert main(["predict", *images, "--weights", str(run_dir), "--engine", engine, "--json"]) == 0
        predictions[engine] = json.loads(capsys.readouterr().out)
    for ours, theirs in zip(predictions["torch"], predictions["onnxruntime"], strict=True):
        assert [t["index"] for t in ours["top"]] == [t["index"] for t in theirs["top"]]
        for a, b in zip(ours["top"], theirs["top"], strict=True):
            assert abs(a["probability"] - b["probability"]) < 1e-4


def test_predict_refuses_an_architecture_option_an_onnx_file_fixes(run_dir, tmp_path, capsys):
    # They were silently ignored: the file's own architecture ran, as bench already said of the same pairing.
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(onnx_file)]) == 0
    image = str(sorted((WORK / "inference-data").rglob("*.png"))[0])
    capsys.readouterr()
    for flag, value in (("--model", "mobilenet_v2"), ("--width", "0.5")):
        assert main(["predict", image, "--weights", str(onnx_file), flag, value]) == 2
        assert capsys.readouterr().err.strip() == (
            f"mobilenets predict: error: {flag}: {onnx_file} is an ONNX file with its own architecture and width; "
            f"drop {flag}, or predict with the weights it was exported from"
        )
    assert main(["predict", image, "--weights", str(onnx_file), "--top", "7"]) == 0
    captured = capsys.readouterr()
    assert "--top 7: the model has 3 classes; showing all 3" in captured.err
    assert captured.out.count("\n") == 1 + 3  # the image, then its three classes
