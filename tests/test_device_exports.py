"""Device exports (issue 18): each file runs in its own runtime and agrees with PyTorch.

Tiny models at 32–48 px keep the fast tests quick; models get BatchNorm statistics from data first, so
their logits have a real spread (an untrained model's are ~1e-10 and every class ties).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets import create_model
from mobilenets.core.errors import MobilenetsError

ROOT = Path(__file__).resolve().parent.parent


def settled(name: str, size: int, classes: int = 4, **options) -> torch.nn.Module:
    """A model whose BatchNorm running statistics come from one batch of inputs (cheap, deterministic)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, **options)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, size, size))
    torch.nn.init.normal_(model.classifier.weight, 0, 0.5)
    model.weights_metadata = {"classes": [f"c{i}" for i in range(classes)]}
    return model.eval()


def images(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def v3():
    return settled("mobilenet_v3_small", 32, width=0.5)


@pytest.fixture(scope="module")
def litert_files(v3, tmp_path_factory):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    from mobilenets.deployment.litert import export_litert

    folder = tmp_path_factory.mktemp("litert")
    fp32 = export_litert(v3, folder / "model.tflite", input_size=32)
    int8 = export_litert(v3, folder / "model_int8.tflite", int8=True, calibration=images(32, 32, seed=1))
    return fp32, int8


def test_litert_fp32_matches_pytorch(v3, litert_files):
    from mobilenets.deployment.litert import read_metadata, verify_litert

    record = verify_litert(litert_files[0], v3, images(16, 32, seed=2), labels=np.arange(16) % 4)
    assert record.precision == "fp32" and record.agreement == 1.0 and record.max_abs_diff < 1e-4
    assert record.partitions == 1 and record.latency_ms > 0 and record.bytes == litert_files[0].stat().st_size
    assert record.accuracy is not None and record.reference_accuracy == record.accuracy
    metadata = read_metadata(litert_files[0])
    assert metadata["labels"] == ["c0", "c1", "c2", "c3"] and metadata["preprocessing"]["input_size"] == 32
    assert metadata["input"]["input_shape"] == [1, 32, 32, 3]


def test_litert_int8_v3_is_one_xnnpack_partition_with_int8_io(v3, litert_files):
    from mobilenets.deployment.litert import delegate_partitions, read_metadata, verify_litert

    assert delegate_partitions(litert_files[1].read_bytes()) == (1, [])
    record = verify_litert(litert_files[1], v3, images(16, 32, seed=2))
    assert record.precision == "int8" and record.partitions == 1 and record.agreement >= 0.5
    assert record.bytes < 0.5 * litert_files[0].stat().st_size
    quantization = read_metadata(litert_files[1])["input"]
    assert quantization["input_dtype"] == "int8" and quantization["output_dtype"] == "int8"
    assert quantization["input_quantization"]["scale"] > 0


@pytest.mark.slow
def test_litert_int8_with_int8_hard_swish_splits_and_is_refused(v3, litert_files, tmp_path):
    from mobilenets.deployment.litert import convert_fp32, delegate_partitions, quantize_int8

    calibration = images(8, 32, seed=1).transpose(0, 2, 3, 1).copy()
    content = quantize_int8(convert_fp32(v3, 32), calibration, float_ops=())
    partitions, outside = delegate_partitions(content)
    assert partitions > 1 and set(outside) == {"HARD_SWISH"}


def test_micro_file_runs_in_tflm_with_exact_arena_and_budget_verdicts(tmp_path):
    pytest.importorskip("tflite_micro")
    from mobilenets.deployment.micro import _runs, export_micro, micro_budget, verify_micro

    model = settled("mobilenet_v1", 32, width=0.25)
    path = export_micro(model, tmp_path / "model_micro_int8.tflite", calibration=images(16, 32, seed=1))
    record = verify_micro(path, model, images(8, 32, seed=2))
    assert record.format == "tflite-micro" and record.precision == "int8" and record.agreement is not None
    # TFLM computes what TFLite's own reference kernels compute on the same file (agreement with fp32 is
    # judged on a trained model in benchmarks/device_formats.py; a random one on noise says little).
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from mobilenets.deployment.litert import run_nhwc
    from mobilenets.deployment.micro import run_micro

    reference = Interpreter(model_content=path.read_bytes(), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    reference.allocate_tensors()
    scale = record.input["output_quantization"]["scale"]
    x = images(4, 32, seed=2)
    assert np.abs(run_micro(path, x, record.arena_bytes) - run_nhwc(reference, x)).max() <= 2 * scale
    shape = (1, 32, 32, 3)
    assert _runs(path, record.arena_bytes, shape) and not _runs(path, record.arena_bytes - 1, shape)
    fits = micro_budget(path, arena_bytes=record.arena_bytes, ram_kb=256, flash_kb=1024)
    assert fits.fits and fits.verdict.startswith("model_micro_int8.tflite fits")
    over = micro_budget(path, arena_bytes=record.arena_bytes, ram_kb=1, flash_kb=1)
    assert not over.fits and "RAM budget 1 KB" in over.verdict and "flash budget 1 KB" in over.verdict
    assert "32 px is already the smallest input" in over.verdict and "\n" not in over.verdict  # a 32-px model
    with pytest.raises(MobilenetsError, match="does not fit"):
        over.raise_if_over()
    assert [p.name for p in tmp_path.iterdir()] == ["model_micro_int8.tflite"]  # no temporary left


def test_micro_file_drops_bias_quantization_arrays_with_bit_identical_outputs(tmp_path):
    pytest.importorskip("tflite_micro")
    from ai_edge_litert import schema_py_generated as schema

    from mobilenets.deployment.litert import convert_fp32, quantize_int8
    from mobilenets.deployment.micro import run_micro, without_bias_quantization

    model = settled("mobilenet_v1", 32, width=0.25)
    calibration = np.ascontiguousarray(images(16, 32, seed=1).transpose(0, 2, 3, 1))
    full = quantize_int8(convert_fp32(model, 32), calibration, float_ops=())
    lean = without_bias_quantization(full)
    parsed = schema.ModelT.InitFromPackedBuf(bytearray(lean), 0)
    biases = [t for t in parsed.subgraphs[0].tensors if t.type == schema.TensorType.INT32]
    assert biases and all(t.quantization is None or t.quantization.scale is None for t in biases)
    assert len(lean) < len(full) - 12 * 8  # at least the stem's 8 channels × (float32 scale + int64 zero point)
    (tmp_path / "full.tflite").write_bytes(full)
    (tmp_path / "lean.tflite").write_bytes(lean)
    x = images(4, 32, seed=2)
    expected = run_micro(tmp_path / "full.tflite", x, 1 << 20)
    assert np.ptp(expected) > 0 and np.array_equal(run_micro(tmp_path / "lean.tflite", x, 1 << 20), expected)


def test_micro_v3_small_with_constants_stored_after_the_flatbuffer_runs_in_tflm(v3, tmp_path, monkeypatch):
    # Past 256 KB of constants ai-edge-quantizer stores them after the flatbuffer (offset buffers); dropping
    # the bias arrays repacked the flatbuffer alone, and TFLM refused the file: "Constant buffer 2 specified
    # an out of range offset" (V3-Small and any model of more than ~0.5 MB).
    pytest.importorskip("tflite_micro")
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from mobilenets.deployment import micro
    from mobilenets.deployment.litert import read_metadata, run_nhwc

    repacked = []
    lean = micro.without_bias_quantization
    monkeypatch.setattr(micro, "without_bias_quantization", lambda content: repacked.append(content) or lean(content))
    path = micro.export_micro(v3, tmp_path / "model_micro_int8.tflite", calibration=images(16, 32, seed=1))
    assert any(buffer.offset > 1 for buffer in schema.ModelT.InitFromPackedBuf(bytearray(repacked[0]), 0).buffers)
    reference = Interpreter(model_content=path.read_bytes(), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    reference.allocate_tensors()
    x = images(4, 32, seed=2)
    outputs = micro.run_micro(path, x, 1 << 20)
    scale = read_metadata(path)["input"]["output_quantization"]["scale"]
    assert np.ptp(outputs) > 0 and np.abs(outputs - run_nhwc(reference, x)).max() <= 2 * scale


def test_litert_int8_ranges_cover_the_calibration_images_input_and_logits(v3, litert_files):
    # The quantizer's default calibration averaged the images' ranges (0.95 × so far + 0.05 × next): a trained
    # V3-Small's logits got [-1.75, 2.0] for a real [-3.1, 4.5], and the file agreed with PyTorch on 77%.
    from mobilenets.deployment.device_files import reference_logits
    from mobilenets.deployment.litert import read_metadata

    calibration = images(32, 32, seed=1)  # what litert_files calibrated on
    quantization = read_metadata(litert_files[1])["input"]
    logits = reference_logits(v3, calibration)
    for key, low, high in (("input", calibration.min(), calibration.max()), ("output", logits.min(), logits.max())):
        scale, zero_point = (
            quantization[f"{key}_quantization"]["scale"],
            quantization[f"{key}_quantization"]["zero_point"],
        )
        assert scale * (-128 - zero_point) <= low + scale and high - scale <= scale * (127 - zero_point), key


@pytest.mark.parametrize(
    ("accuracy", "reference", "agreement", "warned"),
    [
        (0.43, 0.53, 0.77, "loses 10.00 points of top-1"),
        (0.52, 0.53, 0.95, None),
        (None, None, 0.97, "loses 3.00 points of top-1 agreement"),
    ],
    ids=["labelled-drop", "within-threshold", "unlabelled"],
)
def test_an_int8_file_that_loses_more_than_quantizes_threshold_is_a_warning(accuracy, reference, agreement, warned):
    from mobilenets.deployment.device_export import drop_warning
    from mobilenets.deployment.device_files import DeviceFile

    record = DeviceFile("tflite", Path("run/model_int8.tflite"), 1, "LiteRT", "int8", images=100, agreement=agreement)
    record.accuracy, record.reference_accuracy = accuracy, reference
    warning = drop_warning(record)
    if warned is None:
        assert warning is None
    else:
        assert warning.startswith(f"WARNING: model_int8.tflite {warned} against PyTorch fp32 on these 100 images")
        assert "(threshold 1; one image is 1.00 points here)" in warning and "\n" not in warning
    record.precision = "fp32"
    assert drop_warning(record) is None  # an fp32 file is judged by its max abs diff


class _HeadWith(torch.nn.Module):
    """A conv and a pooled head around one operator: the smallest model that carries it into a file."""

    def __init__(self, operator) -> None:
        super().__init__()
        self.conv, self.operator = torch.nn.Conv2d(3, 4, 3), operator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(self.conv(x)).mean((2, 3))


@pytest.mark.parametrize(
    ("operator", "runtime", "named"),
    [(torch.nn.functional.gelu, "TFLite Micro", "GELU"), (lambda y: y.sort(1)[0], "LiteRT", "STABLEHLO_SORT")],
    ids=["gelu", "sort"],
)
def test_micro_export_names_an_operator_a_runtime_lacks_and_writes_nothing(tmp_path, operator, runtime, named):
    # TFLM lacks GELU; LiteRT's own interpreter (which calibrates) already lacks the sort litert-torch writes.
    pytest.importorskip("tflite_micro")
    from mobilenets.deployment.micro import export_micro

    with pytest.raises(MobilenetsError, match=f"^{runtime} has no kernel for operator {named}; ") as raised:
        export_micro(
            _HeadWith(operator).eval(), tmp_path / "model_micro_int8.tflite", calibration=images(4, 16, seed=0)
        )
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_executorch_fp32_and_int8_are_one_delegate_call(tmp_path):
    pytest.importorskip("executorch")
    from mobilenets.deployment.executorch import export_executorch, read_metadata, verify_executorch

    model = settled("mobilenet_v1", 32, width=0.25)
    fp32 = export_executorch(model, tmp_path / "model.pte", input_size=32)
    record = verify_executorch(fp32, model, images(8, 32, seed=2))
    assert record.partitions == 1 and record.agreement == 1.0 and record.max_abs_diff < 1e-3
    int8 = export_executorch(model, tmp_path / "model_int8.pte", int8=True, calibration=images(16, 32, seed=1))
    record = verify_executorch(int8, model, images(8, 32, seed=2))
    # The single delegate call is the point here; agreement of an untrained model's int8 is noise (its logits
    # are nearly equal), so it is only required to be measured. Trained models: BENCHMARKS.md.
    assert record.precision == "int8" and record.partitions == 1 and record.agreement is not None
    assert read_metadata(int8)["labels"] == ["c0", "c1", "c2", "c3"]


def test_executorch_int8_keeps_the_stem_and_first_block_in_float():
    pytest.importorskip("executorch")
    from mobilenets.deployment.device_files import exportable
    from mobilenets.deployment.executorch import _quantize

    model = settled("mobilenet_v1", 32, width=0.25)
    converted = _quantize(exportable(model), torch.zeros(1, 3, 32, 32), images(8, 32, seed=1))
    weights = {}  # each convolution's module path → what feeds its weight: the float tensor, or a dequantize
    for node in converted.graph.nodes:
        if node.op == "call_function" and "conv2d" in str(node.target):
            path = list(node.meta["nn_module_stack"].values())[-1][0]
            weights[path] = "int8" if "dequantize_per_channel" in str(getattr(node.args[1], "target", "")) else "float"
    assert weights["model.stem.conv"] == weights["model.blocks.0.depthwise.conv"] == "float"
    assert weights["model.blocks.0.pointwise.conv"] == "float"
    assert {kind for path, kind in weights.items() if not path.startswith(("model.stem", "model.blocks.0."))} == {"int8"}


def test_coreml_package_is_validated_and_says_it_was_not_run(tmp_path):
    pytest.importorskip("coremltools")
    from mobilenets.deployment.coreml import export_coreml, verify_coreml

    model = settled("mobilenet_v1", 32, width=0.25)
    path = export_coreml(model, tmp_path / "model.mlpackage", input_size=32)
    record = verify_coreml(path, model, images(2, 32, seed=2))
    assert not record.ran and record.agreement is None and "not run" in record.notes[0]
    assert record.input["shape"] == [1, 3, 32, 32] and record.bytes > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]

    int8 = verify_coreml(export_coreml(model, tmp_path / "model_int8.mlpackage", input_size=32, int8=True), model)
    assert int8.precision == "int8" and not int8.ran
    assert re.match(r"\d+ int8 weight tensors \(per-channel\), activations in float", int8.notes[0])
    assert int(int8.notes[0].split()[0]) >= 10 and int8.bytes < 0.6 * record.bytes


@pytest.mark.parametrize(
    ("module", "function", "blocked"),
    [
        ("litert", "export_litert", "litert_torch"),
        ("executorch", "export_executorch", "executorch.exir"),
        ("micro", "export_micro", "tflite_micro.python.tflite_micro.runtime"),
        ("coreml", "export_coreml", "coremltools"),
    ],
)
def test_missing_extra_says_which_command_installs_it(module, function, blocked, monkeypatch, tmp_path):
    import importlib

    export = getattr(importlib.import_module(f"mobilenets.deployment.{module}"), function)
    monkeypatch.setitem(sys.modules, blocked, None)  # `import` of a None entry raises ImportError
    kwargs = {"calibration": images(1, 32, seed=0)} if module == "micro" else {"input_size": 32}
    with pytest.raises(MobilenetsError) as error:
        export(settled("mobilenet_v1", 32, width=0.25), tmp_path / "model.out", **kwargs)
    assert "pip install 'mobilenets[edge]'" in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_int8_without_calibration_is_one_clear_line(v3, tmp_path):
    pytest.importorskip("litert_torch")
    from mobilenets.deployment.litert import export_litert

    with pytest.raises(MobilenetsError, match="needs calibration images"):
        export_litert(v3, tmp_path / "model_int8.tflite", int8=True, input_size=32)
    assert list(tmp_path.iterdir()) == []


# The device-side LiteRT snippet: only ai_edge_litert, NumPy and Pillow; labels and preprocessing from the file.
# README/docs carry it between <!-- litert-snippet-start --> and <!-- litert-snippet-end --> once merged;
# until then this copy is the one tested.
LITERT_SNIPPET = """
# A fresh Python with only ai-edge-litert, numpy and Pillow: labels and preprocessing come from the file.
import json

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

content = open("model.tflite", "rb").read()
model = schema.Model.GetRootAs(content, 0)
entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
meta = json.loads(model.Buffers(entries[b"mobilenets"]).DataAsNumpy().tobytes())
labels, pre = meta["labels"], meta["preprocessing"]  # input_size, resize_size, interpolation, mean, std

image = Image.open("photo.jpg").convert("RGB")
w, h = image.size
r = pre["resize_size"]  # short side to r (long side truncated), then a centered input_size crop
size = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
image = image.resize(size, {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[pre["interpolation"]])
s = pre["input_size"]
left, top = round((size[0] - s) / 2), round((size[1] - s) / 2)
image = image.crop((left, top, left + s, top + s))
x = ((np.asarray(image, np.float32) / 255 - np.float32(pre["mean"])) / np.float32(pre["std"]))[None]  # NHWC

interpreter = Interpreter(model_content=content)
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
if inp["dtype"] == np.int8:  # an int8 file takes int8: q = round(x / scale) + zero_point
    scale, zero_point = inp["quantization"]
    x = np.clip(np.round(x / scale) + zero_point, -128, 127)
interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
interpreter.invoke()
logits = interpreter.get_tensor(out["index"])[0].astype(np.float32)
if out["dtype"] == np.int8:  # and returns int8: real = scale * (q - zero_point)
    scale, zero_point = out["quantization"]
    logits = scale * (logits - zero_point)
p = np.exp(logits - logits.max())
p /= p.sum()
for i in np.argsort(-p)[:3]:
    print(f"{p[i]:.4f} {labels[i]}")
"""


def litert_snippet() -> str:
    for page in ("README.md", "docs/deployment.md"):
        text = (ROOT / page).read_text()
        match = re.search(r"<!-- litert-snippet-start -->\s*```python\n(.*?)```", text, re.S)
        if match:
            return match.group(1)
    return LITERT_SNIPPET


GUARD = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "mobilenets", "torchvision", "scipy", "litert_torch", "executorch"):
            raise ImportError(f"{name} is not available on the deployment machine")
sys.meta_path.insert(0, Refuse())
"""


@pytest.mark.parametrize("index", [0, 1], ids=["fp32", "int8"])
def test_litert_snippet_classifies_with_ai_edge_litert_numpy_pillow_only(index, v3, litert_files, tmp_path):
    from PIL import Image

    from mobilenets.deployment.litert import run_nhwc

    (tmp_path / "model.tflite").symlink_to(litert_files[index])
    pixels = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95)
    result = subprocess.run(
        [sys.executable, "-c", GUARD + litert_snippet()], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()[-3:]
    assert len(lines) == 3 and all(line.split(" ", 1)[1] in {"c0", "c1", "c2", "c3"} for line in lines)
    # The same image through mobilenets' own path gives the same top class.
    from mobilenets.deployment.litert import _interpreter
    from mobilenets.models.preprocessing import Preprocessing

    x = Preprocessing(input_size=32, resize_size=37)(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    logits = run_nhwc(_interpreter(litert_files[index].read_bytes()), x[None].numpy())
    assert lines[0].endswith(f"c{int(logits.argmax())}")


@pytest.mark.slow
def test_executorch_int8_v3_is_one_delegate_call(v3, tmp_path):
    pytest.importorskip("executorch")
    from mobilenets.deployment.executorch import export_executorch, verify_executorch

    path = export_executorch(v3, tmp_path / "model_int8.pte", int8=True, calibration=images(16, 32, seed=1))
    record = verify_executorch(path, v3, images(8, 32, seed=2))
    assert record.partitions == 1 and record.agreement >= 0.5


@pytest.mark.slow
def test_micro_v1_quarter_width_at_96px_meets_the_budget(tmp_path):
    pytest.importorskip("tflite_micro")
    from mobilenets.deployment.micro import export_micro, micro_budget, verify_micro

    model = settled("mobilenet_v1", 96, classes=10, width=0.25)
    path = export_micro(model, tmp_path / "model_micro_int8.tflite", calibration=images(32, 96, seed=1))
    record = verify_micro(path, model, images(8, 96, seed=2))
    budget = micro_budget(path, arena_bytes=record.arena_bytes, ram_kb=150, flash_kb=300)
    assert budget.fits, budget.verdict


def test_agreement_is_also_reported_on_the_images_fp32_has_decided():
    from mobilenets.deployment.device_files import DeviceFile, compare

    reference = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [2.0, 2.01, 0.0], [0.0, 0.0, 4.0]])
    outputs = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [2.01, 2.0, 0.0], [0.0, 3.0, 4.0]])
    record = compare(DeviceFile("tflite", Path("m.tflite"), 1, "LiteRT", "int8"), outputs, reference, None, exact=False)
    # Image 2 is a near-tie in fp32 (0.497 against 0.502) and flipped; the three decided images all agree.
    assert record.agreement == 0.75 and record.decided_images == 3 and record.decided_agreement == 1.0


def test_ctrl_c_during_a_conversion_stops_after_it_and_leaves_no_unverified_file(tmp_path, monkeypatch, capsys):
    # litert-torch runs Python callbacks from native code that swallowed a Ctrl-C: the export went on.
    import contextlib
    import signal

    pytest.importorskip("litert_torch")
    from deploy_helpers import tiny_run_dir, write_class_folder

    from mobilenets.cli.main import main
    from mobilenets.deployment import device_export

    data = write_class_folder(tmp_path / "data", classes=2, per_class=3)
    run_dir = tiny_run_dir(tmp_path / "run", data)
    converted = []
    handler = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN in a background job

    def conversion_that_swallows_ctrl_c(module, spec, model, path, **options):
        with contextlib.suppress(KeyboardInterrupt):  # what the native callbacks did with it
            signal.raise_signal(signal.SIGINT)
        path.write_bytes(b"converted")
        converted.append(path)
        return path

    monkeypatch.setattr(device_export, "_export", conversion_that_swallows_ctrl_c)
    assert main(["export", str(run_dir), "--format", "tflite", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.endswith("mobilenets export: interrupted\n")
    assert converted and not converted[0].exists()
    assert signal.getsignal(signal.SIGINT) is handler


def test_deployment_table_paths_are_relative_to_the_run_or_absolute(tmp_path, monkeypatch):
    from mobilenets.deployment.device_export import _relative

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    assert _relative(Path("run/model.tflite"), tmp_path / "run") == "model.tflite"
    # Written with --out elsewhere: was "exports/model.tflite", relative to wherever the command ran.
    assert _relative(Path("exports/model.tflite"), tmp_path / "run") == str(tmp_path / "exports" / "model.tflite")
