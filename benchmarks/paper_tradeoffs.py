"""The MobileNet paper's accuracy half on a proxy that trains here: Tables 4, 5, 6–7 and Figures 4–5.

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/paper_tradeoffs.py

Howard et al. 2017 (https://arxiv.org/abs/1704.04861) measure ImageNet top-1 for: full convolution vs
depthwise separable (Table 4), thinner vs shallower at about equal cost (Table 5), width α ∈ {1, .75,
.5, .25} (Table 6) and resolution ρ ∈ {224, 192, 160, 128} (Table 7), and plot accuracy against MACs
and parameters (Figures 4–5). The proxy: Fashion-MNIST (Debian's dataset-fashion-mnist, written as class
folders by ``mobilenets datasets``), a subset (default 400 train images per class = 4,000, and 100 test
images per class = 1,000 held out), the paper's resolutions scaled by 64/224 (64, 56, 48, 40 px), and one
short recipe for every model (from scratch, AdamW, the same epochs, seed, batch and augmentation).
Accuracy is ``final_val_accuracy`` on the held-out test images (the last weights: no selection on the
test set). MACs and parameters come from ``mobilenets.models.profiling`` (what ``mobilenets profile``
prints); latency is batch 1 in ONNX Runtime fp32 on this machine (the search's harness).

The CPU budget (2 shared cores): the full-convolution model costs ~8× a v1 per image and dominates; at
the defaults the whole benchmark takes ~35 min. Runs are resumable: a finished run is read back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(sys.executable).parent / "mobilenets"
BASE = 64  # the proxy's "224": 28-px images upsampled; 64 px keeps a 2×2 map at stride 32
RESOLUTIONS = (64, 56, 48, 40)  # 224, 192, 160, 128 × 64/224, rounded to multiples of 8
# One recipe for every model (what "the same training" means here).
RECIPE = [
    "--precision", "fp32", "--augment", "light", "--batch-size", "64", "--lr", "0.003",
    "--warmup-epochs", "0.5", "--weights", "none", "--seed", "0", "--quiet",
]  # fmt: skip
# (table, model, width, resolution): the paper's rows on the proxy.
ROWS = [
    ("4", "mobilenet_v1_full_conv", 1.0, BASE),
    ("4,6,7", "mobilenet_v1", 1.0, BASE),
    ("5,6", "mobilenet_v1", 0.75, BASE),
    ("5", "mobilenet_v1_shallow", 1.0, BASE),
    ("6", "mobilenet_v1", 0.5, BASE),
    ("6", "mobilenet_v1", 0.25, BASE),
    ("7", "mobilenet_v1", 1.0, RESOLUTIONS[1]),
    ("7", "mobilenet_v1", 1.0, RESOLUTIONS[2]),
    ("7", "mobilenet_v1", 1.0, RESOLUTIONS[3]),
]
# The paper's ImageNet top-1 (REFERENCE §1) for the same rows, to print side by side.
PAPER = {
    ("mobilenet_v1_full_conv", 1.0, 0): 71.7,
    ("mobilenet_v1", 1.0, 0): 70.6,
    ("mobilenet_v1", 0.75, 0): 68.4,
    ("mobilenet_v1_shallow", 1.0, 0): 65.3,
    ("mobilenet_v1", 0.5, 0): 63.7,
    ("mobilenet_v1", 0.25, 0): 50.6,
    ("mobilenet_v1", 1.0, 1): 69.1,
    ("mobilenet_v1", 1.0, 2): 67.2,
    ("mobilenet_v1", 1.0, 3): 64.4,
}


@dataclass
class Row:
    table: str
    model: str
    width: float
    resolution: int
    paper_resolution: int
    paper_top1: float
    macs: int
    params: int
    latency_ms: float
    test_accuracy: float
    best_epoch_accuracy: float
    train_seconds: float
    wall_seconds: float


def ensure_data(root: Path, train_per_class: int, test_per_class: int) -> tuple[Path, Path]:
    folders = []
    for split, limit in (("train", train_per_class), ("test", test_per_class)):
        folder = root / f"{split}-{limit}"
        if not folder.exists():
            partial = root / f"{folder.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(
                [BINARY, "datasets", "fashion-mnist", "--split", split, "--out", partial,
                 "--limit-per-class", str(limit)],
                check=True,
            )  # fmt: skip
            partial.rename(folder)
        folders.append(folder)
    return folders[0], folders[1]


def train(run_dir: Path, *, model: str, width: float, resolution: int, data: Path, test: Path, epochs: int) -> tuple[dict, float]:
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not (run_dir / "checkpoint.pt").exists():
        return json.loads(metrics_path.read_text()), 0.0
    if run_dir.exists() and (run_dir / "checkpoint.pt").exists():
        command = [BINARY, "train", "--resume", str(run_dir), "--quiet"]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [
            BINARY, "train", "--data", str(data), "--val", str(test), "--model", model, "--width", f"{width:g}",
            "--resolution", str(resolution), "--epochs", str(epochs), "--out", str(run_dir), *RECIPE,
        ]  # fmt: skip
    print("$", " ".join(map(str, command)), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(metrics_path.read_text()), time.perf_counter() - start


def cost(model: str, width: float, resolution: int, work: Path) -> tuple[int, int, float]:
    from mobilenets.models.factory import create_model
    from mobilenets.models.profiling import profile_model
    from mobilenets.search.measure import measure_onnx_group

    profile = profile_model(create_model(model, num_classes=10, width=width), resolution)
    measured = measure_onnx_group(
        model_name=model, width=width, resolutions=[resolution], num_classes=10, int8=False, work=work
    )
    return profile.macs, profile.params, measured[resolution].latency_ms


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, key, label in ((axes[0], "macs", "multiply-adds (M, log)"), (axes[1], "params", "parameters (M, log)")):
        for row in rows:
            x = getattr(row, key) / 1e6
            marker = {"mobilenet_v1": "o", "mobilenet_v1_full_conv": "s", "mobilenet_v1_shallow": "^"}[row.model]
            ax.scatter(x, 100 * row.test_accuracy, marker=marker, color="C0" if row.model == "mobilenet_v1" else "C3")
            text = f"α{row.width:g} {row.resolution}px" if row.model == "mobilenet_v1" else row.model.split("_")[-1]
            if key == "macs":
                text += f"\n{row.latency_ms:.2f} ms"
            ax.annotate(text, (x, 100 * row.test_accuracy), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("accuracy vs MACs (paper Fig. 4); batch-1 ORT latency beside", fontsize=9)
    axes[1].set_title("accuracy vs parameters (paper Fig. 5)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/fashion-mnist-paper"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-paper-tradeoffs"))
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "paper_tradeoffs.png")
    args = parser.parse_args()
    print("load average before:", os.getloadavg(), flush=True)
    started = time.perf_counter()
    data, test = ensure_data(args.data_root, args.train_per_class, args.test_per_class)
    rows = []
    for table, model, width, resolution in ROWS:
        run_dir = args.out / f"{model}-w{width:g}-r{resolution}-e{args.epochs}"
        metrics, wall = train(
            run_dir, model=model, width=width, resolution=resolution, data=data, test=test, epochs=args.epochs
        )
        macs, params, latency = cost(model, width, resolution, args.out / "onnx")
        index = RESOLUTIONS.index(resolution)
        rows.append(
            Row(
                table=table,
                model=model,
                width=width,
                resolution=resolution,
                paper_resolution=(224, 192, 160, 128)[index],
                paper_top1=PAPER[(model, width, index)],
                macs=macs,
                params=params,
                latency_ms=round(latency, 3),
                test_accuracy=metrics["final_val_accuracy"],
                best_epoch_accuracy=metrics["best_val_accuracy"],
                train_seconds=round(metrics.get("train_seconds", 0.0), 1),
                wall_seconds=round(wall, 1),
            )
        )
        print(f"  {model} α={width:g} {resolution}px: test {100 * rows[-1].test_accuracy:.1f}%, "
              f"{macs / 1e6:.1f}M MACs, {latency:.2f} ms", flush=True)  # fmt: skip
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    plot(rows, args.plot)
    print("\n| table | model | α | px (paper px) | MACs | params | ORT fp32 b1 ms | test acc % | paper top-1 % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.table} | {r.model} | {r.width:g} | {r.resolution} ({r.paper_resolution}) | {r.macs / 1e6:.1f}M | "
            f"{r.params / 1e6:.2f}M | {r.latency_ms:.2f} | {100 * r.test_accuracy:.1f} | {r.paper_top1} |"
        )
    print(f"\nrecipe: {args.epochs} epochs, {' '.join(RECIPE)}; train {data}, test {test}")
    print(f"wall time {time.perf_counter() - started:.0f} s; load average after: {os.getloadavg()}; plot {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
