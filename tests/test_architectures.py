"""Architectures match the papers' tables and the reference implementations' exact counts (REFERENCE §1)."""

from __future__ import annotations

import pytest
import torch

from mobilenets import create_model, list_models
from mobilenets.models.architectures import MOBILENET_V1_ROWS, MOBILENET_V2_ROWS, MOBILENET_V3_SMALL_ROWS
from mobilenets.models.profiling import count_parameters, profile_model

EXACT_PARAMS = [
    ("mobilenet_v1", 1.0, {}, 4_231_976),
    ("mobilenet_v1", 0.75, {}, 2_585_560),
    ("mobilenet_v1", 0.5, {}, 1_331_592),
    ("mobilenet_v1", 0.25, {}, 470_072),
    ("mobilenet_v2", 1.0, {}, 3_504_872),
    ("mobilenet_v2", 0.35, {}, 1_677_128),
    ("mobilenet_v2", 0.5, {}, 1_968_680),
    ("mobilenet_v2", 0.75, {}, 2_636_424),
    ("mobilenet_v2", 1.4, {}, 6_108_776),
    ("mobilenet_v3_small", 1.0, {}, 2_542_856),
    ("mobilenet_v3_large", 1.0, {}, 5_483_032),
    ("mobilenet_v3_large", 0.75, {}, 3_993_528),
    ("mobilenet_v3_small", 0.75, {}, 2_041_872),
    ("mobilenet_v3_large", 0.75, {"convention": "torchvision"}, 3_377_576),
    ("mobilenet_v3_small", 0.75, {"convention": "torchvision"}, 1_653_920),
    # timm tf_mobilenetv3_small_minimal_100 (measured with timm 1.0.31)
    ("mobilenet_v3_small_minimal", 1.0, {}, 2_044_736),
]


@pytest.mark.parametrize(("name", "width", "options", "params"), EXACT_PARAMS)
def test_parameter_counts_equal_reference(name, width, options, params):
    assert count_parameters(create_model(name, width=width, **options)) == params


@pytest.mark.parametrize(
    ("name", "macs"),
    [
        ("mobilenet_v1", 568_740_352),
        ("mobilenet_v2", 300_774_272),
        ("mobilenet_v3_small", 56_510_400),
        ("mobilenet_v3_large", 216_589_760),
    ],
)
def test_macs_at_224_equal_reference(name, macs):
    assert profile_model(create_model(name)).macs == macs


# Paper Tables 6/7 (MACs in millions) for the α × resolution grid of MobileNet v1.
PAPER_GRID = {
    (1.0, 224): 569, (1.0, 192): 418, (1.0, 160): 291, (1.0, 128): 186,
    (0.75, 224): 325, (0.5, 224): 149, (0.25, 224): 41,
}  # fmt: skip


@pytest.mark.parametrize(("width", "resolution"), list(PAPER_GRID))
def test_v1_grid_rounds_to_paper_tables_6_7(width, resolution):
    profile = profile_model(create_model("mobilenet_v1", width=width), resolution)
    assert round(profile.macs / 1e6) == PAPER_GRID[(width, resolution)]


def test_v1_exact_macs_at_reduced_resolutions():
    model = create_model("mobilenet_v1")
    assert [profile_model(model, r).macs for r in (192, 160, 128)] == [418_121_728, 290_675_200, 186_400_768]


def test_v1_layer_type_shares_round_to_table_2():
    profile = profile_model(create_model("mobilenet_v1"))
    shares = {kind: tuple(round(100 * s, 2) for s in profile.share(kind)) for kind in profile.macs_by_type}
    assert shares["conv_1x1"] == (94.86, 74.59)
    assert shares["depthwise"] == (3.06, 1.06)
    assert shares["fully_connected"] == (0.18, 24.33)
    # The paper prints 1.19% for the full 3×3 conv's MAC share; the stem's 10.84M of 568.74M MACs is
    # 1.91%, and only 1.91 makes the table's four shares add to 100% (a digit transposition in print).
    assert shares["full_conv"] == (1.91, 0.02)
    assert round(sum(100 * profile.share(k)[0] for k in profile.macs_by_type), 1) == 100.0


def test_full_conv_ablation_matches_table_4():
    profile = profile_model(create_model("mobilenet_v1_full_conv"))
    assert round(profile.params / 1e6, 1) == 29.3
    # Table 4 prints 4866M; counting every conv and the FC gives 4867.3M (0.03% apart).
    assert abs(profile.macs / 1e6 - 4866) / 4866 < 0.001


def test_shallow_ablation_matches_table_5():
    shallow = profile_model(create_model("mobilenet_v1_shallow"))
    thin = profile_model(create_model("mobilenet_v1", width=0.75))
    assert round(shallow.params / 1e6, 1) == 2.9 and round(shallow.macs / 1e6) == 307
    assert round(thin.params / 1e6, 1) == 2.6 and round(thin.macs / 1e6) == 325


def test_tables_read_like_the_papers():
    assert len(MOBILENET_V1_ROWS) == 13  # 13 depthwise-separable pairs + stem + FC = 28 layers
    assert [(r.t, r.c, r.n, r.s) for r in MOBILENET_V2_ROWS][1] == (6, 24, 2, 2)
    first = MOBILENET_V3_SMALL_ROWS[0]
    assert (first.kernel, first.exp_size, first.out, first.se, first.nl, first.s) == (3, 16, 16, True, "relu", 2)


def test_minimal_variants_have_no_se_or_hardswish():
    for name in ("mobilenet_v3_small_minimal", "mobilenet_v3_large_minimal"):
        model = create_model(name)
        kinds = {type(m).__name__ for m in model.modules()}
        assert "SqueezeExcitation" not in kinds and "Hardswish" not in kinds
        assert all(m.kernel_size in ((1, 1), (3, 3)) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", list_models())
def test_uniform_model_api(name):
    model = create_model(name, num_classes=7, width=0.25).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape[-1] == 2  # stride 32
    assert model.forward_head(features).shape == (2, 7)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    maps = model.forward_feature_maps(x)
    assert [m.shape[-1] for m in maps] == [64 // level["reduction"] for level in model.feature_info]
    assert [m.shape[1] for m in maps] == [level["channels"] for level in model.feature_info]
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


def test_any_resolution_is_the_resolution_multiplier():
    model = create_model("mobilenet_v1", width=0.25).eval()
    assert model(torch.randn(1, 3, 160, 160)).shape == (1, 1000)


def test_unknown_model_and_bad_width_are_clear():
    # Still ValueErrors (as before ModelArgumentError), so that callers catching ValueError keep working.
    with pytest.raises(ValueError, match="model 'mobilenet_v4': no such architecture"):
        create_model("mobilenet_v4")
    with pytest.raises(ValueError, match="width 0: give a finite number > 0"):
        create_model("mobilenet_v2", width=0)
