"""timm backbones under every method: the stage mapping, weights, ONNX parity, INT8, and the method contract
through one epoch of training.

Random init at 64 px. The heavy backbones (timm's ResNet-50, ConvNeXt-T) and the per-method runs are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fgcli.errors import FgcliError
from fgcli.models import create_model, list_models

timm = pytest.importorskip("timm")

from fgcli.models.backbones import TimmBackbone, build_backbone  # noqa: E402

NUM_CLASSES = 3
METHODS = list_models()
HEAVY = ("timm/resnet50", "convnext_tiny")
BACKBONES = [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name
             for name in ("efficientnet_b0", "mobilenetv3_large_100", "timm/resnet50", "convnext_tiny")]


def _model(method: str, backbone: str):
    torch.manual_seed(0)
    kwargs = {"attention_backbone": backbone} if method == "tasn" else {}
    return create_model(method, NUM_CLASSES, backbone=backbone, **kwargs)


def _batch(n: int, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % NUM_CLASSES


# --------------------------------------------------------------------------- the backbone itself
@pytest.mark.parametrize("name,channels", [
    ("efficientnet_b0", (24, 40, 112, 320)),       # timm's stages blocks.1, .2, .4, .6 (stride 2 map skipped)
    ("mobilenetv3_large_100", (24, 40, 112, 960)),
    ("regnety_016", (48, 120, 336, 888)),
])
def test_stages_are_mapped_by_stride_not_name(name, channels):
    backbone = build_backbone(name)
    assert isinstance(backbone, TimmBackbone) and backbone.name == name
    assert backbone.strides == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    assert tuple(backbone.channels.values()) == channels
    maps = backbone(torch.zeros(1, 3, 64, 64))
    assert {k: (v.shape[1], v.shape[-1]) for k, v in maps.items()} == {
        stage: (c, 64 // s) for (stage, s), c in zip(backbone.strides.items(), channels)}
    assert list(backbone.forward_until(torch.zeros(1, 3, 64, 64), "layer2")) == ["layer1", "layer2"]


def test_timm_prefix_picks_timm_and_plain_resnet_names_stay_torchvision():
    assert build_backbone("timm/resnet18").body.__class__.__module__.startswith("timm")
    assert not isinstance(build_backbone("resnet18"), TimmBackbone)


def test_dilated_timm_body_for_tasn_attention_net():
    model = create_model("tasn", NUM_CLASSES, backbone="resnet18", attention_backbone="mobilenetv3_large_100")
    body = model.attention_net.body
    assert body.strides == {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}
    assert body(torch.zeros(1, 3, 64, 64))["layer4"].shape[-1] == 8


@pytest.mark.parametrize("name,message", [
    ("no_such_net", "unknown backbone 'no_such_net'"),
    ("vit_tiny_patch16_224", "no feature maps at stride 4, 8, 32"),
])
def test_unusable_names_fail_clearly(name, message):
    with pytest.raises(FgcliError, match=message):
        build_backbone(name)


def test_weights_file_loads_through_timm(tmp_path):
    source = timm.create_model("mobilenetv3_large_100")
    torch.nn.init.constant_(source.conv_stem.weight, 0.25)
    path = tmp_path / "mnv3.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("mobilenetv3_large_100", weights=str(path))
    assert torch.equal(loaded.body.conv_stem.weight, source.conv_stem.weight)
    with pytest.raises(FgcliError, match="could not load .*mnv3.pth into timm's efficientnet_b0"):
        build_backbone("efficientnet_b0", weights=str(path))
    with pytest.raises(FgcliError, match="weights file not found"):
        build_backbone("efficientnet_b0", weights=str(tmp_path / "absent.safetensors"))


def test_offline_pretrained_says_how_to_pass_a_file(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FgcliError) as info:
        build_backbone("mobilenetv3_large_100", pretrained=True)
    assert "huggingface.co/timm/mobilenetv3_large_100" in info.value.message
    assert "--weights FILE" in info.value.hint


def test_fgcli_checkpoint_backbone_fine_tunes_a_method(tmp_path):
    baseline = _model("baseline", "mobilenetv3_large_100")
    path = tmp_path / "best.pt"
    torch.save({"method": "baseline", "backbone": "mobilenetv3_large_100", "model": baseline.state_dict()}, path)
    clan = create_model("clan", NUM_CLASSES, backbone="mobilenetv3_large_100", weights=str(path))
    for key, value in baseline.backbone.state_dict().items():
        assert torch.equal(clan.backbone.state_dict()[key], value), key
    with pytest.raises(FgcliError, match="holds a mobilenetv3_large_100 backbone"):
        build_backbone("efficientnet_b0", weights=str(path))


# --------------------------------------------------------------------------- ONNX
def _onnx_parity(method: str, backbone: str, tmp_path) -> None:
    """fgcli's own export path (trace, onnxslim, checker, parity check) on a checkpoint dict."""
    pytest.importorskip("onnxruntime")
    from fgcli.data.preprocess import PreprocessConfig
    from fgcli.export.onnx import export_onnx, synthetic_check_images, torch_logits
    from fgcli.runtime.onnx_runner import onnxruntime_logits

    model = _model(method, backbone).eval()
    kwargs = {"attention_backbone": backbone} if method == "tasn" else {}
    ckpt = {"method": method, "backbone": backbone, "num_classes": NUM_CLASSES, "class_names": list("abc"),
            "preprocess": PreprocessConfig(64, 72).to_dict(), "model": model.state_dict(), "model_kwargs": kwargs}
    result = export_onnx(ckpt, tmp_path)  # raises on any drift beyond the tolerance
    assert result.parity.top1_agreement == 1.0
    images = synthetic_check_images(64, count=3, seed=1)  # another batch size: the batch axis is dynamic
    assert np.abs(onnxruntime_logits(result.path, images) - torch_logits(model, images)).max() <= 1e-3


@pytest.mark.parametrize("backbone", BACKBONES)
def test_onnx_parity_of_each_backbone(backbone, tmp_path):
    _onnx_parity("baseline", backbone, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m != "baseline"])
def test_onnx_parity_of_each_method_on_an_efficient_backbone(method, tmp_path):
    _onnx_parity(method, "mobilenetv3_large_100", tmp_path)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def dataset_64px(tmp_path_factory):
    from conftest import write_tiny_folder_dataset

    return write_tiny_folder_dataset(tmp_path_factory.mktemp("timm_data"), {"train": 2, "test": 1})


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_one_epoch_of_training_then_the_contract_on_the_rebuilt_checkpoint(
        method, backbone, dataset_64px, tmp_path):
    """The method contract on a timm backbone, through the real training loop: one epoch trains, the checkpoint
    records the backbone and rebuilds, every parameter of the method's own gets a gradient, eval returns logits."""
    import json

    from conftest import tiny_train_config
    from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint
    from fgcli.training.train import train

    kwargs = {"attention_backbone": backbone} if method == "tasn" else {}
    cfg = tiny_train_config(dataset_64px, tmp_path, method=method, backbone=backbone, img_size=64, resize_size=72,
                            epochs=1, batch_size=3, warmup_epochs=0, weight_decay=0.0, model_kwargs=kwargs)
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["backbone"] == backbone and ckpt["epoch"] == 1
    model = model_from_checkpoint(ckpt).train()
    x, y = _batch(2)
    sum(model.loss(model(x), y).values()).backward()
    # own = the method's new layers, not the backbones (timm's ResNets zero-init each block's last BN, so their
    # inner convs get no gradient at init; TASN's attention-net body is a backbone too)
    pretrained = {id(p) for module in model.pretrained_modules() for p in module.parameters()}
    own = {n: p for n, p in model.named_parameters() if id(p) not in pretrained}
    no_grad = [n for n, p in own.items() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert own and not no_grad, f"parameters without gradient: {no_grad}"
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["train_loss"])
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 64, 64))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)


# --------------------------------------------------------------------------- INT8
@pytest.mark.slow
def test_int8_quantizers_handle_depthwise_hardswish_and_se_blocks(dataset_64px, tmp_path):
    """MobileNetV3 (depthwise convs, hard-swish, squeeze-excitation) through fgcli export --int8 with both
    quantizers: every conv quantized, the INT8 graphs run and give finite logits of the right shape."""
    import warnings
    from collections import Counter

    import onnx

    from fgcli.data.preprocess import PreprocessConfig
    from fgcli.training.checkpoint import save_checkpoint
    from fgcli.export.onnx import synthetic_check_images
    from fgcli.runtime.onnx_runner import onnxruntime_logits
    from fgcli.export.pipeline import ExportOptions, export_all

    pytest.importorskip("modelopt")
    model = _model("baseline", "mobilenetv3_large_100").eval()
    ckpt = save_checkpoint(tmp_path / "best.pt", {
        "method": "baseline", "backbone": "mobilenetv3_large_100", "num_classes": NUM_CLASSES,
        "class_names": ["alpha", "beta", "gamma"], "preprocess": PreprocessConfig(64, 72).to_dict(),
        "model": model.state_dict()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 6-image calibration set warns
        summary = export_all(ckpt, ExportOptions(out_dir=tmp_path / "export", int8=True, int8_backend="both",
                                                 calib_data=str(dataset_64px), calib_size=6))
    fp32 = onnx.load(summary.artifacts["onnx-fp32"]["path"])
    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) >= 10 and any(n.op_type == "HardSwish" for n in fp32.graph.node)
    images = synthetic_check_images(64, count=4)
    for key in ("onnx-int8-modelopt", "onnx-int8-ort"):
        info = summary.artifacts[key]
        assert info["quantized_counts"].get("Conv", 0) >= len(convs) - 1, (key, info["quantized_counts"])
        quantized = onnx.load(info["output_path"])
        assert Counter(n.op_type for n in quantized.graph.node)["DequantizeLinear"] > len(convs)
        logits = onnxruntime_logits(Path(info["output_path"]), images)
        assert logits.shape == (4, NUM_CLASSES) and np.isfinite(logits).all()
