"""A damaged file in a run directory is one line naming the file and its fix, exit code 2: never a traceback
or an internal error, refused before long work starts, and nothing half-written after the refusal.

`report` refuses a damaged metrics.json or config.json and leaves out (with a warning) a damaged file it only
shows; `robustness` checks the files it and the report it refreshes need before measuring; an incomplete
model.json is named by predict and robustness. One tiny run is built per module; each test damages a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import error_line
from deploy_helpers import tiny_run_dir, write_class_folder

from mobilenets.cli.main import main
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import RunDirectory

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_JSON = "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"
CONFIG_FIX = "restore it from a copy of the run (it holds the training settings; nothing rebuilds it)"
METRICS_FIX = "restore it from a copy of the run (it holds the run's figures; deleting it loses them)"
SHOWN_FIX = "the report leaves it out; restore it from a copy of the run, or delete it (only the report shows it)"
# The diagnosis reads it too (its duplicates advice), so its fix names both.
LEAKAGE_FIX = (
    "the report and the diagnosis leave it out; restore it from a copy of the run, or delete it (only they use it)"
)
METADATA_FIX = "restore it from the run's copy, or delete model.json to use the metadata inside model.safetensors"
EPOCHS_CSV = (
    "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,images_per_second,seconds\n"
    "1,1.1,0.3,1.0,0.4,0.001,500,0.5\n"
    "2,0.9,0.5,0.8,0.6,0.0005,510,0.5\n"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("damaged") / "data", classes=3, per_class=4)


@pytest.fixture(scope="module")
def good_run(data, tmp_path_factory) -> Path:
    """A run directory holding every file the report reads, each as training writes it."""
    run = tiny_run_dir(tmp_path_factory.mktemp("damaged") / "run", data, model="mobilenet_v3_small_minimal", width=0.25)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    (run / "config.json").write_text(json.dumps({"data": str(data), "model": "mobilenet_v3_small_minimal"}))
    (run / "epochs.csv").write_text(EPOCHS_CSV)
    rows = [{"class": name, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for name in classes]
    evaluation = {
        "accuracy": 0.5,
        "count": 6,
        "per_class": rows,
        "classes": classes,
        "confusion_matrix": [[1 if i == j else 0 for j in range(3)] for i in range(3)],
    }
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    (run / "skipped.json").write_text("[]")
    (run / "leakage.json").write_text(json.dumps({"exact": [], "near": []}))
    assert main(["report", str(run)]) == 0
    return run


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    """A copy of the good run, to damage."""
    return Path(shutil.copytree(good_run, tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: what a refusal must leave as it was."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def damage(path: Path, how: str) -> None:
    if how == "folder":
        path.unlink()
        path.mkdir()
        (path / "inside.txt").write_text("x")
    elif how == "not utf-8":
        path.write_bytes(b'{"a": "\xff\xfe"}')
    else:
        path.write_text(how)


# --- report: metrics.json and config.json refuse it -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "how", "problem", "fix"),
    [
        ("metrics.json", "{bad", f"damaged ({BAD_JSON})", METRICS_FIX),
        ("metrics.json", "[]", "damaged (a list where an object belongs)", METRICS_FIX),
        ("metrics.json", "not utf-8", "damaged (not UTF-8 text)", METRICS_FIX),
        ("metrics.json", "folder", "a folder, not a file", METRICS_FIX),
        ("metrics.json", "", "damaged (empty)", METRICS_FIX),
        ("config.json", "{bad", f"damaged ({BAD_JSON})", CONFIG_FIX),
        ("config.json", '"x"', "damaged (a string where an object belongs)", CONFIG_FIX),
    ],
)
def test_report_refuses_a_damaged_metrics_or_config_file(run, capsys, name, how, problem, fix):
    damage(run / name, how)
    before = snapshot(run)
    assert main(["report", str(run)]) == 2
    assert error_line(capsys, "report") == f"{run / name}: {problem}; {fix}"
    assert snapshot(run) == before  # no figure or page rewritten, no temporary file left


# --- report: a damaged file it only shows is left out, with a warning naming it ---------------------------------


@pytest.mark.parametrize(
    ("name", "how", "problem"),
    [
        ("evaluation.json", "{bad", BAD_JSON),
        ("evaluation.json", '{"accuracy": 0.5, "count": 6}', "'per_class' is not a list of objects"),
        ("leakage.json", "{bad", BAD_JSON),
        ("leakage.json", '{"exact": 3}', "'exact' is a number, not a list"),
        ("skipped.json", "{bad", BAD_JSON),
        ("skipped.json", "{}", "an object where a list belongs"),
        ("epochs.csv", EPOCHS_CSV + "1,abc\n", "line 4 has 2 values for 8 columns"),
        ("epochs.csv", EPOCHS_CSV.replace("0.5\n2,", "0.5,7\n2,", 1), "line 2 has 9 values for 8 columns"),
        ("epochs.csv", EPOCHS_CSV.replace("1.1", "abc"), "line 2: train_loss 'abc' is not a number"),
        ("epochs.csv", "{bad\n", "no 'epoch' column in its header line"),
    ],
)
def test_report_leaves_out_a_damaged_file_it_only_shows(run, capsys, name, how, problem):
    damage(run / name, how)
    assert main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    line = f"{run / name}: damaged ({problem}); {LEAKAGE_FIX if name == 'leakage.json' else SHOWN_FIX}"
    assert captured.err.splitlines() == [f"warning: {line}"]
    assert captured.out.strip() == str(run / "report.html")
    page = (run / "report.html").read_text()
    assert "<h2>Left out: damaged files</h2>" in page and "1 damaged file(s) left out (listed at the end)" in page
    assert html_escaped(line) in page


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_a_good_run_reports_without_warnings(run, capsys):
    assert main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "Left out" not in (run / "report.html").read_text()
    assert "<h2>Training curves</h2>" in (run / "report.html").read_text()
    assert "<h2>Confusion matrix</h2>" in (run / "report.html").read_text()


# --- report: a file it cannot write is one line, the old one kept ------------------------------------------------


@pytest.mark.parametrize("name", ["report.html", "curves.png", "confusion.png"])
def test_a_folder_where_the_report_writes_is_refused_before_writing(run, capsys, name):
    damage(run / name, "folder")
    before = snapshot(run)
    assert main(["report", str(run)]) == 2
    assert error_line(capsys, "report") == (
        f"{run / name}: a folder, where the report writes its {name}; move or delete the folder, then run "
        f"`mobilenets report {run}`"
    )
    assert snapshot(run) == before


def unwritable_message(run: Path, reason: str) -> str:
    path = run / "report.html"
    return (
        f"{path}: cannot write it ({reason}); make it (and {run}) writable, or delete it (the report writes it "
        f"anew), then run `mobilenets report {run}`"
    )


def test_a_report_html_that_cannot_be_replaced_is_one_line(run, capsys, monkeypatch):
    """What a read-only report.html gives a user other than root (and root too, for an immutable file)."""
    replace = os.replace

    def refusing(source, target, *args, **kwargs):
        if Path(target).name == "report.html":
            raise PermissionError(13, "Permission denied", str(target))
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refusing)
    old = (run / "report.html").read_bytes()
    assert main(["report", str(run)]) == 2
    assert error_line(capsys, "report") == unwritable_message(run, "Permission denied")
    assert (run / "report.html").read_bytes() == old
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")]


def test_an_immutable_report_html_is_one_line(run, capsys):
    """The reviewer's case: root, report.html made immutable (chattr +i)."""
    path = run / "report.html"
    if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("needs root and a file system with chattr +i")
    try:
        assert main(["report", str(run)]) == 2
        assert error_line(capsys, "report") == unwritable_message(run, "Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# --- robustness: the run's files are checked before measuring ---------------------------------------------------

ROBUSTNESS = ["--no-shifts", "--no-latency", "--no-adversarial", "--max-images", "4"]
ROBUSTNESS += ["--corruptions", "gaussian_noise", "--severities", "1"]


@pytest.mark.parametrize(
    ("name", "how", "problem", "fix"),
    [
        ("config.json", "{bad", f"damaged ({BAD_JSON})", CONFIG_FIX),
        ("metrics.json", "{bad", f"damaged ({BAD_JSON})", METRICS_FIX),
        ("metrics.json", "[]", "damaged (a list where an object belongs)", METRICS_FIX),
    ],
)
def test_robustness_refuses_a_damaged_run_file_before_measuring(run, tmp_path, capsys, name, how, problem, fix):
    damage(run / name, how)
    before = snapshot(run)
    out = tmp_path / "out"
    assert main(["robustness", str(run), *ROBUSTNESS, "--out", str(out)]) == 2
    assert error_line(capsys, "robustness") == f"{run / name}: {problem}; {fix}"  # the only line: nothing measured
    assert not out.exists() and snapshot(run) == before


def test_robustness_library_call_refuses_a_damaged_metrics_json_before_measuring(run, tmp_path):
    from mobilenets.robustness.run import robustness_report

    damage(run / "metrics.json", "{bad")
    out = tmp_path / "out"
    with pytest.raises(MobilenetsError) as raised:
        robustness_report(
            run_dir=run, shifts=False, latency=False, adversarial=False, max_images=4, out=out, log=print
        )
    assert str(raised.value) == f"{run / 'metrics.json'}: damaged ({BAD_JSON}); {METRICS_FIX}"
    assert not out.exists()


# --- model.json: incomplete metadata is named, not a KeyError ---------------------------------------------------

INCOMPLETE = "damaged model metadata (no 'architecture'; 'classes' is 5, not a list of class names)"


@pytest.mark.parametrize("command", ["predict", "robustness"])
def test_incomplete_model_json_is_one_line(run, data, capsys, command):
    (run / "model.json").write_text('{"classes": 5}')
    argv = {
        "predict": ["predict", str(next(data.rglob("*.png"))), "--weights", str(run)],
        "robustness": ["robustness", str(run), *ROBUSTNESS],
    }[command]
    assert main(argv) == 2
    assert error_line(capsys, command) == f"{run / 'model.json'}: {INCOMPLETE}; {METADATA_FIX}"
    assert not (run / "robustness").exists()


def test_incomplete_model_json_in_evaluate_is_one_line(run, data, capsys):
    (run / "model.json").write_text('{"classes": 5}')
    assert main(["evaluate", str(run), "--data", str(data)]) == 2
    assert error_line(capsys, "evaluate") == f"{run / 'model.json'}: {INCOMPLETE}; {METADATA_FIX}"


def test_the_fix_for_model_json_is_true_deleting_it_uses_the_copy_inside(run, data, capsys):
    (run / "model.json").write_text('{"classes": 5}')
    (run / "model.json").unlink()
    assert main(["predict", str(next(data.rglob("*.png"))), "--weights", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"]


def test_metadata_problems_name_each_field():
    from mobilenets.models.metadata import metadata_problems

    good = {"architecture": "mobilenet_v2", "options": {"width": 0.5}, "classes": ["a", "b"], "num_classes": 2}
    assert metadata_problems(good, ["mobilenet_v2"]) == []
    assert metadata_problems([], ["mobilenet_v2"]) == ["a list, not an object"]
    assert metadata_problems({**good, "architecture": "resnet"}, ["mobilenet_v2"]) == [
        "'architecture' is 'resnet', not a model name"
    ]
    assert metadata_problems({**good, "options": {"width": 0}}) == ["'options' width is 0, not a number > 0"]
    assert metadata_problems({**good, "num_classes": 3}) == ["2 'classes' for 'num_classes' 3"]
    assert metadata_problems({**good, "preprocessing": {"mean": [0.5]}}) == [
        "preprocessing mean is [0.5], not 3 numbers"
    ]


# --- the one reader -------------------------------------------------------------------------------------------


def test_read_json_missing_is_the_default_and_other_names_are_not_type_checked(tmp_path):
    run = RunDirectory(tmp_path)
    assert run.read_json("metrics.json", {}) == {} and run.metrics() == {}
    (tmp_path / "notes.json").write_text("[1]")
    assert run.read_json("notes.json") == [1]
    (tmp_path / "notes.json").write_text("[1")
    with pytest.raises(MobilenetsError, match=r"notes.json: damaged \(not valid JSON: .*\); restore it from a copy"):
        run.read_json("notes.json")
