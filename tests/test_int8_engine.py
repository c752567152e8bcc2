"""mobilenets' int8 engine: every op equals its PyTorch float64 reference, real weights keep their
predictions, results do not depend on threads, and a run's calibration is kept and checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_helpers import random_crops

from mobilenets import kernels
from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.int8_engine import (
    CALIBRATION_FILE,
    SQUEEZE_EXCITE,
    Int8Engine,
    batches_of,
    load_for_run,
    plan,
    reference_forward,
    reference_head,
    save_calibration,
)
from mobilenets.deployment.onnx_runtime import onnx_logits, softmax
from mobilenets.models.factory import create_model
from mobilenets.models.fusion import fold_batchnorm
from mobilenets.models.preprocessing import Preprocessing

pytestmark = pytest.mark.skipif(not kernels.int8_available(), reason="the int8 engine's C++ library is unavailable")


def settled(name: str, size: int, **options) -> torch.nn.Module:
    """A random model whose BatchNorm statistics come from a few batches, so activations are in range."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **options).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def run_ops(engine: Int8Engine, images: torch.Tensor, count: int) -> torch.Tensor:
    """The engine's output after its first ``count`` ops (uint8 NHWC, or the pooled features)."""
    tensors = engine.tensors[: count * len(engine.ops[0].tensors)]
    return torch.ops.mobilenets_kernels.int8_forward(images, engine.ints[:count], engine.floats[:count], tensors)


CASES = [
    # V3: hard-swish, SE, 5×5, residuals; odd and non-square sizes exercise every border and tail.
    ("mobilenet_v3_small", {}, (37, 45)),
    ("mobilenet_v3_small", {"width": 0.75}, (32, 32)),
    ("mobilenet_v3_large_minimal", {}, (33, 33)),  # ReLU, no SE
    ("mobilenet_v2", {"width": 0.5}, (35, 30)),  # ReLU6, t=6 residuals, 1280-wide last conv
    ("mobilenet_v1", {"width": 0.25}, (40, 40)),  # ReLU, depthwise-separable blocks, no last conv
]


@pytest.mark.parametrize(("name", "options", "size"), CASES, ids=[f"{c[0]}-{c[2][0]}x{c[2][1]}" for c in CASES])
def test_every_op_equals_its_float64_reference(name, options, size):
    model = settled(name, max(size), **options)
    engine = Int8Engine(model, [torch.randn(6, 3, *size)])
    images = torch.randn(3, 3, *size)
    for count in range(1, len(engine.ops) + 1):
        if engine.ops[count - 1].kind == SQUEEZE_EXCITE:
            continue  # the C++ cannot stop after SE; the next op reads its output
        got = run_ops(engine, images, count)
        expected = reference_forward(engine, images, count)
        if count == len(engine.ops):  # pooled float features
            torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
            continue
        difference = (got.permute(0, 3, 1, 2).double() - expected).abs()
        # Integer sums are exact; only a value within float rounding of a rounding tie may land one step away.
        assert difference.max() <= 1, f"op {count - 1}: off by {difference.max()}"
        assert (difference > 0).double().mean() <= 2e-3, f"op {count - 1}"
    features = engine.features(images)
    torch.testing.assert_close(
        engine.head_forward(features).double(), reference_head(engine, features), rtol=1e-4, atol=1e-5
    )


def test_int8_engine_follows_the_float_model():
    model = settled("mobilenet_v3_small", 48)
    engine = Int8Engine(model, [torch.randn(16, 3, 48, 48)])
    images = torch.randn(16, 3, 48, 48)
    with torch.no_grad():
        expected = fold_batchnorm(model)(images)
    got = engine(images)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).norm() / expected.norm() < 0.1


def test_results_do_not_depend_on_the_thread_count():
    model = settled("mobilenet_v3_small", 40)
    engine = Int8Engine(model, [torch.randn(4, 3, 40, 40)])
    images = torch.randn(5, 3, 40, 40)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = engine(images)
        torch.set_num_threads(2)
        two = engine(images)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.equal(engine(images[3:4]), one[3:4])  # an image's result does not depend on its batch


def test_real_v2_int8_engine_agrees_with_fp32_on_real_photo_crops(real_v2_weights):
    from deploy_helpers import exported_v2

    from mobilenets.models.weights import load_model

    preprocessing = Preprocessing(224, 224)
    model = load_model("mobilenet_v2.tv_in1k")
    to_array = lambda crops: np.stack([preprocessing(crop).numpy() for crop in crops])  # noqa: E731
    engine = Int8Engine(model, batches_of(to_array(random_crops(128, seed=1))))
    images = to_array(random_crops(192, seed=2))  # other crops than calibration
    reference = softmax(onnx_logits(exported_v2("mobilenet_v2.tv_in1k"), images))
    int8 = np.concatenate([engine(batch).numpy() for batch in batches_of(images)])
    agree = reference.argmax(1) == int8.argmax(1)
    confident = reference.max(1) >= 0.5
    assert confident.sum() >= 60
    # The thresholds the ONNX Runtime int8 model of the same weights is held to (test_quantization.py).
    assert agree[confident].mean() >= 0.97
    assert agree.mean() >= 0.85


def test_a_runs_calibration_is_kept_and_tied_to_its_weights(tmp_path):
    model = settled("mobilenet_v3_small", 32, width=0.5)
    engine = Int8Engine(model, [torch.randn(4, 3, 32, 32)])
    path = save_calibration(engine, model, tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_for_run(model, tmp_path)(images), engine(images))
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    with pytest.raises(MobilenetsError, match=r"other weights.*mobilenets quantize"):
        load_for_run(model, tmp_path)
    path.write_text("{not json")
    with pytest.raises(MobilenetsError, match=r"unreadable.*mobilenets quantize"):
        load_for_run(model, tmp_path)
    with pytest.raises(MobilenetsError, match=r"not found.*mobilenets quantize"):
        load_for_run(model, tmp_path / "elsewhere")


def test_a_network_the_engine_does_not_implement_is_refused_plainly():
    model = fold_batchnorm(create_model("mobilenet_v1_full_conv", num_classes=10, width=0.25))
    with pytest.raises(MobilenetsError, match="int8 engine"):
        plan(model)


def test_evaluate_and_predict_run_a_quantized_run_on_the_int8_engine(capsys):
    import json

    from deploy_helpers import WORK, tiny_run_dir, write_class_folder

    from mobilenets.cli.main import main
    from mobilenets.deployment.quantization import quantize_run

    data = write_class_folder(WORK / "int8-engine-data", classes=3, per_class=6)
    run = tiny_run_dir(WORK / "int8-engine-run", data)
    assert main(["evaluate", str(run), "--data", str(data), "--engine", "int8"]) == 2
    assert "int8_engine.json: not found" in capsys.readouterr().err  # one line, naming the fix
    quantize_run(run, method="ptq", calibration_images=8, threshold=100.0, report=lambda line: None)
    assert main(["evaluate", str(run), "--data", str(data), "--engine", "int8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine"] == "int8" and 0.0 <= report["accuracy"] <= 1.0
    image = next((data / "coffee").glob("*.png"))
    assert main(["predict", str(image), "--weights", str(run), "--engine", "int8", "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert any(name in printed for name in ("astronaut", "chelsea", "coffee"))  # untrained: labels, right or wrong


@pytest.mark.slow
@pytest.mark.parametrize("march", ["-march=haswell", "-march=cascadelake"], ids=["portable", "vnni-without-vbmi"])
def test_other_instruction_sets_compute_the_same(march, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("int8_engine_builds.py")
    result = subprocess.run([sys.executable, str(script), march, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "vnni False" in result.stdout if march == "-march=haswell" else "vnni True" in result.stdout


def test_a_loss_beyond_the_threshold_is_said_with_what_to_use_instead(tmp_path):
    from mobilenets.deployment.int8_engine import check_engine
    from mobilenets.deployment.onnx import export_onnx

    model = settled("mobilenet_v3_small", 224, width=0.5)  # the export's input size
    fp32 = export_onnx(model, tmp_path / "model.onnx")
    images = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    lines = []
    _, figures = check_engine(model, images, images, np.zeros(4, dtype=int), fp32, (1,), lines.append, threshold=-1.0)
    assert figures["int8_engine_within_threshold"] is False
    assert lines[-1].startswith("WARNING: the int8 engine loses") and "--engine onnxruntime" in lines[-1]
