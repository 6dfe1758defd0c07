"""CLAN-specific properties (the generic contract is in test_method_contract.py)."""

from __future__ import annotations

import io

import onnx
import pytest
import torch

from fgcli.errors import FgcliError
from fgcli.models import create_model
from fgcli.models.clan import CrossLayerContextAttention, CrossLayerSpatialAttention

NUM_CLASSES = 5


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("clan", NUM_CLASSES, backbone="resnet18", **kwargs)


def _images(size: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _has_grad(parameter: torch.Tensor) -> bool:
    return parameter.grad is not None and parameter.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [64, 96])
def test_clca_rows_are_distributions_over_the_top_level_positions(size):
    model = _model().eval()
    with torch.no_grad():
        maps = model.backbone(_images(size))
        for stage in ("layer2", "layer3"):
            attention = model.context[stage].attention(maps[stage], maps["layer4"])
            queries, keys = maps[stage].shape[2] * maps[stage].shape[3], (size // 32) ** 2
            assert attention.shape == (2, queries, keys)
            assert (attention >= 0).all()
            torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, queries))


def test_clca_with_gamma_zero_is_identity_and_default_gamma_is_not():
    torch.manual_seed(0)
    module = CrossLayerContextAttention(mid_channels=8, top_channels=16, inner_channels=4)
    mid, top = torch.randn(2, 8, 8, 8), torch.randn(2, 16, 2, 2)
    assert module.gamma.item() == pytest.approx(0.1)
    assert not torch.allclose(module(mid, top), mid)
    with torch.no_grad():
        module.gamma.zero_()
    assert torch.equal(module(mid, top), mid)


def test_clsa_mask_lies_in_unit_interval_and_is_block_averaged_onto_the_top_grid():
    torch.manual_seed(0)
    module = CrossLayerSpatialAttention(pool=4)
    mid = torch.randn(2, 8, 8, 8)
    full, pooled = module.mask(mid), module(mid)
    assert full.shape == (2, 1, 8, 8) and pooled.shape == (2, 1, 2, 2)
    assert ((full > 0) & (full < 1)).all()
    blocks = full.reshape(2, 1, 2, 4, 2, 4).mean(dim=(3, 5))
    torch.testing.assert_close(pooled, blocks)


def test_closed_clsa_mask_leaves_the_top_level_map_unchanged():
    model = _model().eval()
    with torch.no_grad():
        for spatial in model.spatial.values():
            spatial.conv.weight.zero_()
            spatial.conv.bias.fill_(-1e4)  # sigmoid -> exactly 0
        x = _images()
        expected = model.top_classifier(model.backbone(x)["layer4"].mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected)


def test_top_level_loss_reaches_clca_through_clsa():
    """Mutual refinement: the top CE trains CLCA (via the CLSA mask); a mid CE never touches CLSA or the top head."""
    model = _model().train()
    terms = model.loss(model(_images()), torch.tensor([0, 1]))
    terms["ce_top"].backward(retain_graph=True)
    for stage in ("layer2", "layer3"):
        assert _has_grad(model.context[stage].gamma)
        assert _has_grad(model.context[stage].query.weight)
        assert not _has_grad(model.mid_classifiers[stage].weight)
    model.zero_grad(set_to_none=True)
    terms["ce_layer3"].backward()
    assert _has_grad(model.context["layer3"].query.weight)
    assert not any(_has_grad(p) for p in model.spatial.parameters())
    assert not _has_grad(model.top_classifier.weight)
    assert not any(_has_grad(p) for p in model.context["layer2"].parameters())


def test_loss_has_one_weighted_term_per_head():
    x, y = _images(), torch.tensor([0, 1])
    default = _model().train()
    weighted = _model(mid_weight=2.5).train()
    base, scaled = default.loss(default(x), y), weighted.loss(weighted(x), y)
    assert list(base) == ["ce_top", "ce_layer2", "ce_layer3"]
    torch.testing.assert_close(scaled["ce_top"], base["ce_top"])
    for stage in ("ce_layer2", "ce_layer3"):
        torch.testing.assert_close(scaled[stage], base[stage] * 2.5)
    single = _model(mid_stages=("layer3",)).train()
    assert list(single.loss(single(x), y)) == ["ce_top", "ce_layer3"]


def test_eval_uses_the_top_head_only_and_never_runs_mid_heads():
    model = _model().eval()
    calls = []
    for head in model.mid_classifiers.values():
        head.register_forward_hook(lambda *args: calls.append(1))
    x = _images()
    with torch.no_grad():
        logits = model(x)
    assert not calls
    with torch.no_grad():
        torch.testing.assert_close(logits, model.forward_train(x)["logits_top"])


def test_eval_with_mean_heads_averages_top_and_mid_logits():
    model = _model(test_heads="mean").eval()
    x = _images()
    with torch.no_grad():
        heads = model.forward_train(x)
        expected = (heads["logits_top"] + heads["logits_layer2"] + heads["logits_layer3"]) / 3
        torch.testing.assert_close(model(x), expected)


def test_onnx_graph_holds_only_the_top_classifier():
    model = _model().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (_images(),), buffer, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    ops = [node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node]
    assert ops.count("Gemm") == 1 and ops.count("Softmax") == 2 and ops.count("Sigmoid") == 2


def test_every_mid_level_configuration_gives_maps_on_the_right_grids():
    model = _model(mid_stages=("layer1", "layer2", "layer3")).eval()
    with torch.no_grad():
        maps = model.attention_maps(_images(64))
    grids = {"layer1": 16, "layer2": 8, "layer3": 4}
    for stage, side in grids.items():
        assert maps[f"clsa_{stage}"].shape == (2, side, side)
        assert maps[f"clca_{stage}"].shape == (2, 2, 2)
        torch.testing.assert_close(maps[f"clca_{stage}"].sum(dim=(1, 2)), torch.ones(2))
    assert maps["clsa"].shape == (2, 2, 2) and ((maps["clsa"] > 0) & (maps["clsa"] < 1)).all()


@pytest.mark.parametrize(
    "kwargs", [{"mid_stages": ("layer4",)}, {"mid_stages": ("layer2", "layer2")}, {"mid_stages": ()}, {"test_heads": "mid"}]
)
def test_bad_configuration_is_a_clear_error(kwargs):
    with pytest.raises(FgcliError):
        _model(**kwargs)
