"""Issue 15: does a self-trained teacher teach better? (BENCHMARKS.md, "Small folders", twenty-third round)

Distilled students with unlabelled images end within about a point of their teacher (rounds 12-15), so
the teacher caps the gain. This measures one way to a stronger teacher with no other pretrained weights:
self-training (Xie et al. 2020, "Self-training with Noisy Student improves ImageNet classification",
https://arxiv.org/abs/1911.04252): a second V2, from the same ImageNet weights, trained by the first
teacher on the labelled images and the unlabelled ones, with augmentation as the noise. Everything runs
through the CLI, one folder at a time, with the settings fixed before any test figure:

    teacher       mobilenets train --data SUBSET --model mobilenet_v2 --resolution 64 --recipe auto
    alone         mobilenets train --data SUBSET $STUDENT --augment heavy --epochs E_ALONE
    taught        mobilenets train --data SUBSET $STUDENT --augment medium --epochs E --unlabelled U --teacher teacher
    self-trained  mobilenets train --data SUBSET --model mobilenet_v2 --resolution 64 --augment medium \\
                      --epochs E --head-epochs 1 --unlabelled U --teacher teacher
    taught by it  mobilenets train --data SUBSET $STUDENT --augment medium --epochs E --unlabelled U \\
                      --teacher self-trained
    STUDENT = --model mobilenet_v3_small --width 0.75 --resolution 64 --weights none

E and E_ALONE give every student the same number of steps (rounds 12-15's "equal steps"): 13 epochs over
400 + 12,000 images against 425 over 400 (fm500), 14 over 1,200 + 24,000 against 300 over 1,200 (fm1500).
The distillation weight and temperature are the CLI's defaults (0.5, 4). Seed 1's students train on the
teacher's split (folders of links), so no teacher saw a student's validation images. Students run two at
a time with ``OMP_NUM_THREADS=1``; the first teacher alone on both cores. Accuracy is
``mobilenets evaluate RUN --data TEST`` on test images no run used for any choice.

    python benchmarks/self_trained_teacher.py --data-root /tmp/fm --out /tmp/fm/runs_fm500 --subset fm500
    python benchmarks/self_trained_teacher.py --data-root /tmp/fm --out /tmp/fm/runs_fm1500 --subset fm1500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_small_folders import (
    TEST_OF,
    load,
    machine,
    pct,
    prepare_data,
    prepare_unlabelled,
    split_folders,
    train_and_evaluate,
)

STUDENT = ["--model", "mobilenet_v3_small", "--width", "0.75", "--resolution", "64", "--weights", "none"]
# (epochs alone, epochs with the unlabelled images): the same steps at batch 32
EPOCHS = {"fm500": (425, 13), "fm1500": (300, 14)}
UNLABELLED_PER_CLASS = 2400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subset", choices=sorted(EPOCHS), default="fm500")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    root, out = args.data_root.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, load {load()}, {info['utc']}", flush=True)
    prepare_data(root)
    data, test = root / args.subset, root / TEST_OF[args.subset]
    unlabelled = prepare_unlabelled(root, args.subset, UNLABELLED_PER_CLASS)
    alone_epochs, epochs = EPOCHS[args.subset]
    teacher_name, self_trained_name = f"t{args.subset[2:]}", f"t{args.subset[2:]}_ns"
    seeds = [int(seed) for seed in args.seeds.split(",")]

    def run(name: str, extra: list[str], seed: int) -> dict:
        folder, seeded = data, list(extra)
        if seed:  # the teacher's own split, another initialisation, order and augmentation
            folder, val = split_folders(out / teacher_name, out / f"split_{teacher_name}")
            seeded += ["--val", str(val), "--seed", str(seed)]
        result = train_and_evaluate(name, folder, test, out, seeded)
        print(f"{name}: {pct(result['test_accuracy'])} (val {pct(result['val_accuracy'])}, "
              f"{result['wall_seconds']:.0f} s)", flush=True)
        return result

    def side_by_side(*queues: list[tuple[str, list[str], int]]) -> list[list[dict]]:
        os.environ["OMP_NUM_THREADS"] = "1"  # two runs on two cores
        with ThreadPoolExecutor(len(queues)) as pool:
            futures = [pool.submit(lambda queue=queue: [run(*job) for job in queue]) for queue in queues]
            return [future.result() for future in futures]

    taught = [*STUDENT, "--augment", "medium", "--epochs", str(epochs), "--unlabelled", str(unlabelled)]
    teacher = run(teacher_name, ["--model", "mobilenet_v2", "--resolution", "64", "--recipe", "auto"], 0)
    alone = side_by_side(*[[(f"alone_s{seed}", [*STUDENT, "--augment", "heavy", "--epochs", str(alone_epochs)], seed)]
                          for seed in seeds])
    self_training = ["--model", "mobilenet_v2", "--resolution", "64", "--augment", "medium", "--epochs", str(epochs),
                     "--head-epochs", "1", "--teacher", str(out / teacher_name), "--unlabelled", str(unlabelled)]
    first, rest = side_by_side(
        [(self_trained_name, self_training, 0)],
        [(f"kd_{teacher_name}_s{seed}", [*taught, "--teacher", str(out / teacher_name)], seed) for seed in seeds],
    )
    self_trained = first[0]
    by_self_trained = side_by_side(*[[(f"kd_ns_s{seed}", [*taught, "--teacher", str(out / self_trained_name)], seed)]
                                     for seed in seeds])

    rows = list(zip(seeds, [a[0] for a in alone], rest, [b[0] for b in by_self_trained], strict=True))
    print(f"\n{args.subset} → {test.name}: teacher {pct(teacher['test_accuracy'])}, "
          f"self-trained teacher {pct(self_trained['test_accuracy'])}")
    print("| seed | alone | taught by the teacher | gain | taught by the self-trained teacher | gain |")
    print("|---|---|---|---|---|---|")
    for seed, a, t, s in rows:
        print(f"| {seed} | {pct(a['test_accuracy'])} | {pct(t['test_accuracy'])} | "
              f"{100 * (t['test_accuracy'] - a['test_accuracy']):+.2f} | {pct(s['test_accuracy'])} | "
              f"{100 * (s['test_accuracy'] - a['test_accuracy']):+.2f} |")
    for label, column in (("teacher", 2), ("self-trained teacher", 3)):
        gains = [100 * (row[column]["test_accuracy"] - row[1]["test_accuracy"]) for row in rows]
        print(f"mean gain, {label}: {statistics.mean(gains):+.2f} points")
    (out / "self_trained_teacher.json").write_text(json.dumps(
        {"teacher": teacher, "self_trained": self_trained,
         "rows": [{"seed": seed, "alone": a, "taught": t, "taught_by_self_trained": s} for seed, a, t, s in rows]},
        indent=1))


if __name__ == "__main__":
    main()
