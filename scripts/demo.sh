#!/usr/bin/env bash
# The main job on real data, in a few minutes on 2 CPU cores: train a MobileNetV3-Small on the 500
# Fashion-MNIST images shipped in examples/ (the seed's recipe for a tiny dataset), quantize it to
# int8, export it to ONNX, and write the report. Steps whose command is not in this version are
# skipped with a message, so the demo always runs end to end.
set -euo pipefail
out=${1:-runs/demo}
bin=.venv/bin
run="$out/fashion-mnist-small"
rm -rf "$run"
mkdir -p "$out"

has() { $bin/mobilenets "$1" --help >/dev/null 2>&1; }

quantize=()
if has quantize; then quantize=(--quantize); else echo "demo: no quantize command in this version; training without --quantize"; fi

# 28-px images: upscaled to 32 px, the model's last feature maps are 1×1, which keeps the demo fast.
$bin/mobilenets train --data examples/fashion-mnist-small --model mobilenet_v3_small --resolution 32 \
    --recipe auto --epochs 40 --out "$run" "${quantize[@]}"

if has export; then
    $bin/mobilenets export "$run"
else
    echo "demo: no export command in this version; skipping ONNX export"
fi

first_val=$($bin/python -c "import json; print(json.load(open('$run/split.json'))['val'][0][0])")
$bin/mobilenets predict "$first_val" --weights "$run" --top 3
echo "demo: report at $run/report.html"
