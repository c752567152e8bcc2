"""Robustness measurement: BN re-estimation, CE/mCE, attacks, latency variants, the command end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mobilenets.cli.main import main
from mobilenets.models.factory import create_model
from mobilenets.models.layers import SqueezeExcitation
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import save_weights
from mobilenets.robustness.evaluate import (
    adapt_batchnorm,
    adaptation_indices,
    apply_gamma,
    corruption_errors,
    expose,
    fgsm,
    find_int8_model,
    pgd,
    rescale,
    summarize,
    with_relu_for_hardswish,
    without_squeeze_excitation,
)

CLASSES = ["red", "green", "blue"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mobilenet_v3_small", num_classes=3, width=0.25).eval()


def settled_tiny_model() -> nn.Module:
    """``tiny_model`` with BatchNorm statistics from one batch, so its logits have a real spread."""
    model = tiny_model()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32))
    torch.nn.init.normal_(model.classifier.weight, 0, 0.5)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Test-time BatchNorm re-estimation
# --------------------------------------------------------------------------------------------------


def test_adapt_batchnorm_uses_the_target_statistics_and_leaves_the_model_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(8, 3, 32, 32) * 2 + 1
    adapted = adapt_batchnorm(model, images)
    # The original is untouched (a copy is adapted) ...
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # ... and the stem's BN now holds the batch statistics of the stem convolution's output.
    with torch.no_grad():
        features = model.stem.conv(images)
    assert torch.allclose(adapted.stem.bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(adapted.stem.bn.running_var, features.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert not adapted.training and not any(m.training for m in adapted.modules())
    # Weights are not trained.
    assert torch.equal(adapted.stem.conv.weight, model.stem.conv.weight)


def test_adapt_batchnorm_prior_mixes_source_and_target():
    model = tiny_model()
    images = torch.randn(4, 3, 32, 32)
    target = adapt_batchnorm(model, images)
    mixed = adapt_batchnorm(model, images, prior=12.0)  # 12 pseudo-samples of source vs 4 target images
    expected = 0.75 * model.stem.bn.running_mean + 0.25 * target.stem.bn.running_mean
    assert torch.allclose(mixed.stem.bn.running_mean, expected, atol=1e-6)


def test_adapt_batchnorm_undoes_a_contrast_shift():
    """A contrast change scales every stem activation; BN re-estimated on shifted images cancels it."""
    model = tiny_model()
    images = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        reference = adapt_batchnorm(model, images)(images)
        shifted = images * 3
        unadapted = model(shifted)
        adapted = adapt_batchnorm(model, shifted)(shifted)
    error_adapted = (adapted - reference).abs().max()
    error_unadapted = (unadapted - reference).abs().max()
    assert error_adapted < 0.02 * reference.abs().max()
    assert error_unadapted > 10 * error_adapted


def test_adaptation_sample_spans_the_classes_of_a_class_ordered_folder():
    labels = np.repeat(np.arange(10), 100)  # how folders list images: class by class
    chosen = adaptation_indices(len(labels), 32, seed=0)
    assert len(chosen) == 32 and len(set(chosen)) == 32 and np.all(np.diff(chosen) > 0)
    assert len(set(labels[chosen])) >= 8  # a random draw, not the first 32 (a single class)
    assert np.array_equal(chosen, adaptation_indices(len(labels), 32, seed=0))
    assert len(adaptation_indices(5, 32, seed=0)) == 5


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def test_corruption_error_and_mce_follow_the_definition():
    model = {"fog": {1: 0.9, 2: 0.7}, "contrast": {1: 0.8, 2: 0.6}}
    base = {"fog": {1: 0.8, 2: 0.4}, "contrast": {1: 0.8, 2: 0.6}}
    errors = corruption_errors(model, base, clean=0.95, baseline_clean=0.9)
    # CE_fog = (0.1 + 0.3) / (0.2 + 0.6) = 0.5; CE_contrast = 1.
    assert errors["ce"] == pytest.approx({"fog": 0.5, "contrast": 1.0})
    # Relative CE_fog = ((0.1-0.05) + (0.3-0.05)) / ((0.2-0.1) + (0.6-0.1)) = 0.3 / 0.6.
    assert errors["relative_ce"]["fog"] == pytest.approx(0.5)
    summary = summarize(model, clean=0.95)
    assert summary["mean_corrupted_accuracy"] == pytest.approx(0.75)
    assert summary["clean_vs_corrupt_ratio"] == pytest.approx(0.75 / 0.95)
    assert summary["held_out_mean_corrupted_accuracy"] is None


def test_a_perfect_baseline_gives_no_ce_instead_of_dividing_by_zero():
    errors = corruption_errors({"fog": {1: 0.5}}, {"fog": {1: 1.0}}, clean=0.9, baseline_clean=1.0)
    assert errors["ce"]["fog"] is None


# --------------------------------------------------------------------------------------------------
# Shifts and attacks
# --------------------------------------------------------------------------------------------------


def test_shift_identities():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.abs(expose(images, 0.0).astype(int) - images).max() <= 1
    assert np.array_equal(apply_gamma(images, 1.0), images)
    assert np.array_equal(rescale(images, 1.0), images)
    assert expose(images, 1.0).mean() > images.mean() > expose(images, -1.0).mean()
    assert rmse(rescale(images, 0.25), images) > rmse(rescale(images, 0.5), images) > 0


def rmse(a, b) -> float:
    return float(np.sqrt(((a.astype(float) - b) ** 2).mean()))


def test_attacks_stay_in_the_epsilon_ball_and_raise_the_loss():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    torch.manual_seed(0)
    pixels = torch.rand(16, 3, 8, 8)
    labels = model(pixels).argmax(1)  # start from correct predictions
    epsilon = 4 / 255
    clean_loss = nn.functional.cross_entropy(model(pixels), labels)
    for adversarial in (fgsm(model, pixels, labels, epsilon), pgd(model, pixels, labels, epsilon, steps=10)):
        assert (adversarial - pixels).abs().max() <= epsilon + 1e-6
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert nn.functional.cross_entropy(model(adversarial), labels) > clean_loss
    # ε = 0: PGD's random start and steps are projected back onto the images themselves.
    assert torch.equal(pgd(model, pixels, labels, 0.0, steps=3), pixels)


# --------------------------------------------------------------------------------------------------
# Latency variants
# --------------------------------------------------------------------------------------------------


def test_latency_variants_remove_se_and_hardswish_only():
    model = tiny_model()
    assert sum(isinstance(m, SqueezeExcitation) for m in model.modules()) == 9  # V3-Small: 9 of 11 blocks have SE
    no_se = without_squeeze_excitation(model)
    relu = with_relu_for_hardswish(model)
    assert not any(isinstance(m, SqueezeExcitation) for m in no_se.modules())
    assert not any(isinstance(m, nn.Hardswish) for m in relu.modules())
    assert any(isinstance(m, nn.Hardswish) for m in model.modules())  # the original is untouched
    assert sum(p.numel() for p in relu.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert no_se(x).shape == relu(x).shape == model(x).shape == (1, 3)


@pytest.mark.slow
def test_device_latency_times_each_variant_in_litert_fp32_and_int8():
    pytest.importorskip("litert_torch")
    from mobilenets.robustness.device_latency import device_latency_attribution
    from mobilenets.robustness.evaluate import latency_variants

    variants = latency_variants(settled_tiny_model())
    assert list(variants) == ["full", "no_se", "relu_for_hardswish", "no_se_relu"]
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    two = {name: variants[name] for name in ("full", "relu_for_hardswish")}
    found = device_latency_attribution(two, images, runtimes=["litert"], rounds=1, calls_per_round=2, log=print)
    assert [(t["runtime"], t["precision"]) for t in found["tables"]] == [("litert", "fp32"), ("litert", "int8")]
    for table in found["tables"]:
        assert [v["variant"] for v in table["variants"]] == ["full", "relu_for_hardswish"]
        assert all(v["median_ms"] > 0 for v in table["variants"]) and table["variants"][0]["saving_vs_full_ms"] == 0


def test_hardswish_share_of_the_litert_int8_error():
    pytest.importorskip("litert_torch")
    from mobilenets.robustness.device_latency import hardswish_int8_error_share

    model = settled_tiny_model()
    images = np.random.default_rng(0).standard_normal((24, 3, 32, 32), dtype=np.float32)
    share = hardswish_int8_error_share(model, images[:8], images[8:])
    assert share["images"] == 16 and share["calibration_images"] == 8
    # Two different files: hard-swish in int8 changes the logits (the share is their difference, signed).
    assert share["hardswish_int8"]["mean_abs_logit_error"] != share["hardswish_float"]["mean_abs_logit_error"]
    expected = 1 - share["hardswish_float"]["mean_abs_logit_error"] / share["hardswish_int8"]["mean_abs_logit_error"]
    assert share["share_of_logit_error"] == pytest.approx(expected)
    no_hardswish = create_model("mobilenet_v2", num_classes=3, width=0.25)
    assert hardswish_int8_error_share(no_hardswish, images[:8], images[8:]) is None


# --------------------------------------------------------------------------------------------------
# The command, end to end on a run directory
# --------------------------------------------------------------------------------------------------


def make_run(root: Path, name: str, seed: int) -> Path:
    """A run directory as training writes it, with 3 colour classes of 40×40 images in its val split."""
    rng = np.random.default_rng(0)
    val = []
    for label, cls in enumerate(CLASSES):
        folder = root / "data" / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            pixels = rng.integers(0, 80, (40, 40, 3)).astype(np.uint8)
            pixels[..., label] += 150
            path = folder / f"{i}.png"
            Image.fromarray(pixels).save(path)
            val.append([str(path.resolve()), label])
    run = root / name
    save_weights(tiny_model(seed), run / "model.safetensors", classes=CLASSES, preprocessing=Preprocessing(32, 32))
    (run / "split.json").write_text(
        json.dumps({"root": str(root / "data"), "classes": CLASSES, "train": [], "val": val})
    )
    (run / "metrics.json").write_text(json.dumps({"best_val_accuracy": 0.5, "final_val_accuracy": 0.4}))
    return run


QUICK = [
    "--corruptions",
    "gaussian_noise,contrast",
    "spatter",
    "--severities",
    "1-2",
    "--no-latency",
]
ATTACKS = ["--adversarial-images", "4"]  # not with --no-adversarial: a value for a part that does not run is refused


def test_robustness_command_writes_the_report(tmp_path, capsys):
    run = make_run(tmp_path, "run", seed=0)
    base = make_run(tmp_path, "base", seed=1)
    assert (
        main(
            [
                "robustness",
                str(run),
                "--baseline",
                str(base),
                "--bn-adapt",
                "--bn-samples",
                "6",
                "--json",
                *QUICK,
                *ATTACKS,
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and result["input_size"] == 32 and result["severity_table"] == "CIFAR-10-C"
    assert list(result["corruption_accuracy"]) == ["gaussian_noise", "contrast", "spatter"]
    assert set(result["corruption_accuracy"]["contrast"]) == {"1", "2"}
    # The mean CE is over the common corruptions only; spatter is held out. From severities 1-2 it is no mCE.
    ce = result["corruption_error"]
    expected = (
        100 * np.mean([ce["gaussian_noise"], ce["contrast"]])
        if None not in (ce["gaussian_noise"], ce["contrast"])
        else None
    )
    assert result["mean_ce"] == pytest.approx(expected)
    assert result["mce"] is None and result["relative_mce"] is None and result["bn_adapt"]["mce"] is None
    for key in ("shifts", "adversarial", "bn_adapt", "baseline"):
        assert key in result
    assert "latency" not in result
    for name in ("robustness.json", "robustness.md", "robustness.html", "accuracy_heatmap.png", "shifts.png"):
        assert (run / "robustness" / name).stat().st_size > 0
    assert "data:image/png;base64," in (run / "robustness" / "robustness.html").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] == 0.5 and metrics["final_val_accuracy"] == 0.4  # kept
    assert metrics["robustness"]["clean_accuracy"] == result["clean_accuracy"]
    assert metrics["robustness"]["bn_adapt_samples"] == 6 and metrics["robustness"]["severities"] == [1, 2]
    assert metrics["robustness"]["report"] == "robustness/robustness.html"  # relative: survives moving the run


def test_a_model_is_its_own_baseline_with_mce_100(tmp_path, capsys):
    run = make_run(tmp_path, "run", seed=0)
    args = ["robustness", str(run), "--baseline", str(run), "--no-shifts", "--no-adversarial", "--no-latency", "--json"]
    assert main([*args, "--corruptions", "gaussian_noise,contrast", "--severities", "1-5"]) == 0
    result = json.loads(capsys.readouterr().out)
    defined = [v for v in result["corruption_error"].values() if v is not None]
    assert defined and all(v == pytest.approx(1.0) for v in defined)
    assert result["mce"] == pytest.approx(100.0) and result["mean_ce"] == pytest.approx(100.0)
    markdown = (run / "robustness" / "robustness.md").read_text()
    assert "| mCE over 2 of the 15 common corruptions vs baseline | 100.0 |" in markdown


# --------------------------------------------------------------------------------------------------
# mCE only when it is one (Hendrycks & Dietterich 2019: all five severities); every label says what it covers
# --------------------------------------------------------------------------------------------------


def test_one_severity_is_a_mean_ce_not_an_mce(tmp_path, capsys):
    run = make_run(tmp_path, "run", seed=0)
    base = make_run(tmp_path, "base", seed=1)
    args = ["robustness", str(run), "--quick", "--baseline", str(base), "--corruptions", "noise", "--max-images", "9"]
    assert main([*args, "--out", str(tmp_path / "X"), "--no-shifts", "--no-adversarial"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert not re.search(r"mCE [0-9]", line) and re.search(r"mean CE [0-9.]+ vs baseline", line)
    assert "(3 of the 15 common corruptions, severity 3 only; mCE needs severities 1–5)" in line
    assert "mean corrupted " in line and "(3 of the 15 common corruptions, severity 3)" in line
    result = json.loads((tmp_path / "X" / "robustness.json").read_text())
    assert result["mce"] is None and result["held_out_mce"] is None and result["mean_ce"] is not None
    markdown = (tmp_path / "X" / "robustness.md").read_text()
    assert "15 common (%)" not in markdown and "| mCE" not in markdown
    assert "| mean corrupted accuracy over 3 of the 15 common corruptions, severity 3 (%) |" in markdown
    assert "| mean corrupted accuracy over 1 of the 4 held-out corruptions, severity 3 (%) |" in markdown
    assert (
        "| mean CE over 3 of the 15 common corruptions, severity 3 (not mCE: that needs severities 1–5) vs baseline |"
        in markdown
    )
    assert "| corruption | s3 | mean | CE (severity 3 only) |" in markdown
    metrics = json.loads((run / "metrics.json").read_text())["robustness"]
    assert metrics["mce"] is None and metrics["mean_ce"] == result["mean_ce"]
    assert metrics["report"] == str((tmp_path / "X" / "robustness.html").resolve())  # outside the run: absolute


def test_all_fifteen_common_corruptions_at_five_severities_are_the_mce(tmp_path, capsys):
    run = make_run(tmp_path, "run", seed=0)
    base = make_run(tmp_path, "base", seed=1)
    args = ["robustness", str(run), "--baseline", str(base), "--corruptions", "common", "--severities", "1-5"]
    assert main([*args, "--max-images", "3", "--no-shifts", "--no-adversarial", "--no-latency"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    result = json.loads((run / "robustness" / "robustness.json").read_text())
    assert result["mce"] == result["mean_ce"] is not None
    assert f"mCE {result['mce']:.1f} vs baseline (the 15 common corruptions)" in line
    markdown = (run / "robustness" / "robustness.md").read_text()
    assert "| mCE over the 15 common corruptions vs baseline |" in markdown
    assert "| mean corrupted accuracy over the 15 common corruptions, severities 1–5 (%) |" in markdown
    assert "held-out" not in markdown  # none measured: no row for them


def test_labels_state_the_corruptions_and_severities():
    from mobilenets.robustness.labels import ce_column, ce_label, is_mce, scope_text, severities_text

    assert severities_text([3]) == "severity 3" and severities_text(["1", "2", "3"]) == "severities 1–3"
    assert severities_text([1, 3, 5]) == "severities 1, 3, 5"
    assert is_mce([5, 4, 3, 2, 1]) and is_mce(["1", "2", "3", "4", "5"]) and not is_mce([1, 2, 3, 4])
    assert scope_text(["fog", "spatter"], [3], held_out=True) == "1 of the 4 held-out corruptions, severity 3"
    assert ce_label(["fog"], [1, 2, 3, 4, 5], relative=True) == "relative mCE over 1 of the 15 common corruptions"
    assert ce_label(["fog"], [1, 2]) == (
        "mean CE over 1 of the 15 common corruptions, severities 1–2 (not mCE: that needs severities 1–5)"
    )
    assert ce_column([3]) == "CE (severity 3 only)" and ce_column([1, 2, 3, 4, 5]) == "CE"


def test_int8_onnx_model_in_the_run_dir_is_compared(tmp_path, capsys):
    run = make_run(tmp_path, "run", seed=0)
    model = tiny_model(0)
    # An fp32 export under the int8 name: the comparison path must then agree with PyTorch exactly.
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 32, 32),),
        run / "model_int8.onnx",
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
        dynamo=False,
    )
    assert find_int8_model(run) == run / "model_int8.onnx"
    args = ["robustness", str(run), "--no-shifts", "--no-adversarial", "--json", *QUICK]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["int8"]["clean_accuracy"] == result["clean_accuracy"]
    assert result["int8"]["corruption_accuracy"] == result["corruption_accuracy"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--severities", "0-9"], "severities run from 1 to 5"),
        (["--corruptions", "blurry"], "unknown corruption 'blurry'"),
        (["--data", "/nonexistent/val"], "/nonexistent/val: does not exist"),  # issue 17: was "not a folder"
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, extra, message):
    run = make_run(tmp_path, "run", seed=0)
    assert main(["robustness", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    assert main(["robustness", str(tmp_path)]) == 2
    assert f"{tmp_path}: no model.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["model.safetensors", "model.json", "split.json"])
def test_a_file_of_a_run_points_to_its_run_directory(tmp_path, capsys, name):
    run = make_run(tmp_path, "run", seed=0)
    assert main(["robustness", str(run / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{run / name}: a file, not a run directory; pass its run directory: {run}")
    assert len(err.splitlines()) == 1 and "no model.safetensors" not in err
    assert main(["robustness", str(run), "--baseline", str(run / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--baseline {run / name}: a file, not a run directory; pass its run directory: {run}")


def test_a_file_outside_a_run_asks_for_a_run_directory(tmp_path, capsys):
    stray = tmp_path / "weights.safetensors"
    stray.write_bytes(b"x")
    assert main(["robustness", str(stray)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"{stray}: a file, not a run directory; pass a training run directory (mobilenets train --out DIR)"
    )


# --------------------------------------------------------------------------------------------------
# A value given for a part that does not run is refused, never silently ignored
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bn-samples", "5"], "--bn-samples applies to --bn-adapt; add --bn-adapt or drop --bn-samples"),
        (["--quick", "--bn-samples", "32"], "--bn-samples applies to --bn-adapt; add --bn-adapt or drop --bn-samples"),
        (
            ["--no-adversarial", "--adversarial-images", "5"],
            "--adversarial-images applies to the attacks, which --no-adversarial skips; "
            "drop --no-adversarial or drop --adversarial-images",
        ),
    ],
)
def test_an_option_without_effect_is_refused(tmp_path, capsys, extra, message):
    run = make_run(tmp_path, "run", seed=0)
    assert main(["robustness", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mobilenets robustness: error: {message}"
    assert not (run / "robustness").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bn_samples": 5}, "--bn-samples applies to --bn-adapt"),
        ({"adversarial": False, "adversarial_images": 5}, "--adversarial-images applies to the attacks"),
    ],
)
def test_an_api_option_without_effect_is_refused(tmp_path, options, message):
    from mobilenets.core.errors import MobilenetsError
    from mobilenets.robustness.run import robustness_report

    with pytest.raises(MobilenetsError, match=re.escape(message)):
        robustness_report(run_dir=make_run(tmp_path, "run", seed=0), **options)


def test_more_bn_samples_than_images_is_said_and_recorded_as_used(tmp_path, capsys):
    run = make_run(tmp_path, "run", seed=0)
    args = ["robustness", str(run), "--bn-adapt", "--bn-samples", "50", "--no-shifts", "--no-adversarial", "--json"]
    assert main([*args, "--corruptions", "fog", "--severities", "3", "--no-latency"]) == 0
    captured = capsys.readouterr()
    assert "note: --bn-samples 50: only 12 images are evaluated; using all 12" in captured.err
    assert json.loads(captured.out)["bn_adapt"]["samples"] == 12


def test_data_folder_with_a_broken_file_is_scored_without_it(tmp_path, capsys):
    run = make_run(tmp_path, "run", seed=0)
    (tmp_path / "data" / "red" / "broken.png").write_bytes(b"not a png")
    args = ["robustness", str(run), "--data", str(tmp_path / "data"), "--no-shifts", "--no-adversarial", "--json"]
    assert main([*args, *QUICK]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["images"] == 12 and result["images_available"] == 13
    assert len(result["skipped_files"]) == 1 and "broken.png" in result["skipped_files"][0]
    assert "warning: skipped" in captured.err and "broken.png" in captured.err


# --------------------------------------------------------------------------------------------------
# --quick fills in only what was not given; the public function keeps its name
# --------------------------------------------------------------------------------------------------


class Measured(Exception):
    """Raised by a stand-in for the measurement: the options it was called with are all a test needs."""


def capture_options(monkeypatch) -> dict:
    """Run ``robustness`` up to the measurement, recording its options and the image subset asked for."""
    from mobilenets.robustness import evaluate

    seen: dict = {}
    load_eval_images = evaluate.load_eval_images

    def loading(samples, preprocessing, max_images=None, seed=0):
        seen["max_images"] = max_images
        return load_eval_images(samples, preprocessing, max_images, seed)

    def measuring(model, preprocessing, images, options, **kwargs):
        seen["options"], seen["images"] = options, len(images.labels)
        raise Measured

    monkeypatch.setattr(evaluate, "load_eval_images", loading)
    monkeypatch.setattr(evaluate, "run_robustness", measuring)
    monkeypatch.setenv("MOBILENETS_DEBUG", "1")  # let Measured through the command line's error handling
    return seen


@pytest.mark.parametrize(
    ("extra", "severities", "corruptions", "max_images", "attacked", "latency"),
    [
        ([], (1, 2, 3, 4, 5), 19, 1000, 200, True),
        (["--quick"], (3,), 15, 200, 50, False),
        # Given values win over --quick's, and are not capped (0 = all images).
        (
            [
                "--quick",
                "--severities",
                "5",
                "--corruptions",
                "fog",
                "--max-images",
                "0",
                "--adversarial-images",
                "300",
            ],
            (5,),
            1,
            None,
            300,
            False,
        ),
        (["--quick", "--max-images", "500", "--severities", "1-5"], (1, 2, 3, 4, 5), 15, 500, 50, False),
    ],
)
def test_quick_fills_in_only_the_options_not_given(
    tmp_path, monkeypatch, extra, severities, corruptions, max_images, attacked, latency
):
    run = make_run(tmp_path, "run", seed=0)
    seen = capture_options(monkeypatch)
    with pytest.raises(Measured):
        main(["robustness", str(run), *extra])
    options = seen["options"]
    assert options.severities == severities and len(options.corruptions) == corruptions
    assert seen["max_images"] == max_images and options.adversarial_images == attacked
    assert options.latency is latency and options.device_latency is latency


@pytest.mark.parametrize("quick", [[], ["--quick"]])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--severities", "0"], "--severities '0': severities run from 1 to 5"),
        (["--severities", "6"], "--severities '6': severities run from 1 to 5"),
        (["--severities", ""], "--severities"),  # the command line refuses empty values before robustness runs
        (["--severities", "5-1"], "--severities '5-1': write a range low to high, e.g. 1-5"),
        (["--corruptions", ""], "--corruptions"),
        (["--max-images", "-1"], "--max-images -1: give a whole number, 0 (all images) or more"),
        (["--adversarial-images", "0"], "--adversarial-images 0: give a whole number, 1 or more"),
        (["--seed", "-1"], "--seed -1: give a whole number, 0 or more"),
    ],
)
def test_given_values_are_checked_the_same_with_and_without_quick(tmp_path, capsys, quick, extra, message):
    run = make_run(tmp_path, "run", seed=0)
    assert main(["robustness", str(run), *quick, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_public_robustness_stays_the_function_after_its_subpackage_is_imported(tmp_path, monkeypatch):
    import importlib
    import pkgutil

    import mobilenets
    from mobilenets import api
    from mobilenets.robustness import run as robustness_run

    # Importing every module of every subpackage named like a public function leaves the function bound.
    subpackages = {module.name for module in pkgutil.iter_modules(mobilenets.__path__)}
    for name in set(mobilenets._PUBLIC) & subpackages:
        assert name in mobilenets._SHADOWED_SUBPACKAGES, f"mobilenets.{name} would be rebound to the subpackage"
        package = importlib.import_module(f"mobilenets.{name}")
        for module in pkgutil.walk_packages(package.__path__, f"mobilenets.{name}."):
            importlib.import_module(module.name)
        assert getattr(mobilenets, name) is getattr(importlib.import_module(mobilenets._PUBLIC[name]), name)
    assert callable(mobilenets.robustness) and mobilenets.robustness is api.robustness

    # Called twice in one process (the second call failed: 'module' object is not callable).
    calls = []

    def report(**options):
        calls.append(options)
        return robustness_run.RobustnessRun({"calls": len(calls)}, {})

    monkeypatch.setattr(robustness_run, "robustness_report", report)
    monkeypatch.setattr(api.Run, "report", lambda self: None)
    run = api.Run(make_run(tmp_path, "run", seed=0))
    assert mobilenets.robustness(run, quick=True) == {"calls": 1}
    assert mobilenets.robustness(run, quick=True) == {"calls": 2}
    assert callable(mobilenets.robustness) and [c["quick"] for c in calls] == [True, True]


def test_an_unknown_api_option_is_named_with_the_known_ones(tmp_path):
    import mobilenets
    from mobilenets import api
    from mobilenets.core.errors import MobilenetsError

    run = api.Run(make_run(tmp_path, "run", seed=0))
    with pytest.raises(MobilenetsError) as caught:
        mobilenets.robustness(run, bogus=1, max_image=5)
    message = str(caught.value)
    assert message.startswith("unknown robustness option(s) bogus, max_image; known: adversarial, adversarial_images,")
    assert "max_images" in message and "quick" in message and "run_dir" not in message and "\n" not in message
    assert not (run.path / "robustness").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quick": "no"}, "quick must be True or False, got 'no'"),
        ({"severities": ""}, "--severities '': write a range like 1-5 or a list like 1,3,5"),
        ({"corruptions": ""}, "--corruptions '': name at least one corruption or group"),
        ({"corruptions": [" ", ","]}, "--corruptions '  ,': name at least one corruption or group"),
        ({"corruptions": "fog,,snow"}, "--corruptions 'fog,,snow': an empty item; give comma-separated names"),
        ({"max_images": 2.5}, "--max-images 2.5: give a whole number"),
        ({"severities": [1, 7]}, "--severities '1,7': severities run from 1 to 5"),
        ({"corruptions": [3]}, "--corruptions [3]: give names or groups as strings"),
        ({"out": 3}, "--out 3: give a folder path"),
    ],
)
def test_bad_api_values_are_one_clear_error(tmp_path, options, message):
    from mobilenets.core.errors import MobilenetsError
    from mobilenets.robustness.run import robustness_report

    with pytest.raises(MobilenetsError, match=re.escape(message)):
        robustness_report(run_dir=make_run(tmp_path, "run", seed=0), **options)


def test_severities_from_python_may_be_numbers():
    from mobilenets.robustness.corruptions import parse_severities

    assert (
        parse_severities(3) == (3,)
        and parse_severities([1, 3, 5]) == (1, 3, 5)
        and parse_severities("2-4") == (2, 3, 4)
    )
