"""TASN-specific properties (the generic contract is in test_method_contract.py)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from fgcli.errors import FgcliError
from fgcli.models import create_model
from fgcli.models.tasn import (
    CE_TERMS,
    AttentionNet,
    channel_relation,
    distillation_loss,
    scaled_size,
    trilinear_attention,
)
from fgcli.models.tasn_sampler import attention_grid, attention_sample, separable_sample

NUM_CLASSES = 5


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("tasn", NUM_CLASSES, backbone="resnet18", **kwargs)


def _images(size: int = 64, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _peak(size: int, center: tuple[float, float], sigma: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * sigma**2))


def _attention_cases(size: int = 64) -> list[torch.Tensor]:
    """Random, peaked (clipped by ``dense``), and mostly-zero maps (flat CDF steps)."""
    random = torch.rand(2, size, size, generator=torch.Generator().manual_seed(3))
    peaked = torch.stack([_peak(size, (40, 20), 4.0), _peak(size, (10, 50), 12.0) ** 2])
    sparse = torch.zeros(2, size, size)
    sparse[0, 20:30, 5:9] = 1.0
    sparse[1, 50:, 40:] = torch.rand(size - 50, size - 40, generator=torch.Generator().manual_seed(4))
    return [random, peaked, sparse]


def _grid_sample(images, grid_y, grid_x):
    """Reference bilinear sampling on the separable grid, via F.grid_sample."""
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _reference_grid(attention: torch.Tensor, out_size: int, dense: float = 4.0, iters: int = 5):
    """The AttSampler op's loops (att_sampler-inl.h) per image in float64, with fgcli's edge convention:
    F[0] = 0 and levels o * F[-1] / (out - 1); level 0 (where the op reads F[-1] out of bounds) maps to pixel 0."""
    grids_y, grids_x = [], []
    for a in attention.double().numpy():
        n = a.shape[0]
        marginals = [a.max(axis=1), a.max(axis=0)]  # per row (y), per column (x)
        marginals = [m / m.sum() * out_size for m in marginals]
        for round_index in range(iters):
            cap = min(marginals[0].max(), marginals[1].max())
            if round_index == 0:
                cap = min(cap, dense * out_size / n)
            marginals = [np.minimum(m, cap) for m in marginals]
            marginals = [m + (out_size - m.sum()) / n for m in marginals]
        grids = []
        for m in marginals:
            cdf = [0.0]
            for value in m[1:]:
                cdf.append(cdf[-1] + value)
            step, j, coords = cdf[-1] / (out_size - 1), 0, []
            for o in range(out_size):
                level = o * step
                while j < n - 1 and cdf[j] < level:
                    j += 1
                position = 0.0 if j == 0 else j - (cdf[j] - level) / (cdf[j] - cdf[j - 1])
                coords.append(position * 2.0 / (n - 1) - 1.0)
            grids.append(coords)
        grids_y.append(grids[0])
        grids_x.append(grids[1])
    return torch.tensor(grids_y, dtype=torch.float32), torch.tensor(grids_x, dtype=torch.float32)


# --- sampler ------------------------------------------------------------------------------------------------------
def test_tent_kernel_sampler_equals_grid_sample_on_random_monotone_grids():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 12, 17, generator=g)
    # slightly beyond [-1, 1] so that zero padding is exercised too
    grid_y = torch.sort(torch.rand(2, 9, generator=g) * 2.2 - 1.1).values
    grid_x = torch.sort(torch.rand(2, 11, generator=g) * 2.2 - 1.1).values
    expected = _grid_sample(images, grid_y, grid_x)
    assert (separable_sample(images, grid_y, grid_x) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("case", range(3))
def test_sampler_equals_the_reference_loops(case):
    attention = _attention_cases()[case]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    grid_y, grid_x = attention_grid(attention, out_size=28)
    ref_y, ref_x = _reference_grid(attention, out_size=28)
    grid_tolerance = 2e-6  # float32 cumsum vs the float64 loops
    assert (grid_y - ref_y).abs().max() < grid_tolerance and (grid_x - ref_x).abs().max() < grid_tolerance
    # a position error of d pixels moves a bilinear sample by at most d times the largest neighbour difference
    slope = max(images.diff(dim=2).abs().max(), images.diff(dim=3).abs().max())
    image_tolerance = grid_tolerance * (64 - 1) / 2 * slope
    expected = _grid_sample(images, ref_y, ref_x)
    assert (attention_sample(images, attention, out_size=28) - expected).abs().max() < image_tolerance


def test_uniform_attention_gives_the_identity_grid_and_a_plain_resize():
    images = _images(64)
    grid_y, grid_x = attention_grid(torch.ones(2, 64, 64), out_size=28)
    identity = torch.linspace(-1, 1, 28).expand(2, 28)
    assert (grid_y - identity).abs().max() < 1e-6 and (grid_x - identity).abs().max() < 1e-6
    resized = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=True)
    assert (attention_sample(images, torch.ones(2, 64, 64), out_size=28) - resized).abs().max() < 1e-4


def test_all_zero_attention_falls_back_to_the_identity_grid():
    grid_y, grid_x = attention_grid(torch.zeros(1, 32, 32), out_size=16)
    torch.testing.assert_close(grid_y, torch.linspace(-1, 1, 16)[None])
    torch.testing.assert_close(grid_x, torch.linspace(-1, 1, 16)[None])


@pytest.mark.parametrize("case", range(3))
def test_grid_is_monotone_spans_the_image_and_stays_in_range(case):
    for grid in attention_grid(_attention_cases()[case], out_size=28):
        assert (grid.diff(dim=-1) >= 0).all()
        assert grid.min() >= -1 and grid.max() <= 1
        torch.testing.assert_close(grid[:, 0], torch.full((2,), -1.0))


@pytest.mark.parametrize("dense", [2.0, 4.0])
def test_peaked_attention_magnifies_the_peak_at_most_about_dense_fold(dense):
    """``dense`` caps the magnification (round 0 clips at dense x uniform; the refill adds a little). It does not
    bound max/min spacing: low-attention regions may be skipped almost entirely."""
    size, out, center = 128, 56, (80.0, 40.0)
    grid_y, grid_x = attention_grid(_peak(size, center, 6.0)[None], out_size=out, dense=dense)
    uniform_step = (size - 1) / (out - 1)
    for grid, peak in ((grid_y[0], center[0]), (grid_x[0], center[1])):
        position = (grid + 1) * (size - 1) / 2
        step = position.diff()
        at_peak = step[(position[:-1] - peak).abs().argmin()]
        assert at_peak < 1.01 * step.min()  # the clipped peak is a plateau of the finest spacing
        assert step.min() < uniform_step / (0.8 * dense)  # magnified close to the cap ...
        assert step.min() > uniform_step / (dense + 1)  # ... but not beyond it
        assert step.max() > uniform_step  # the far field is thinned out


def test_sampler_sends_gradient_to_the_image_but_not_to_the_attention():
    attention = torch.rand(2, 32, 32, requires_grad=True)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    attention_sample(images, attention, out_size=16).square().sum().backward()
    assert attention.grad is None
    assert images.grad is not None and images.grad.abs().sum() > 0


# --- attention net and trilinear attention --------------------------------------------------------------------------
def test_scaled_sizes_follow_the_paper_ratio():
    assert scaled_size(512) == 224  # the paper's 512 -> 224
    assert scaled_size(512, 336 / 512) == 336  # the README's 88.0 % setting
    assert [scaled_size(s) for s in (448, 384, 96, 64, 32)] == [192, 176, 48, 32, 32]


def test_attention_net_has_stride_8_and_the_multi_dilation_head_keeps_the_size():
    torch.manual_seed(0)
    net = AttentionNet(NUM_CLASSES).eval()
    with torch.no_grad():
        features = net.features(_images(64, n=1))
        logits = net.classify(features)
    assert features.shape == (1, 512, 8, 8) and logits.shape == (1, NUM_CLASSES)
    assert (features >= 0).all()  # sums of ReLUs: the attention maps are non-negative
    assert net.conv2.dilations == (1, 2, 3) and net.conv1.dilations == (1, 2)


def test_trilinear_relation_rows_sum_to_one_and_maps_are_detached():
    features = torch.rand(2, 16, 4, 5, requires_grad=True)
    relation = channel_relation(features)
    assert relation.shape == (2, 16, 16)
    torch.testing.assert_close(relation.sum(-1), torch.ones(2, 16))
    maps = trilinear_attention(features)
    assert maps.shape == (2, 16, 4, 5) and not maps.requires_grad
    manual = torch.softmax(torch.softmax(7 * features.flatten(2), -1) @ features.flatten(2).transpose(1, 2), -1)
    torch.testing.assert_close(maps, (manual @ features.flatten(2)).view(2, 16, 4, 5).detach())


def test_spatially_constant_features_give_constant_maps():
    features = torch.rand(1, 8, 1, 1).expand(1, 8, 3, 3).contiguous()
    maps = trilinear_attention(features)
    torch.testing.assert_close(maps, maps[..., :1, :1].expand_as(maps))


# --- the model --------------------------------------------------------------------------------------------------------
def test_master_and_part_share_one_backbone_pass_and_the_heads_read_their_halves():
    model = _model().train()
    x = _images(64)
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    out = model(x)
    assert len(seen) == 1 and seen[0].shape == (4, 3, 32, 32)  # [detail; structure] in one batch
    part_input, master_input = seen[0].chunk(2)
    torch.testing.assert_close(master_input, model.sample_images(x)["structure"].detach())
    assert not torch.allclose(part_input, master_input)
    with torch.no_grad():
        pooled = model.backbone(seen[0])["layer4"].mean(dim=(2, 3))
        torch.testing.assert_close(out["part_logits"], model.part_fc(pooled[:2]))
        torch.testing.assert_close(out["master_logits"], model.master_fc(pooled[2:]))
        torch.testing.assert_close(out["part_aux_logits"], model.shared_fc(pooled[:2]))
        torch.testing.assert_close(out["master_aux_logits"], model.shared_fc(pooled[2:]))
    assert out["logits"] is out["master_logits"]


def test_loss_terms_are_the_code_terms_with_their_weights():
    model = _model().train()
    y = torch.tensor([1, 3])
    out = model(_images(64))
    terms = model.loss(out, y)
    assert list(terms) == ["ce_att", "ce_part", "ce_master", "ce_part_aux", "ce_master_aux", "distill"]
    for name, key, weight in CE_TERMS:
        torch.testing.assert_close(terms[name], weight * F.cross_entropy(out[key], y))
    soft_target = F.softmax(out["part_logits"] / 10, dim=-1)
    expected = -(soft_target * F.log_softmax(out["master_logits"] / 10, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(terms["distill"], expected)


def test_distillation_gradient_reaches_the_teacher_only_in_the_code_style():
    torch.manual_seed(0)
    logits = torch.randn(3, NUM_CLASSES)
    student, teacher = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    distillation_loss(student, teacher, 10.0, "code").backward()
    assert student.grad.abs().max() < 1e-7  # softmax(z_s / T) - softmax(z_d / T) = 0
    assert teacher.grad.abs().max() > 1e-4  # the non-detached soft target carries gradient
    student, teacher = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    hinton = distillation_loss(student, teacher, 10.0, "hinton")
    hinton.backward()
    assert teacher.grad is None and student.grad.abs().max() < 1e-6
    torch.testing.assert_close(hinton, 100 * distillation_loss(logits, logits, 10.0, "code"))


def test_attention_net_learns_only_from_its_own_ce():
    model = _model().train()
    terms = model.loss(model(_images(64)), torch.tensor([0, 1]))
    sum(value for name, value in terms.items() if name != "ce_att").backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.attention_net.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


@pytest.mark.parametrize("test_head,head", [("master", "master_fc"), ("shared", "shared_fc")])
def test_eval_is_the_chosen_head_on_the_structure_sampled_image(test_head, head):
    model = _model(test_head=test_head).eval()
    x = _images(64)
    with torch.no_grad():
        sampled = model.sample_images(x)
        pooled = model.backbone(sampled["structure"])["layer4"].mean(dim=(2, 3))
        torch.testing.assert_close(model(x), getattr(model, head)(pooled))
    assert sampled["structure"].shape == sampled["detail"].shape == (2, 3, 32, 32)


def test_under_autocast_the_attention_path_and_the_loss_stay_float32():
    model = _model().train()
    x = _images(64) * 100  # large activations: a float16 / bfloat16 square of the channel sum would lose them
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model.attention_maps(x)
        terms = model.loss(model(x), torch.tensor([0, 1]))
    assert all(value.dtype == torch.float32 for value in maps.values())
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in terms.values())


def test_attention_maps_are_non_negative_at_input_resolution():
    model = _model().eval()
    with torch.no_grad():
        maps = model.attention_maps(_images(96))
    assert set(maps) == {"structure", "detail"}
    for value in maps.values():
        assert value.shape == (2, 96, 96) and (value >= 0).all()


def test_weights_file_initialises_the_master_and_both_resnets_are_pretrained_modules(tmp_path):
    import torchvision

    torch.manual_seed(7)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = _model(weights=str(path))
    stored = torch.load(path, weights_only=True)["conv1.weight"]
    assert torch.equal(model.backbone.stem[0].weight, stored)
    assert not torch.equal(model.attention_net.body.stem[0].weight, stored)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups(0.1, 0.1, 0.0)}
    assert {id(p) for p in model.attention_net.body.parameters()} <= groups["backbone"]
    assert {id(p) for p in model.attention_net.conv1.parameters()} <= groups["new_layers"]


def test_bad_options_and_non_square_inputs_are_rejected():
    with pytest.raises(FgcliError):
        _model(distill="bogus")
    with pytest.raises(FgcliError):
        _model(test_head="bogus")
    with pytest.raises(FgcliError), torch.no_grad():
        _model().eval()(torch.randn(1, 3, 64, 96))


def test_onnx_graph_has_only_static_tensorrt_friendly_ops():
    model = _model().eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (_images(64),), buffer, dynamo=False, opset_version=17, input_names=["images"],
        output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert {"CumSum", "Less", "MatMul", "Resize"} <= ops
    assert not ops & {"GridSample", "Loop", "If", "Scan", "NonZero", "TopK", "ArgMax", "ScatterND", "Unique"}


def test_modelopt_int8_quantizes_only_the_master_net_and_ort_int8_both_nets(tmp_path):
    """Signed symmetric INT8 (modelopt, TensorRT) of the attention net moves the sampler, so modelopt leaves it in
    float; ONNX Runtime's unsigned INT8 quantizes both nets. Both keep the ops between the nets in float."""
    pytest.importorskip("modelopt.onnx.quantization")
    from fgcli.calibration.dataset import CalibrationSet
    from fgcli.calibration.modelopt_ptq import quantize_modelopt
    from fgcli.calibration.ort_int8 import quantize_ort
    from fgcli.data.preprocess import PreprocessConfig
    from fgcli.export.onnx import export_onnx
    from fgcli.runtime.onnx_meta import read_onnx_metadata

    checkpoint = {"method": "tasn", "backbone": "resnet18", "num_classes": NUM_CLASSES,
                  "class_names": [f"c{i}" for i in range(NUM_CLASSES)], "model_kwargs": {},
                  "preprocess": PreprocessConfig(64, 73).to_dict(), "model": _model().state_dict()}
    fp32 = export_onnx(checkpoint, tmp_path).path
    meta = read_onnx_metadata(fp32)
    assert meta["symmetric_int8_nodes"] == "/backbone/.*" and meta["float_nodes"] == r"/[A-Za-z]+(_\d+)?"
    graph_convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    master = [n for n in graph_convs if n.startswith("/backbone/")]
    calib = CalibrationSet(images=_images(64, n=16).numpy(), labels=np.zeros(16, dtype=np.int64),
                           paths=[f"x{i}.png" for i in range(16)], preprocess=PreprocessConfig(64, 73))
    convs = {}
    for quantize, name in ((quantize_modelopt, "model.int8.onnx"), (quantize_ort, "model.ort-int8.onnx")):
        result = quantize(fp32, calib, tmp_path / name)
        convs[name] = [n for n in result.quantized_nodes if "/Conv" in n]
        kept_float = result.extra["float_nodes"]  # the trilinear sums, structure map and sampler, by every quantizer
        assert {"/MatMul", "/MatMul_1", "/MatMul_2", "/MatMul_3", "/CumSum"} <= set(kept_float)
        assert not any(n.startswith(("/backbone/", "/body/")) for n in kept_float)
    assert sorted(convs["model.int8.onnx"]) == sorted(master) and len(master) < len(graph_convs)
    assert sum(n.startswith("/body/") for n in convs["model.ort-int8.onnx"]) >= 15  # the attention ResNet-18
