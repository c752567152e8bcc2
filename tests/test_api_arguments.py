"""Values of the wrong type from Python, and empty values from the shell: one clear error, never a
TypeError from deep inside, and never read as something else ("" as the current folder, True as 1 epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest

import mobilenets
from mobilenets.cli.main import main
from mobilenets.core.errors import MobilenetsError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist-small"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": "1"}, "--epochs must be a whole number, got '1'"),
        ({"epochs": 1.5}, "--epochs must be a whole number, got 1.5"),
        ({"epochs": True}, "--epochs must be a whole number, got True"),
        ({"width": "0.25"}, "--width must be a number, got '0.25'"),
        ({"resolution": 32.7}, "--resolution must be a positive whole number of pixels or auto, got 32.7"),
        ({"quantize": "no"}, "quantize must be True or False, got 'no'"),
        ({"device": "gpu"}, "--device must be one of auto, cpu, cuda, got 'gpu'"),
        ({"model": "mobilenet_v3_smal"}, "--model 'mobilenet_v3_smal': no such architecture; did you mean mobilenet_v3_small?"),
        ({"augment": "strong"}, "--augment 'strong': choose one of"),
        ({"out": ""}, "--out must be a path (a non-empty string or pathlib.Path), got ''"),
        ({"out": 123}, "--out must be a path (a non-empty string or pathlib.Path), got 123"),
        ({"export": 5}, "--export must be format names, comma-separated"),
        ({"export": ["onnx", "tfilte"]}, "--export onnx,tfilte: unknown format 'tfilte'"),
        ({"export": "onnx,,tflite"}, "--export 'onnx,,tflite': an empty item; give comma-separated format names"),
        ({"recipe": 5}, "--recipe must be a string, got 5"),
        ({"weights": 5}, "--weights must be a string, got 5"),
        ({"optimizer": "adam"}, "--optimizer must be one of adamw, rmsprop, sgd, got 'adam'"),
        ({"seed": -1}, "--seed -1: give a whole number ≥ 0"),
        ({"seed": 2**70}, f"--seed {2**70}: give a whole number from 0 to 4294967295"),
        ({"weights": "mobilenet_v2.tv_in1"}, "--weights mobilenet_v2.tv_in1: no such file, and no published checkpoint has that name; did you mean mobilenet_v2.tv_in1k?"),
        ({"teacher": "nowhere/run"}, "--teacher nowhere/run: no such run directory or file (a fine-tuned run dir"),
    ],
)
def test_train_refuses_values_of_the_wrong_type_in_one_line(options, message, tmp_path):
    options = {"out": tmp_path / "run", "weights": "none", **options}
    with pytest.raises(MobilenetsError) as raised:
        mobilenets.train(EXAMPLES, **options)
    assert str(raised.value).startswith(message)
    assert not (tmp_path / "run").exists()


def test_run_paths_and_switches_of_the_api_are_checked(tmp_path):
    with pytest.raises(MobilenetsError, match=r"the run directory must be a path \(a string or pathlib.Path\), got None"):
        mobilenets.load_run(None)
    with pytest.raises(MobilenetsError, match="the run directory is an empty string"):
        mobilenets.load_run("")
    run = mobilenets.api.Run(tmp_path)
    with pytest.raises(MobilenetsError, match="data must be a path"):
        run.evaluate(123)
    with pytest.raises(MobilenetsError, match="int8 must be True or False, got 'no'"):
        run.export("onnx", int8="no")


@pytest.mark.parametrize("argv", [["--out", ""], ["--out="], ["--out", " "]])
def test_an_empty_value_from_the_shell_is_refused_not_read_as_the_current_folder(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["datasets", "fashion-mnist", *argv, "--limit-per-class", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().endswith("an empty value; give one (for the current folder: --out .)")
    assert list(tmp_path.iterdir()) == []  # nothing written where "" would have pointed


def test_an_empty_value_of_an_option_that_is_no_folder_gets_no_folder_hint(capsys):
    code = main(["datasets", "fashion-mnist", "--classes", "", "--out", "x"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith('--classes "": an empty value; give one')


def test_robustness_from_python_refuses_the_arguments_it_sets_itself(tmp_path):
    with pytest.raises(MobilenetsError, match=r"unknown robustness option\(s\) log, run_dir; pass the run as the first"):
        mobilenets.robustness(tmp_path, run_dir=tmp_path, log=print)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"calibration_images": 0}, "calibration_images 0: give a whole number ≥ 1"),
        ({"max_val_images": 0}, "max_val_images 0: give a whole number ≥ 1"),
        ({"threshold": -1}, "threshold -1: give a finite number ≥ 0"),
        ({"threshold": "1"}, "threshold '1': give a finite number ≥ 0"),
        ({"calibration": 64}, "Run.quantize: unknown option(s) calibration; known: calibration_images,"),
    ],
)
def test_run_quantize_refuses_what_the_command_line_refuses(options, message, tmp_path):
    # Refused before the run is even read: never a silent "all images" for 0, never a TypeError.
    with pytest.raises(MobilenetsError) as raised:
        mobilenets.api.Run(tmp_path).quantize("ptq", **options)
    assert str(raised.value).startswith(message)


def test_run_export_names_an_unknown_option(tmp_path):
    with pytest.raises(MobilenetsError, match=r"Run.export: unknown option\(s\) calibration; known: calibration_images"):
        mobilenets.api.Run(tmp_path).export("onnx", calibration=64)


def test_numpy_numbers_from_a_sweep_are_the_numbers_they_hold():
    import json

    import numpy as np

    from mobilenets.training.options import TrainOptions

    options = TrainOptions(epochs=np.int64(3), seed=np.uint8(1), lr=np.float32(0.5), width=np.float64(0.75))
    assert (type(options.epochs), type(options.seed), type(options.lr)) == (int, int, float)
    assert json.dumps([options.epochs, options.seed, options.lr, options.width]) == "[3, 1, 0.5, 0.75]"


def test_the_run_api_refuses_what_is_no_path_or_switch_before_loading_anything(tmp_path):
    from PIL import Image

    with pytest.raises(MobilenetsError, match="nowhere: does not exist; pass a run directory written by"):
        mobilenets.api.Run(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MobilenetsError, match="file: is a file, not a run directory"):
        mobilenets.api.Run(tmp_path / "file")
    run = mobilenets.api.Run(tmp_path)  # an empty folder: each call below is refused before it is read
    for images, kind in ((Image.new("RGB", (4, 4)), "PngImageFile|Image"), (None, "NoneType"), (3, "int"), (b"x.png", "bytes")):
        with pytest.raises(MobilenetsError, match=rf"images must be an image file or folder path, or a list of them, got a ({kind})"):
            run.predict(images)
    for top_k in (None, 0, True, 2.0):
        with pytest.raises(MobilenetsError, match=rf"top_k must be a whole number ≥ 1, got {top_k!r}"):
            run.predict([tmp_path], top_k=top_k)
    with pytest.raises(MobilenetsError, match=r"--batch-size 0: give a whole number ≥ 1"):
        run.predict([tmp_path], batch_size=0)
    with pytest.raises(MobilenetsError, match=r"format must be one format name such as 'onnx', got \['onnx', 'tflite'\]"):
        run.export(["onnx", "tflite"])
    with pytest.raises(MobilenetsError, match="data must be a path"):
        run.export("onnx", data=3)
    with pytest.raises(MobilenetsError, match="bn_adapt must be True or False, got 'yes'"):
        run.evaluate(tmp_path, bn_adapt="yes")
    with pytest.raises(MobilenetsError, match="write_report must be True or False, got 'no'"):
        run.quantize(write_report="no")
    with pytest.raises(MobilenetsError, match="write_report must be True or False, got 0"):
        run.export("onnx", write_report=0)


def test_the_stages_warnings_reach_the_logger_as_warnings(caplog):
    from mobilenets.api import _log_line

    with caplog.at_level("INFO", logger="mobilenets"):
        for line in ("warning: skipped 5 file(s)", "WARNING: int8 is SLOWER than fp32", "quantizing: warning: none"):
            _log_line(line)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "skipped 5 file(s)"),
        ("WARNING", "int8 is SLOWER than fp32"),
        ("INFO", "quantizing: warning: none"),
    ]


def test_a_level_the_user_set_survives_the_librarys_console_output(tmp_path):
    import subprocess
    import sys

    script = (
        "import logging, mobilenets\n"
        "logger = logging.getLogger('mobilenets')\n"
        "logger.setLevel(logging.WARNING)\n"
        f"mobilenets.Run({str(tmp_path)!r})\n"
        "print(logging.getLevelName(logger.level), len(logger.handlers))\n"
    )
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["WARNING", "1"]  # quieted as asked, and a console handler for what remains
