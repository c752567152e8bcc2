"""Deployment commands refuse bad or contradictory arguments in one line (exit 2), before writing anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from deploy_helpers import WORK, write_class_folder

from mobilenets.cli.main import main
from mobilenets.models.factory import create_model
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import save_weights


@pytest.fixture(scope="module")
def data() -> Path:
    return write_class_folder(WORK / "arguments-data", classes=2, per_class=4, size=32)


@pytest.fixture(scope="module")
def run(data) -> Path:
    """A tiny 32-px width-0.25 run directory (untrained) with one epoch's curves."""
    folder = WORK / "arguments-run"
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    items = [[str(p), label] for label, name in enumerate(classes) for p in sorted((data / name).glob("*.png"))]
    net = create_model("mobilenet_v3_small", num_classes=len(classes), width=0.25)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(net, folder / "model.safetensors", classes=classes, preprocessing=Preprocessing.for_resolution(32))
    (folder / "split.json").write_text(json.dumps({"root": str(data), "classes": classes, "train": items[::2], "val": items[1::2]}))
    (folder / "config.json").write_text(json.dumps({"model": "mobilenet_v3_small", "width": 0.25, "data": str(data)}))
    (folder / "metrics.json").write_text(json.dumps({"best_val_accuracy": 0.5, "final_val_accuracy": 0.5}))
    (folder / "epochs.csv").write_text(
        "epoch,train_loss,val_loss,train_accuracy,val_accuracy\n1,1.0,1.0,0.5,0.5\n"
    )
    return folder


def refused(argv: list[str], capsys) -> str:
    """The one line a refused command prints (exit 2)."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "internal error" not in err
    return err.splitlines()[-1]


def files_of(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def read_only(monkeypatch):
    """Make folders read-only as a read-only mount is (tests run as root, for whom chmod is no barrier)."""
    import errno
    import tempfile

    original = tempfile.NamedTemporaryFile
    blocked: list[Path] = []

    def named_temporary_file(*args, dir=None, **kwargs):
        if dir is not None and any(Path(dir).resolve() == b.resolve() for b in blocked):
            raise OSError(errno.EROFS, "Read-only file system")
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", named_temporary_file)
    return blocked.append


# 1. bench


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--int8", "nonexist.onnx"], "--int8 nonexist.onnx: not found; pass an int8 .onnx file"),
        (["--resolution", "0"], "--resolution 0 is too small"),
        (["--batch", "1,,2"], "--batch '1,,2': an empty item"),
        (["--width", "0.5"], "--width: the run directory"),
        (["--model", "mobilenet_v2"], "--model: the run directory"),
    ],
)
def test_bench_refuses_bad_options_in_one_line(run, options, expected, capsys):
    assert expected in refused(["bench", str(run), *options], capsys)


def test_bench_refuses_a_file_that_is_not_onnx(run, data, capsys):
    png = next((data / "astronaut").glob("*.png"))
    line = refused(["bench", str(run), "--int8", str(png)], capsys)
    assert f"--int8 {png}: not an ONNX model" in line


def test_bench_refuses_a_resolution_its_int8_file_cannot_take(run, tmp_path, capsys):
    import onnx

    from mobilenets.deployment.onnx import export_onnx
    from mobilenets.models.weights import load_model

    fp32, fixed = tmp_path / "fixed.onnx", tmp_path / "fixed_int8.onnx"
    export_onnx(load_model(run / "model.safetensors"), fp32)  # 32 px, fixed spatial size
    # An fp32 file as --int8 would be timed as int8: refused.
    assert f"--int8 {fp32}: an fp32 ONNX model (no quantized operators)" in refused(["bench", str(run), "--int8", str(fp32)], capsys)
    # A quantize/dequantize pair on the input makes it an int8 file as far as the option check goes.
    graph = onnx.load(str(fp32))
    first = graph.graph.node[0]
    scale = onnx.helper.make_tensor("q_scale", onnx.TensorProto.FLOAT, [], [0.02])
    zero = onnx.helper.make_tensor("q_zero", onnx.TensorProto.INT8, [], [0])
    graph.graph.initializer.extend([scale, zero])
    source = first.input[0]
    quantized = [onnx.helper.make_node("QuantizeLinear", [source, "q_scale", "q_zero"], ["q_in"]),
                 onnx.helper.make_node("DequantizeLinear", ["q_in", "q_scale", "q_zero"], ["dq_in"])]  # fmt: skip
    first.input[0] = "dq_in"
    for position, node in enumerate(quantized):
        graph.graph.node.insert(position, node)
    onnx.save(graph, str(fixed))
    line = refused(["bench", str(run), "--resolution", "64", "--int8", str(fixed)], capsys)
    assert line.endswith(f"--resolution 64: --int8 {fixed} takes 32-px inputs; time at 32 (drop --resolution) "
                         "or pass --int8 FILE made at 64 px")


# 2. report


def test_report_on_a_read_only_run_is_one_line(run, read_only, capsys):
    read_only(run)
    line = refused(["report", str(run)], capsys)
    assert line.endswith(f"RUN_DIR {run}: cannot write there (Read-only file system); pass a writable RUN_DIR")


# 3, 4. options that do not apply, and numbers that are not finite


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--model", "mobilenet_v2"], "--model, --width and --classes are for --weights"),
        (["--qat-epochs", "5"], "--qat-epochs 5: QAT runs only with --method auto or qat"),
        (["--threshold", "nan"], "--threshold nan: give a finite number"),
        (["--threshold", "inf"], "--threshold inf: give a finite number"),
    ],
)
def test_quantize_refuses_ignored_or_non_finite_options(run, options, expected, capsys):
    assert expected in refused(["quantize", str(run), "--method", "ptq", *options], capsys)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--format", "onnx", "--ram-kb", "100"], "--ram-kb 100: a microcontroller budget, for --format tflite-micro"),
        (["--format", "coreml", "--ram-kb", "10", "--calibration", "5"], "--ram-kb 10: a microcontroller budget"),
        (["--format", "coreml", "--calibration", "5"], "--calibration 5: Core ML int8 quantizes the weights only"),
        (["--format", "coreml", "--check-images", "3"], "--check-images 3: Core ML packages are validated, not run"),
        (["--format", "onnx", "--calibration", "7"], "--calibration 7: calibration images are for the int8 file"),
        (["--format", "all", "--flash-kb", "9"], "drop it for --format all without --int8"),
        (["--format", "tflite-micro", "--ram-kb", "inf"], "--ram-kb inf: give a finite number > 0, e.g. --ram-kb 256"),
        (["--format", "tflite-micro", "--flash-kb", "1e400"], "--flash-kb inf: give a finite number > 0"),
    ],
)
def test_export_refuses_options_that_do_not_apply(run, options, expected, capsys):
    before = files_of(run)
    assert expected in refused(["export", str(run), *options], capsys)
    assert files_of(run) == before


# 5. calibration images are found before anything is written


@pytest.mark.parametrize("format", ["onnx", "tflite"])
def test_export_int8_without_images_writes_nothing(run, tmp_path, monkeypatch, format, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(run / "model.safetensors", tmp_path / "w.safetensors")
    line = refused(["export", "--weights", "w.safetensors", "--format", format, "--int8"], capsys)
    assert "needs calibration images" in line and "pass --data DIR" in line
    assert files_of(tmp_path) == {"w.safetensors"}


# 6, 8. evaluate


def test_evaluate_refuses_bn_adapt_with_the_int8_engine(run, data, capsys):
    line = refused(["evaluate", str(run), "--data", str(data), "--engine", "int8", "--bn-adapt"], capsys)
    assert line.endswith(
        "--bn-adapt changes the fp32 weights; the int8 engine runs the weights it was calibrated for: "
        "use --engine onnxruntime or torch with --bn-adapt"
    )


def test_evaluate_names_a_flat_folder_as_one(run, data, tmp_path, capsys):
    import shutil

    for index, path in enumerate(sorted(data.glob("*/*.png"))[:3]):
        shutil.copy(path, tmp_path / f"{index:05d}.png")
    line = refused(["evaluate", str(run), "--data", str(tmp_path)], capsys)
    assert "holds files but no class subfolders" in line and "DIR/CLASS/*.jpg" in line
    assert "00000.png" not in line


def test_export_to_a_read_only_run_names_the_run_not_out(run, read_only, capsys):
    read_only(run)
    line = refused(["export", str(run)], capsys)
    assert "--out" not in line
    assert line.endswith(f"RUN_DIR {run}: cannot write there (Read-only file system); pass a writable RUN_DIR")


def test_export_to_a_read_only_current_folder_says_so(run, tmp_path, monkeypatch, read_only, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(run / "model.safetensors", tmp_path / "w.safetensors")
    read_only(tmp_path)
    line = refused(["export", "--weights", "w.safetensors"], capsys)
    assert "cannot write there; pass --out DIR" in line and "the current folder" in line


# 7. tflite-micro verdict


def test_micro_advice_follows_the_models_resolution():
    from mobilenets.deployment.micro import activation_advice

    assert "(96 → 64 px needs ~2.25× less)" in activation_advice(96)
    assert "(48 → 32 px needs ~2.25× less)" in activation_advice(48)
    at_minimum = activation_advice(32)
    assert "already the smallest input" in at_minimum and "→" not in at_minimum


@pytest.mark.slow  # a real TFLite Micro conversion: ~15 s on 2 cores (the advice itself is tested above)
def test_micro_verdict_is_said_once(run, tmp_path, capsys):
    pytest.importorskip("tflite_micro")
    line = refused(
        ["export", str(run), "--format", "tflite-micro", "--ram-kb", "1", "--check-images", "2",
         "--calibration", "4", "--out", str(tmp_path)],
        capsys,
    )
    printed = capsys.readouterr()
    assert "does not fit" in line and "32 px is already the smallest input" in line
    assert "does not fit" not in printed.out


def test_search_into_a_read_only_place_is_one_line_before_any_training(data, tmp_path, read_only, capsys):
    read_only(tmp_path)
    out = tmp_path / "search"
    line = refused(["search", "--data", str(data), "--out", str(out)], capsys)
    assert line.endswith(f"--out {out}: cannot write there (Read-only file system); pass a writable --out")
    assert not out.exists()


def test_export_checks_its_data_before_writing_and_skips_unreadable_images(run, data, tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "model.onnx"
    empty.mkdir()
    assert "no images found" in refused(["export", str(run), "--data", str(empty), "--out", str(out)], capsys)
    assert not out.exists()  # the file is not written before its check images are known
    odd = tmp_path / "odd"
    shutil.copytree(data, odd)
    first_class = sorted(p for p in odd.iterdir() if p.is_dir())[0]
    (first_class / ".hidden.png").write_bytes(b"not an image")  # hidden: not even scanned
    (first_class / "truncated.png").write_bytes(next(first_class.glob("*.png")).read_bytes()[:40])
    assert main(["export", str(run), "--data", str(odd), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 file(s) (not an image Pillow can read" in captured.err and ".hidden.png" not in captured.err
    assert out.exists() and "check vs PyTorch on 8 real images" in captured.out


def test_a_blank_line_between_class_names_is_refused_not_dropped(tmp_path):
    # Dropping it shifted every later name onto the next output, silently mislabelling them.
    from mobilenets.core.errors import MobilenetsError
    from mobilenets.deployment.loading import read_classes_file

    names = tmp_path / "classes.txt"
    names.write_text("\n\ncat\n\ndog\nbird\n\n")
    with pytest.raises(MobilenetsError) as refused:
        read_classes_file(names, 3)
    assert str(refused.value) == (
        f"--classes {names}: line 4 is blank; give one class name per line, in output order, with no blank line "
        "between names"
    )
    names.write_text("\ncat\ndog\nbird\n\n")  # blank lines around the names are not between them
    assert read_classes_file(names, 3) == ["cat", "dog", "bird"]
