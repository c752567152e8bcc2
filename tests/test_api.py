"""The Python API alone trains, evaluates, quantizes and exports; a moved run still works; the command
line and the API given the same settings write the same run (issue 14's acceptance)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import mobilenets
import mobilenets.api as api
from mobilenets.cli.main import main
from mobilenets.core.settings import usable_cpu_count

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist-small"
SETTINGS = {"model": "mobilenet_v3_small", "width": 0.25, "resolution": 32, "epochs": 1, "weights": "none", "seed": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """The same run, once through Python and once through argv, from a copy of the data."""
    root = tmp_path_factory.mktemp("api")
    data = root / "data"
    shutil.copytree(EXAMPLES, data)
    argv = ["train", "--data", str(data), "--out", str(root / "cli"), "--quiet"]
    for key, value in SETTINGS.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    # A fixed thread count: the automatic one follows the machine's load between the two runs, and
    # sums split over another number of threads round differently.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", str(usable_cpu_count()))
        run = api.train(data, out=root / "python", **SETTINGS)
        assert isinstance(run, api.Run)
        assert main(argv) == 0
    return root / "python", root / "cli"


def test_the_same_settings_from_python_and_the_command_line_give_the_same_run(trained):
    python_run, cli_run = trained
    config = [json.loads((run / "config.json").read_text()) for run in trained]
    for c in config:
        c.pop("out")
        c.pop("quiet", None)
    assert config[0] == config[1]
    assert (python_run / "split.json").read_text() == (cli_run / "split.json").read_text()
    a, b = load_file(python_run / "model.safetensors"), load_file(cli_run / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_run_moved_with_its_data_evaluates_quantizes_and_exports_through_the_api_alone(trained, tmp_path):
    python_run, _ = trained
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(python_run.parent / "data", moved / "data")
    shutil.copytree(python_run, moved / "run")
    shutil.rmtree(python_run.parent / "data")  # the data's old place is gone too
    try:
        run = mobilenets.load_run(moved / "run")
        split = run.directory.read_split()
        assert all(f.path.exists() and str(moved) in str(f.path) for f in split.train + split.val)
        evaluation = run.evaluate(moved / "data")
        assert 0.0 <= evaluation.result.accuracy <= 1.0 and evaluation.images == 500
        figures = run.quantize(method="ptq")
        assert (moved / "run" / "model_int8.onnx").exists() and "int8_val_accuracy" in figures
        exported = run.export("onnx", out=moved / "export" / "model.onnx")
        assert (moved / "export" / "model.onnx").exists() and exported.files
        predicted = run.predict(moved / "data" / "bag")
        classes = json.loads((moved / "run" / "split.json").read_text())["classes"]
        assert len(predicted.predictions) == 50 and not predicted.skipped
        assert all(p.top[0][0] in classes for p in predicted.predictions)
        assert (moved / "run" / "report.html").exists()
    finally:
        shutil.copytree(moved / "data", python_run.parent / "data", dirs_exist_ok=True)


def test_public_names_are_lazy_and_documented():
    assert set(mobilenets.__all__) >= {"create_model", "load_model", "train", "load_run", "robustness", "Run"}
    assert mobilenets.train is api.train and mobilenets.load_run is api.load_run
