"""Prediction with the real torchvision ImageNet MobileNetV2 weights equals torchvision's own model."""

from __future__ import annotations

import json

import pytest
import torch

from mobilenets import create_model
from mobilenets.cli.main import main
from mobilenets.data.images import load_image
from mobilenets.deployment.predict import predict_images


def torchvision_top5(torchvision_models, weights_path, image_path):
    from torchvision import transforms

    model = torchvision_models.mobilenet_v2()
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    with torch.no_grad():
        probabilities = model.eval()(preprocess(load_image(image_path)).unsqueeze(0)).softmax(1)[0]
    values, indices = probabilities.topk(5)
    return [(int(i), float(v)) for v, i in zip(values, indices, strict=True)]


@pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut", "rocket"])
def test_predict_matches_torchvision_on_real_photos(torchvision_models, real_v2_weights, real_photos, photo):
    model = create_model("mobilenet_v2", weights=real_v2_weights)
    (prediction,) = predict_images(model, [real_photos[photo]], top_k=5)
    expected = torchvision_top5(torchvision_models, real_v2_weights, real_photos[photo])
    assert [index for _, index, _ in prediction.top] == [index for index, _ in expected]
    for (_, _, ours), (_, theirs) in zip(prediction.top, expected, strict=True):
        assert abs(ours - theirs) < 1e-4


def test_predict_cli_names_imagenet_classes(real_v2_weights, real_photos, capsys):
    code = main(
        ["predict", str(real_photos["chelsea"]), str(real_photos["coffee"]), "--model", "mobilenet_v2",
         "--weights", str(real_v2_weights), "--json"]
    )  # fmt: skip
    assert code == 0
    chelsea, coffee = json.loads(capsys.readouterr().out)
    assert chelsea["top"][0]["label"] == "Egyptian cat" and round(chelsea["top"][0]["probability"], 3) == 0.717
    assert coffee["top"][0]["label"] == "espresso" and round(coffee["top"][0]["probability"], 3) == 0.992


def test_predict_cli_bad_image_is_one_line(real_v2_weights, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(bad), "--model", "mobilenet_v2", "--weights", str(real_v2_weights)]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
