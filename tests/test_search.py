"""``mobilenets search``: candidates, budgets, Pareto fronts, the recommendation, resumability, bad budgets.

Training and latency are faked here (the search's logic is what is under test); one test trains a real
candidate for an epoch at 32 px through the same subprocess the search uses.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from cli_helpers import error_line

from mobilenets.core.errors import MobilenetsError
from mobilenets.search.candidates import (
    NEAR_TIE_POINTS,
    Budget,
    Candidate,
    generate_candidates,
    pareto_front,
    parse_duration,
    recommend,
    resolution_grid,
    select_pool,
)
from mobilenets.search.measure import Measurement, check_target
from mobilenets.search.runner import Search, SearchSettings, TrainOutcome, TrainRequest, subprocess_trainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist-small"
MODELS = ("mobilenet_v3_small", "mobilenet_v2")


def fake_measurer(*, model_name, width, resolutions, num_classes, int8, work):
    """Latency grows with width and resolution; V2 is slower and larger than V3-Small (as measured here)."""
    base = 2.0 if model_name == "mobilenet_v2" else 1.0
    return {
        r: Measurement(
            latency_ms=base * width * (r / 32) ** 2,
            flash_bytes=int(base * width * 4_200_000 / (4 if int8 else 1)),
            ram_bytes=int(width * r * r * 16),
        )
        for r in resolutions
    }


class FakeTrainer:
    """Accuracy rises with epochs, width and resolution; it can raise Ctrl-C after N calls."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.calls: list[TrainRequest] = []
        self.interrupt_after = interrupt_after

    def __call__(self, request: TrainRequest) -> TrainOutcome:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(request)
        family = 0.05 if request.model == "mobilenet_v2" else 0.0
        accuracy = min(0.99, 0.4 + 0.03 * request.epochs + 0.2 * request.width + request.resolution / 1000 + family)
        return TrainOutcome(accuracy=accuracy, seconds=3.0, complete=True, train_seconds=1.0, train_images=400)


def settings(tmp_path: Path, **overrides) -> SearchSettings:
    options = dict(
        data=EXAMPLES,
        out=tmp_path / "search",
        models=MODELS,
        widths=[1.0, 0.5, 0.35],
        resolutions=[32, 48],
        budget=Budget(max_flash_bytes=5_000_000),
        time_budget_s=600.0,
        max_candidates=6,
    )
    options.update(overrides)
    return SearchSettings(**options)


def quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------------
# candidates, budgets, fronts


def test_candidate_grid_covers_families_widths_and_resolutions():
    candidates = generate_candidates(models=MODELS, resolutions=[32, 64])
    keys = {c.key for c in candidates}
    assert len(keys) == len(candidates) == (4 + 3) * 2  # V2: 1/.75/.5/.35, V3-Small: 1/.75/.5
    assert "mobilenet_v2-w0.35-r64" in keys and "mobilenet_v3_small-w0.5-r32" in keys
    with pytest.raises(MobilenetsError, match="too small"):
        generate_candidates(models=MODELS, resolutions=[16])
    with pytest.raises(MobilenetsError, match="unknown model"):
        generate_candidates(models=["resnet50"], resolutions=[32])


def test_resolution_grid_follows_image_size():
    assert resolution_grid(28) == [32, 48, 64]  # tiny images: upsampling may help, up to 2×
    assert resolution_grid(500) == [128, 160, 192, 224]  # photos: the paper's four ρ
    assert all(32 <= r <= 224 for n in (8, 40, 96, 150, 4000) for r in resolution_grid(n))


def test_parse_duration():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    with pytest.raises(MobilenetsError, match="duration"):
        parse_duration("soon")
    # A bare number could be seconds or minutes: a unit is required, and the message offers each reading.
    with pytest.raises(MobilenetsError, match=r"--time-budget 5: give a unit: 5m \(minutes\), 5s"):
        parse_duration("5")
    for zero in ("0", "0s", "0m", "0h0m"):
        with pytest.raises(MobilenetsError, match="must be longer than zero"):
            parse_duration(zero)
    with pytest.raises(MobilenetsError, match="too long"):
        parse_duration("9" * 400 + "h")


def test_budget_filters_and_says_by_how_much():
    budget = Budget(max_latency_ms=10.0, max_flash_bytes=2_000_000)
    fits = Candidate("m", 1.0, 32, latency_ms=5.0, flash_bytes=1_000_000)
    slow = Candidate("m", 1.0, 64, latency_ms=15.0, flash_bytes=1_000_000)
    unmeasured = Candidate("m", 1.0, 96, flash_bytes=1_000_000)
    assert budget.allows(fits) is True
    assert budget.allows(slow) is False and budget.misses(slow) == {"latency_ms": pytest.approx(0.5)}
    assert budget.allows(unmeasured) is None
    assert Budget().allows(unmeasured) is True  # no limits: nothing needs measuring


def test_pareto_front():
    # (cost, accuracy): the second point is beaten by the first (cheaper and as accurate).
    points = [(1.0, 0.80), (2.0, 0.80), (3.0, 0.90), (0.5, 0.60), (4.0, 0.85)]
    assert pareto_front(points) == [3, 0, 2]


def test_recommendation_is_fastest_near_tie_in_budget():
    def c(key_res, accuracy, latency, within=True):
        return Candidate("m", 1.0, key_res, accuracy=accuracy, latency_ms=latency, within_budget=within)

    best = c(224, 0.900, 20.0)
    near = c(192, 0.895, 12.0)  # within 1 point, faster: the one to ship
    far = c(128, 0.870, 5.0)  # 3 points down: not a near-tie
    over = c(160, 0.950, 1.0, within=False)  # most accurate and fastest, but over budget
    chosen = recommend([best, near, far, over])
    assert chosen is near
    in_budget_best = max(x.accuracy for x in (best, near, far))
    assert 100 * (in_budget_best - chosen.accuracy) <= NEAR_TIE_POINTS <= 2
    assert recommend([over]) is None


def test_pool_spreads_over_families_and_puts_pretrained_first():
    candidates = generate_candidates(models=MODELS, resolutions=[32, 64])
    for i, candidate in enumerate(candidates):
        candidate.macs, candidate.within_budget, candidate.status = 1000 + i, True, "measured"
    candidates[5].weights = "mobilenet_v2.tv_in1k"
    pool = select_pool(candidates, 4)
    assert pool[0] is candidates[5]
    assert {c.model for c in pool} == set(MODELS)


def test_unavailable_target_is_one_clear_line(monkeypatch):
    import importlib.util

    check_target("onnx")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mobilenets.deployment.micro" else real(name, *a)
    )
    with pytest.raises(MobilenetsError, match="tflite-micro: not available yet"):
        check_target("tflite-micro")
    with pytest.raises(MobilenetsError, match="choose one of"):
        check_target("coreml")


# --------------------------------------------------------------------------------------------------
# the whole search, training faked


def test_search_writes_schema_and_recommends_in_budget(tmp_path):
    trainer = FakeTrainer()
    result = Search(settings(tmp_path), trainer=trainer, measurer=fake_measurer, log=quiet).run()
    data = json.loads((tmp_path / "search" / "search.json").read_text())
    for candidate in data["candidates"]:
        assert {"model", "width", "resolution", "accuracy", "latency_ms", "flash_bytes", "ram_bytes", "within_budget"} <= set(
            candidate
        )
    trained = [c for c in data["candidates"] if c["accuracy"] is not None]
    assert len({(c["model"], c["width"], c["resolution"]) for c in trained}) >= 6
    # Width 1 (fp32 weights alone 6–9 MB) breaks the 5 MB budget: never exported, never trained.
    assert not any(r.width == 1.0 for r in trainer.calls)
    assert all(c["latency_ms"] is None for c in data["candidates"] if c["width"] == 1.0)
    recommended = data["recommended"]
    assert recommended["within_budget"] is True
    best = max(c["accuracy"] for c in trained if c["within_budget"])
    assert 100 * (best - recommended["accuracy"]) <= 2.0
    assert result.command.startswith("mobilenets train --data ") and "&& mobilenets export" in result.command
    assert f"--epochs {recommended['epochs']}" in result.command
    html = (tmp_path / "search" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Pareto" in html
    # Successive halving: later rungs are fewer candidates, trained longer.
    plan = data["plan"]
    assert all(later < earlier for earlier, later in itertools.pairwise(plan["rung_sizes"]))
    assert plan["rung_epochs"] == sorted(plan["rung_epochs"])


@pytest.mark.parametrize(
    ("candidates", "rungs", "sizes"),
    [(12, 3, [12, 6, 3]), (5, 3, [5, 3, 2]), (4, 3, None), (4, 2, [4, 2]), (3, 2, [3, 2]), (2, 2, None), (2, 1, [2]),
     (1, 1, [1])],
)
def test_each_rung_trains_fewer_candidates_than_the_one_before(candidates, rungs, sizes):
    # 2 candidates used to be planned as rungs of [2, 2]: the first rung trained both, then both again.
    from mobilenets.search.runner import rung_sizes

    assert rung_sizes(candidates, rungs=rungs) == sizes


def test_interrupted_search_resumes_without_retraining(tmp_path):
    first = FakeTrainer(interrupt_after=4)  # calibration + 3 runs, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        Search(settings(tmp_path), trainer=first, measurer=fake_measurer, log=quiet).run()
    done = {str(r.run_dir) for r in first.calls[1:]}
    second = FakeTrainer()
    calls_to_measure = []

    def counting_measurer(**options):
        calls_to_measure.append(options)
        return fake_measurer(**options)

    Search(settings(tmp_path), trainer=second, measurer=counting_measurer, log=quiet).run()
    assert not calls_to_measure  # measurements were saved
    assert not done & {str(r.run_dir) for r in second.calls}  # finished runs are not trained again
    assert not any("calibration" in str(r.run_dir) for r in second.calls)  # the plan was saved
    data = json.loads((tmp_path / "search" / "search.json").read_text())
    assert data["recommended"] is not None
    with pytest.raises(MobilenetsError) as caught:
        Search(settings(tmp_path, int8=True), trainer=second, measurer=fake_measurer, log=quiet).run()
    assert str(caught.value) == (
        f"{tmp_path / 'search'}: holds a search with other settings (--int8: not given there, given here); "
        "pick another --out, or repeat that search's settings to resume it"
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory) -> Path:
    """A finished search with the default test settings, run once; tests get a copy at tmp_path / "search"."""
    root = tmp_path_factory.mktemp("finished")
    Search(settings(root), trainer=FakeTrainer(), measurer=fake_measurer, log=quiet).run()
    return root / "search"


def copy_of(finished: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished, tmp_path / "search"))


# The saved search's budget is 5,000,000 bytes of flash (4882.81 KB), no latency or RAM limit, pool of 6.
@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        ({"budget": Budget(max_flash_bytes=5_000_000, max_latency_ms=0.001)}, "--max-latency-ms: not given there, 0.001 here"),
        ({"budget": Budget(max_flash_bytes=5_000_000, max_ram_bytes=1024)}, "--max-ram-kb: not given there, 1 here"),
        ({"budget": Budget(max_flash_bytes=1024)}, "--max-flash-kb: 4882.81 there, 1 here"),
        ({"budget": Budget()}, "--max-flash-kb: 4882.81 there, not given here"),
        ({"budget": Budget(max_latency_ms=0.001)},
         "--max-latency-ms: not given there, 0.001 here; --max-flash-kb: 4882.81 there, not given here"),
        ({"max_candidates": 3}, "--max-candidates: 6 there, 3 here"),
    ],
)
def test_another_budget_in_a_searched_out_is_refused_and_changes_nothing(changed, difference, finished_search, tmp_path):
    # A saved search's candidates were judged, and its plan chosen, against its own budget: resumed under
    # another one it recommended a 0.17 ms model as "within_budget" for --max-latency-ms 0.001.
    copy_of(finished_search, tmp_path)
    before = snapshot(tmp_path / "search")
    trainer, measured = FakeTrainer(), []
    with pytest.raises(MobilenetsError) as caught:
        Search(settings(tmp_path, **changed), trainer=trainer, measurer=lambda **o: measured.append(o), log=quiet).run()
    assert str(caught.value) == (
        f"{tmp_path / 'search'}: holds a search with other settings ({difference}); "
        "pick another --out, or repeat that search's settings to resume it"
    )
    assert not trainer.calls and not measured
    assert snapshot(tmp_path / "search") == before  # search.json and report.html are the first search's


def test_another_budget_on_the_command_line_is_one_line(tmp_path, capsys):
    same = dict(out=tmp_path / "out", models=["mobilenet_v3_small"], widths=[0.5], resolutions=[32],
                budget=Budget(), max_candidates=12)  # fmt: skip
    Search(settings(tmp_path, **same), trainer=FakeTrainer(), measurer=fake_measurer, log=quiet).run()
    before = snapshot(tmp_path / "out")
    assert search_cli(tmp_path, "--max-latency-ms", "0.001") == 2
    assert one_line(capsys) == (
        f"{tmp_path / 'out'}: holds a search with other settings (--max-latency-ms: not given there, 0.001 here); "
        "pick another --out, or repeat that search's settings to resume it"
    )
    assert snapshot(tmp_path / "out") == before


def test_a_search_saved_without_its_budget_is_not_resumed(finished_search, tmp_path):
    copy_of(finished_search, tmp_path)
    state_file = tmp_path / "search" / "search_state.json"
    state = json.loads(state_file.read_text())
    for key in ("max_latency_ms", "max_flash_bytes", "max_ram_bytes", "max_candidates"):
        del state["signature"][key]  # as an earlier mobilenets saved it
    state_file.write_text(json.dumps(state))
    trainer = FakeTrainer()
    with pytest.raises(MobilenetsError) as caught:
        Search(settings(tmp_path), trainer=trainer, measurer=fake_measurer, log=quiet).run()
    assert str(caught.value) == (
        f"{tmp_path / 'search'}: holds a search saved by an earlier mobilenets, which did not record its "
        "--max-latency-ms, --max-flash-kb, --max-ram-kb, --max-candidates; pick another --out"
    )
    assert not trainer.calls


def test_impossible_budget_names_the_closest_and_exits_2(tmp_path, capsys, monkeypatch):
    tight = settings(tmp_path, budget=Budget(max_latency_ms=0.1))
    with pytest.raises(MobilenetsError, match=r"no candidate meets the budget.*closest: mobilenet_v3_small-w0.35-r32"):
        Search(tight, trainer=FakeTrainer(), measurer=fake_measurer, log=quiet).run()
    assert json.loads((tmp_path / "search" / "search.json").read_text())["recommended"] is None

    from mobilenets.cli import main as cli

    # The flash floor check needs no export: 1 KB is below any model's weights.
    code = cli.main(
        ["search", "--data", str(EXAMPLES), "--models", "mobilenet_v3_small", "--widths", "0.5",
         "--resolutions", "32", "--max-flash-kb", "1", "--out", str(tmp_path / "cli")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no candidate meets the budget" in err[0] and "flash" in err[0]
    assert "add --int8 (about 4× smaller files)" in err[0]  # int8 is the fix for a flash budget


def test_latency_miss_gives_no_int8_advice_and_formats_tiny_budgets(tmp_path):
    tight = settings(tmp_path, budget=Budget(max_latency_ms=1e-9))
    with pytest.raises(MobilenetsError) as caught:
        Search(tight, trainer=FakeTrainer(), measurer=fake_measurer, log=quiet).run()
    message = str(caught.value)
    assert "latency ≤ 1e-09 ms" in message and "> 1e-09 ms (" in message and "× the limit)" in message
    assert "0.0 ms" not in message and "%" not in message  # not "> 0.0 ms (+12599999900%)"
    assert "--int8" not in message and message.endswith("Relax the budget")


def test_nothing_measured_in_the_time_budget_says_raise_the_time_budget(tmp_path):
    ticks = iter(range(0, 10**6, 10))  # every look at the clock: 10 s later; the 1 s budget is gone at once
    tight = settings(tmp_path, budget=Budget(max_latency_ms=1e-9), time_budget_s=1.0)
    with pytest.raises(MobilenetsError) as caught:
        Search(tight, trainer=FakeTrainer(), measurer=fake_measurer, clock=lambda: next(ticks), log=quiet).run()
    message = str(caught.value)
    assert message.startswith("no candidate was measured: the time budget (--time-budget 1s) ran out")
    assert "raise --time-budget" in message
    assert "Relax the budget" not in message and "--int8" not in message and "none measured" not in message


def test_some_unmeasured_candidates_are_counted_with_the_closest(tmp_path):
    now = [0.0]

    def slow_measurer(**options):
        now[0] += 1000.0  # each (model, width) takes longer than the measuring share of the budget
        return fake_measurer(**options)

    tight = settings(tmp_path, budget=Budget(max_latency_ms=1e-9), time_budget_s=600.0)
    with pytest.raises(MobilenetsError) as caught:
        Search(tight, trainer=FakeTrainer(), measurer=slow_measurer, clock=lambda: now[0], log=quiet).run()
    message = str(caught.value)
    assert "closest: mobilenet_v" in message and "candidates not measured within the time budget" in message
    assert "Relax the budget, or raise --time-budget (now 10m) to measure the other" in message


def search_cli(tmp_path, *arguments, data=EXAMPLES):
    from mobilenets.cli import main as cli

    base = ["search", "--data", str(data), "--models", "mobilenet_v3_small", "--widths", "0.5",
            "--resolutions", "32", "--time-budget", "1m"]  # fmt: skip
    if "--out" not in arguments:
        arguments = (*arguments, "--out", str(tmp_path / "out"))
    return cli.main([*base, *arguments])


def one_line(capsys) -> str:
    return error_line(capsys, "search")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--models", ","), "--models ',': give at least one value"),
        (("--models", " , "), "--models ' , ': give at least one value"),
        (("--models", "mobilenet_v3_small,resnet50"), "--models: unknown model 'resnet50'"),
        (("--time-budget", "0"), "--time-budget 0: must be longer than zero"),
        (("--time-budget", "5"), "--time-budget 5: give a unit: 5m (minutes), 5s (seconds) or 5h (hours)"),
        (("--max-flash-kb", "nan"), "--max-flash-kb nan: give a finite number > 0"),
        (("--max-flash-kb", "inf"), "--max-flash-kb inf: give a finite number > 0"),
        (("--max-ram-kb", "inf"), "--max-ram-kb inf: give a finite number > 0"),
        (("--max-latency-ms", "nan"), "--max-latency-ms nan: give a finite number > 0"),
        (("--max-latency-ms", "-1"), "--max-latency-ms -1: give a finite number > 0"),
        (("--max-flash-kb", "1e-9"), "--max-flash-kb 1e-09: less than one byte"),
        (("--resolutions", "100000"), "--resolutions 100000 is too large: use at most 1024"),
        (("--resolutions", "16"), "--resolutions 16 is too small"),
        (("--widths", "inf"), "inf is not a finite number"),
        (("--widths", "3"), "--widths 3: the width multiplier must be > 0 and at most 2"),
        (("--val", "/no/such/folder"), "--val /no/such/folder: does not exist"),
        (("--max-candidates", "0"), "--max-candidates 0: give a whole number ≥ 1"),
        # train's bounds and words, before any candidate is measured (train refused it after the measuring).
        (("--seed", "-1"), "--seed -1: give a whole number ≥ 0"),
        (("--seed", "4294967296"), "--seed 4294967296: give a whole number from 0 to 4294967295"),
        (("--seed", "99999999999999999999"), "--seed 99999999999999999999: give a whole number from 0 to 4294967295"),
        # An empty item is refused, as `bench --batch 1,,2` refuses it, not dropped.
        (("--models", "mobilenet_v3_small,,mobilenet_v2"),
         "--models 'mobilenet_v3_small,,mobilenet_v2': an empty item; give comma-separated names, "
         "e.g. --models mobilenet_v3_small,mobilenet_v2"),
        (("--widths", "0.5,"), "--widths '0.5,': an empty item; give comma-separated numbers, e.g. 1,0.75,0.5"),
        (("--resolutions", ",32"), "--resolutions ',32': an empty item; give comma-separated numbers, e.g. 224,160,128"),
    ],
)
def test_bad_search_arguments_are_one_line_and_write_nothing(arguments, message, tmp_path, capsys):
    assert search_cli(tmp_path, *arguments) == 2
    assert message in one_line(capsys)
    assert not (tmp_path / "out").exists()  # refused before --out is created


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_search_refuses_a_seed_in_the_words_train_uses(seed, tmp_path, capsys):
    from mobilenets.cli import main as cli

    assert search_cli(tmp_path, "--seed", seed) == 2
    searched = one_line(capsys)
    assert cli.main(["train", "--data", str(EXAMPLES), "--seed", seed, "--out", str(tmp_path / "run")]) == 2
    assert searched == error_line(capsys, "train")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_search_out_that_is_a_file_and_data_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert search_cli(tmp_path, "--out", str(afile)) == 2
    expected = f"--out {afile}: is a file; pass a folder (a new one, or an earlier search's to resume it)"
    assert one_line(capsys) == expected
    assert search_cli(tmp_path, "--out", str(afile / "sub")) == 2
    assert f"is under {afile}, a file" in one_line(capsys)
    image = next((EXAMPLES / "bag").iterdir())
    assert search_cli(tmp_path, data=image) == 2
    assert one_line(capsys).startswith(f"--data {image}: is a file, not a folder; pass the folder that holds")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["{not json", "[]", '{"signature": 3}'])
def test_an_unreadable_search_state_is_one_line(text, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "search_state.json").write_text(text)
    assert search_cli(tmp_path) == 2
    assert one_line(capsys) == f"{tmp_path / 'out' / 'search_state.json'}: unreadable search state; pick another --out"


def test_search_out_that_holds_a_training_run_is_refused_before_any_work(tmp_path, capsys):
    # `train` writes these; a search there replaced the run's report.html and added its own folders.
    run = tmp_path / "run"
    run.mkdir()
    for name, text in (("config.json", "{}"), ("model.safetensors", "weights"), ("report.html", "the run's report")):
        (run / name).write_text(text)
    before = snapshot(run)
    assert search_cli(tmp_path, "--out", str(run)) == 2
    assert one_line(capsys) == (
        f"--out {run}: holds a training run (config.json); choose another --out for the search "
        "(a new folder, or an earlier search's to resume it)"
    )
    trainer = FakeTrainer()
    with pytest.raises(MobilenetsError, match="holds a training run"):
        Search(settings(tmp_path, out=run), trainer=trainer, measurer=fake_measurer, log=quiet).run()
    assert not trainer.calls
    assert snapshot(run) == before and sorted(p.name for p in run.iterdir()) == sorted(before)


def test_search_out_with_other_files_is_refused_and_an_empty_one_is_used(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("notes.txt", "report.html", "search.json", "zzz.csv"):
        (other / name).write_text("not the search's")
    before = snapshot(other)
    assert search_cli(tmp_path, "--out", str(other)) == 2
    assert one_line(capsys) == (
        f"--out {other}: holds other files and no search (notes.txt, report.html, search.json, …); "
        "choose another --out (a new or empty folder, or an earlier search's to resume it)"
    )
    assert snapshot(other) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("")  # hidden files do not make a folder someone's
    Search(settings(tmp_path, out=empty), trainer=FakeTrainer(), measurer=fake_measurer, log=quiet).run()
    assert (empty / "search.json").exists() and (empty / "search_state.json").exists()


def test_data_refused_after_the_scan_leaves_no_out_folder(tmp_path, capsys):
    one_class = tmp_path / "one_class"
    (one_class / "bag").mkdir(parents=True)
    image = next((EXAMPLES / "bag").iterdir())
    (one_class / "bag" / image.name).write_bytes(image.read_bytes())
    assert search_cli(tmp_path, data=one_class) == 2
    assert "a classifier needs at least 2" in one_line(capsys)
    assert not (tmp_path / "out").exists()
    wrong_val = tmp_path / "val"
    (wrong_val / "not_a_class").mkdir(parents=True)
    (wrong_val / "not_a_class" / image.name).write_bytes(image.read_bytes())
    assert search_cli(tmp_path, "--val", str(wrong_val)) == 2
    assert f"--val {wrong_val}: no images in folders named like --data's classes" in one_line(capsys)
    assert not (tmp_path / "out").exists()


class FailingCalibration(FakeTrainer):
    """The calibration run (the first training) fails as ``outcome`` says; the others train."""

    def __init__(self, **outcome) -> None:
        super().__init__()
        self.outcome = outcome

    def __call__(self, request: TrainRequest) -> TrainOutcome:
        if not self.calls:
            self.calls.append(request)
            return TrainOutcome(accuracy=None, seconds=180.0, complete=False, **self.outcome)
        return super().__call__(request)


def test_calibration_that_ran_out_of_time_says_so_and_not_fix_the_data(tmp_path):
    trainer = FailingCalibration(
        error="stopped at the time budget (a later search with the same --out resumes it)", timed_out=True
    )
    with pytest.raises(MobilenetsError) as caught:
        Search(settings(tmp_path), trainer=trainer, measurer=fake_measurer, clock=lambda: 0.0, log=quiet).run()
    request = trainer.calls[0]
    key = request.run_dir.name
    assert request.run_dir == tmp_path / "search" / "calibration" / key and request.timeout_s == 180.0
    assert str(caught.value) == (
        f"calibration run of {key} did not finish its one epoch in 180 s (its share of --time-budget 10m); "
        f"raise --time-budget or pass fewer images (log: {request.run_dir}.log)"
    )


def test_calibration_that_failed_names_the_runs_error_and_log(tmp_path):
    run_dir = tmp_path / "search" / "calibration"
    trainer = FailingCalibration(error="the run did not finish")
    with pytest.raises(MobilenetsError) as caught:
        Search(settings(tmp_path), trainer=trainer, measurer=fake_measurer, log=quiet).run()
    key = trainer.calls[0].run_dir.name
    assert str(caught.value) == f"calibration run of {key} failed: the run did not finish (log: {run_dir / key}.log)"
    # The run's own last line (it names the cause) and its log, said once; no guess at data or time.
    log = run_dir / f"{key}.log"
    error = f"exit code 2: mobilenets train: error: images.zip: not a folder (log: {log})"
    trainer = FailingCalibration(error=error)
    with pytest.raises(MobilenetsError) as caught:
        Search(settings(tmp_path), trainer=trainer, measurer=fake_measurer, log=quiet).run()
    assert str(caught.value) == f"calibration run of {key} failed: {error}"


def test_a_training_stopped_at_its_timeout_is_told_apart(tmp_path):
    request = TrainRequest(model="mobilenet_v3_small", width=0.25, resolution=32, epochs=1, weights=None,
                           run_dir=tmp_path / "run", data=EXAMPLES, timeout_s=0.2)  # fmt: skip
    outcome = subprocess_trainer(request)
    # (How far it got before the stop depends on the machine: an epoch of 400 images may have finished.)
    assert outcome.timed_out and not outcome.complete
    assert outcome.error.startswith("stopped at the time budget")


def test_real_candidate_training_at_32px(tmp_path):
    """The subprocess the search runs: one epoch of a small candidate on the example images."""
    request = TrainRequest(
        model="mobilenet_v3_small_minimal",
        width=0.5,
        resolution=32,
        epochs=1,
        weights=None,
        run_dir=tmp_path / "run",
        data=EXAMPLES,
        timeout_s=300,
    )
    outcome = subprocess_trainer(request)
    assert outcome.complete, outcome.error
    assert 0.0 <= outcome.accuracy <= 1.0 and outcome.train_images == 400
    again = subprocess_trainer(request)  # a finished run is read back, not trained again
    assert again.complete and again.accuracy == outcome.accuracy and again.seconds == 0.0


def test_profile_measures_latency_for_a_width_and_resolution(capsys):
    from mobilenets.cli import main as cli

    code = cli.main(
        ["profile", "mobilenet_v3_small_minimal", "--width", "0.5", "--resolution", "32", "--num-classes", "10",
         "--latency", "onnx", "--json"]
    )  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["width"] == 0.5 and data["resolution"] == 32
    assert data["latency_ms"] > 0 and data["file_bytes"] > 100_000 and data["latency_runtime"] == "onnx"
    assert data["latency_int8"] is False


@pytest.mark.slow  # trains and quantizes a candidate (~17 s)
def test_the_measured_int8_size_is_a_trained_models_not_an_untrained_ones(tmp_path):
    import numpy as np
    import torch

    from mobilenets.deployment.onnx import export_onnx
    from mobilenets.deployment.quantization import quantize_ptq
    from mobilenets.models.factory import create_model
    from mobilenets.search.measure import measure_onnx_group

    measured = measure_onnx_group(model_name="mobilenet_v3_small", width=0.25, resolutions=[32], num_classes=10,
                                  int8=True, work=tmp_path / "measure", repeats=1)[32].flash_bytes  # fmt: skip
    # A "trained" model made another way (BN statistics moved, as training moves them): its int8 file is
    # what `mobilenets quantize` writes for such a run. An untrained one's folded biases are all zero.
    trained = create_model("mobilenet_v3_small", num_classes=10, width=0.25)
    trained.weights_metadata = {"preprocessing": {"input_size": 32, "resize_size": 32}}
    with torch.no_grad():
        for module in trained.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
            elif isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)  # the classifier's and the SE gates' own biases
    calibration = np.random.default_rng(1).standard_normal((8, 3, 32, 32), dtype=np.float32)
    onnx_file = export_onnx(trained.eval(), tmp_path / "trained.onnx")
    actual = quantize_ptq(onnx_file, tmp_path / "trained_int8.onnx", calibration, "minmax").stat().st_size
    assert abs(measured - actual) / actual < 0.01
