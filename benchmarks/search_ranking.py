"""How well the search's short trainings rank candidates the way full trainings do (measured).

    .venv/bin/python benchmarks/search_ranking.py runs/search

Reads a finished ``mobilenets search`` folder, trains every candidate of its first rung for the last
rung's epochs (the same command and seed the search uses; runs the search already made are reused),
and reports Spearman's rank correlation between the first-rung (short) accuracies and the full ones,
whether the short ranking's winner is the full winner, and how many of the full top 3 the short top 3
(roughly what successive halving promotes) contains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy.stats import spearmanr

from mobilenets.search.candidates import Candidate
from mobilenets.search.runner import TrainRequest, subprocess_trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search", type=Path, help="a finished search folder (search.json)")
    args = parser.parse_args()
    result = json.loads((args.search / "search.json").read_text())
    plan = result["plan"]
    short_epochs, full_epochs = plan["rung_epochs"][0], plan["rung_epochs"][-1]
    candidates = {c["id"]: Candidate.from_dict(c) for c in result["candidates"]}
    data = Path(result["data"]["folder"])
    rows = []
    for key in plan["pool"]:
        candidate = candidates[key]
        short = next((r.accuracy for r in candidate.runs if r.epochs == short_epochs and r.complete), None)
        if short is None:
            continue
        request = TrainRequest(
            model=candidate.model,
            width=candidate.width,
            resolution=candidate.resolution,
            epochs=full_epochs,
            weights=candidate.weights,
            run_dir=args.search / "runs" / key / f"e{full_epochs}",
            data=data,
            seed=0,
        )
        outcome = subprocess_trainer(request)
        if not outcome.complete:
            print(f"{key}: {outcome.error}", file=sys.stderr)
            continue
        rows.append((key, short, outcome.accuracy))
        print(f"{key:42s} {short_epochs:>2} epochs {100 * short:5.1f}%   {full_epochs:>2} epochs {100 * outcome.accuracy:5.1f}%",
              flush=True)  # fmt: skip
    shorts, fulls = [r[1] for r in rows], [r[2] for r in rows]
    rho = spearmanr(shorts, fulls).statistic
    by_short = [r[0] for r in sorted(rows, key=lambda r: -r[1])]
    by_full = [r[0] for r in sorted(rows, key=lambda r: -r[2])]
    print(f"\n{len(rows)} candidates; Spearman rho(short {short_epochs} ep, full {full_epochs} ep) = {rho:.2f}")
    print(f"short winner {by_short[0]} is full #{by_full.index(by_short[0]) + 1}; full winner {by_full[0]} is short "
          f"#{by_short.index(by_full[0]) + 1}; full top 3 in short top 3: {len(set(by_short[:3]) & set(by_full[:3]))}/3; "
          f"full top 3 in short top half: {len(set(by_short[: (len(rows) + 1) // 2]) & set(by_full[:3]))}/3")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
