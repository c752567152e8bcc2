"""Each symptom of the diagnosis, built on purpose from epoch histories (no training needed)."""

from __future__ import annotations

from mobilenets.training.diagnosis import (
    WEAK_TEACHER,
    ConfidentMistake,
    EpochStats,
    RunFacts,
    chance_margin,
    confident_mistakes,
    diagnose,
    expected_range,
    findings_html,
    format_findings,
    images_to_tell_chance,
    missing_auto_weights,
)


def history(*rows: tuple[float, float, float, float]) -> tuple[EpochStats, ...]:
    return tuple(
        EpochStats(epoch=i + 1, train_loss=tl, train_accuracy=ta, val_loss=vl, val_accuracy=va)
        for i, (tl, ta, vl, va) in enumerate(rows)
    )


def healthy(**changes) -> RunFacts:
    """A 500-image, 5-class fine-tune at the top of the seed's range: nothing to report."""
    values = dict(
        num_classes=5,
        train_images=400,
        val_images=100,
        history=history((1.2, 0.55, 0.9, 0.70), (0.8, 0.72, 0.7, 0.78), (0.6, 0.80, 0.6, 0.83)),
        initial_weights="mobilenet_v2.tv_in1k",
        augment_share=0.05,
        threads=2,
        cpu_count=2,
    )
    values.update(changes)
    return RunFacts(**values)


def symptoms(facts: RunFacts) -> list[str]:
    return [f.symptom for f in diagnose(facts)]


def test_a_healthy_run_has_nothing_to_report():
    assert symptoms(healthy()) == []
    assert "nothing to report" in format_findings([])


def test_shuffled_labels_are_not_learning_with_the_seeds_advice():
    # Random labels: the model memorizes the training images, validation stays at chance.
    facts = healthy(
        history=history((1.62, 0.21, 1.61, 0.21), (1.50, 0.35, 1.66, 0.19), (1.20, 0.55, 1.75, 0.22)),
        initial_weights=None,
        lr=1e-3,
        augment="heavy",
        confident_mistakes=(ConfidentMistake("val/a/1.png", "a", "b", 0.97),),
    )
    findings = diagnose(facts)
    assert next(f.symptom for f in findings) == "not_learning"
    assert "below_expectation" not in [f.symptom for f in findings]  # said once, not twice
    finding = findings[0]
    assert "chance" in finding.evidence and "memorizes" in finding.evidence
    advice = " ".join(finding.advice)
    for expected in ("--lr 2e-3", "--augment light", "--epochs", "check labels", "val/a/1.png", "--weights auto"):
        assert expected in advice


def test_a_flat_loss_is_not_learning_even_above_chance():
    facts = healthy(history=history((1.0, 0.5, 1.0, 0.72), (0.99, 0.5, 1.0, 0.72), (0.98, 0.5, 1.0, 0.72)))
    assert "not_learning" in symptoms(facts)


def test_tiny_training_set_overfits():
    facts = healthy(
        train_images=40,
        val_images=100,
        history=history((1.5, 0.4, 1.3, 0.45), (0.6, 0.85, 1.1, 0.55), (0.2, 0.97, 1.5, 0.56), (0.1, 1.0, 1.8, 0.55)),
        augment="light",
        initial_weights=None,
    )
    found = {f.symptom: f for f in diagnose(facts)}
    assert "overfitting" in found
    finding = found["overfitting"]
    assert "gap of" in finding.evidence and "validation loss rose" in finding.evidence
    advice = " ".join(finding.advice)
    assert "--augment medium" in advice and "collect more data" in advice and "leakage" in advice
    assert "--teacher" in advice and "--early-stopping" in advice


def test_duplicated_files_are_possible_leakage():
    facts = healthy(leakage_exact=(("train/a/1.png", "val/a/9.png"),), leakage_near=(("train/b/2.png", "val/b/3.png"),))
    found = {f.symptom: f for f in diagnose(facts)}
    assert "2 of 100 validation images" in found["possible_leakage"].evidence
    assert "val/a/9.png = train/a/1.png" in found["possible_leakage"].evidence
    assert any("--val DIR" in a for a in found["possible_leakage"].advice)
    assert "(2%) are copies" in found["possible_leakage"].evidence
    assert "optimistic by up to 2 points" in found["possible_leakage"].advice[0]
    # A few copies among many images: a share that rounds to 0% is still said as it is.
    few = healthy(val_images=10_000, leakage_near=tuple((f"train/{i}.png", f"val/{i}.png") for i in range(8)))
    finding = {f.symptom: f for f in diagnose(few)}["possible_leakage"]
    assert "8 of 10,000 validation images (0.08%)" in finding.evidence
    assert "optimistic by up to 0.08 points" in finding.advice[0]


def test_below_the_seeds_range_for_this_size():
    facts = healthy(
        history=history((1.2, 0.5, 1.0, 0.55), (1.0, 0.6, 0.9, 0.62), (0.9, 0.65, 0.85, 0.64)),
        initial_weights=None,
        resolution=64,
        median_image_side=200,
    )
    found = {f.symptom: f for f in diagnose(facts)}
    finding = found["below_expectation"]
    assert "70%–80%" in finding.evidence
    advice = " ".join(finding.advice)
    assert "--weights auto" in advice and "--teacher" in advice and "raise --resolution" in advice
    # From scratch, a longer schedule is advised before the teacher (measured: 40 → 100 epochs gained 4–5 points).
    assert advice.index("--epochs 100") < advice.index("--teacher")
    assert "--epochs 50" not in advice


def test_expected_range_follows_the_seeds_use_cases():
    assert (expected_range(500).low, expected_range(500).high) == (0.70, 0.80)
    assert expected_range(1_500).low == 0.75
    assert expected_range(3_000).low == 0.83
    assert expected_range(60_000).low == 0.83


def test_slow_training_names_the_cause():
    facts = healthy(augment_share=0.4, threads=1, cpu_count=8, cuda_available=True, batch_size=16)
    found = {f.symptom: f for f in diagnose(facts)}
    finding = found["slow_training"]
    assert "40%" in finding.evidence and "1 of 8" in finding.evidence and "CUDA" in finding.evidence
    advice = " ".join(finding.advice)
    assert "--device cuda" in advice and "--batch-size" in advice


def test_confident_mistakes_are_the_most_confident_wrong_ones():
    mistakes = confident_mistakes(
        [[0.9, 0.1], [0.05, 0.95], [0.2, 0.8], [0.6, 0.4]],
        [1, 0, 0, 0],
        paths=["a", "b", "c", "d"],
        classes=["cat", "dog"],
        threshold=0.8,
    )
    assert [m.path for m in mistakes] == ["b", "a", "c"]
    assert mistakes[0].label == "cat" and mistakes[0].predicted == "dog"


def test_findings_serialize_and_render():
    findings = diagnose(healthy(leakage_exact=(("t<1>", "v&1"),)))
    as_json = [f.to_dict() for f in findings]
    assert set(as_json[0]) == {"symptom", "evidence", "advice"}
    page = findings_html(as_json)
    assert "possible_leakage" in page and "v&amp;1" in page
    assert "possible_leakage" in format_findings(findings)


def test_random_labels_end_to_end_are_diagnosed_not_learning(tmp_path):
    """A real `mobilenets train` run on images whose labels carry no information (~10 s on 2 cores)."""
    import json

    import numpy as np
    from PIL import Image

    from mobilenets.cli.main import main

    rng = np.random.default_rng(0)
    for index in range(200):
        folder = tmp_path / "data" / f"class_{rng.integers(5)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    run_dir = tmp_path / "run"
    arguments = ["train", "--data", str(tmp_path / "data"), "--out", str(run_dir), "--quiet", "--epochs", "3"]
    assert main([*arguments, "--model", "mobilenet_v3_small", "--width", "0.25", "--resolution", "32"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["initial_weights"] is None  # no checkpoint at width 0.25: scratch, said loudly
    assert metrics["diagnosis"][0]["symptom"] == "not_learning"
    assert any("--lr 2e-3" in advice for advice in metrics["diagnosis"][0]["advice"])
    assert "not_learning" in (run_dir / "report.html").read_text()
    assert json.loads((run_dir / "config.json").read_text())["initial_weights"] is None


def test_a_teacher_no_better_than_its_student_is_named_with_the_way_out():
    history = tuple(
        EpochStats(epoch=e, train_loss=2.0 / e, train_accuracy=0.9, val_loss=0.4, val_accuracy=0.87 + 0.01 * e)
        for e in (1, 2)
    )  # the student's best: 89%
    base = dict(num_classes=9, train_images=576, val_images=144, history=history, teacher="runs/v2", distill_weight=0.9)
    level = diagnose(RunFacts(**base, teacher_val_accuracy=0.917))  # 2.7 points ahead; 2 SE on 144 images: 4.6
    (finding,) = [f for f in level if f.symptom == WEAK_TEACHER]
    assert "91.7%" in finding.evidence and "89.0%" in finding.evidence and "2.7 points ahead" in finding.evidence
    assert any("without --teacher" in a for a in finding.advice)
    assert any("--distill-weight 0.45 (this run: 0.9)" in a for a in finding.advice)
    assert any(a.startswith("give the teacher images to label: --unlabelled DIR") for a in finding.advice)
    (with_pool,) = [
        f for f in diagnose(RunFacts(**base, teacher_val_accuracy=0.917, unlabelled_images=600)) if f.symptom == WEAK_TEACHER
    ]
    assert not any("--unlabelled" in a for a in with_pool.advice)  # it already has them
    clearly_better = diagnose(RunFacts(**base, teacher_val_accuracy=0.96))  # 7 points ahead: a teacher worth having
    assert WEAK_TEACHER not in [f.symptom for f in clearly_better]
    (worse,) = [f for f in diagnose(RunFacts(**base, teacher_val_accuracy=0.85)) if f.symptom == WEAK_TEACHER]
    assert "the teacher is no better" in worse.evidence
    unmeasured = diagnose(RunFacts(**base))  # an older run, no teacher figure: nothing said
    assert WEAK_TEACHER not in [f.symptom for f in unmeasured]


def test_a_tiny_rise_of_a_tiny_validation_loss_is_not_overfitting():
    # A V2 fine-tune at 100% validation accuracy: val loss 0.056 at epoch 3, 0.082 at the end (+46%, +0.026 nats).
    rows = [(0.9, 0.8, 0.09, 1.0), (0.5, 0.95, 0.06, 1.0), (0.4, 0.97, 0.056, 1.0), (0.3, 0.98, 0.07, 1.0)]
    facts = healthy(history=history(*rows, (0.25, 0.99, 0.082, 1.0)))
    assert "overfitting" not in [f.symptom for f in diagnose(facts)]


def test_a_good_result_on_a_tiny_validation_set_is_not_called_near_chance():
    # `--data tiny`: 6 validation images of 3 classes; 3 standard errors at chance are 58 points, so 83.3% was
    # "near chance" and "what random labels look like". Too few images to tell is no evidence of not learning.
    rows = [(1.10, 0.40, 1.05, 0.50), (0.80, 0.70, 0.90, 0.667), (0.40, 0.95, 0.70, 0.833)]
    facts = healthy(num_classes=3, train_images=24, val_images=6, history=history(*rows), augment="none")
    assert chance_margin(3, 6) > 0.5
    assert "not_learning" not in symptoms(facts)
    # At chance on the same 6 images, the accuracy is still no evidence (the training/validation gap is, below).
    at_chance = healthy(
        num_classes=3, train_images=24, val_images=6, history=history(*rows[:2], (0.4, 0.95, 1.1, 0.333))
    )
    assert "not_learning" not in symptoms(at_chance)
    # A flat training loss is evidence on any validation set; the finding then says the set is too small.
    flat = healthy(
        num_classes=3,
        train_images=24,
        val_images=6,
        history=history((1.1, 0.3, 1.1, 0.5), (1.09, 0.3, 1.1, 0.5), (1.08, 0.3, 1.1, 0.5)),
    )
    (finding,) = [f for f in diagnose(flat) if f.symptom == "not_learning"]
    assert "6 validation images cannot tell learning from chance (3 standard errors = 58 points)" in finding.evidence
    assert "near chance" not in finding.evidence and "random labels" not in finding.evidence
    assert any(
        "add validation images (at least 32 for 3 classes; this run: 6)" in a and "--val DIR" in a
        for a in finding.advice
    )
    # From 32 images of 3 classes (24 of 5) the set can tell, and accuracy near chance is not_learning again.
    assert (images_to_tell_chance(2), images_to_tell_chance(3), images_to_tell_chance(5)) == (36, 32, 24)
    assert chance_margin(3, 32) <= 0.25 < chance_margin(3, 31)
    shuffled = healthy(
        num_classes=5,
        val_images=24,
        initial_weights=None,
        history=history((1.62, 0.21, 1.61, 0.21), (1.50, 0.35, 1.66, 0.19), (1.20, 0.55, 1.75, 0.22)),
    )
    (finding,) = [f for f in diagnose(shuffled) if f.symptom == "not_learning"]
    assert "near chance" in finding.evidence and "cannot tell" not in finding.evidence


def test_overfitting_without_augmentation_does_not_say_augmented():
    rows = [(1.5, 0.4, 1.3, 0.45), (0.6, 0.85, 1.1, 0.55), (0.2, 0.97, 1.5, 0.56), (0.1, 1.0, 1.8, 0.55)]
    plain = {f.symptom: f for f in diagnose(healthy(train_images=40, history=history(*rows), augment="none"))}
    assert "(on training images, no augmentation)" in plain["overfitting"].evidence
    assert "augmented" not in plain["overfitting"].evidence
    augmented = {f.symptom: f for f in diagnose(healthy(train_images=40, history=history(*rows), augment="light"))}
    assert "(on augmented images)" in augmented["overfitting"].evidence


def test_below_expectation_counts_training_images_as_training_data():
    # 500 images, 400 of them for training: the seed's sizes (the range and "up to 5,000") count the whole folder.
    facts = healthy(history=history((1.2, 0.5, 1.0, 0.55), (1.0, 0.6, 0.9, 0.62), (0.9, 0.65, 0.85, 0.64)))
    finding = {f.symptom: f for f in diagnose(facts)}["below_expectation"]
    assert "(this run: 500 images, 5 classes)" in finding.evidence
    assert any(
        "collect more training data (this run: 500 images, 400 for training; up to 5,000" in a for a in finding.advice
    )


def test_a_teacher_measured_on_few_unseen_images_is_not_called_weak():
    history = tuple(
        EpochStats(epoch=e, train_loss=2.0 / e, train_accuracy=0.9, val_loss=0.4, val_accuracy=0.87 + 0.01 * e)
        for e in (1, 2)
    )  # the student's best: 89%
    base = dict(num_classes=9, train_images=576, val_images=144, history=history, teacher="runs/v2")
    # It trained on 142 of the 144: 0.0% on the other 2 says nothing about it.
    (few,) = [
        f
        for f in diagnose(RunFacts(**base, teacher_val_accuracy=0.0, teacher_saw_validation=142))
        if f.symptom == WEAK_TEACHER
    ]
    assert "trained on 142 of the 144 validation images" in few.evidence
    assert "on the 2 it did not train on it scores 0.0%, too few to judge it" in few.evidence
    assert "on the validation images" not in few.evidence and "no better" not in few.evidence
    assert any("--val-fraction" in a and "--val DIR" in a for a in few.advice)
    # Trained on all of them: no figure at all, and said so.
    (none_left,) = [f for f in diagnose(RunFacts(**base, teacher_saw_validation=144)) if f.symptom == WEAK_TEACHER]
    assert "none is left to judge it by" in none_left.evidence
    # Enough unseen images: judged on those, and the wording says which figure it is (2 SE on 44 images: 9 points).
    (judged,) = [
        f
        for f in diagnose(RunFacts(**base, teacher_val_accuracy=0.80, teacher_saw_validation=100))
        if f.symptom == WEAK_TEACHER
    ]
    assert (
        "scores 80.0% on the 44 validation images it did not train on (it trained on the other 100)" in judged.evidence
    )
    assert "the teacher is no better" in judged.evidence
    # A 5-point lead is clear on 144 images (2 SE: 3.6) but not on the 44 it did not see (2 SE: 6.2).
    ahead = diagnose(RunFacts(**base, teacher_val_accuracy=0.94, teacher_saw_validation=100))
    (finding,) = [f for f in ahead if f.symptom == WEAK_TEACHER]
    assert "within the 7.2 points these 44 validation images can resolve" in finding.evidence
    assert WEAK_TEACHER not in [f.symptom for f in diagnose(RunFacts(**base, teacher_val_accuracy=0.94))]


def test_not_learning_advises_a_checkpoint_file_when_auto_cannot_have_found_one():
    shuffled = history((1.62, 0.21, 1.61, 0.21), (1.50, 0.35, 1.66, 0.19), (1.20, 0.55, 1.75, 0.22))

    def advice(**changes) -> str:
        (finding,) = [
            f
            for f in diagnose(healthy(history=shuffled, initial_weights=None, **changes))
            if f.symptom == "not_learning"
        ]
        return " ".join(finding.advice)

    assert "--weights auto, the default" in advice()  # the checkpoint is here: the run said --weights none
    missing = advice(model="mobilenet_v2", auto_weights_missing="mobilenet_v2.tv_in1k")
    assert "--weights FILE" in missing and "mobilenet_v2.tv_in1k" in missing and "the default" not in missing
    unpublished = advice(model="mobilenet_v3_small_minimal")
    assert "no ImageNet checkpoint is published for mobilenet_v3_small_minimal" in unpublished
    assert "--weights FILE" in unpublished and "the default" not in unpublished


def test_missing_auto_weights_looks_in_the_cache(tmp_path, monkeypatch):
    from mobilenets.models.published import PUBLISHED_WEIGHTS, default_published

    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    assert missing_auto_weights("mobilenet_v3_small", 0.5) is None  # no checkpoint at this width to miss
    name = default_published("mobilenet_v3_small").name
    if PUBLISHED_WEIGHTS[name].offline_copies and missing_auto_weights("mobilenet_v3_small", 1.0) is None:
        return  # installed offline on this machine: nothing is missing
    assert missing_auto_weights("mobilenet_v3_small", 1.0) == name
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / PUBLISHED_WEIGHTS[name].filename).write_bytes(b"")
    assert missing_auto_weights("mobilenet_v3_small", 1.0) is None


def test_torchrun_processes_count_together_for_the_thread_check():
    # torchrun --nproc-per-node 2 on 2 cores: OMP_NUM_THREADS=1 in each process is every core in use.
    assert "slow_training" not in {f.symptom for f in diagnose(healthy(threads=1, cpu_count=2, local_processes=2))}
    finding = {f.symptom: f for f in diagnose(healthy(threads=1, cpu_count=8, local_processes=2))}["slow_training"]
    assert "2 processes × 1 thread used 2 of 8" in finding.evidence
    assert "OMP_NUM_THREADS=4 torchrun" in " ".join(finding.advice)


def test_epochs_without_validation_are_left_out_of_the_validation_figures():
    # `train --val-every 2`: epochs 1, 3 and 5 carry no validation figures, and take no part in the best
    # accuracy or the rise of the validation loss; the training loss still counts every epoch.
    rows = [(1.5, 0.4, 1.3, 0.45), (0.6, 0.85, 1.1, 0.55), (0.2, 0.97, 1.5, 0.56), (0.1, 1.0, 1.8, 0.55)]
    validated = history(*rows)
    sparse = tuple(
        EpochStats(
            epoch=2 * e.epoch,
            train_loss=e.train_loss,
            train_accuracy=e.train_accuracy,
            val_loss=e.val_loss,
            val_accuracy=e.val_accuracy,
        )
        for e in validated
    )
    skipped = tuple(
        EpochStats(
            epoch=e.epoch - 1,
            train_loss=e.train_loss + 0.05,
            train_accuracy=e.train_accuracy,
            val_loss=None,
            val_accuracy=None,
        )
        for e in sparse
    )
    mixed = tuple(sorted(sparse + skipped, key=lambda e: e.epoch))
    facts = healthy(train_images=40, history=mixed, augment="light", initial_weights=None)
    assert facts.best_val_accuracy == 0.56 and len(facts.validated_history) == 4
    found = {f.symptom: f for f in diagnose(facts)}
    assert "validation loss rose from 1.100 (epoch 4) to 1.800" in found["overfitting"].evidence
    assert (
        EpochStats.from_dict(
            {"epoch": 3, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": None, "val_accuracy": None}
        ).validated
        is False
    )


def test_validation_taking_a_large_share_advises_val_every():
    # 3 epochs of 10 s each and 3 validations of 20 s: 67% of the run validating. Every 38th epoch would cost
    # about 5% (20 / (38 × 10 + 20)); capped at the run's 3 epochs.
    facts = healthy(train_seconds=30.0, validation_seconds=60.0, epochs=3)
    found = {f.symptom: f for f in diagnose(facts)}
    # A small folder's minute-long run: a third of it validating is 16 s, and its epochs choose the kept one.
    assert "slow_training" not in symptoms(healthy(train_seconds=31.0, validation_seconds=16.0, epochs=30))
    finding = found["slow_training"]
    assert "validating took 67% of the run (60 s over 3 validations of 100 images)" in finding.evidence
    assert any(a.startswith("validate less often: --val-every 3 (this run: 1;") for a in finding.advice)
    long_run = {f.symptom: f for f in diagnose(healthy(train_seconds=30.0, validation_seconds=60.0, epochs=100))}
    assert any("--val-every 38 " in a for a in long_run["slow_training"].advice)
    # Already validating only the last epoch: fewer validation images is the way left.
    last_only = {f.symptom: f for f in diagnose(healthy(train_seconds=30.0, validation_seconds=60.0, epochs=3, val_every=3))}
    assert [a for a in last_only["slow_training"].advice if "valid" in a] == [
        "validate on fewer images: a smaller validation set (--val-fraction, or --val DIR)"
    ]
    # A tenth of the run (full Fashion-MNIST: ~12 s of 127 s an epoch) is worth its figures.
    assert "slow_training" not in symptoms(healthy(train_seconds=300.0, validation_seconds=33.0))
