"""Issue 17: each finding about predict/export/quantize/bench/profile/evaluate/robustness/datasets, reproduced.

Nothing silently wrong, nothing lost, and every bad input one line with exit code 2. Tiny models only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import WORK, tiny_run_dir, write_class_folder

from mobilenets.cli.main import main
from mobilenets.models.factory import create_model


@pytest.fixture(scope="module")
def data() -> Path:
    return write_class_folder(WORK / "errors-data", classes=3, per_class=6)


@pytest.fixture(scope="module")
def run_dir(data) -> Path:
    return tiny_run_dir(WORK / "errors-run", data, model="mobilenet_v3_small_minimal", width=0.25)


@pytest.fixture(scope="module")
def other_classes(data) -> Path:
    folder = WORK / "errors-other"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for image in sorted((data / sorted(p.name for p in data.iterdir())[0]).glob("*.png"))[:3]:
            shutil.copy(image, folder / name / image.name)
    return folder


@pytest.fixture(scope="module")
def bare_checkpoint() -> Path:
    """A 10-class state dict with no metadata, width 0.5: the checkpoint a user saved with torch.save."""
    path = WORK / "bare_v2_w05.pth"
    torch.save(create_model("mobilenet_v2", num_classes=10, width=0.5).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    """`export RUN --int8 --out m.onnx --check-images 4` once for the module (fp32 + PTQ)."""
    out = WORK / "errors-export" / "m.onnx"
    assert main(["export", str(run_dir), "--int8", "--out", str(out), "--check-images", "4", "--calibration", "8"]) == 0
    return out


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"mobilenets {command}: ")]
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def an_image(data: Path) -> str:
    return str(sorted(data.rglob("*.png"))[0])


# --- 2: a bare checkpoint is not labelled with ImageNet's classes; --classes FILE names them ------------------


def test_finding02_bare_checkpoint_is_not_labelled_imagenet(bare_checkpoint, data, tmp_path, capsys):
    image = an_image(data)
    assert main(["predict", image, "--weights", str(bare_checkpoint), "--model", "mobilenet_v2", "--json"]) == 0
    labels = {entry["label"] for entry in json.loads(capsys.readouterr().out)[0]["top"]}
    assert labels <= {f"class_{i}" for i in range(10)}
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"thing{i}" for i in range(10)) + "\n")
    argv = ["predict", image, "--weights", str(bare_checkpoint), "--model", "mobilenet_v2", "--classes", str(names)]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["label"].startswith("thing")
    names.write_text("a\nb\n")
    assert main(argv) == 2
    assert "lists 2 names but the model has 10 outputs" in one_line_error(capsys, "predict")


def test_finding02_exported_labels_match_the_outputs():
    from mobilenets.deployment.onnx import deployment_metadata

    model = create_model("mobilenet_v3_small", num_classes=10, width=0.5)
    model.weights_metadata = {"classes": "imagenet"}  # what a bare checkpoint is described as
    assert json.loads(deployment_metadata(model)["labels"]) == [f"class_{i}" for i in range(10)]


# --- 5: quantize --data checks the folder's classes against the model's ---------------------------------------


def test_finding05_quantize_refuses_a_folder_of_other_classes(run_dir, other_classes, capsys):
    argv = ["quantize", "--weights", str(run_dir / "model.safetensors"), "--data", str(other_classes)]
    assert main([*argv, "--out", str(WORK / "never_int8.onnx")]) == 2
    assert "cat, dog are not classes of the model" in one_line_error(capsys, "quantize")
    assert not (WORK / "never_int8.onnx").exists()


def test_finding05_folder_labels_are_matched_by_name_not_position(tmp_path):
    from mobilenets.core.errors import MobilenetsError
    from mobilenets.deployment.loading import labels_for_model

    # The folder holds two of the model's three classes: sorted positions 0, 1 are the model's 1, 2.
    assert labels_for_model(tmp_path, ["b", "c"], [0, 1, 1], ["a", "b", "c"]) == [1, 2, 2]
    with pytest.raises(MobilenetsError, match="do not name their classes"):
        labels_for_model(tmp_path, ["b", "c"], [0, 1], None)


def test_device_export_check_images_are_labelled_by_the_models_class_names(tmp_path):
    from PIL import Image

    from mobilenets.core.errors import MobilenetsError
    from mobilenets.deployment.loading import ModelSource, source_images
    from mobilenets.models.factory import create_model

    model = create_model("mobilenet_v3_small", num_classes=3, width=0.25)
    model.weights_metadata = {"classes": ["ankle_boot", "bag", "coat"]}
    for name in ("bag", "coat"):  # two of its three classes, at sorted positions 0 and 1
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / name / "x.png")
    _, labels = source_images(ModelSource(weights=tmp_path / "w.safetensors"), tmp_path / "data", "val", model=model)
    assert labels == [1, 2]  # scored as bag and coat, not as ankle_boot and bag
    (tmp_path / "data" / "shoe").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "shoe" / "x.png")
    with pytest.raises(MobilenetsError, match=r"class folder\(s\) shoe are not classes of the model"):
        source_images(ModelSource(weights=tmp_path / "w.safetensors"), tmp_path / "data", "val", model=model)


# --- 6: a speed verdict inside the noise band is "no measurable difference", with the band given --------------


def test_finding06_speed_verdict_inside_the_noise_band():
    from mobilenets.deployment.timing import SpeedCheck, ratio_band, speed_verdict

    low, high = ratio_band([10.0, 11.0, 9.0, 10.5, 9.5, 10.0, 12.0], [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    assert low < 1.0 < high
    noisy = [SpeedCheck(1, 10.1, 10.0, low, high), SpeedCheck(32, 81.0, 100.0, 0.78, 0.84)]
    message = speed_verdict(noisy, "mobilenet_v2")
    assert message.startswith("WARNING: int8 is SLOWER than fp32 ONNX Runtime on this machine at batch 32 ")
    assert f"noise band {low:.2f}–{high:.2f}×" in message
    calm = speed_verdict([SpeedCheck(1, 10.1, 10.0, low, high)], "mobilenet_v2")
    assert calm.startswith("speed: no measurable difference") and "batch 1" in calm
    assert not SpeedCheck(1, 10.1, 10.0, low, high).clearly_faster


def test_finding06_bench_times_engines_interleaved(monkeypatch):
    from mobilenets.deployment import timing

    order: list[str] = []
    monkeypatch.setattr(timing.time, "sleep", lambda seconds: None)
    timing.time_engines({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 1, repeats=2, warmup=1)
    assert "".join(order) == "aabb" * 3  # each round: a settling + timed run of a, then of b


# --- 9: export --int8 does not replace the int8 model quantize chose ------------------------------------------


def test_finding09_export_int8_never_replaces_the_chosen_int8_model(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "model_int8.onnx").write_bytes(b"chosen by quantize")
    (run / "quantization.json").write_text(json.dumps({"method": "mixed precision (stem and first block)"}))
    # Named as the output, it is refused; by default it is kept and said to be (as --format all does), so
    # `train --quantize` then `export --int8` works (it used to fail).
    assert main(["export", str(run), "--int8", "--out", str(run / "model_int8.onnx")]) == 2
    line = one_line_error(capsys, "export")
    assert "already the run's int8 model (mixed precision" in line and "--out OTHER.onnx" in line
    assert (run / "model_int8.onnx").read_bytes() == b"chosen by quantize" and not (run / "model.onnx").exists()
    assert main(["export", str(run), "--int8"]) == 0
    assert "keeping the run's model_int8.onnx (mixed precision" in capsys.readouterr().out
    assert (run / "model_int8.onnx").read_bytes() == b"chosen by quantize" and (run / "model.onnx").exists()


# --- 11: a read-only --out is found out before the work --------------------------------------------------------


@pytest.mark.parametrize("command", ["quantize", "export", "robustness", "datasets"])
def test_finding11_unwritable_out_is_refused_before_the_work(command, run_dir, tmp_path, capsys, monkeypatch):
    from mobilenets.core import files

    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    out = blocker / "sub"
    worked = []
    for where in ("mobilenets.deployment.onnx", "mobilenets.deployment.quantization.runs"):  # quantize's own name
        monkeypatch.setattr(f"{where}.export_onnx", lambda *a, **k: worked.append(1))
    argv = {
        "quantize": ["quantize", str(run_dir), "--out", str(out / "m_int8.onnx")],
        "export": ["export", str(run_dir), "--out", str(out / "m.onnx")],
        "robustness": ["robustness", str(run_dir), "--out", str(out), "--quick"],
        "datasets": ["datasets", "idx", "--images", str(blocker), "--labels", str(blocker), "--out", str(out)],
    }[command]
    assert main(argv) == 2
    assert "--out" in one_line_error(capsys, command) and not worked
    assert files.check_writable(tmp_path / "fine") == tmp_path / "fine"


# --- 15: predict --width with a run; profile --width 0 ---------------------------------------------------------


def test_finding15_width_arguments(run_dir, data, capsys):
    assert main(["predict", an_image(data), "--weights", str(run_dir), "--width", "0.25", "--top", "1"]) == 0
    capsys.readouterr()
    assert main(["profile", "mobilenet_v1", "--width", "0"]) == 2
    assert "--width 0: the width multiplier must be > 0" in one_line_error(capsys, "profile")


# --- 16: truncated .onnx, predict with an .onnx, a text file as weights ----------------------------------------


def test_finding16_onnx_inputs(exported, data, tmp_path, capsys):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.read_bytes()[:3000])
    assert main(["bench", str(truncated)]) == 2
    assert "not a readable ONNX file" in one_line_error(capsys, "bench")
    assert main(["predict", an_image(data), "--weights", str(exported), "--top", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["top"][0]["label"] in {"astronaut", "chelsea", "coffee"}
    assert f"engine: onnxruntime ({exported})" in captured.err
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["predict", an_image(data), "--weights", str(notes), "--model", "mobilenet_v2"]) == 2
    line = one_line_error(capsys, "predict")
    assert f"{notes}: a text file, not model weights; pass a run directory, a .safetensors/.pth/.pt weights" in line


# --- 17: which folder is wrong, "does not exist", one resolution bound -----------------------------------------


def test_finding17_missing_data_folder_says_does_not_exist(run_dir, capsys):
    assert main(["quantize", "--weights", str(run_dir / "model.safetensors"), "--data", "/no/such/dir"]) == 2
    assert "/no/such/dir: does not exist" in one_line_error(capsys, "quantize")
    assert main(["evaluate", str(run_dir), "--data", "/no/such/dir"]) == 2
    assert "/no/such/dir: does not exist" in one_line_error(capsys, "evaluate")


@pytest.mark.parametrize(
    ("value", "bounds", "message", "fine"),
    [
        (float("nan"), {}, "--x nan: give a finite number", (None, -1, 0.5)),
        (float("inf"), {"above": 0}, "--x inf: give a finite number > 0", (1e-9, 5)),
        (0.0, {"above": 0, "example": 256}, "--x 0: give a finite number > 0, e.g. --x 256", (0.1,)),
        (-1, {"at_least": 0}, "--x -1: give a finite number ≥ 0", (0, 0.0, 3)),
        (-1, {"at_least": 0, "whole": True}, "--x -1: give a whole number ≥ 0", (0, 3)),
        (2.5, {"at_least": 1, "whole": True}, "--x 2.5: give a whole number ≥ 1", (1, 200)),
        (True, {"whole": True}, "--x True: give a whole number", (0,)),
        ("3", {}, "--x '3': give a finite number", (3,)),
    ],
)
def test_one_number_check_for_every_command(value, bounds, message, fine):
    from mobilenets.core.errors import MobilenetsError, check_number

    with pytest.raises(MobilenetsError) as raised:
        check_number("--x", value, **bounds)
    assert str(raised.value) == message
    for accepted in fine:
        check_number("--x", accepted, **bounds)


def test_ctrl_c_wrapped_by_a_library_is_an_interruption_not_an_internal_error(monkeypatch, capsys):
    # Ctrl-C during `export` reached the user as "internal error: TorchExportError" (torch.export wraps it).
    from mobilenets.cli.commands import profile

    def export_interrupted(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise RuntimeError("Failed to export the model with torch.export") from interrupt

    monkeypatch.setattr(profile, "run", export_interrupted)
    assert main(["profile", "mobilenet_v1"]) == 130
    assert capsys.readouterr().err == "mobilenets profile: interrupted\n"


def test_finding17_one_resolution_bound():
    from mobilenets.core.errors import MobilenetsError
    from mobilenets.models.preprocessing import MIN_RESOLUTION, check_resolution
    from mobilenets.training.configuration import choose_resolution

    assert check_resolution(MIN_RESOLUTION) == MIN_RESOLUTION
    with pytest.raises(MobilenetsError, match="too small"):
        choose_resolution("16", [])
    assert main(["profile", "mobilenet_v1", "--resolution", "16"]) == 2


def test_finding17_val_with_wrong_classes_blames_val(data, other_classes, tmp_path, capsys):
    argv = ["train", "--data", str(data), "--val", str(other_classes), "--out", str(tmp_path / "run")]
    assert main([*argv, "--model", "mobilenet_v3_small_minimal", "--width", "0.25", "--epochs", "1"]) == 2
    line = one_line_error(capsys, "train")
    assert f"{other_classes}: no images of the training classes" in line and "--val needs" in line


# --- 18: predict takes folders, skips bad files, names the engine; no --width for a bare checkpoint ------------


def test_finding18_predict_folder_skips_bad_files_and_names_the_engine(run_dir, data, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(data / sorted(p.name for p in data.iterdir())[0], folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert main(["predict", str(folder), "--weights", str(run_dir), "--json", "--top", "1"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 6
    assert "skipped" in captured.err and "broken.jpg" in captured.err and "engine: torch" in captured.err


def test_finding18_width_is_read_from_a_bare_checkpoint(bare_checkpoint):
    from mobilenets.deployment.loading import load_source_model, model_source

    lines: list[str] = []
    model = load_source_model(model_source(weights=bare_checkpoint, model_name="mobilenet_v2"), report=lines.append)
    assert model.architecture.options.get("width") == 0.5 and "width 0.5" in lines[0]


# --- 19: export --int8 --out names like a run; --check-images is honoured ---------------------------------------


def test_finding19_export_int8_naming_and_check_count(exported, capsys):
    from mobilenets.deployment.onnx import read_metadata

    assert "quantization" not in read_metadata(exported)  # m.onnx is the fp32 model
    assert "quantization" in read_metadata(exported.with_name("m_int8.onnx"))
    from mobilenets.deployment.export import onnx_paths
    from mobilenets.deployment.loading import ModelSource

    model = create_model("mobilenet_v1", num_classes=2, width=0.25)
    source = ModelSource(weights="w.safetensors")
    assert onnx_paths(source, model, Path("x_int8.onnx"), int8=True) == (Path("x.onnx"), Path("x_int8.onnx"))
    assert onnx_paths(source, model, None, int8=False) == (Path("w.onnx"), None)


def test_finding19_random_check_uses_the_requested_count(capsys):
    from mobilenets.deployment.export import export_model
    from mobilenets.deployment.loading import model_source

    lines: list[str] = []
    weights = WORK / "errors-v1.safetensors"
    from mobilenets.models.preprocessing import Preprocessing
    from mobilenets.models.weights import save_weights

    save_weights(
        create_model("mobilenet_v1", num_classes=2, width=0.25), weights, classes=["a", "b"],
        preprocessing=Preprocessing.for_resolution(32),
    )
    export_model(source=model_source(weights=weights), out=WORK / "v1.onnx", check_images=3, report=lines.append)
    assert "check vs PyTorch on 3 random inputs" in lines[1]


# --- 20: library noise ----------------------------------------------------------------------------------------


def test_finding20_quantizer_and_int8_warnings_speak_the_model(exported, capsys):
    import onnx

    from mobilenets.deployment.quantization import model_layer, quantize_ptq

    quantize_ptq(exported, WORK / "quiet_int8.onnx", np.random.default_rng(0).standard_normal((4, 3, 48, 48), np.float32))
    captured = capsys.readouterr()
    assert "Collecting tensor data" not in captured.out + captured.err
    graph = onnx.load(str(exported)).graph
    producers = {output: node for node in graph.node for output in node.output}
    weights = {initializer.name for initializer in graph.initializer}
    conv = next(node for node in graph.node if node.op_type == "Conv")
    assert model_layer(conv, producers, weights) == "stem.conv"


# --- 21: report.html opens with a summary; numbers and settings as a reader wants them ---------------------------


def test_finding21_report_summary_and_formats(run_dir, tmp_path):
    from mobilenets.reporting.run_report import write_report

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "config.json").write_text(json.dumps({"model": "m", "data": "d", "weight_decay": None, "optimizer": "adamw"}))
    (run / "epochs.csv").write_text("epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr\n1.0,2,0.5,2,0.4,0.00001\n")
    page = write_report(run).read_text()
    assert page.index("<h2>Summary</h2>") < page.index("All metrics")
    assert "Deploy: model.safetensors" in page and "Validation accuracy: 50.00% best" in page
    assert "<td>1</td>" in page and "1.00e-05" in page and "1.0000" not in page.split("Epochs")[1].split("</table>")[0]
    assert "<td>weight_decay</td><td>2.00e-02</td>" in page and "None" not in page


# --- 22: robustness and evaluate --------------------------------------------------------------------------------


def test_finding22_latency_table_lists_only_removals_the_model_has():
    from mobilenets.robustness.evaluate import latency_attribution

    model = create_model("mobilenet_v2", num_classes=2, width=0.35).eval()
    result = latency_attribution(model, 32, rounds=2, calls_per_round=1)
    assert [row["variant"] for row in result["variants"]] == ["full"]


def test_finding22_evaluate_wrong_classes_is_one_line(run_dir, other_classes, capsys):
    assert main(["evaluate", str(run_dir), "--data", str(other_classes)]) == 2
    line = one_line_error(capsys, "evaluate")
    assert "no images of the model's classes" in line and "cat, dog" in line


def test_finding22_robustness_quick_with_progress(run_dir, tmp_path):
    from mobilenets.robustness.run import robustness_report

    steps: list[tuple[int, int]] = []
    outcome = robustness_report(
        run_dir=run_dir,
        quick=True,
        adversarial=False,
        shifts=False,
        out=tmp_path / "robustness",
        log=lambda line: None,
        progress=lambda done, total, what: steps.append((done, total)),
    )
    assert outcome.result["severities"] == [3] and len(outcome.result["corruptions"]) == 15
    assert steps[0] == (0, 15) and steps[-1] == (14, 15) and "latency" not in outcome.result
    assert outcome.paths["html"].exists()


# --- 24: docs cite nothing a user of the repository cannot open ------------------------------------------------


def test_finding24_no_citations_of_files_outside_the_repository():
    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "src").rglob("*.py"), *(root / "src").rglob("*.yaml")]
    offending = [
        f"{path.relative_to(root)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "REFERENCE" in line or "seed 00" in line or "shared/seeds" in line
    ]
    assert not offending, offending


# --- siblings: other bad inputs of these commands are one line, exit code 2 -----------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "mobilenet_v1", "--threads", "0"], "--threads 0: give a whole number ≥ 1, e.g. --threads 2"),
        (["export", "RUN", "--check-images", "0"], "--check-images 0: give a whole number ≥ 1"),
        (["quantize", "RUN", "--qat-epochs", "0"], "--qat-epochs 0: give a whole number ≥ 1"),
        (["evaluate", "RUN", "--data", "DATA", "--batch-size", "0"], "--batch-size 0: give a whole number ≥ 1"),
        (["predict", "IMAGE", "--weights", "RUN", "--classes", "/no/classes.txt"], "/no/classes.txt: does not exist"),
        (["profile", "mobilenet_v1", "--num-classes", "0"], "--num-classes 0: a classifier needs at least 1 output"),
    ],
)
def test_sibling_bad_inputs_are_one_line(argv, message, run_dir, data, capsys):
    replace = {"RUN": str(run_dir), "DATA": str(data), "IMAGE": an_image(data)}
    assert main([replace.get(a, a) for a in argv]) == 2
    assert message in one_line_error(capsys, argv[0])


@pytest.mark.parametrize("argv", [["profile", "mobilenet_v3_small"]])  # both its outputs use stdout_console
def test_a_closed_pipe_ends_profiles_tables_quietly_like_every_other_command(argv):
    # rich's console exited with status 1 when the reader had gone (`mobilenets profile … | head -1`).
    import os
    import subprocess
    import sys

    reader, writer = os.pipe()
    os.close(reader)
    done = subprocess.run(
        [sys.executable, "-m", "mobilenets", *argv], stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120
    )
    os.close(writer)
    assert (done.returncode, done.stderr) == (0, "")
