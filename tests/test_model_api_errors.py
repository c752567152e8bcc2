"""create_model, load_model and save_weights: a wrong argument from Python is one MobilenetsError naming it and
the fix, never a torch/pathlib traceback, and never silently replaced or dropped (a folder, an empty path, names
of another length)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mobilenets import WeightsError, create_model, load_model, save_weights
from mobilenets.core.errors import MobilenetsError, ModelArgumentError
from mobilenets.models.architectures import MobileNet


def tiny(num_classes: int = 3) -> MobileNet:
    return create_model("mobilenet_v3_small", num_classes=num_classes, width=0.25)


def test_a_misspelt_model_name_gets_the_close_match():
    with pytest.raises(MobilenetsError) as caught:
        create_model("mobilenet_v3_smal")
    assert str(caught.value) == "model 'mobilenet_v3_smal': no such architecture; did you mean mobilenet_v3_small?"
    # Before, these were ValueErrors: callers that caught ValueError still do.
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", ["resnet50", None, 3])
def test_a_name_with_no_close_match_lists_the_architectures(name):
    with pytest.raises(MobilenetsError, match=rf"model {name!r}: no such architecture; choose one of mobilenet_v1, "):
        create_model(name)


@pytest.mark.parametrize("width", [0, -0.5, math.nan, math.inf, "0.5", True])
def test_a_width_that_is_not_a_positive_number_is_refused(width):
    with pytest.raises(MobilenetsError) as caught:
        create_model("mobilenet_v2", width=width)
    assert str(caught.value) == (
        f"width {width!r}: give a finite number > 0 (the width multiplier; 1.0 is the paper's network), e.g. width=0.5"
    )


def test_no_width_is_the_checkpoints_or_the_papers_network():
    assert create_model("mobilenet_v2", width=None).architecture.options["width"] == 1.0


def test_a_width_too_narrow_for_mobilenet_v1_names_the_smallest():
    with pytest.raises(MobilenetsError, match=r"width 0.02: too narrow for MobileNet v1 .*; give width ≥ 0.03125"):
        create_model("mobilenet_v1", width=0.02)
    assert create_model("mobilenet_v1", width=1 / 32).architecture.stem.out_channels == 1


def test_pretrained_says_how_weights_are_chosen_here():
    with pytest.raises(MobilenetsError) as caught:
        create_model("mobilenet_v2", pretrained=True)
    message = str(caught.value)
    assert message.startswith("pretrained=True: not an option here; pass weights=NAME, a published name")
    assert "published for mobilenet_v2 at width 1: mobilenet_v2.tv_in1k, " in message
    assert "mobilenet_v2_050" not in message and "mobilenet_v2_140" not in message  # other widths do not fit
    with pytest.raises(MobilenetsError) as caught:
        create_model("mobilenet_v3_small", width=0.75, pretrained=True)
    assert "published for mobilenet_v3_small at width 0.75: mobilenet_v3_small_075.timm_lamb_in1k;" in str(caught.value)
    with pytest.raises(MobilenetsError) as caught:
        create_model("mobilenet_v3_small", width=0.5, pretrained=True)
    assert "none is published for mobilenet_v3_small at width 0.5; at other widths: mobilenet_v3_small.tv_in1k (width 1)" in (
        str(caught.value)
    )
    assert "list_weights()" in message and "weights=PATH" in message
    with pytest.raises(MobilenetsError, match="none is published for mobilenet_v1_shallow"):
        create_model("mobilenet_v1_shallow", pretrained=True)


def test_an_unknown_option_names_the_close_one_and_the_options():
    with pytest.raises(MobilenetsError) as caught:
        create_model("mobilenet_v2", drop_rate=0.1)  # timm's name
    assert str(caught.value) == (
        "drop_rate=0.1: not an option of mobilenet_v2 (did you mean dropout?); its options are dropout, bn_eps"
    )
    # A fixed option of the name (small vs large) is not the user's to change.
    with pytest.raises(MobilenetsError, match="size='large': not an option of mobilenet_v3_small; its options are"):
        create_model("mobilenet_v3_small", size="large")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block": "full"}, "block 'full': choose 'separable' (the paper's) or 'full_conv' (Table 4)"),
        ({"convention": "timm"}, "convention 'timm': choose 'tf' (the paper's and timm's) or 'torchvision'"),
    ],
)
def test_an_option_value_is_never_replaced_by_a_default(options, message):
    name = "mobilenet_v1" if "block" in options else "mobilenet_v3_small"
    with pytest.raises(MobilenetsError) as caught:
        create_model(name, **options)
    assert str(caught.value) == message


@pytest.mark.parametrize("num_classes", [-1, 10.0, "10", True])
def test_num_classes_must_be_a_whole_number(num_classes):
    expected = (
        f"num_classes {num_classes!r}: give a whole number ≥ 0 (the classifier's outputs; 0 builds no classifier), "
        "e.g. num_classes=10"
    )
    with pytest.raises(MobilenetsError) as caught:
        create_model("mobilenet_v2", num_classes=num_classes)
    assert str(caught.value) == expected
    with pytest.raises(MobilenetsError) as caught:
        tiny().reset_classifier(num_classes)
    assert str(caught.value) == expected


def test_zero_classes_still_builds_a_model_without_a_classifier():
    model = create_model("mobilenet_v3_small", num_classes=0, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_load_arguments_are_checked_before_the_file(tmp_path):
    path = save_weights(tiny(), tmp_path / "model", classes=["a", "b", "c"])
    with pytest.raises(MobilenetsError, match="num_classes -1: give a whole number ≥ 0"):
        create_model("mobilenet_v3_small", num_classes=-1, weights=path)
    # Was read as "not given" (`width or 1.0`), then reported as a checkpoint of another width.
    with pytest.raises(MobilenetsError, match="width 0: give a finite number > 0"):
        create_model("mobilenet_v3_small", width=0, weights=path)


@pytest.mark.parametrize("weights", [True, False, 1])
def test_weights_true_is_not_a_name_or_a_path(weights):
    with pytest.raises(WeightsError) as caught:
        create_model("mobilenet_v2", weights=weights)
    assert str(caught.value) == (
        f"weights={weights!r}: give a published name (e.g. 'mobilenet_v2.tv_in1k'; all of them: list_weights()) or "
        "the path of a weights file or run directory; for a random model, call create_model without weights="
    )


def test_an_empty_weights_path_is_not_the_current_folder():
    with pytest.raises(WeightsError) as caught:
        load_model("")
    assert str(caught.value).startswith("weights='': an empty path; give a published name (e.g. ")


def test_classes_must_be_one_name_per_output(tmp_path):
    with pytest.raises(MobilenetsError) as caught:
        save_weights(tiny(3), tmp_path / "model", classes=["a", "b"])
    assert str(caught.value) == (
        "classes: 2 names for a model with 3 outputs; give one name per output, in output order (or create the "
        "model with num_classes=len(classes))"
    )
    for classes in ("abc", [1, 2, 3], {"a", "b", "c"}):
        with pytest.raises(
            MobilenetsError, match=r"classes .*: give a list of strings, one class name per output \(3 "
        ):
            save_weights(tiny(3), tmp_path / "model", classes=classes)
    assert not list(tmp_path.iterdir())  # nothing written
    path = save_weights(tiny(3), tmp_path / "model", classes=("a", "b", "c"))
    assert load_model(path).metadata.labels(3) == ["a", "b", "c"]
    # "imagenet" is the one string: what load_model says of a published 1,000-way head, saved again.
    path = save_weights(tiny(1000), tmp_path / "imagenet", classes="imagenet")
    assert load_model(path).metadata.labels(1000)[0] == "tench"


def test_a_folder_is_refused_rather_than_written_beside(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(MobilenetsError) as caught:
        save_weights(tiny(), folder)
    assert str(caught.value) == (
        f"save_weights path {str(folder)!r}: a folder; give a file path such as "
        f"{str(folder / 'model.safetensors')!r} (load_model on the folder reads it)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    save_weights(tiny(), folder / "model.safetensors", classes=["a", "b", "c"])
    assert load_model(folder).metadata.classes == ["a", "b", "c"]


@pytest.mark.parametrize("path", ["", None])
def test_an_empty_save_path_is_refused(path):
    with pytest.raises(MobilenetsError) as caught:
        save_weights(tiny(), path)
    assert str(caught.value) == f"save_weights path {path!r}: give a file path, e.g. 'out/model.safetensors'"


def test_only_a_mobilenet_can_be_saved_with_its_metadata(tmp_path):
    with pytest.raises(MobilenetsError) as caught:
        save_weights(nn.Linear(2, 2), tmp_path / "linear")
    assert str(caught.value).startswith(
        "save_weights: a Linear is not a MobileNet, so it has no architecture to record; save a model made by "
        "create_model or load_model"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["model.pth", "ft.v2"])
def test_save_weights_never_replaces_a_suffix_with_another_files_name(tmp_path, name):
    with pytest.raises(ModelArgumentError, match=rf"the file is written as safetensors; name it '.*{name}.safetensors'"):
        save_weights(tiny(), tmp_path / name, classes=["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []
    assert save_weights(tiny(), tmp_path / f"{name}.safetensors", classes=["a", "b", "c"]).name == f"{name}.safetensors"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"preprocessing": {"input_size": 64}}, "save_weights preprocessing: a dict; give a Preprocessing, e.g. "),
        ({"preprocessing": 64}, "save_weights preprocessing: a int; give a Preprocessing"),
        ({"extra": ["notes"]}, "save_weights extra: a list; give a dict with string keys"),
        ({"extra": {1: "a"}}, "save_weights extra: a dict; give a dict with string keys"),
        ({"extra": {"classes": ["x"]}}, "save_weights extra: 'classes' would replace the model's own metadata"),
        ({"extra": {"when": object()}}, "save_weights extra: not JSON (Object of type object is not JSON serializable)"),
    ],
)
def test_metadata_that_could_not_be_read_back_is_refused_before_writing(tmp_path, arguments, message):
    with pytest.raises(ModelArgumentError) as caught:
        save_weights(tiny(), tmp_path / "model.safetensors", classes=["a", "b", "c"], **arguments)
    assert str(caught.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_extra_metadata_travels_with_the_weights(tmp_path):
    from mobilenets.models.preprocessing import Preprocessing

    path = save_weights(
        tiny(), tmp_path / "model.safetensors", classes=["a", "b", "c"],
        preprocessing=Preprocessing.for_resolution(96), extra={"notes": "field photos", "source": {"seed": 3}},
    )
    written = __import__("json").loads(path.with_suffix(".json").read_text())
    assert written["notes"] == "field photos" and written["source"] == {"seed": 3}
    assert load_model(path).metadata.preprocessing.input_size == 96


def test_a_model_without_a_classifier_saves_and_loads_as_one(tmp_path):
    extractor = tiny(0)
    path = save_weights(extractor, tmp_path / "features.safetensors")
    loaded = load_model(path)
    assert loaded.num_classes == 0
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), extractor.eval()(images))  # pooled features, the same numbers


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mobilenet_v2", {"dropout": 2}, "dropout=2: give a probability in [0, 1)"),
        ("mobilenet_v2", {"bn_eps": "x"}, "bn_eps='x': give a small number > 0"),
        ("mobilenet_v3_small", {"bn_momentum": 0}, "bn_momentum=0: give a number in (0, 1]"),
        ("mobilenet_v1", {"activation": "foo"}, "activation='foo': choose one of"),
        ("mobilenet_v1", {"remove_14x14_rows": "yes"}, "remove_14x14_rows='yes': give True or False"),
    ],
)
def test_builder_options_out_of_range_are_one_line(name, options, message):
    with pytest.raises(ModelArgumentError) as raised:
        create_model(name, num_classes=3, width=0.25, **options)
    assert str(raised.value).startswith(message)
    assert create_model(name, num_classes=3, width=0.25).num_classes == 3  # the defaults still build
