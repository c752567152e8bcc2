"""``train --teacher A --teacher B``: an ensemble of teachers, whose mean logits the student learns."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import EXAMPLES, TINY, error_of

import mobilenets.api as api
from mobilenets.cli.commands.train import options_from
from mobilenets.cli.main import build_parser, main
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import RunDirectory
from mobilenets.training.distillation import Teacher, TeacherEnsemble, TeacherInput
from mobilenets.training.options import TrainOptions, teacher_sources

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_the_ensemble_is_the_mean_of_its_teachers_logits_each_seeing_its_own_input():
    seen = {}

    def answers(name, logits, resolution):
        def run(images):
            seen[name] = tuple(images.shape[-2:])
            return torch.tensor([logits]).expand(len(images), 3)

        return Teacher(
            run, source=name, engine="torch", wants=TeacherInput(resolution, MEAN, STD), class_order=None
        )

    first = answers("a", [1.0, 2.0, 6.0], resolution=8)
    second = answers("b", [3.0, 0.0, 0.0], resolution=16)
    second.class_order = torch.tensor([2, 0, 1])  # b lists the classes in another order: [0, 3, 0] in ours
    ensemble = TeacherEnsemble([first, second])
    logits = ensemble(torch.zeros(2, 3, 8, 8), MEAN, STD)
    assert logits.tolist() == [[0.5, 2.5, 3.0]] * 2
    assert seen == {"a": (8, 8), "b": (16, 16)}
    assert ensemble.source == "a + b" and ensemble.describe() == {"source": ["a", "b"], "engine": ["torch", "torch"]}
    with pytest.raises(ValueError):
        TeacherEnsemble([first])


def test_the_teacher_option_takes_one_teacher_or_several():
    assert TrainOptions(teacher=["runs/a"]).teacher == "runs/a"
    assert TrainOptions(teacher=("runs/a", "runs/b")).teacher == ("runs/a", "runs/b")
    assert teacher_sources(None) == () and teacher_sources("a") == ("a",) and teacher_sources(["a", "b"]) == ("a", "b")
    with pytest.raises(MobilenetsError, match=r"--teacher runs/a is given 2 times; an ensemble's teachers must differ"):
        TrainOptions(teacher=["runs/a", "runs/a/"])
    with pytest.raises(MobilenetsError, match="an empty list names no teacher"):
        TrainOptions(teacher=[])
    with pytest.raises(MobilenetsError, match="--teacher must be a run directory or model file"):
        TrainOptions(teacher=3)
    parser = build_parser(["train"])
    one = parser.parse_args(["train", "--teacher", "a"])
    several = parser.parse_args(["train", "--teacher", "a", "--teacher", "b", "--teacher", "c"])
    assert options_from(one).teacher == "a" and options_from(several).teacher == ("a", "b", "c")
    assert "teacher" not in options_from(parser.parse_args(["train"])).passed


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two teacher runs of the examples: one on the student's split (seed 0), one on another (seed 1)."""
    folder = tmp_path_factory.mktemp("teachers")
    for seed in (0, 1):
        code = main(["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--seed", str(seed),
                     "--out", str(folder / f"seed{seed}")])  # fmt: skip
        assert code == 0
    return folder / "seed0", folder / "seed1"


@pytest.mark.slow  # trains a taught student end to end (~38 s); the ensemble's unit tests stay in CI
def test_an_ensemble_teaches_a_student_and_is_recorded(tmp_path, teachers, capsys):
    same_split, other_split = teachers
    out = tmp_path / "student"
    command = ["train", "--data", str(EXAMPLES), *TINY, "--epochs", "1", "--out", str(out),
               "--teacher", str(same_split), "--teacher", str(other_split)]  # fmt: skip
    original = api.Run.finish
    api.Run.finish = lambda self: None  # a checkpoint kept, as if interrupted while finishing
    try:
        assert main(command) == 0
    finally:
        api.Run.finish = original
    printed = capsys.readouterr()
    assert "teachers: an ensemble of 2, the mean of their logits" in printed.out
    # The seed-1 teacher trained on some of the student's validation images: the ensemble has seen them.
    student_val = {str(f.path.resolve()) for f in RunDirectory(out).read_split().val}
    seen = student_val & {str(f.path.resolve()) for f in RunDirectory(other_split).read_split().train}
    assert seen and f"the teacher was trained on {len(seen)} of these validation images" in printed.err
    config = json.loads((out / "config.json").read_text())
    assert config["teacher"] == [str(same_split), str(other_split)]
    metrics = RunDirectory(out).metrics()
    assert metrics["teacher"]["source"] == [str(same_split), str(other_split)]
    assert metrics["teacher"]["saw_validation"] == len(seen) and len(metrics["teacher"]["engine"]) == 2
    # A resume reads both teachers back from config.json.
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert "teachers: an ensemble of 2" in capsys.readouterr().out
    assert len((out / "epochs.csv").read_text().splitlines()) == 3  # the header and two epochs
    assert "seed0, " in (out / "report.html").read_text()  # the settings table names both teachers


def test_a_missing_member_is_named_before_any_work(tmp_path, teachers, capsys):
    missing = tmp_path / "nothing"
    command = ["train", "--data", str(EXAMPLES), *TINY, "--out", str(tmp_path / "run"),
               "--teacher", str(teachers[0]), "--teacher", str(missing)]  # fmt: skip
    message = error_of(capsys, main(command))
    assert message.startswith(f"--teacher {missing}: no such run directory or file")
    assert not (tmp_path / "run").exists()
