"""Weights: torchvision/timm checkpoints convert exactly; bad files fail in one clear line; nothing unpickles."""

from __future__ import annotations

import pickle

import pytest
import torch

from mobilenets import WeightsError, create_model, load_model, save_weights
from mobilenets.core.files import sha256_of
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import PUBLISHED_WEIGHTS, fetch_published, read_checkpoint


def randomize_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so that a mis-mapped tensor changes the output."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)


def assert_identical_outputs(reference: torch.nn.Module, ours: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference.eval()(x), ours.eval()(x)
    # Absolute 1e-5 on logits of order one; timm computes V3's pooled head as a 1×1 conv, we (like
    # torchvision) as a linear layer, so the same dot products round differently at large logits.
    scale = max(1.0, expected.abs().max().item())
    assert (expected - actual).abs().max().item() < 1e-5 * scale


@pytest.mark.parametrize(
    ("builder", "name"),
    [
        ("mobilenet_v2", "mobilenet_v2"),
        ("mobilenet_v3_small", "mobilenet_v3_small"),
        ("mobilenet_v3_large", "mobilenet_v3_large"),
    ],
)
def test_torchvision_checkpoints_load_identically(torchvision_models, tmp_path, builder, name):
    torch.manual_seed(0)
    reference = getattr(torchvision_models, builder)()
    randomize_batchnorm(reference)
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    assert_identical_outputs(reference, create_model(name, weights=path))


@pytest.mark.parametrize(
    ("timm_name", "name"),
    [
        ("mobilenetv1_100", "mobilenet_v1"),
        ("mobilenetv2_100", "mobilenet_v2"),
        ("mobilenetv3_small_100", "mobilenet_v3_small"),
        ("mobilenetv3_large_100", "mobilenet_v3_large"),
    ],
)
def test_timm_checkpoints_load_identically(timm, tmp_path, timm_name, name):
    torch.manual_seed(0)
    reference = timm.create_model(timm_name)
    randomize_batchnorm(reference)
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # wrapped, as training scripts save
    ours = create_model(name, weights=path)
    assert_identical_outputs(reference, ours)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(reference.forward_features(x), ours.forward_features(x))


@pytest.mark.parametrize(
    ("timm_name", "name"),
    [
        ("mobilenetv3_small_075", "mobilenet_v3_small_075.timm_lamb_in1k"),
        ("mobilenetv2_050", "mobilenet_v2_050.timm_lamb_in1k"),
        ("mobilenetv2_140", "mobilenet_v2_140.timm_ra_in1k"),
    ],
)
def test_published_checkpoints_of_other_widths_load_at_their_width(timm, tmp_path, monkeypatch, timm_name, name):
    """A published name builds the network at the width it was trained at, without --width, and loads exactly."""
    import dataclasses

    from mobilenets.models import weights

    torch.manual_seed(0)
    reference = timm.create_model(timm_name)
    randomize_batchnorm(reference)
    published = PUBLISHED_WEIGHTS[name]
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    cached = tmp_path / "weights" / published.filename
    cached.parent.mkdir()
    torch.save(reference.state_dict(), cached)
    # The real file's hash prefix is published; this one is timm's module with random weights.
    monkeypatch.setitem(
        weights.PUBLISHED_WEIGHTS, name, dataclasses.replace(published, sha256_prefix=sha256_of(cached)[:8])
    )
    ours = load_model(name)
    assert ours.architecture.options["width"] == published.width
    assert create_model(published.architecture, weights=name).architecture.options["width"] == published.width
    assert ours.metadata.published == name
    assert_identical_outputs(reference, ours)
    with pytest.raises(WeightsError) as refused:
        load_model(name, width=1.0)  # another width has other shapes: refused, never half-loaded
    assert str(refused.value) == (
        f"{name}: {name} is published at width {published.width:g}, not 1; drop --width (width=) or pass "
        f"{published.width:g}"
    )


def test_a_width_given_for_our_own_file_is_meant_even_1(tmp_path):
    """width=1.0 used to be read as "not given" and silently replaced by the file's width."""
    path = tmp_path / "narrow.safetensors"
    save_weights(create_model("mobilenet_v3_small", num_classes=3, width=0.25), path, classes=["a", "b", "c"])
    assert create_model("mobilenet_v3_small", weights=path).architecture.options["width"] == 0.25
    assert load_model(path, width=0.25).architecture.options["width"] == 0.25
    for width in (1.0, 0.5):
        with pytest.raises(WeightsError) as refused:
            create_model("mobilenet_v3_small", width=width, weights=path)
        assert str(refused.value) == (
            f"{path}: holds mobilenet_v3_small at width 0.25, not {width:g}; drop --width (width=) or pass 0.25"
        )


@pytest.mark.parametrize("oracle", ["timm", "torchvision"])
def test_safetensors_checkpoints_are_read_in_module_order(timm, torchvision_models, oracle):
    """safetensors files list tensors sorted by name (blocks.* before conv_stem), not in the order the
    modules run, which the conversion walks: read_checkpoint restores that order from the names."""
    from mobilenets.models.weights import in_module_order

    if oracle == "timm":
        names = ["mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv3_large_100"]
        references = [timm.create_model(name) for name in names]
    else:
        names = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
        references = [getattr(torchvision_models, name)() for name in names]
    for reference in references:
        state_dict = reference.state_dict()
        assert list(in_module_order(dict(sorted(state_dict.items())))) == list(state_dict)


@pytest.mark.parametrize(
    ("oracle", "builder", "name"),
    [("timm", "mobilenetv1_100", "mobilenet_v1"), ("torchvision", "mobilenet_v3_small", "mobilenet_v3_small")],
)
def test_timm_and_torchvision_safetensors_load_identically(timm, torchvision_models, tmp_path, oracle, builder, name):
    """The published mobilenet_v1.timm_ra4_in1k is a timm safetensors file: it must load, not fail on order."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model(builder) if oracle == "timm" else getattr(torchvision_models, builder)()
    randomize_batchnorm(reference)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    assert_identical_outputs(reference, load_model(path, name=name))


def test_real_torchvision_v2_weights_load_without_missing_keys(real_v2_weights):
    state_dict = torch.load(real_v2_weights, weights_only=True)
    model = create_model("mobilenet_v2", weights=real_v2_weights)
    assert len([k for k in model.state_dict() if not k.endswith("num_batches_tracked")]) == len(
        [k for k in state_dict if not k.endswith("num_batches_tracked")]
    )
    assert sha256_of(real_v2_weights) == PUBLISHED_WEIGHTS["mobilenet_v2.tv_in1k"].sha256
    assert fetch_published("mobilenet_v2.tv_in1k") == real_v2_weights  # found offline, hash checked


def test_native_format_round_trip_with_metadata(tmp_path):
    model = create_model("mobilenet_v3_small", num_classes=3, width=0.5).eval()
    preprocessing = Preprocessing.for_resolution(96)
    path = save_weights(model, tmp_path / "model", classes=["a", "b", "c"], preprocessing=preprocessing)
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    loaded = load_model(path)
    assert loaded.architecture.options["width"] == 0.5 and loaded.num_classes == 3
    assert loaded.weights_metadata["classes"] == ["a", "b", "c"]
    assert loaded.weights_metadata["preprocessing"]["input_size"] == 96
    path.with_suffix(".json").unlink()  # the metadata embedded in the safetensors header suffices
    again = load_model(path)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_fine_tuning_head_replaces_classifier(real_v2_weights):
    model = create_model("mobilenet_v2", num_classes=10, weights=real_v2_weights)
    assert model.classifier.out_features == 10
    reference = create_model("mobilenet_v2", weights=real_v2_weights)
    assert torch.equal(model.stem.conv.weight, reference.stem.conv.weight)


def test_wrong_path_is_one_clear_line(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        create_model("mobilenet_v2", weights=tmp_path / "missing.pth")


def test_truncated_checkpoint_is_reported(tmp_path, real_v2_weights):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(real_v2_weights.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated"):
        create_model("mobilenet_v2", weights=truncated)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_model(broken)


def test_other_architecture_names_first_mismatching_tensor(tmp_path, real_v2_weights):
    with pytest.raises(WeightsError, match=r"has \d+ tensors|tensor '.*' has shape"):
        create_model("mobilenet_v3_small", weights=real_v2_weights)
    renamed = tmp_path / "v2.pth"
    renamed.write_bytes(real_v2_weights.read_bytes())
    with pytest.raises(WeightsError, match=r"tensor 'features\.0\.0\.weight' has shape"):
        create_model("mobilenet_v2", width=0.5, weights=renamed)
    # Under its published file name it is known to be mobilenet_v2.tv_in1k: the width is refused up front.
    with pytest.raises(WeightsError, match=r"mobilenet_v2\.tv_in1k is published at width 1, not 0\.5"):
        create_model("mobilenet_v2", width=0.5, weights=real_v2_weights)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_with_code_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(WeightsError, match="pickled code"):
        create_model("mobilenet_v2", weights=path)
    assert not (tmp_path / "PWNED").exists()
    torch.save({"weights": Exploit()}, tmp_path / "evil_zip.pth")
    with pytest.raises(WeightsError, match="pickled code"):
        create_model("mobilenet_v2", weights=tmp_path / "evil_zip.pth")
    assert not (tmp_path / "PWNED").exists()


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(WeightsError, match=r"place it at .*mobilenet_v3_small-047dcff4\.pth"):
        create_model("mobilenet_v3_small", weights="mobilenet_v3_small.tv_in1k")


def test_hash_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    target = tmp_path / "weights" / "mobilenet_v3_small-047dcff4.pth"
    target.parent.mkdir(parents=True)
    torch.save(create_model("mobilenet_v3_small").state_dict(), target)
    with pytest.raises(WeightsError, match="does not match the published"):
        create_model("mobilenet_v3_small", weights="mobilenet_v3_small.tv_in1k")


def test_a_run_folder_without_its_best_weights_never_gives_its_last_epochs(tmp_path):
    from mobilenets.models.weights import WeightsError, save_weights

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    save_weights(create_model("mobilenet_v3_small", num_classes=2, width=0.25), run / "last.safetensors", classes=["a", "b"])
    with pytest.raises(WeightsError, match=r"no model.safetensors \(a run's best weights\) in this folder \(it holds last.safetensors\)"):
        create_model("mobilenet_v3_small", weights=run)
    assert create_model("mobilenet_v3_small", weights=run / "last.safetensors").metadata.classes == ["a", "b"]


def test_damaged_model_metadata_is_one_line_naming_the_file(tmp_path):
    from mobilenets.models.weights import WeightsError, metadata_path, save_weights

    path = tmp_path / "model.safetensors"
    save_weights(create_model("mobilenet_v3_small", num_classes=2, width=0.25), path, classes=["a", "b"])
    metadata_path(path).write_text('{"broken')
    with pytest.raises(WeightsError, match=rf"{metadata_path(path)}: unreadable .*delete model.json to use the metadata inside model.safetensors"):
        create_model("mobilenet_v3_small", weights=path)
    metadata_path(path).unlink()  # the copy embedded in the file suffices
    assert create_model("mobilenet_v3_small", weights=path).metadata.classes == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("model.onnx", b"\x08\x0a\x12\x0amobilenets", "an ONNX model"),
        ("model.tflite", b"\x1c\x00\x00\x00TFL3\x14\x00", "a LiteRT .tflite model (a device file)"),
        ("model.pte", b"<\x00\x00\x00ET12eh00", "an ExecuTorch .pte program (a device file)"),
        ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
    ],
)
def test_an_export_or_an_image_passed_as_weights_is_named_for_what_it_is(tmp_path, name, head, kind):
    (tmp_path / "model.safetensors").write_bytes(b"")  # beside a run's weights: point at the run directory
    (tmp_path / name).write_bytes(head + bytes(64))
    with pytest.raises(WeightsError) as raised:
        read_checkpoint(tmp_path / name)
    assert str(raised.value) == f"{tmp_path / name}: {kind}" + str(raised.value).split(kind, 1)[1]
    assert "not PyTorch weights; pass its run directory" in str(raised.value)
    assert "pickled" not in str(raised.value)


def test_bytes_that_are_no_checkpoint_are_not_called_pickled_code(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
