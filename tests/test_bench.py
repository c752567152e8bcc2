"""``mobilenets bench``: three engines side by side, JSON output, bad input. No timing assertions."""

from __future__ import annotations

import json

import pytest
from deploy_helpers import WORK, tiny_run_dir, write_class_folder

from mobilenets import kernels
from mobilenets.cli.commands.bench import Timing, measure, parse_batches
from mobilenets.cli.main import main


def test_measure_counts_repeats_and_reports_spread():
    calls = []
    timing = measure(lambda: calls.append(1), "engine", batch=4, warmup=2, repeats=5)
    assert len(calls) == 7 and timing.repeats == 5
    assert timing.min_ms <= timing.median_ms <= timing.max_ms
    assert Timing("e", 32, 100.0, 90.0, 110.0, 3).images_per_second == 320.0


def test_parse_batches():
    assert parse_batches("1,32") == [1, 32]
    for bad in ("0", "a,b", "1,,2"):
        with pytest.raises(Exception, match="comma-separated positive integers"):
            parse_batches(bad)
    with pytest.raises(Exception, match=r"--batch '': give at least one value, e\.g\. 1,32"):
        parse_batches("")


def test_bench_json_times_pytorch_both_onnx_runtimes_and_the_int8_engine(capsys):
    data = write_class_folder(WORK / "bench-data", classes=2, per_class=4)
    run_dir = tiny_run_dir(WORK / "bench-run", data, model="mobilenet_v3_small_minimal", width=0.25)
    assert (
        main(["bench", str(run_dir), "--batch", "1,2", "--repeats", "2", "--warmup", "1", "--threads", "1", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 1
    engines = [(r["engine"], r["batch"]) for r in report["results"]]
    timed = ("pytorch fp32 eager", "onnxruntime fp32", "onnxruntime int8", "mobilenets int8")
    if not kernels.int8_available():
        timed = timed[:3]
    assert engines == [(engine, batch) for batch in (1, 2) for engine in timed]
    assert all(r["median_ms"] > 0 and r["repeats"] == 2 for r in report["results"])
    assert report["notes"][0] == "int8: PTQ calibrated on random inputs (timing only; accuracy: quantize)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "/nonexistent.onnx"], "/nonexistent.onnx: not found"),
        (["bench", "mobilenet_v2", "--batch", "x"], "--batch 'x': give comma-separated positive integers"),
        (["bench", "mobilenet_v3_smal"], "mobilenet_v3_smal: no such file, architecture or published weights; "
         "did you mean mobilenet_v3_small?"),
        (["bench", "mobilenet_v2.tv_in1"], "did you mean mobilenet_v2.tv_in1k?"),
        (["bench", "mobilenet_v2", "--width", "0"], "--width 0: the width multiplier must be > 0"),
    ],
)
def test_bench_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mobilenets bench: error: ") and message in err


@pytest.mark.slow  # three device conversions: ~45 s on 2 cores (each exporter is tested in test_device_exports.py)
def test_bench_times_a_runs_device_files_in_their_own_runtimes(capsys):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("executorch")
    pytest.importorskip("tflite_micro")
    data = write_class_folder(WORK / "bench-device-data", classes=2, per_class=4)
    import numpy as np

    from mobilenets.deployment.executorch import export_executorch
    from mobilenets.deployment.litert import export_litert
    from mobilenets.deployment.micro import export_micro
    from mobilenets.models.weights import load_model

    run_dir = tiny_run_dir(WORK / "bench-device-run", data, model="mobilenet_v1", width=0.25)
    model = load_model(run_dir / "model.safetensors").eval()
    calibration = np.random.default_rng(0).standard_normal((8, 3, 48, 48), dtype=np.float32)
    # The exporters alone (`export --format` would also verify each file: tested in test_device_exports.py).
    export_litert(model, run_dir / "model_int8.tflite", int8=True, calibration=calibration)
    export_executorch(model, run_dir / "model_int8.pte", int8=True, calibration=calibration)
    export_micro(model, run_dir / "model_micro_int8.tflite", calibration=calibration)
    capsys.readouterr()
    argv = ["bench", str(run_dir), "--batch", "1,2", "--repeats", "2", "--warmup", "1", "--threads", "1", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    engines = {(r["engine"], r["batch"]) for r in report["results"]}
    # LiteRT resizes its batch-1 file to the batch; the .pte and the microcontroller file run at batch 1 only.
    for batch in (1, 2):
        assert ("litert int8", batch) in engines and ("onnxruntime fp32", batch) in engines
    assert ("executorch int8", 1) in engines and ("executorch int8", 2) not in engines
    assert ("tflite micro int8", 1) in engines and ("tflite micro int8", 2) not in engines
    assert "executorch int8: timed at batch 1 only (model_int8.pte has a fixed batch)" in report["notes"]
    assert "tflite micro int8: timed at batch 1 only (a microcontroller runs one image at a time)" in report["notes"]
    assert len(report["notes"]) == len(set(report["notes"]))


def test_more_threads_than_cores_is_said_before_timing(monkeypatch, capsys):
    from mobilenets.cli.commands import bench
    from mobilenets.core.errors import MobilenetsError

    def stop(*args):
        raise MobilenetsError("stopped before the engines")

    monkeypatch.setattr(bench, "usable_cpu_count", lambda: 2)
    monkeypatch.setattr(bench, "resolve_engines", stop)
    assert main(["bench", "mobilenet_v3_small", "--threads", "64"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "warning: --threads 64 is more than this machine's 2 cores; the timings will be slower than any deployment "
        "would see (use --threads 2 or fewer)"
    )
