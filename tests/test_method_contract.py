"""The forward contract every registered method must honour (docs/architecture.md).

Run for one method with ``pytest tests/test_method_contract.py -k ssanet``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgcli.models import create_model, list_models

NUM_CLASSES = 5
METHODS = list_models()


def _batch(size: int, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % NUM_CLASSES
    return x, y


@pytest.mark.parametrize("method", METHODS)
# 80 px: stage grids of ceil(80 / stride) cells (layer4 3x3) that do not divide evenly
@pytest.mark.parametrize("backbone,size", [("resnet18", 64), ("resnet18", 80), ("resnet50", 96)])
def test_shapes_train_and_eval(method, backbone, size):
    torch.manual_seed(0)
    model = create_model(method, NUM_CLASSES, backbone=backbone)
    x, y = _batch(size, n=2)
    out = model.train()(x)
    assert isinstance(out, dict) and out["logits"].shape == (2, NUM_CLASSES)
    terms = model.loss(out, y[:2])
    assert terms and all(t.ndim == 0 for t in terms.values())
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("method", METHODS)
def test_eval_is_deterministic_and_logits_only(method):
    torch.manual_seed(0)
    model = create_model(method, NUM_CLASSES, backbone="resnet18").eval()
    x, _ = _batch(64, n=2)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_every_own_parameter_gets_gradient_and_terms_positive(method):
    torch.manual_seed(0)
    model = create_model(method, NUM_CLASSES, backbone="resnet18").train()
    x, y = _batch(64)
    terms = model.loss(model(x), y)
    for name, value in terms.items():
        assert torch.isfinite(value), name
        assert value.item() > 0, f"loss term {name} is not positive: {value.item()}"
    sum(terms.values()).backward()
    own = {n: p for n, p in model.named_parameters() if not n.startswith("backbone.")}
    assert own, "method has no parameters of its own"
    no_grad = [n for n, p in own.items() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("method", METHODS)
def test_total_loss_falls_on_fixed_batch(method):
    torch.manual_seed(0)
    model = create_model(method, NUM_CLASSES, backbone="resnet18").train()
    x, y = _batch(64, n=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        total = sum(model.loss(model(x), y).values())
        total.backward()
        opt.step()
        losses.append(total.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("method", METHODS)
def test_onnx_export_matches_eager(method, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model(method, NUM_CLASSES, backbone="resnet18").eval()
    x, _ = _batch(80, n=3)  # a side that is not a multiple of 32
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=17,
        input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2, _ = _batch(80, n=5, seed=1)  # another batch size: the batch axis is dynamic
    for batch in (x, x2):
        with torch.no_grad():
            expected = model(batch).numpy()
        got = session.run(None, {"images": batch.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-3
        assert (got.argmax(1) == expected.argmax(1)).all()
