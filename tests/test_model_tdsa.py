"""TDSA-specific properties (the generic contract is in test_method_contract.py)."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
import torch.nn.functional as F

from fgcli.errors import FgcliError
from fgcli.models import create_model
from fgcli.models.tdsa import (
    class_group_max,
    mc_discriminality,
    mc_diversity,
    random_channel_mask,
    top_down_gate,
)

NUM_CLASSES = 5


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("tdsa", NUM_CLASSES, backbone="resnet18", **kwargs)


def _images(size: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _has_grad(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("size", [64, 96])
def test_class_aligned_maps_have_nine_and_three_channels_per_class(size):
    model = _model().train()
    out = model(_images(size))
    assert out["mid_gated"].shape == (2, NUM_CLASSES * 9, size // 16, size // 16)
    assert out["high"].shape == (2, NUM_CLASSES * 3, size // 32, size // 32)


def test_channel_counts_scale_with_the_number_of_classes():
    torch.manual_seed(0)
    model = create_model("tdsa", 7, backbone="resnet50")
    assert model.mid_aligned[0].weight.shape == (63, 1024, 1, 1)
    assert model.high_aligned[0].weight.shape == (21, 2048, 1, 1)


def test_class_group_max_matches_the_reference_transposed_max_pool():
    """my_MaxPool2d((1, ξ)) in the reference: transpose channels to the last axis, max-pool, transpose back."""
    features = torch.randn(2, 4 * 3, 5, 5, generator=torch.Generator().manual_seed(2))
    reference = F.max_pool2d(features.transpose(3, 1), (1, 3), (1, 3)).transpose(3, 1)
    torch.testing.assert_close(class_group_max(features, 3), reference)


def test_mid_channel_k_is_gated_by_high_channel_k_div_3():
    mid = torch.ones(1, 4 * 9, 4, 4)
    for high_channel in range(4 * 3):
        high = torch.full((1, 4 * 3, 2, 2), -1e4)
        high[:, high_channel] = 1e4  # sigmoid -> exactly 1 for this channel, 0 for the rest
        gated = top_down_gate(mid, high, mid_per_high=3)
        open_channels = gated.amax(dim=(0, 2, 3)).nonzero().flatten().tolist()
        assert open_channels == [k for k in range(4 * 9) if k // 3 == high_channel]


def test_top_down_mask_is_the_nearest_upsampled_sigmoid():
    high = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    gated = top_down_gate(torch.ones(1, 9, 4, 4), high, mid_per_high=3)
    expected = torch.sigmoid(high).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    for k in range(9):
        torch.testing.assert_close(gated[0, k], expected[0, k // 3])


@pytest.mark.parametrize("per_class", [3, 9])
def test_diversity_lies_between_zero_and_one_minus_one_over_xi(per_class):
    features = torch.randn(4, 6 * per_class, 5, 5, generator=torch.Generator().manual_seed(4))
    value = mc_diversity(features, per_class).item()
    assert 0.0 <= value <= 1.0 - 1.0 / per_class


@pytest.mark.parametrize("per_class", [3, 9])
def test_diversity_extremes_identical_channels_and_disjoint_peaks(per_class):
    base = torch.randn(2, 4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    identical = base.expand(2, 4, per_class, 4, 4).reshape(2, 4 * per_class, 4, 4)
    torch.testing.assert_close(mc_diversity(identical, per_class), torch.tensor(1.0 - 1.0 / per_class))
    disjoint = torch.zeros(2, 4, per_class, 16)
    disjoint[:, :, torch.arange(per_class), torch.arange(per_class)] = 100.0  # channel j peaks at position j
    disjoint = disjoint.reshape(2, 4 * per_class, 4, 4)
    assert mc_diversity(disjoint, per_class).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("per_class,kept", [(3, 2), (9, 5)])
def test_random_mask_keeps_2_of_3_and_5_of_9_and_changes_between_calls(per_class, kept):
    torch.manual_seed(0)
    first, second = random_channel_mask(200, per_class), random_channel_mask(200, per_class)
    assert first.shape == (1, 200 * per_class, 1, 1)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert (first.view(200, per_class).sum(dim=1) == kept).all()
    assert not torch.equal(first, second)


def test_discriminality_reads_only_the_unmasked_channels():
    """With one channel per class kept, L_dis is CE on the spatial means of exactly those channels."""
    features = torch.rand(3, 4 * 3, 2, 2, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([0, 2, 3])
    mask = torch.zeros(1, 4 * 3, 1, 1)
    mask[:, [1, 3, 8, 10]] = 1.0
    expected = F.cross_entropy(features[:, [1, 3, 8, 10]].mean(dim=(2, 3)), targets)
    torch.testing.assert_close(mc_discriminality(features, targets, 3, mask), expected)


def test_loss_terms_are_the_weighted_mc_terms_of_both_stages():
    model = _model().train()
    out, targets = model(_images()), torch.tensor([0, 1])
    terms = model.loss(out, targets)
    assert list(terms) == ["ce", "mc_dis_mid", "mc_div_mid", "mc_dis_high", "mc_div_high"]
    torch.testing.assert_close(terms["mc_div_mid"], 15.0 * mc_diversity(out["mid_gated"], 9))
    torch.testing.assert_close(terms["mc_div_high"], 15.0 * mc_diversity(out["high"], 3))
    zero = _model(dis_mid_weight=0.0, div_high_weight=0.0).train()
    zero_terms = zero.loss(zero(_images()), targets)
    assert zero_terms["mc_dis_mid"].item() == 0.0 and zero_terms["mc_div_high"].item() == 0.0


def test_top_down_path_is_not_detached():
    """L_dis on the gated mid map trains the mid branch, the high branch and layer4 (through the sigmoid masks)."""
    model = _model().train()
    terms = model.loss(model(_images()), torch.tensor([0, 1]))
    terms["mc_dis_mid"].backward()
    assert _has_grad(model.mid_aligned) and _has_grad(model.high_aligned) and _has_grad(model.backbone.layer4)
    assert not _has_grad(model.classifier)


def test_eval_graph_has_no_training_only_parts():
    model = _model().eval()
    calls = []
    model.mid_aligned.register_forward_hook(lambda *_: calls.append(1))
    x = _images()
    with torch.no_grad():
        before = model(x)
        for p in model.mid_aligned.parameters():
            p.add_(1.0)
        after = model(x)
    assert not calls
    assert torch.equal(before, after)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17)
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert "Sigmoid" not in ops and "Softmax" not in ops


def test_head_grid_flattens_a_pooled_grid_like_the_reference():
    model = _model(head_grid=2).train()
    assert model.classifier[1].in_features == NUM_CLASSES * 3 * 4
    out = model(_images(128))
    assert out["logits"].shape == (2, NUM_CLASSES)


def test_attention_maps_give_the_predicted_class_masks():
    model = _model().eval()
    with torch.no_grad():
        maps = model.attention_maps(_images(96))
    assert set(maps) == {"top_down_0", "top_down_1", "top_down_2", "mid_regions"}
    for name in ("top_down_0", "top_down_1", "top_down_2"):
        assert maps[name].shape == (2, 6, 6) and ((maps[name] > 0) & (maps[name] < 1)).all()
    assert maps["mid_regions"].shape == (2, 6, 6)


def test_mid_channels_must_be_a_multiple_of_high_channels():
    with pytest.raises(FgcliError, match="multiple"):
        _model(mid_per_class=8, high_per_class=3)
