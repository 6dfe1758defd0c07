"""Attention figures: Grad-CAM for every method, occlusion on any runner, the PNGs `fgcli cam` and the report write."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.models import list_models
from fgcli.report.cam import cells_to_pixels, collect_images, draw_variant_grid, grad_cam, occlusion_map
from fgcli.runtime import open_runner
from fgcli.report.overlay import DPI, PANEL_INCHES
from fgcli.runtime.base import Runner

cli = CliRunner()
#: pixel width of a figure with n panel columns
PANEL_PX = PANEL_INCHES * DPI


def random_model(method: str, seed: int = 0):
    import torch

    from fgcli.models import create_model

    torch.manual_seed(seed)
    return create_model(method, 3, backbone="resnet18").eval()


@pytest.mark.parametrize("method", list_models())
def test_grad_cam_is_a_nonconstant_map_that_follows_the_image(method):
    import torch

    model = random_model(method)
    images = torch.randn(2, 3, 96, 96)  # 96 px: layer4 (and TASN's 48 px sampled image's layer4) is at least 2x2
    maps, logits = grad_cam(model, images)
    assert maps.shape == (2, 96, 96) and logits.shape == (2, 3)
    assert maps.min() == 0.0 and maps.max() == 1.0
    assert maps.std(axis=(1, 2)).min() > 0.05
    assert np.abs(maps[0] - maps[1]).max() > 0.1  # a different image, a different map
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(images))


def test_grad_cam_of_a_linear_head_is_its_closed_form():
    """Baseline: d logit_c / d A = W_c / (h w) everywhere, so the CAM is ReLU(W_c . A), upsampled and scaled."""
    import torch
    import torch.nn.functional as F

    model = random_model("baseline")
    images = torch.randn(1, 3, 96, 96)
    maps, _ = grad_cam(model, images, class_index=2)
    with torch.no_grad():
        features = model.backbone(images)["layer4"]
        cam = F.relu(torch.einsum("k,bkhw->bhw", model.classifier.weight[2], features))
        cam = F.interpolate(cam[:, None], size=(96, 96), mode="bilinear", align_corners=False)[0, 0]
    expected = ((cam - cam.min()) / (cam.max() - cam.min())).numpy()
    np.testing.assert_allclose(maps[0], expected, atol=1e-5)


def test_grad_cam_refuses_a_model_whose_logits_ignore_layer4():
    import torch

    from fgcli.models.baseline import Baseline

    class Blind(Baseline):
        def forward_eval(self, x):
            self.backbone(x)
            return self.classifier(torch.zeros(len(x), self.classifier.in_features)) + x.mean()

    with pytest.raises(FgcliError, match="Blind's class logit does not depend on backbone.layer4"):
        grad_cam(Blind(3, backbone="resnet18"), torch.randn(1, 3, 64, 64))


def test_tasn_cam_on_the_sampled_image_is_carried_back_onto_the_input():
    """Sampling coordinate ramps with TASN's sampler and mapping the result back must give the ramps again."""
    import torch
    import torch.nn.functional as F

    from fgcli.models.tasn_sampler import attention_sample
    from fgcli.report.cam import _sampled_cam_on_input

    model = random_model("tasn")
    images = torch.randn(1, 3, 96, 96)
    column = torch.linspace(0, 1, 96).expand(96, 96)
    ramps = torch.stack([column, column.T])[None]  # x and y coordinate of every input pixel
    with torch.no_grad():
        structure = model.attention_maps(images)["structure"]
        sampled = attention_sample(ramps, structure, 48, model.dense, model.sampler_iters)
        uniform = F.interpolate(ramps, size=(48, 48), mode="bilinear", align_corners=True)
        assert (sampled - uniform).abs().max() > 0.05  # the sampler really warps this image
        for channel in range(2):
            back = _sampled_cam_on_input(model, images, sampled[:, channel], 48)
            torch.testing.assert_close(back[0], ramps[0, channel], atol=1e-4, rtol=0)


class RegionRunner(Runner):
    """Class 0's logit is 5 x the mean of the top-right quarter of the image, class 1's is 0."""

    def __init__(self):
        super().__init__(name="region", class_names=["quarter", "rest"], preprocess=PreprocessConfig(28, 28),
                         precision="fp32")
        self.batches = []

    def run(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        region = images[:, :, :14, 14:].mean(axis=(1, 2, 3))
        return np.stack([5 * region, np.zeros_like(region)], axis=1).astype(np.float32)


def test_occlusion_finds_the_only_region_the_logit_reads():
    runner = RegionRunner()
    occlusion = occlusion_map(runner, np.ones((3, 28, 28), np.float32), grid=7)
    assert runner.batches == [32, 18]  # the intact image plus 49 occluded ones, in two calls
    assert occlusion.class_index == 0
    np.testing.assert_allclose(occlusion.probabilities, [1 / (1 + np.exp(-5)), 1 / (1 + np.exp(5))], rtol=1e-5)
    rows, cols = np.indices((7, 7))
    touches_region = (rows <= 3) & (cols >= 3)  # 4-px cells; row 3 and column 3 straddle the quarter's edge
    assert np.array_equal(occlusion.drop > 1e-6, touches_region)
    assert np.abs(occlusion.drop[~touches_region]).max() < 1e-6
    peak = np.unravel_index(occlusion.drop.argmax(), occlusion.drop.shape)
    assert peak[0] <= 2 and peak[1] >= 4  # a cell wholly inside the quarter
    pixels = cells_to_pixels(occlusion.drop, 28, 28)
    assert pixels.shape == (28, 28) and pixels[0, 27] == occlusion.drop[0, 6] and pixels[27, 0] == occlusion.drop[6, 0]


def test_occlusion_of_fp32_against_itself_is_identical_and_matches_pytorch(tiny_checkpoint, tiny_onnx, tiny_dataset):
    from fgcli.data.images import load_rgb
    from fgcli.data.preprocess import preprocess_eval
    from fgcli.runtime import open_runner

    maps = []
    for path in (tiny_onnx, tiny_onnx, tiny_checkpoint):
        with open_runner(path, device="cpu") as runner:
            image = preprocess_eval(load_rgb(tiny_dataset / "test" / "beta" / "beta_1.png"), runner.preprocess)
            maps.append(occlusion_map(runner, image, grid=4))
    assert np.array_equal(maps[0].drop, maps[1].drop)
    assert maps[0].class_index == maps[2].class_index
    np.testing.assert_allclose(maps[0].drop, maps[2].drop, atol=1e-5)


def test_folder_arguments_give_images_spread_over_the_classes(tiny_dataset, tmp_path):
    picked = collect_images([tiny_dataset / "test", tmp_path / "missing.jpg"], limit=3)
    assert [p.split("/")[-1] for p in picked] == ["alpha_0.png", "beta_0.png", "gamma_0.png", "missing.jpg"]


def test_cam_cli_writes_one_png_per_image_and_the_grid(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "cam"
    result = cli.invoke(app, ["cam", str(tiny_checkpoint), str(tiny_dataset / "test"), "--limit", "3",
                              "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "cam_grid.png" in result.output
    figures = sorted(out.glob("0*.png"))
    assert [p.name for p in figures] == ["01_alpha_0.png", "02_beta_0.png", "03_gamma_0.png"]
    heights = []
    for path in figures:
        with Image.open(path) as png:
            assert png.width == round(2 * PANEL_PX)  # baseline: input + Grad-CAM
            assert PANEL_PX < png.height < 2 * PANEL_PX
            heights.append(png.height)
            assert np.asarray(png.convert("L")).std() > 10  # drawn, not blank
    with Image.open(out / "cam_grid.png") as grid:
        assert grid.width == round(2 * PANEL_PX) and abs(grid.height - sum(heights)) <= 3


def test_cam_cli_reports_unreadable_images_and_exits_1(tiny_checkpoint, tiny_dataset, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "cam"
    good = tiny_dataset / "test" / "gamma" / "gamma_2.png"
    result = cli.invoke(app, ["cam", str(tiny_checkpoint), str(empty), str(good), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1
    assert "empty.jpg" in result.output and "empty" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["02_gamma_2.png", "cam_grid.png"]


def test_cam_cli_refuses_an_exported_model(tiny_onnx, tiny_dataset, tmp_path):
    result = cli.invoke(app, ["cam", str(tiny_onnx), str(tiny_dataset / "test"), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "not a PyTorch checkpoint" in str(result.exception) and "best.pt" in str(result.exception)
    assert not list(tmp_path.iterdir())


def test_method_figures_show_every_attention_map_and_tasn_samples(tiny_dataset, tmp_path):
    """A random-weight TASN at 64 px: input, structure, detail, two sampled images and Grad-CAM in one row."""
    from fgcli.training.checkpoint import save_checkpoint
    from fgcli.report.cam import write_cam_figures

    model = random_model("tasn")
    checkpoint = save_checkpoint(tmp_path / "tasn.pt", {
        "method": "tasn", "backbone": "resnet18", "num_classes": 3, "class_names": ["alpha", "beta", "gamma"],
        "model_kwargs": {}, "preprocess": PreprocessConfig(64, 72).to_dict(), "model": model.state_dict(),
    })
    result = write_cam_figures(checkpoint, [str(tiny_dataset / "test" / "alpha" / "alpha_1.png")], tmp_path / "cam")
    assert not result.failed and result.grid == tmp_path / "cam" / "cam_grid.png"
    with Image.open(result.figures[0]) as png:
        assert png.width == round(6 * PANEL_PX)


def test_variant_grid_has_an_occlusion_column_per_variant_and_grad_cam_for_the_checkpoint(
        tiny_checkpoint, tiny_onnx, tiny_dataset, tmp_path):
    images = [str(tiny_dataset / "test" / name) for name in ("alpha/alpha_0.png", "gamma/gamma_0.png")]
    with open_runner(tiny_checkpoint, device="cpu") as torch_runner, open_runner(tiny_onnx, device="cpu") as onnx_runner:
        out = draw_variant_grid({"torch-fp32": torch_runner, "onnx-fp32": onnx_runner}, images, tmp_path / "grid.png")
    assert out == tmp_path / "grid.png"
    with Image.open(out) as png:
        assert png.width == round(4 * PANEL_PX)  # input, two occlusion maps, Grad-CAM
        assert 2 * PANEL_PX < png.height < 3 * PANEL_PX


def test_drawing_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from fgcli.report.overlay import Panel, Row, save_rows

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependencyError) as info:
        save_rows([Row("x", [Panel("input", np.zeros((4, 4, 3)))])], tmp_path / "x.png")
    assert "matplotlib" in str(info.value) and "fgcli[report]" in str(info.value.hint)
    assert not (tmp_path / "x.png").exists()


def test_onnx_variant_grid_runs_without_torch(tiny_onnx, tiny_dataset, tmp_path):
    from conftest import BLOCK_TORCH

    out = tmp_path / "grid.png"
    script = BLOCK_TORCH + (
        "from pathlib import Path\n"
        "from fgcli.report.cam import draw_variant_grid\n"
        "from fgcli.runtime import open_runner\n"
        f"with open_runner(Path({str(tiny_onnx)!r}), device='cpu') as runner:\n"
        f"    draw_variant_grid({{'onnx-fp32': runner}}, "
        f"[{str(tiny_dataset / 'test' / 'beta' / 'beta_0.png')!r}], Path({str(out)!r}))\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(out) as png:
        assert png.width == round(2 * PANEL_PX)
