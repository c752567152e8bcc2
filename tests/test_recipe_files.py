"""``--recipe FILE``: YAML recipes replace defaults; options given on the command line win. ``--recipe auto``'s table."""

from __future__ import annotations

import pytest

from mobilenets.cli.commands.train import options_from
from mobilenets.cli.main import build_parser
from mobilenets.core.errors import MobilenetsError
from mobilenets.training.configuration import apply_recipe_file
from mobilenets.training.recipes import FINETUNE_RECIPES, RECIPES, choose_recipe, range_warnings


def parse(*argv: str):
    argv = ["train", "--data", "images", *argv]
    return options_from(build_parser(argv).parse_args(argv))


def test_bundled_paper_recipe_sets_the_papers_values():
    args = parse("--recipe", "mobilenet_v1_paper")
    apply_recipe_file(args)
    assert (args.model, args.optimizer, args.lr, args.batch_size, args.epochs) == (
        "mobilenet_v1",
        "rmsprop",
        0.045,
        96,
        90,
    )
    assert args.label_smoothing == 0.0 and args.weight_decay == 4e-5


def test_command_line_options_win_over_the_recipe():
    args = parse("--recipe", "modern", "--lr", "0.01", "--epochs", "3")
    apply_recipe_file(args)
    assert (args.lr, args.epochs, args.model, args.augment) == (0.01, 3, "mobilenet_v3_large", "heavy")


def test_recipe_errors_name_the_problem(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("lr: 0.1\nlearning_rate_decay: 0.98\n")
    with pytest.raises(MobilenetsError, match=r"unknown option.*learning_rate_decay"):
        apply_recipe_file(parse("--recipe", str(unknown)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [0.1\n")
    with pytest.raises(MobilenetsError, match="not valid YAML"):
        apply_recipe_file(parse("--recipe", str(broken)))
    with pytest.raises(MobilenetsError, match=r"no such file.*mobilenet_v1_paper"):
        apply_recipe_file(parse("--recipe", str(tmp_path / "missing.yaml")))
    # A mistyped path to a file named like a bundled recipe is not that recipe.
    with pytest.raises(MobilenetsError, match=r"--recipe .*/modern.yaml: no such file"):
        apply_recipe_file(parse("--recipe", str(tmp_path / "nowhere" / "modern.yaml")))
    teaching = tmp_path / "teaching.yaml"
    teaching.write_text("teacher: [runs/a, runs/b]\n")
    with pytest.raises(MobilenetsError, match=r"teacher names files or folders, which a recipe cannot set"):
        apply_recipe_file(parse("--recipe", str(teaching)))


def test_auto_recipes_stay_inside_the_ranges_they_warn_about():
    # A recipe chosen by `--recipe auto` must not print a range warning against its own choice.
    for recipe in (*RECIPES, *FINETUNE_RECIPES):
        assert range_warnings(recipe.batch_size, recipe.epochs, recipe.lr) == [], recipe.name
    assert choose_recipe(1_200).epochs == 100  # small data from scratch: measured past the seed's 40
    assert choose_recipe(1_200, pretrained=True).epochs == 25


def test_few_epochs_from_pretrained_weights_on_large_data_warn_with_the_measured_reason():
    from_scratch = range_warnings(128, 4, 2e-3)
    fine_tune = range_warnings(128, 4, 2e-3, fine_tune_large=True)
    assert len(from_scratch) == len(fine_tune) == 1
    assert "rarely converges" in from_scratch[0]
    assert fine_tune[0].startswith("--epochs 4 is outside the recommended 10–100: that range is for training from scratch")
    assert "rarely converges" not in fine_tune[0]
    # Too many epochs keeps its own reason, pretrained or not.
    assert range_warnings(128, 150, 2e-3, fine_tune_large=True) == range_warnings(128, 150, 2e-3)


@pytest.mark.parametrize(
    ("weights", "num_train", "measured_reason"),
    [("mobilenet_v2.tv_in1k", 5_000, True), ("none", 6_000, False), ("mobilenet_v2.tv_in1k", 4_999, False)],
)
def test_a_run_gets_the_fine_tune_reason_only_from_pretrained_weights_on_large_data(caplog, weights, num_train, measured_reason):
    from mobilenets.training.configuration import make_config

    options = parse("--model", "mobilenet_v2", "--weights", weights, "--epochs", "4", "--resolution", "32")
    with caplog.at_level("WARNING", logger="mobilenets"):
        make_config(options, num_train, [])
    (epochs_warning,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--epochs 4")]
    assert ("training from scratch; fine-tuning pretrained weights" in epochs_warning) == measured_reason


def test_the_lr_range_is_adamws_and_sgd_without_an_lr_is_told_to_give_one(caplog):
    from mobilenets.training.configuration import make_config

    assert range_warnings(32, 10, 0.05)[0].startswith("--lr 0.05 is outside the recommended")
    assert range_warnings(32, 10, 0.05, optimizer="sgd") == []
    assert range_warnings(32, 10, 0.05, optimizer="rmsprop") == []
    argv = ("--model", "mobilenet_v2", "--weights", "none", "--resolution", "32", "--optimizer", "sgd")
    with caplog.at_level("WARNING", logger="mobilenets"):
        make_config(parse(*argv), 400, [])
    assert [r.getMessage() for r in caplog.records if "pass --lr" in r.getMessage()] == [
        "--optimizer sgd with lr 0.001, which is AdamW's (the default): SGD usually needs 10–50× more "
        "(0.02–0.05 fine-tuning V2 on Fashion-MNIST); pass --lr"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mobilenets"):
        make_config(parse(*argv, "--lr", "0.05"), 400, [])
    assert not [r for r in caplog.records if "--lr" in r.getMessage()]


def test_an_unknown_optimizer_from_a_recipe_file_or_the_api_is_one_clear_error(tmp_path):
    from mobilenets.training.checks import check_values

    options = parse("--model", "mobilenet_v2", "--weights", "none", "--resolution", "32")
    options.optimizer = "SGD"  # what a hand-written recipe file or mobilenets.train(optimizer=...) can pass
    # Refused with the other values, before the folder is scanned.
    with pytest.raises(MobilenetsError, match=r"--optimizer must be one of adamw, rmsprop, sgd, got 'SGD'"):
        check_values(options)


def test_the_help_and_the_report_give_each_optimizers_own_weight_decay(tmp_path, capsys):
    from mobilenets.reporting.run_report import settings_rows
    from mobilenets.training.options import DEFAULT_WEIGHT_DECAY

    with pytest.raises(SystemExit):
        build_parser(["train", "--help"]).parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, decay in DEFAULT_WEIGHT_DECAY.items():
        assert f"{name} {decay:g}" in help_text
    rows = dict(settings_rows({"optimizer": "sgd", "weight_decay": None}, tmp_path))
    assert rows["weight_decay"] == "4.00e-05"
    assert dict(settings_rows({"weight_decay": None}, tmp_path))["weight_decay"] == "2.00e-02"  # older runs: AdamW


def test_settling_a_run_leaves_the_options_as_the_user_gave_them(tmp_path, monkeypatch):
    import dataclasses

    from mobilenets.training import pipeline
    from mobilenets.training.configuration import make_config

    options = parse("--recipe", "auto", "--weights", "none", "--resolution", "32")
    given = dataclasses.replace(options)
    config = make_config(options, 400, [])
    assert options == given  # model, width and head-only epochs were decided in the config, not written back
    assert (config.model, config.width, config.head_epochs) == ("mobilenet_v3_small", 1.0, 0)
    assert (config.epochs, config.augment) == (choose_recipe(400).epochs, choose_recipe(400).augment)

    # A recipe file fills train()'s own copy: the caller's object, reused for a second run, is unchanged.
    (tmp_path / "images" / "a").mkdir(parents=True)
    seen = []
    monkeypatch.setattr(pipeline, "_train", lambda settled, context: seen.append(settled))
    caller = parse("--recipe", "modern", "--out", str(tmp_path / "run"))
    caller.data = tmp_path / "images"
    pipeline.train(caller)
    assert seen[0].model == "mobilenet_v3_large" and seen[0].augment == "heavy"
    assert (caller.model, caller.augment, caller.recipe) == (None, None, "modern")


def test_the_bundled_imagenet_recipes_train_from_scratch_unless_weights_are_given():
    for name in ("mobilenet_v1_paper", "modern"):
        options = parse("--recipe", name)
        apply_recipe_file(options)
        assert options.weights == "none", name
        given = parse("--recipe", name, "--weights", "mobilenet_v2.tv_in1k")
        apply_recipe_file(given)
        assert given.weights == "mobilenet_v2.tv_in1k"
