"""quantize's ``out``, method and run directory are refused before any work and before any folder is made, and
``export --int8`` keeps the int8 file ``quantize`` actually wrote (a review of the Python API)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from deploy_helpers import WORK, tiny_run_dir, write_class_folder

import mobilenets
from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.export import export_model
from mobilenets.deployment.loading import model_source
from mobilenets.deployment.quantization import quantize_run, runs


@pytest.fixture(scope="module")
def tiny_run() -> Path:
    data = write_class_folder(WORK / "quantize-out-data", classes=3, per_class=8)
    # MobileNet v1 (27 convs) exports in half the time of V3; the paths checked here are the same.
    return tiny_run_dir(WORK / "quantize-out-run", data, model="mobilenet_v1", width=0.25)


@pytest.fixture
def no_work(monkeypatch):
    """A refusal must come before the long steps: the ONNX export and the images fail the test if reached."""

    def started(*args, **kwargs):
        raise AssertionError("the work started before the refusal")

    # Where quantize_run and quantize_folder look them up (mobilenets.deployment.quantization.runs).
    monkeypatch.setattr(runs, "export_onnx", started)
    monkeypatch.setattr(runs, "load_images", started)


def tree(*folders: Path) -> set[Path]:
    return {path for folder in folders for path in folder.rglob("*")}


def refusal(call) -> str:
    with pytest.raises(MobilenetsError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message  # one line
    return message


# --- 2: a folder as out ---------------------------------------------------------------------------------------


def test_a_folder_out_is_refused_before_the_work(tiny_run, tmp_path, no_work):
    # It used to run calibration, evaluation and timing, then fail renaming '.folder.pending' onto the folder.
    folder = tmp_path / "existing_folder"
    folder.mkdir()
    before = tree(tiny_run, tmp_path)
    message = refusal(lambda: mobilenets.Run(tiny_run).quantize(method="ptq", out=folder))
    assert f"--out {folder}: an existing folder" in message and str(folder / "model_int8.onnx") in message
    assert tree(tiny_run, tmp_path) == before


# --- 3: an empty out (and one that is not a path) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "said"), [("", "out is an empty string"), ("  ", "out is an empty string"), (5, "out must be the int8")]
)
def test_an_out_that_names_no_file_is_refused_not_replaced_by_the_default(tiny_run, no_work, out, said):
    # "" used to be read as "not given": RUN_DIR/model_int8.onnx was written instead.
    before = tree(tiny_run)
    message = refusal(lambda: mobilenets.Run(tiny_run).quantize(method="ptq", out=out))
    assert message.startswith(said) and "int8 file" in message
    assert tree(tiny_run) == before and not (tiny_run / "model_int8.onnx").exists()


def test_out_naming_the_fp32_model_quantize_writes_is_refused(tiny_run, no_work):
    message = refusal(lambda: quantize_run(tiny_run, method="ptq", out=tiny_run / "model.onnx", report=print))
    assert f"--out {tiny_run / 'model.onnx'}: the run's fp32 model" in message
    assert str(tiny_run / "model_int8.onnx") in message


def test_out_not_an_onnx_file_is_refused_as_the_command_line_refuses_it(tiny_run, tmp_path, no_work):
    out = tmp_path / "new" / "int8.bin"
    message = refusal(lambda: quantize_run(tiny_run, method="ptq", out=out, report=print))
    assert message == f"--out {out}: name the file *.onnx" and not (tmp_path / "new").exists()


# --- 4: nothing is created before the arguments and the run are checked ------------------------------------------


def test_a_missing_run_directory_is_refused_without_being_made(tmp_path):
    # check_writable(RUN_DIR) used to create it before the model was loaded.
    run = tmp_path / "nope_q"
    message = refusal(lambda: quantize_run(run, report=print))
    assert message.startswith(f"{run}: no model.safetensors") and "mobilenets train" in message
    assert not run.exists()


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"method": "bogus"}, "unknown method 'bogus'; choose auto, ptq, mixed or qat"),
        ({"calibration_method": "bogus"}, "unknown calibration method 'bogus'; choose one of minmax, percentile"),
        ({"calibration_method": ["minmax"]}, "unknown calibration method ['minmax']"),
    ],
)
def test_a_bad_method_is_refused_before_the_export_and_before_out_folders_are_made(
    tiny_run, tmp_path, no_work, options, said
):
    # --- 5: they used to be refused only after the whole ONNX export, and out's folders were made first.
    out = tmp_path / "nope_o" / "sub" / "x.onnx"
    run = mobilenets.Run(tiny_run)
    options = {"method": "ptq", **options}
    message = refusal(lambda: run.quantize(out=out, **options))
    assert message.startswith(said)
    assert not (tmp_path / "nope_o").exists() and not (tiny_run / "model.onnx").exists()


# --- 1: export --int8 keeps the int8 file the run's records name -----------------------------------------------


def onnx_int8_export(run: Path) -> tuple[list[str], list[Path]]:
    """``Run.export("onnx", int8=True)``'s work: its lines and the files it wrote."""
    lines: list[str] = []
    result = export_model(source=model_source(run_dir=run), format="onnx", int8=True, report=lines.append)
    return lines, [file.path for file in result.files]


@pytest.mark.slow  # a real quantize (calibration, evaluation, timing) and export: ~25 s; the variants below stay fast
def test_export_int8_keeps_the_int8_file_quantize_wrote_elsewhere_and_names_it(tiny_run, tmp_path, monkeypatch):
    # It said "keeping the run's model_int8.onnx" of a file that did not exist: quantize had written out=.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    elsewhere = tmp_path / "x" / "q2.onnx"  # its folder is made only when the file is written
    monkeypatch.chdir(tmp_path)  # out given relative to the working folder, as on a command line
    figures = quantize_run(run, method="ptq", calibration_images=8, threshold=100.0, out=Path("x/q2.onnx"), report=print)
    assert figures["int8_path"] == str(elsewhere) and elsewhere.exists()
    assert json.loads((run / "quantization.json").read_text())["path"] == str(elsewhere)  # absolute: see below
    assert not (run / "model_int8.onnx").exists() and not list(elsewhere.parent.glob(".*pending*"))
    monkeypatch.chdir(run)  # the export runs from another folder, where "x/q2.onnx" names no file
    lines, written = onnx_int8_export(run)
    kept = [line for line in lines if line.startswith("onnx int8: keeping")]
    assert kept == [
        f"onnx int8: keeping the run's int8 model {elsewhere} (ptq (minmax)), where `mobilenets quantize` wrote it "
        "after choosing and evaluating it; pass --out OTHER.onnx for a separate int8 export"
    ]
    assert elsewhere.exists()  # the file said to be kept is there
    assert written == [run / "model.onnx"] and not (run / "model_int8.onnx").exists()


def test_export_int8_writes_a_ptq_when_the_recorded_file_elsewhere_is_gone(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    gone = tmp_path / "x" / "q2.onnx"
    (run / "quantization.json").write_text(json.dumps({"path": str(gone), "method": "ptq (minmax)"}))
    lines, written = onnx_int8_export(run)
    assert f"onnx int8: {gone}, the run's int8 model in quantization.json (ptq (minmax)), no longer exists" in lines[0]
    assert not any("keeping" in line for line in lines)
    assert written == [run / "model.onnx", run / "model_int8.onnx"] and all(path.exists() for path in written)


@pytest.mark.parametrize("record", [{"method": "qat"}, {"method": "qat", "path": "RUN/model_int8.onnx"}])
def test_export_int8_refuses_to_take_the_place_of_a_missing_chosen_model(tiny_run, tmp_path, record):
    # The records describe RUN_DIR/model_int8.onnx: a plain PTQ there would be described by figures it never had.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    if "path" in record:
        record["path"] = str(run / "model_int8.onnx")
    (run / "quantization.json").write_text(json.dumps(record))
    message = refusal(lambda: onnx_int8_export(run))
    assert message.startswith(f"{run / 'model_int8.onnx'}: quantization.json and metrics.json describe it")
    assert "it is missing; re-run `mobilenets quantize" in message and "--out OTHER.onnx" in message
    assert not (run / "model.onnx").exists() and not (run / "model_int8.onnx").exists()


def test_export_int8_keeps_the_model_of_a_run_moved_since_quantize(tiny_run, tmp_path):
    # The record names the default file under the run's former place: it is this run's own model_int8.onnx.
    run = tmp_path / "moved" / tiny_run.name
    shutil.copytree(tiny_run, run)
    (run / "model_int8.onnx").write_bytes(b"chosen by quantize")
    former = tmp_path / "before" / tiny_run.name / "model_int8.onnx"
    (run / "quantization.json").write_text(json.dumps({"path": str(former), "method": "ptq (percentile)"}))
    lines, written = onnx_int8_export(run)
    assert lines[0].startswith("onnx int8: keeping the run's model_int8.onnx (ptq (percentile))")
    assert (run / "model_int8.onnx").read_bytes() == b"chosen by quantize" and written == [run / "model.onnx"]
