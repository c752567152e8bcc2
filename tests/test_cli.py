"""The profile command prints what the papers print, and JSON for scripts."""

from __future__ import annotations

import json
import subprocess
import sys

from mobilenets.cli.main import main


def test_profile_json_has_exact_counts(capsys):
    assert main(["profile", "mobilenet_v3_small", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 2_542_856 and data["macs"] == 56_510_400
    assert set(data["shares"]) == {"conv_1x1", "depthwise", "full_conv", "fully_connected"}


def test_profile_width_resolution_and_classes(capsys):
    assert (
        main(["profile", "mobilenet_v1", "--width", "0.5", "--resolution", "160", "--num-classes", "10", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["width"] == 0.5 and data["resolution"] == 160 and data["num_classes"] == 10


def test_profile_grid_shape_of_tables_6_7(capsys):
    assert main(["profile", "mobilenet_v1", "--grid", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 16
    assert {(r["width"], r["resolution"]) for r in rows} >= {(1.0, 224), (0.25, 128)}


def test_profile_v3_convention(capsys):
    assert main(["profile", "mobilenet_v3_large", "--width", "0.75", "--convention", "torchvision", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 3_377_576


def test_console_script_and_module_entry_points():
    result = subprocess.run([sys.executable, "-m", "mobilenets", "models"], capture_output=True, text=True, check=True)
    assert "mobilenet_v3_small_minimal" in result.stdout


def test_models_lists_each_published_checkpoint_with_its_width(capsys):
    assert main(["models", "--json"]) == 0
    weights = json.loads(capsys.readouterr().out)["weights"]
    assert weights["mobilenet_v3_small_075.timm_lamb_in1k"]["width"] == 0.75
    assert weights["mobilenet_v2.tv_in1k"]["width"] == 1.0
    assert main(["models"]) == 0
    assert "mobilenet_v2_140.timm_ra_in1k          width 1.4  timm" in capsys.readouterr().out


def test_wrong_arguments_are_usage_errors(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "mobilenet_v9"])
    assert exit_info.value.code == 2
    assert main(["profile", "mobilenet_v1", "--resolution", "8"]) == 2
    assert "too small" in capsys.readouterr().err
