"""``mobilenets profile``: every option is applied or refused in one line (exit 2), never silently ignored."""

from __future__ import annotations

import json

import pytest
from cli_helpers import error_line

from mobilenets.cli.main import build_parser, main
from mobilenets.core.errors import MobilenetsError


def one_line(capsys) -> str:
    return error_line(capsys, "profile")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--width", "inf"], "--width inf: the width multiplier must be > 0 and at most 4"),
        (["--width", "nan"], "--width nan: the width multiplier must be > 0"),
        (["--width", "1e6"], "--width 1e+06: the width multiplier must be > 0 and at most 4"),
        (["--grid", "--widths", "inf"], "--widths 'inf': inf is not a finite number"),
        (["--grid", "--widths", "0.5,9"], "--widths 9: the width multiplier must be > 0 and at most 4"),
        (["--num-classes", "1000000000"], "--num-classes 1,000,000,000: give at most 100,000"),
        (["--resolution", "100000"], "--resolution 100000 is too large: use at most 1024"),
        (["--grid", "--resolutions", "100000"], "--resolutions 100000 is too large: use at most 1024"),
        (["--grid", "--resolutions", "16"], "--resolutions 16 is too small"),
        (["--grid", "--widths", ","], "--widths ',': give at least one value"),
        # Options the chosen mode would ignore.
        (["--widths", "0.5"], "--widths applies with --grid: add --grid for a table over them, or use --width"),
        (["--resolutions", "64"], "--resolutions applies with --grid"),
        (["--int8"], "--int8 measures the int8 file's latency: add --latency onnx"),
        (["--grid", "--width", "0.5", "--resolution", "64"], "--width 0.5 with --grid: the grid takes --widths"),
        (["--grid", "--resolution", "64"], "--resolution 64 with --grid: the grid takes --resolutions"),
    ],
)
def test_bad_profile_arguments_are_one_line(arguments, message, capsys):
    assert main(["profile", "mobilenet_v3_small", *arguments]) == 2
    assert message in one_line(capsys)


def test_empty_grid_list_is_refused_not_replaced_by_the_default():
    # The command line refuses "" before the command runs; the command itself must too (no fallback to the paper's).
    argv = ["profile", "mobilenet_v3_small", "--grid", "--widths", ""]
    args = build_parser(argv).parse_args(argv)
    with pytest.raises(MobilenetsError, match="--widths '': give at least one value"):
        args.run(args)


def test_grid_applies_widths_and_resolutions(capsys):
    argv = ["profile", "mobilenet_v3_small", "--grid", "--widths", "0.5", "--resolutions", "64,32", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["width"], r["resolution"]) for r in rows] == [(0.5, 64), (0.5, 32)]


def test_single_profile_defaults(capsys):
    assert main(["profile", "mobilenet_v3_small", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["width"] == 1.0 and data["resolution"] == 224


def test_json_records_an_int8_latency(capsys):
    argv = ["profile", "mobilenet_v3_small_minimal", "--width", "0.25", "--resolution", "32", "--num-classes", "10",
            "--latency", "onnx", "--int8", "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["latency_runtime"] == "onnx" and data["latency_int8"] is True and data["latency_ms"] > 0


@pytest.mark.slow  # a LiteRT export for its latency (~16 s)
def test_a_device_latency_keeps_the_toolchains_import_chatter_off_the_console():
    import subprocess
    import sys

    # A fresh process: the converters print their import-time lines once, to the file descriptors.
    argv = ["profile", "mobilenet_v3_small", "--width", "0.25", "--resolution", "32", "--num-classes", "10",
            "--latency", "tflite"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "mobilenets", *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for chatter in ("Failed to load", "absl::InitializeLog", "oneDNN custom operations", "register_constant"):
        assert chatter not in result.stderr + result.stdout
    assert "ms batch 1 in tflite" in result.stdout
