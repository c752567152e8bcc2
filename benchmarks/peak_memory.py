"""Peak memory of training and inference, ours against torchvision's (timm's for v1) model.

Each candidate runs in a fresh process (``--one`` below), so its peak resident set (``ru_maxrss``)
is its own: the figure is what a user's process needs, with PyTorch's and ONNX Runtime's allocators,
libraries and the model included. The process's RSS after imports and before building anything is
printed as well, so the growth caused by the candidate can be read off.

    .venv/bin/python benchmarks/peak_memory.py --models mobilenet_v3_small mobilenet_v1 mobilenet_v2 mobilenet_v3_large

Candidates (batch 32, 224 px unless changed):
  train <peer> CL eager fp32   the peer's model, channels_last, SGD step
  train ours default           ``prepare_for_training`` (bf16 1×1 convs where the CPU has native bf16), SGD
  infer <peer> CL eager        the peer's model, eval, inference_mode, channels_last
  infer ours torch engine      ``load_engine(model, "torch")``
  infer ours default           ``load_engine(model)`` with an exported copy present: ONNX Runtime fp32
Memory does not depend on load, so this needs no lock.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CANDIDATES = (
    "train peer CL eager fp32",
    "train ours default",
    "infer peer CL eager",
    "infer ours torch engine",
    "infer ours default",
)
NUM_CLASSES = 1000


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(candidate: str, model_name: str, batch: int, resolution: int, steps: int) -> dict:
    import torch
    from common import baseline_library, build_peer

    from mobilenets.deployment.engines import load_engine
    from mobilenets.kernels.acceleration import prepare_for_training, to_model_layout
    from mobilenets.models.factory import create_model

    torch.set_num_threads(2)
    torch.manual_seed(0)  # the same weights in every process, so the "export" process's file is found
    before = rss_mb()
    images = torch.randn(batch, 3, resolution, resolution)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    peer = baseline_library(model_name)
    if candidate.startswith("train"):
        if "peer" in candidate:
            model = build_peer(peer, model_name, NUM_CLASSES).to(memory_format=torch.channels_last).train()
        else:
            model = prepare_for_training(create_model(model_name, num_classes=NUM_CLASSES), compile=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batch_images = to_model_layout(images)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(batch_images).float(), labels).backward()
            optimizer.step()
    else:
        if "peer" in candidate:
            model = build_peer(peer, model_name, NUM_CLASSES).eval().to(memory_format=torch.channels_last)
            nhwc = images.contiguous(memory_format=torch.channels_last)

            def run():
                with torch.inference_mode():
                    return model(nhwc)
        else:
            ours = create_model(model_name, num_classes=NUM_CLASSES).eval()
            engine_name = "torch" if "torch" in candidate else "onnxruntime"
            if candidate == "export":
                return {"path": str(load_engine(ours, "onnxruntime").path)}
            engine = load_engine(ours, engine_name)

            def run():
                return engine(images)

        for _ in range(steps):
            run()
    return {"before_mb": before, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "mobilenet_v1"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("CANDIDATE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.batch, args.resolution, args.steps)))
        return 0

    from common import machine_info, print_machine, table

    print_machine(machine_info())
    print(f"peak resident memory per process, batch {args.batch}, {args.resolution} px, {args.steps} steps/calls")
    rows = []
    home = tempfile.mkdtemp(prefix="mobilenets-memory-home-")
    for model_name in args.models:
        for candidate in ("export", *CANDIDATES):
            command = [sys.executable, __file__, "--one", candidate, model_name, "--batch", str(args.batch)]
            command += ["--resolution", str(args.resolution), "--steps", str(args.steps)]
            env = {**os.environ, "MOBILENETS_HOME": home, "MOBILENETS_THREAD_PROBE": "0"}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                rows.append([model_name, candidate, "failed", done.stderr.strip().splitlines()[-1][:80], ""])
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if candidate == "export":  # only makes the cached ONNX copy that "infer ours default" runs
                continue
            rows.append(
                [
                    model_name,
                    candidate,
                    f"{result['peak_mb']:.0f}",
                    f"{result['before_mb']:.0f}",
                    f"{result['peak_mb'] - result['before_mb']:.0f}",
                ]
            )
            sys.stdout.flush()
    print(table(rows, ["model", "candidate", "peak RSS MB", "RSS after imports MB", "growth MB"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
