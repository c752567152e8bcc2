"""ONNX export: metadata, graph form, numbers against PyTorch, and the deployer's snippet run for real."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from deploy_helpers import WORK, exported_v2, photos, tiny_run_dir, write_class_folder

from mobilenets.cli.main import main
from mobilenets.deployment.onnx import OPSET, check_export, read_metadata
from mobilenets.deployment.onnx_runtime import OnnxClassifier
from mobilenets.deployment.predict import predict_images
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run() -> Path:
    data = write_class_folder(WORK / "export-data")
    return tiny_run_dir(WORK / "export-run", data)


@pytest.fixture(scope="module")
def export_command_output(tiny_run) -> str:
    """`mobilenets export RUN_DIR` once for the module (export takes seconds); its printout is checked below."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(tiny_run), "--check-images", "4"]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def tiny_onnx(tiny_run, export_command_output) -> Path:
    return tiny_run / "model.onnx"


def test_metadata_describes_labels_and_preprocessing(tiny_onnx):
    metadata = read_metadata(tiny_onnx)
    assert metadata["labels"] == '["astronaut", "chelsea", "coffee"]'
    assert metadata["preprocessing"] == (
        '{"input_size": 48, "resize_size": 55, "interpolation": "bilinear", '
        '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'
    )
    assert metadata["opset"] == str(OPSET) == "18"
    assert '"name": "mobilenet_v3_small"' in metadata["architecture"]


def test_graph_has_single_op_hardswish_folded_bn_and_dynamic_batch(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model)
    ops = Counter(node.op_type for node in model.graph.node)
    # V3-Small: 19 hard-swish activations and 9 SE gates, each one op; BN folded into the 52 convs.
    assert ops["HardSwish"] == 19 and ops["HardSigmoid"] == 9 and ops["Conv"] == 52
    assert "BatchNormalization" not in ops and "Div" not in ops and "Clip" not in ops
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]


def test_onnx_runtime_matches_pytorch_at_several_batch_sizes(tiny_run, tiny_onnx):
    model = load_model(tiny_run / "model.safetensors")
    for batch in (1, 3):
        check = check_export(model, tiny_onnx, torch.randn(batch, 3, 48, 48))
        assert check.images == batch
        assert check.max_abs_diff < 1e-4
        assert check.top1_agreement == 1.0


def test_runtime_preprocessing_matches_pytorch_preprocessing():
    from mobilenets.deployment.onnx_runtime import ImagePreprocessing

    for name, image in photos()[:3]:
        for interpolation in ("bilinear", "bicubic"):
            ours = Preprocessing(224, 256, interpolation)
            theirs = ImagePreprocessing(**ours.to_dict())
            np.testing.assert_allclose(theirs(image), ours(image).numpy(), atol=1e-5, err_msg=name)


def test_real_v2_weights_export_matches_pytorch_on_real_photos(real_v2_weights):
    path = exported_v2("mobilenet_v2.tv_in1k")
    model = load_model("mobilenet_v2.tv_in1k")
    preprocessing = Preprocessing.from_dict(model.weights_metadata["preprocessing"])
    images = torch.stack([preprocessing(image) for _, image in photos()])
    check = check_export(model, path, images)
    assert check.max_abs_diff < 1e-3 and check.top1_agreement == 1.0
    assert path.stat().st_size < 14.5e6  # 3.5M float32 parameters, no stack traces or debug strings


def deploy_snippet(page: str = "README.md") -> str:
    text = (ROOT / page).read_text()
    match = re.search(r"<!-- deploy-snippet-start -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{page} lost its deployment snippet"
    return match.group(1)


def test_readme_and_deployment_docs_show_the_same_snippet():
    assert deploy_snippet("README.md") == deploy_snippet("docs/deployment.md")


# Runs the snippet where importing torch or mobilenets fails, as on a deployment machine without them.
GUARD = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "mobilenets", "torchvision", "scipy"):
            raise ImportError(f"{name} is not available on the deployment machine")
sys.meta_path.insert(0, Refuse())
"""


def test_readme_snippet_classifies_with_onnxruntime_numpy_pillow_only(tmp_path, real_v2_weights):
    path = exported_v2("mobilenet_v2.tv_in1k")
    (tmp_path / "model.onnx").symlink_to(path)
    dict(photos())["chelsea"].save(tmp_path / "photo.jpg", quality=95)
    result = subprocess.run(
        [sys.executable, "-c", GUARD + deploy_snippet()], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    expected = predict_images(load_model("mobilenet_v2.tv_in1k"), [tmp_path / "photo.jpg"], top_k=3)[0].top
    for line, (label, _, probability) in zip(lines, expected, strict=True):
        printed_probability, printed_label = line.split(" ", 1)
        assert printed_label == label
        assert float(printed_probability) == pytest.approx(probability, abs=2e-4)
    assert lines[0].endswith("Egyptian cat")


def test_onnx_classifier_reads_everything_from_metadata(tiny_run, tiny_onnx):
    classifier = OnnxClassifier(tiny_onnx)
    assert classifier.labels == ["astronaut", "chelsea", "coffee"]
    top = classifier.classify([image for _, image in photos()[:2]], top_k=3)
    assert [sorted(label for label, _ in row) for row in top] == [["astronaut", "chelsea", "coffee"]] * 2
    assert all(abs(sum(p for _, p in row) - 1.0) < 1e-5 for row in top)


def test_export_command_checks_against_pytorch_on_real_images(tiny_run, export_command_output):
    printed = export_command_output
    assert f"wrote {tiny_run / 'model.onnx'} (fp32, opset 18" in printed
    match = re.search(r"check vs PyTorch on 4 real images: max abs diff (\S+), top-1 agreement 100.0%", printed)
    assert match and float(match.group(1)) < 1e-4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "/nonexistent/run"], "/nonexistent/run: not found"),
        (["export"], "name a model: a RUN_DIR, or --weights"),
        (["export", "--weights", "mobilenet_v2.tv_in1k", "--out", "x.txt"], "--out x.txt: name the file *.onnx"),
    ],
)
def test_export_command_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mobilenets export: error: ") and message in err


def test_a_program_logging_at_info_gets_no_line_per_exporter_pass(tmp_path, caplog):
    import logging

    from mobilenets.deployment.onnx import EXPORTER_LOGGERS, export_onnx
    from mobilenets.models.factory import create_model

    with caplog.at_level(logging.INFO):  # the root logger, as logging.basicConfig(level=INFO) sets it
        export_onnx(create_model("mobilenet_v3_small", num_classes=3, width=0.25), tmp_path / "m.onnx")
    chatter = [r.getMessage() for r in caplog.records if r.name.split(".")[0] in {"onnxscript", "onnx_ir", "torch"}]
    assert chatter == []
    assert [logging.getLogger(name).level for name in EXPORTER_LOGGERS] == [logging.NOTSET] * 3  # restored
