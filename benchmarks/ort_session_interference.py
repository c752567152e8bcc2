"""Two ONNX Runtime sessions of the same file, timed alternately: with and without an untimed run first.

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/ort_session_interference.py

ORT's intra-op threads keep spinning for a while after a run. A session timed right after *another*
session therefore shares the cores with that session's spinning threads. This is why
``common.measure(settle_calls=1)`` and ``deployment.timing.speed_check`` run each session once, untimed,
before timing it. "raw" is a plain ``create_session`` on the file; "engine" is the product's default
inference engine (``load_engine``) on the same file.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch

from mobilenets.deployment.engines import load_engine
from mobilenets.deployment.onnx_runtime import create_session
from mobilenets.models.factory import create_model


def main() -> int:
    os.environ["MOBILENETS_HOME"] = tempfile.mkdtemp(prefix="mobilenets-bench-home-")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    engine = load_engine(create_model("mobilenet_v3_small").eval(), "onnxruntime")
    session = create_session(engine.path, threads=2)
    images = torch.randn(32, 3, 224, 224)
    array = images.numpy()
    name = session.get_inputs()[0].name
    runs = {"raw": lambda: session.run(None, {name: array}), "engine": lambda: engine(images)}
    with open("/proc/loadavg") as loadavg:
        print(f"V3-Small, batch 32, 224 px, 2 threads; load average {' '.join(loadavg.read().split()[:3])}")
    for run in runs.values():
        run()
    for settle in (0, 1):
        times: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(20):
            for key, run in runs.items():
                for _ in range(settle):
                    run()
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
        medians = ", ".join(f"{key} {statistics.median(t) * 1000:.1f} ms" for key, t in times.items())
        print(f"untimed runs before each timed one: {settle}: {medians}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
