"""GCAM-CSA-specific properties (the generic contract is in test_method_contract.py)."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
import torch.nn.functional as F

from fgcli.errors import FgcliError
from fgcli.models import create_model
from fgcli.models.gcam_csa import ChannelSpatialAttention, gradcam_kl, gradcam_log_channel_weights

NUM_CLASSES = 5
TARGETS = torch.tensor([0, 3])


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("gcam-csa", NUM_CLASSES, backbone="resnet18", **kwargs)


def _images(size: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _predicted_score(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return outputs["logits"].max(dim=1).values.sum()


@pytest.mark.parametrize("size", [64, 96])
def test_channel_weights_are_a_distribution_and_the_mask_lies_in_unit_interval(size):
    torch.manual_seed(0)
    module = ChannelSpatialAttention(64, reduction=16)
    x = torch.relu(torch.randn(2, 64, size // 32, size // 32))
    attended, logits, mask = module(x)
    weights = logits.softmax(dim=1)
    assert weights.shape == (2, 64)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert mask.shape == (2, 1, size // 32, size // 32)
    assert ((mask > 0) & (mask < 1)).all()
    assert attended.shape == x.shape
    torch.testing.assert_close(attended, x * mask)
    expected_mask = torch.sigmoid((x * weights[:, :, None, None]).sum(dim=1, keepdim=True))
    torch.testing.assert_close(mask, expected_mask)


def test_alpha_from_autograd_grad_equals_alpha_from_a_hook():
    model = _model().train()
    out = model(_images())
    alpha = gradcam_log_channel_weights(_predicted_score(out), out["attended"]).exp()
    captured = []
    out["attended"].register_hook(captured.append)  # the reference's save_gradient
    _predicted_score(out).backward()
    expected = F.softmax(captured[0].mean(dim=(2, 3)), dim=1)
    torch.testing.assert_close(alpha, expected)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(2))


def test_clean_loss_leaves_grad_untouched():
    model = _model().train()
    terms = model.loss(model(_images()), TARGETS)
    assert list(terms) == ["ce", "gradcam_kl"]
    assert all(p.grad is None for p in model.parameters())


def test_kl_is_nonnegative_and_zero_when_s_equals_alpha():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 32, generator=g)
    s = F.softmax(logits, dim=1)
    log_alpha = F.log_softmax(torch.randn(3, 32, generator=g), dim=1)
    assert gradcam_kl(logits, log_alpha).item() > 0
    expected = (s * (s.log() - log_alpha)).sum()
    torch.testing.assert_close(gradcam_kl(logits, log_alpha), expected)
    torch.testing.assert_close(gradcam_kl(logits, log_alpha), F.kl_div(log_alpha, s, reduction="sum"))
    assert gradcam_kl(logits, s.log()).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_trains_the_channel_weights_and_alpha_is_a_fixed_target():
    model = _model().train()
    out = model(_images())
    log_alpha = gradcam_log_channel_weights(_predicted_score(out), out["attended"])
    assert not log_alpha.requires_grad
    gradcam_kl(out["channel_logits"], log_alpha).backward()
    assert model.attention.excite.weight.grad.abs().sum() > 0
    assert model.attention.squeeze.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.classifier.parameters())


def test_quirk_reproduces_the_reference_training_step_gradients():
    """Reference: zero_grad, score.backward(retain_graph), hook grad -> α, then (CE + KL).backward() without zeroing."""
    x = _images()
    reference = _model().train()
    out = reference(x)
    captured = []
    out["attended"].register_hook(captured.append)
    reference.zero_grad()
    out["logits"].max(dim=1, keepdim=True).values.backward(torch.ones(2, 1), retain_graph=True)
    alpha = F.softmax(captured[-1].mean(dim=(2, 3)), dim=1)
    kl = F.kl_div(alpha.log(), out["channel_logits"].softmax(dim=1), reduction="sum")
    (F.cross_entropy(out["logits"], TARGETS) + kl).backward()

    quirky = _model(max_logit_quirk=True).train()
    quirky_out = quirky(x)
    terms = quirky.loss(quirky_out, TARGETS)
    assert list(terms) == ["ce", "gradcam_kl", "max_logit_quirk"]
    torch.testing.assert_close(terms["max_logit_quirk"], _predicted_score(quirky_out))
    sum(terms.values()).backward()

    clean = _model().train()
    sum(clean.loss(clean(x), TARGETS).values()).backward()

    for (name, p_ref), p_quirk in zip(reference.named_parameters(), quirky.parameters()):
        scale = p_ref.grad.abs().max().item()  # summation order differs: compare relative to the tensor's scale
        torch.testing.assert_close(p_quirk.grad, p_ref.grad, rtol=0, atol=5e-5 * scale + 1e-6, msg=name)
    last = reference.classifier[-1].weight
    assert not torch.allclose(clean.classifier[-1].weight.grad, last.grad, atol=1e-4)


def test_eval_needs_no_autograd_and_keeps_the_attention_module():
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and not logits.requires_grad
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17)
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert {"Softmax", "Sigmoid"} <= ops  # s and m are part of the test-time graph


def test_loss_without_autograd_graph_says_why():
    model = _model().train()
    with torch.no_grad():
        out = model(_images())
    with pytest.raises(FgcliError, match="Grad-CAM"):
        model.loss(out, TARGETS)


def test_attention_maps_return_the_spatial_mask():
    model = _model().eval()
    with torch.no_grad():
        maps = model.attention_maps(_images(96))
    assert set(maps) == {"spatial_mask"}
    assert maps["spatial_mask"].shape == (2, 3, 3)
    assert ((maps["spatial_mask"] > 0) & (maps["spatial_mask"] < 1)).all()
