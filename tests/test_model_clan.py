"""CLAN-specific structure (the paper's Figures 1-3 and loss; the generic contract is in test_method_contract.py)."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
import torch.nn.functional as F

from fgcli.calibration import softmax_weighted_nodes
from fgcli.training.checkpoint import model_from_checkpoint
from fgcli.errors import FgcliError
from fgcli.models import create_model
from fgcli.models.clan import CrossLayerContextAttention, CrossLayerSpatialAttention, mean_softmax_logits

NUM_CLASSES = 5
STAGES = ("layer2", "layer3")


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("clan", NUM_CLASSES, backbone="resnet18", **kwargs)


def _images(size: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _module(**kwargs) -> CrossLayerContextAttention:
    torch.manual_seed(0)
    return CrossLayerContextAttention(mid_channels=8, top_channels=16, inner_channels=4, **kwargs).eval()


def _mid_top():
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 16, 2, 2, generator=g), torch.randn(2, 16, 2, 2, generator=g)


def _has_grad(parameter: torch.Tensor) -> bool:
    return parameter.grad is not None and parameter.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [64, 80])
def test_clca_affinity_is_over_the_mid_positions(size):
    model = _model().eval()
    with torch.no_grad():
        maps = model.backbone(_images(size))
        for stage in STAGES:
            positions = maps[stage].shape[2] * maps[stage].shape[3]
            attention = model.context[stage].attention(maps[stage], maps["layer4"])
            assert attention.shape == (2, positions, positions)
            assert (attention >= 0).all()
            torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, positions))


def test_subsample_max_pools_keys_and_values_by_two():
    module = _module(subsample=True)
    mid, top, _ = _mid_top()
    with torch.no_grad():
        assert module.attention(mid, top).shape == (2, 64, 16)
        assert module(mid, top).shape == mid.shape


def test_fused_map_equals_the_figures_order_upsample_then_w_g():
    module = _module()
    mid, top, _ = _mid_top()
    with torch.no_grad():
        figure = module.top_proj(F.interpolate(top, size=(8, 8), mode="bilinear", align_corners=False))
        torch.testing.assert_close(module.fused(mid, top), figure + module.mid_proj(mid))


def test_values_come_from_the_mid_map_and_the_top_map_enters_the_affinity_only():
    module = _module()
    mid, top, other_top = _mid_top()
    seen = {}
    module.value.register_forward_hook(lambda m, inputs, out: seen.update(value=inputs[0]))
    module.top_proj.register_forward_hook(lambda m, inputs, out: seen.update(top=inputs[0]))
    with torch.no_grad():
        out = module(mid, top)
        assert seen["value"] is mid and seen["top"] is top
        assert not torch.allclose(out, module(mid, other_top))
        module.theta.weight.zero_()
        module.theta.bias.zero_()  # uniform affinity: whatever the top map, the output is the same
        torch.testing.assert_close(module(mid, top), module(mid, other_top))


def test_w_y_starts_as_identity_at_residual_init_zero_and_close_to_it_by_default():
    mid, top, _ = _mid_top()
    with torch.no_grad():
        assert torch.equal(_module(residual_init=0.0)(mid, top), mid)
        default = _module()(mid, top)
    assert _module().out[1].weight.eq(0.1).all()
    assert not torch.allclose(default, mid)
    assert (default - mid).abs().max() < 0.5


def test_clsa_mask_lies_in_unit_interval_and_is_block_averaged_onto_the_top_grid():
    torch.manual_seed(0)
    module = CrossLayerSpatialAttention(pool=4)
    mid = torch.randn(2, 8, 8, 8)
    full, pooled = module.mask(mid), module(mid)
    assert full.shape == (2, 1, 8, 8) and pooled.shape == (2, 1, 2, 2)
    assert ((full > 0) & (full < 1)).all()
    torch.testing.assert_close(pooled, full.reshape(2, 1, 2, 4, 2, 4).mean(dim=(3, 5)))


@pytest.mark.parametrize("stages", [("layer2", "layer3"), ("layer3",), ("layer1", "layer2", "layer3")])
def test_refined_top_stacks_one_attended_raw_top_map_per_level(stages):
    model = _model(mid_stages=stages).eval()
    with torch.no_grad():
        maps, mids, masks, refined = model._branches(_images())
    top = maps["layer4"]
    assert refined.shape == (2, len(stages) * top.shape[1], *top.shape[2:])
    for chunk, stage in zip(refined.split(top.shape[1], dim=1), stages):
        torch.testing.assert_close(chunk, top * masks[stage])
    assert model.top_refined_classifier.in_features == len(stages) * top.shape[1]


def test_four_heads_and_one_unit_weight_loss_term_each():
    model = _model().train()
    x, y = _images(), torch.tensor([0, 1])
    out = model(x)
    heads = ["logits_mid_layer2", "logits_mid_layer3", "logits_top_raw", "logits_top_refined"]
    assert [k for k in out if k != "logits"] == heads
    terms = model.loss(out, y)
    assert list(terms) == ["ce_mid_layer2", "ce_mid_layer3", "ce_top_raw", "ce_top_refined"]
    for term, head in zip(terms.values(), heads):
        torch.testing.assert_close(term, F.cross_entropy(out[head], y))


def test_raw_top_head_sees_the_raw_map_and_the_refined_top_trains_clca_through_clsa():
    model = _model().train()
    terms = model.loss(model(_images()), torch.tensor([0, 1]))
    terms["ce_top_raw"].backward(retain_graph=True)
    assert not any(_has_grad(p) for p in [*model.context.parameters(), *model.spatial.parameters()])
    model.zero_grad(set_to_none=True)
    terms["ce_top_refined"].backward(retain_graph=True)
    for stage in STAGES:  # mutual refinement: the refined-top CE reaches CLCA via the CLSA mask
        assert _has_grad(model.context[stage].theta.weight) and _has_grad(model.context[stage].top_proj.weight)
        assert not _has_grad(model.mid_classifiers[stage].weight)
    model.zero_grad(set_to_none=True)
    terms["ce_mid_layer3"].backward()
    assert _has_grad(model.context["layer3"].value.weight)
    assert not any(_has_grad(p) for p in model.spatial.parameters())
    assert not any(_has_grad(p) for p in model.context["layer2"].parameters())


def test_eval_logits_are_the_log_of_the_mean_of_the_four_softmaxes():
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        heads = model.forward_train(x)
        logits = model(x)
    mean = sum(heads[k].softmax(dim=1) for k in heads if k != "logits") / 4
    torch.testing.assert_close(logits, mean.log())
    torch.testing.assert_close(logits.softmax(dim=1), mean)


def test_mean_softmax_logits_stay_finite_where_a_plain_log_would_not():
    confident = torch.tensor([[200.0, -200.0, 0.0]])
    logits = mean_softmax_logits([confident, confident])
    assert torch.isfinite(logits).all() and logits.argmax().item() == 0
    torch.testing.assert_close(logits, confident.log_softmax(dim=1))


def test_onnx_graph_holds_four_heads_and_its_affinity_matmuls_stay_float():
    model = _model().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (_images(),), buffer, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    graph = onnx.load_from_string(buffer.getvalue())
    nodes = {node.name: node.op_type for node in graph.graph.node}
    ops = list(nodes.values())
    assert ops.count("Gemm") == 4 and ops.count("LogSoftmax") == 4
    assert ops.count("Softmax") == 2 and ops.count("Sigmoid") == 2
    weighted = softmax_weighted_nodes(graph)
    assert [nodes[name] for name in weighted] == ["MatMul", "MatMul"]  # V A^T, one per level


def test_attention_maps_lie_on_the_mid_grids():
    model = _model(mid_stages=("layer1", "layer2", "layer3")).eval()
    with torch.no_grad():
        maps = model.attention_maps(_images(64))
    for stage, side in {"layer1": 16, "layer2": 8, "layer3": 4}.items():
        assert maps[f"clsa_{stage}"].shape == (2, side, side)
        assert maps[f"clca_{stage}"].shape == (2, side, side)
        torch.testing.assert_close(maps[f"clca_{stage}"].sum(dim=(1, 2)), torch.ones(2))


@pytest.mark.parametrize("stages", [("layer4",), ("layer2", "layer2"), ()])
def test_bad_mid_stages_are_a_clear_error(stages):
    with pytest.raises(FgcliError):
        _model(mid_stages=stages)


@pytest.mark.parametrize("change", ["option", "layers"])
def test_checkpoint_of_the_earlier_clan_is_a_clear_error(change):
    """Checkpoints of the CLAN before its rebuild carry options (test_heads) and layers (context.*.query) it lacks."""
    model = _model()
    state = dict(model.state_dict())
    kwargs = {"test_heads": "top"} if change == "option" else {}
    if change == "layers":
        state["context.layer2.query.weight"] = state.pop("context.layer2.theta.weight")
    ckpt = {"method": "clan", "num_classes": NUM_CLASSES, "backbone": "resnet18", "model_kwargs": kwargs,
            "model": state, "fgcli_version": "0.1.0"}
    with pytest.raises(FgcliError, match=r"do not fit a clan model .*written by fgcli 0\.1\.0") as caught:
        model_from_checkpoint(ckpt)
    assert "retrain" in caught.value.hint
