"""SSANet-specific properties (the generic contract is in test_method_contract.py)."""

from __future__ import annotations

import io

import onnx
import pytest
import torch

from fgcli.errors import FgcliError
from fgcli.models import create_model
from fgcli.models import ssanet as ssanet_module
from fgcli.models.ssanet import SpatialSelfAttention, distillation_attention

NUM_CLASSES = 5


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("ssanet", NUM_CLASSES, backbone="resnet18", **kwargs)


def _images(size: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("size", [64, 96])
def test_ssa_attention_is_a_distribution_over_all_layer4_positions(size):
    model = _model().eval()
    with torch.no_grad():
        top = model.backbone(_images(size))["layer4"]
        attention = model.ssa.attention(top)
    positions = (size // 32) ** 2
    assert attention.shape == (2, positions, positions)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, positions))


def test_ssa_with_gamma_zero_is_identity_and_default_gamma_is_not():
    torch.manual_seed(0)
    module = SpatialSelfAttention(16, reduction=4)
    x = torch.randn(2, 16, 3, 3)
    assert module.gamma.item() == pytest.approx(0.1)
    assert not torch.allclose(module(x), x)
    with torch.no_grad():
        module.gamma.zero_()
    assert torch.equal(module(x), x)


def test_ssa_is_equivariant_to_permuting_positions():
    torch.manual_seed(0)
    module = SpatialSelfAttention(16, reduction=4)
    x = torch.randn(2, 16, 4, 4)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))

    def permute(t):
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    torch.testing.assert_close(module(permute(x)), permute(module(x)), atol=1e-5, rtol=1e-5)


def test_distillation_attention_is_spatial_softmax_of_channel_mean_energy():
    features = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    att = distillation_attention(features)
    expected = features.pow(2).mean(dim=1).flatten(1).softmax(dim=1)
    torch.testing.assert_close(att, expected)
    resized = distillation_attention(features, torch.Size([8, 8]))
    assert resized.shape == (2, 64) and (resized > 0).all()
    torch.testing.assert_close(resized.sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("primary_stage", ["layer4", "layer3"])
def test_self_ad_trains_only_the_primary_map(primary_stage):
    """Stop-gradient: L_AD reaches the primary map's producer, never the SSA (teacher) side."""
    model = _model(primary_stage=primary_stage).train()
    terms = model.loss(model(_images()), torch.tensor([0, 1]))
    terms["self_ad"].backward()

    def has_grad(parameter):
        return parameter.grad is not None and parameter.grad.abs().sum() > 0

    assert not any(has_grad(p) for p in model.ssa.parameters())
    assert has_grad(getattr(model.backbone, primary_stage)[-1].conv1.weight)
    if primary_stage == "layer3":  # layer4 only feeds the detached teacher
        assert not has_grad(model.backbone.layer4[-1].conv1.weight)


def test_self_ad_on_layer3_resizes_the_teacher_to_the_primary_grid():
    model = _model(primary_stage="layer3").train()
    out = model(_images(64))
    assert out["student_attention"].shape == out["teacher_attention"].shape == (2, 16)
    assert out["logits_primary"].shape == out["logits_ssa"].shape == (2, NUM_CLASSES)


def test_loss_weights_scale_each_term():
    x, y = _images(), torch.tensor([0, 1])
    default = _model().train()
    weighted = _model(ssa_weight=2.0, primary_weight=3.0, distill_weight=0.5).train()
    base, scaled = default.loss(default(x), y), weighted.loss(weighted(x), y)
    assert list(base) == ["ce_ssa", "ce_primary", "self_ad"]
    for name, factor in (("ce_ssa", 2.0), ("ce_primary", 3.0), ("self_ad", 5.0)):
        torch.testing.assert_close(scaled[name], base[name] * factor)
    out = default(x)
    expected_ad = 0.1 * (out["student_attention"] - out["teacher_attention"]).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(default.loss(out, y)["self_ad"], expected_ad)


def test_eval_averages_both_heads_and_skips_distillation(monkeypatch):
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        heads = model.forward_train(x)  # every head, with eval-mode batch norm

        def fail(*args, **kwargs):
            raise AssertionError("Self-AD maps computed in the eval graph")

        monkeypatch.setattr(ssanet_module, "distillation_attention", fail)
        logits = model(x)
    torch.testing.assert_close(logits, (heads["logits_ssa"] + heads["logits_primary"]) / 2)


def test_eval_with_ssa_head_only_never_runs_the_primary_head():
    model = _model(test_heads="ssa").eval()
    calls = []
    model.primary_classifier.register_forward_hook(lambda *args: calls.append(1))
    x = _images()
    with torch.no_grad():
        logits = model(x)
        expected = model.ssa_classifier(model.ssa(model.backbone(x)["layer4"]).mean(dim=(2, 3)))
    assert not calls
    torch.testing.assert_close(logits, expected)


def test_onnx_graph_with_ssa_head_holds_one_classifier_and_one_softmax():
    model = _model(test_heads="ssa").eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (_images(),), buffer, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    ops = [node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node]
    assert ops.count("Gemm") == 1 and ops.count("Softmax") == 1 and ops.count("MatMul") == 2


def test_attention_maps_are_normalised_maps_on_the_feature_grids():
    model = _model(primary_stage="layer3").eval()
    with torch.no_grad():
        maps = model.attention_maps(_images(64))
    assert maps["ssa"].shape == (2, 2, 2)
    assert maps["self_ad_primary"].shape == maps["self_ad_ssa"].shape == (2, 4, 4)
    for value in maps.values():
        torch.testing.assert_close(value.sum(dim=(1, 2)), torch.ones(2))


@pytest.mark.parametrize("kwargs", [{"primary_stage": "layer5"}, {"test_heads": "primary"}])
def test_bad_configuration_is_a_clear_error(kwargs):
    with pytest.raises(FgcliError):
        _model(**kwargs)
