"""A class folder of real photographs for acceptance runs: random crops of 10 photos shipped with pip packages.

Ten classes, one photograph each, none of them used by ``deploy_v2_ptq.py``'s photo sets: scikit-learn's
``china.jpg`` and ``flower.jpg``, Matplotlib's ``grace_hopper.jpg``, and scikit-image's ``camera``,
``coins``, ``moon``, ``brick``, ``grass``, ``gravel`` and ``page``. Each image is a random crop of
5–100% of the photo's area (aspect 3/4–4/3, random horizontal flip), saved as a 96 px JPEG at quality
70–94. ``--seed`` picks the crops: the training folder and a held-out test folder use different seeds,
so no crop of one is in the other (crops of one photo can still overlap, as two shots of one scene do).

    .venv/bin/python benchmarks/photo_folder.py photos10 --per-class 100 --seed 500
    .venv/bin/python benchmarks/photo_folder.py photos10_test --per-class 30 --seed 900
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import sklearn.datasets
from deploy_v2_ptq import random_crops
from PIL import Image
from skimage import data


def photographs() -> dict[str, Image.Image]:
    bundled = Path(sklearn.datasets.__file__).parent / "images"
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    grey = {name: Image.fromarray(getattr(data, name)()) for name in ("camera", "coins", "moon", "brick", "grass", "gravel", "page")}
    return {
        "china": Image.open(bundled / "china.jpg"),
        "flower": Image.open(bundled / "flower.jpg"),
        "grace_hopper": Image.open(sample_data / "grace_hopper.jpg"),
        **grey,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    for index, (name, photo) in enumerate(photographs().items()):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        crops = random_crops([photo.convert("RGB")], args.per_class, seed=args.seed + index, smallest=0.05)
        for number, crop in enumerate(crops):
            quality = 70 + (number * 7) % 25
            crop.resize((args.size, args.size)).save(folder / f"{name}_{number:03d}.jpg", quality=quality)
    print(f"{args.out}: {sum(1 for _ in args.out.rglob('*.jpg'))} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
