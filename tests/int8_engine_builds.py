"""Build the int8 engine's C++ for another instruction set and check it against the float64 reference.

Run in its own process (its ops would clash with an already loaded library):
    python tests/int8_engine_builds.py -march=haswell BUILD_DIR      # the portable path: no AVX-512
    python tests/int8_engine_builds.py -march=cascadelake BUILD_DIR  # VNNI without VBMI (fp32 depthwise)
Prints one line per model and exits 1 if any op differs from the reference.
"""

from __future__ import annotations

import sys

import torch
from torch.utils import cpp_extension

import mobilenets.kernels as kernels

march, build = sys.argv[1], sys.argv[2]
kernels._put_ninja_on_path()
source = [str(s) for s in kernels.SOURCES if s.name == "int8_inference.cpp"]
cpp_extension.load(
    name="int8_engine_" + march.split("=")[-1].replace("-", "_"),
    sources=source,
    extra_cflags=["-O2", march, "-fopenmp"],
    extra_ldflags=["-fopenmp"],
    build_directory=build,
    is_python_module=False,
)
kernels._int8_loaded = True  # the engine needs only this library's ops

from mobilenets.deployment import int8_engine  # noqa: E402
from mobilenets.models.factory import create_model  # noqa: E402

failed = False
for name, options, size in [
    ("mobilenet_v3_small", {}, (37, 45)),
    ("mobilenet_v2", {"width": 0.5}, (35, 30)),
    ("mobilenet_v1", {"width": 0.25}, (40, 40)),
]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **options).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, max(size), max(size)))
    engine = int8_engine.Int8Engine(model.eval(), [torch.randn(6, 3, *size)])
    images = torch.randn(3, 3, *size)
    worst = 0.0
    for count in range(1, len(engine.ops)):
        if engine.ops[count - 1].kind == int8_engine.SQUEEZE_EXCITE:
            continue
        got = torch.ops.mobilenets_kernels.int8_forward(
            images, engine.ints[:count], engine.floats[:count], engine.tensors[: count * int8_engine.TENSORS_PER_OP]
        )
        expected = int8_engine.reference_forward(engine, images, count)
        worst = max(worst, float((got.permute(0, 3, 1, 2).double() - expected).abs().max()))
    features = engine.features(images)
    feature_error = float((features.double() - int8_engine.reference_forward(engine, images)).abs().max())
    head_error = float(
        (engine.head_forward(features).double() - int8_engine.reference_head(engine, features)).abs().max()
    )
    ok = worst <= 1 and feature_error < 1e-4 and head_error < 1e-4
    failed |= not ok
    print(
        f"{name}: vnni {engine.vnni}, largest uint8 step {worst:g}, features {feature_error:.1e}, logits {head_error:.1e}"
    )
sys.exit(1 if failed else 0)
