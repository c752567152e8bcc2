#!/usr/bin/env bash
# The main job on real data: profile the model, then classify two real photos with torchvision's
# ImageNet MobileNetV2 weights (installed offline by `make`). Replaced by train → quantize → export
# → report once training lands.
set -euo pipefail
out=${1:-runs/demo}
mkdir -p "$out"
bin=.venv/bin
$bin/mobilenets profile mobilenet_v3_small
$bin/python -c "
from skimage import data; from PIL import Image
Image.fromarray(data.chelsea()).save('$out/chelsea.png'); Image.fromarray(data.coffee()).save('$out/coffee.png')"
$bin/mobilenets predict "$out/chelsea.png" "$out/coffee.png" --model mobilenet_v2 --weights mobilenet_v2.tv_in1k --top 3
