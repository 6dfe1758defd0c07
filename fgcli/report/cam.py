"""Where a model looks: the method's own attention maps, Grad-CAM and occlusion sensitivity, drawn as PNGs.

Grad-CAM and the method maps read the PyTorch model's layers, so they need the .pt checkpoint. Occlusion
sensitivity needs nothing but logits, so it runs on every Runner (PyTorch, ONNX FP32, ONNX INT8, TensorRT): that
is how ``draw_variant_grid`` shows whether quantization moved the attention. torch is imported inside the
functions that need it, so an ONNX-only machine can still draw occlusion grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fgcli.data.images import load_rgb
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.devices import resolve_torch_device
from fgcli.training.metrics import softmax
from fgcli.training.predict import find_images
from fgcli.errors import DataError, FgcliError
from fgcli.report.overlay import Panel, Row, save_rows
from fgcli.runtime.torch_runner import TorchRunner

#: occluded images per ``runner.run`` call: the default TensorRT profile's largest batch
OCCLUSION_BATCH = 32
GRID_NAME = "cam_grid.png"


# --------------------------------------------------------------------------- occlusion (any runner)
@dataclass
class Occlusion:
    """``drop[r, c]``: how much the class probability falls when grid cell (r, c) is greyed out."""

    drop: np.ndarray
    probabilities: np.ndarray
    class_index: int


def cell_edges(size: int, grid: int) -> np.ndarray:
    """``grid + 1`` pixel boundaries splitting ``size`` pixels into near-equal cells that tile it exactly."""
    if not 1 <= grid <= size:
        raise FgcliError(f"occlusion grid {grid} does not fit a {size}-pixel image", hint=f"use a grid of 1 to {size}")
    return np.linspace(0, size, grid + 1).round().astype(int)


def occlusion_map(runner, image: np.ndarray, grid: int = 7, class_index: int | None = None,
                  batch_size: int = OCCLUSION_BATCH) -> Occlusion:
    """Grey out (zero in normalised space: the mean colour) each cell of a ``grid`` x ``grid`` tiling of a
    preprocessed ``(3, H, W)`` image and measure the drop in the softmax probability of ``class_index``
    (default: the class predicted for the intact image). The intact image rides in the first batch."""
    rows, cols = cell_edges(image.shape[1], grid), cell_edges(image.shape[2], grid)
    cells = [(r, c) for r in range(grid) for c in range(grid)]

    def occluded(cell: tuple[int, int] | None) -> np.ndarray:
        copy = image.astype(np.float32, copy=True)
        if cell is not None:
            r, c = cell
            copy[:, rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = 0.0
        return copy

    jobs = [None, *cells]
    logits = np.concatenate([
        runner.run(np.stack([occluded(cell) for cell in jobs[start:start + batch_size]]))
        for start in range(0, len(jobs), batch_size)
    ])
    probabilities = softmax(logits.astype(np.float64))
    target = int(probabilities[0].argmax()) if class_index is None else class_index
    drop = (probabilities[0, target] - probabilities[1:, target]).reshape(grid, grid)
    return Occlusion(drop.astype(np.float32), probabilities[0].astype(np.float32), target)


def cells_to_pixels(cell_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Paint each cell's value over exactly the pixels that cell covered (the same tiling as ``occlusion_map``)."""
    grid = cell_map.shape[0]
    row_sizes = np.diff(cell_edges(height, grid))
    col_sizes = np.diff(cell_edges(width, grid))
    return np.repeat(np.repeat(cell_map, row_sizes, axis=0), col_sizes, axis=1)


# --------------------------------------------------------------------------- Grad-CAM (PyTorch)
def _is_tasn(model) -> bool:
    from fgcli.models.tasn import TASN

    return isinstance(model, TASN)


def grad_cam(model, images, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM on ``model.backbone``'s layer4 for ``(B, 3, H, W)`` images: ``(maps (B, H, W) in [0, 1], logits)``.

    The class is each image's prediction unless ``class_index`` is given. Weights are the spatial mean of the
    class logit's gradient, the map ``ReLU(sum_k w_k A_k)``, upsampled to the input and scaled to [0, 1] per
    image. TASN's eval backbone never sees the input itself, only the structure-sampled image: its CAM is
    computed there and carried back to input pixels through the sampler's grid, so it lines up with the input.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    images = images.detach().requires_grad_(True)  # keeps a graph even when the weights are frozen
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.backbone.register_forward_hook(lambda module, args, output: calls.append((args[0], output["layer4"])))
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        hook.remove()
    sampled = _is_tasn(model)
    activations = [layer4 for seen, layer4 in calls if sampled or seen is images]
    method = model.method or type(model).__name__
    if len(activations) != 1:
        raise FgcliError(f"Grad-CAM found {len(activations)} backbone passes over the input in {method}'s "
                         "eval forward, expected exactly one",
                         hint="the model's forward_eval must run model.backbone once on the image it classifies")
    activation = activations[0]
    if class_index is None:
        targets = logits.argmax(dim=1)
    else:
        targets = torch.full((logits.shape[0],), class_index, dtype=torch.long, device=logits.device)
    score = logits.gather(1, targets[:, None]).sum()
    (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
    if gradient is None:
        raise FgcliError(f"{method}'s class logit does not depend on backbone.layer4 in eval mode, "
                         "so Grad-CAM has nothing to show", hint="choose another layer for this method")
    with torch.no_grad():
        cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1))
        if sampled:
            cam = _sampled_cam_on_input(model, images.detach(), cam, calls[0][0].shape[-1])
        else:
            cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    maps = np.stack([normalise(m)[0] for m in cam.float().cpu().numpy()])
    return maps, logits.detach().float().cpu().numpy()


def _sampled_cam_on_input(model, images, cam, sampled_size: int):
    """Map a CAM on TASN's structure-sampled image back to input pixels.

    Each axis of the sampler sends sampled pixel o to input position p(o), non-decreasing; input pixel i reads the
    sampled-image CAM at o = p^-1(i). Magnified regions shrink back to their true size, squeezed ones widen.
    """
    import torch
    import torch.nn.functional as F

    from fgcli.models.tasn_sampler import attention_grid

    size = images.shape[-1]
    structure = model.attention_maps(images)["structure"]
    grid_y, grid_x = attention_grid(structure, sampled_size, model.dense, model.sampler_iters)
    cam = F.interpolate(cam[:, None], size=(sampled_size, sampled_size), mode="bilinear", align_corners=False)
    pixels, sampled_coords = np.arange(size), np.linspace(-1.0, 1.0, sampled_size)

    def inverse(grid):
        positions = ((grid + 1.0) * 0.5 * (size - 1)).cpu().numpy()
        coords = np.stack([np.interp(pixels, p, sampled_coords) for p in positions])
        return torch.as_tensor(coords, dtype=cam.dtype, device=cam.device)

    inv_y, inv_x = inverse(grid_y), inverse(grid_x)
    lookup = torch.stack(torch.broadcast_tensors(inv_x[:, None, :], inv_y[:, :, None]), dim=-1)
    return F.grid_sample(cam, lookup, mode="bilinear", align_corners=True)[:, 0]


def normalise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max scale to [0, 1] (all zeros for a constant map), with the raw range for the panel's note."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-5 * max(abs(high), abs(low)):  # float32 rounding noise, not structure
        return np.zeros_like(values, dtype=np.float32), low, high
    return ((values - low) / (high - low)).astype(np.float32), low, high


# --------------------------------------------------------------------------- figures
@dataclass
class CamFigures:
    """What ``write_cam_figures`` wrote: one PNG per readable image, the grid, and the images it could not read."""

    figures: list[Path] = field(default_factory=list)
    grid: Path | None = None
    failed: dict[str, str] = field(default_factory=dict)
    num_classes: int = 0  # of the checkpoint: a caption lists at most this many


def collect_images(inputs: list[str | Path], limit: int = 8) -> list[str]:
    """Files as given; each folder contributes ``limit`` images spread evenly over its sorted list (so a test
    split with class subfolders yields several classes, not the first class only)."""
    paths: list[str] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            paths.append(str(item))
            continue
        found = find_images(item)
        if not found:
            raise FgcliError(f"no images found under {item}", hint="supported: .jpg .jpeg .png .bmp .gif .tif .webp")
        step = len(found) / min(limit, len(found))
        paths += [found[int(i * step)] for i in range(min(limit, len(found)))]
    return paths


def display_image(normalised: np.ndarray, preprocess: PreprocessConfig) -> np.ndarray:
    """``(3, H, W)`` normalised tensor -> ``(H, W, 3)`` in [0, 1]: the centre crop the model saw."""
    mean = np.asarray(preprocess.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(preprocess.std, dtype=np.float32)[:, None, None]
    return np.clip(normalised * std + mean, 0.0, 1.0).transpose(1, 2, 0)


def true_class(path: str | Path, class_names: list[str]) -> str | None:
    """The class a folder dataset implies (the image's parent folder), if it is one of the model's classes."""
    parent = Path(path).parent.name
    return parent if parent in class_names else None


def _image_label(path: str | Path, class_names: list[str]) -> str:
    truth = true_class(path, class_names)
    return Path(path).name + (f"   true: {truth}" if truth else "")


def _caption(path: str | Path, probabilities: np.ndarray, class_names: list[str],
             top_k: int) -> tuple[str, bool | None]:
    """File name and true class on the first line, the ranked classes below; no-break spaces keep each
    "rank. class p%" whole when the caption wraps."""
    order = np.argsort(-probabilities)[:top_k]
    ranked = "   ".join(f"{rank}. {class_names[k]} {probabilities[k]:.1%}".replace(" ", "\u00a0")
                        for rank, k in enumerate(order, 1))
    truth = true_class(path, class_names)
    correct = None if truth is None else class_names[order[0]] == truth
    mark = {None: "", True: "  \u2713 correct", False: "  \u2717 wrong"}[correct]
    return f"{_image_label(path, class_names)}{mark}\n{ranked}", correct


def require_checkpoint_path(checkpoint: str | Path) -> Path:
    """Refuse exported models up front: attention maps and Grad-CAM need the PyTorch model's layers."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() != ".pt":
        raise FgcliError(
            f"{checkpoint} is not a PyTorch checkpoint: method attention maps and Grad-CAM read the model's "
            "layers, which an exported model does not expose (it only gives logits)",
            hint="pass the .pt written by fgcli train (RUN/best.pt); exported models are compared with "
                 "occlusion maps in the report instead",
        )
    return checkpoint


def write_cam_figures(checkpoint: str | Path, image_paths: list[str], out_dir: str | Path, top_k: int = 3,
                      device: str = "cpu", progress: Callable[[int], None] | None = None) -> CamFigures:
    """Per image ``NN_<name>.png``: the input, each method attention map, TASN's sampled images and the Grad-CAM
    of the prediction, captioned with the top-k classes; plus ``cam_grid.png`` with one row per image.

    Unreadable images are recorded in ``failed`` and skipped, never fatal.
    """
    import torch

    from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(require_checkpoint_path(checkpoint))
    torch_device = resolve_torch_device(torch, device)
    model = model_from_checkpoint(ckpt, checkpoint).to(torch_device)
    preprocess = PreprocessConfig.from_dict(ckpt["preprocess"])
    out_dir = Path(out_dir)
    result, rows = CamFigures(num_classes=len(ckpt["class_names"])), []
    for index, path in enumerate(image_paths, 1):
        try:
            rgb = load_rgb(path)
        except DataError as exc:
            result.failed[str(path)] = exc.message
        else:
            row = _method_row(model, preprocess, ckpt["class_names"], path, rgb, top_k, torch_device)
            rows.append(row)
            result.figures.append(save_rows([row], out_dir / f"{index:02d}_{Path(path).stem}.png"))
        if progress:
            progress(1)
    if rows:
        result.grid = save_rows(rows, out_dir / GRID_NAME)
    return result


def grad_cam_panel(title: str, image: np.ndarray, cam: np.ndarray) -> Panel:
    """An all-zero CAM (no positive evidence, or a 1x1 layer4 at a tiny input) is said so, not drawn as a dark veil."""
    if cam.any():
        return Panel(title, image, cam, note="layer4, predicted class")
    return Panel(title, image, note="flat: no region stands out")


def _method_row(model, preprocess: PreprocessConfig, class_names: list[str], path: str | Path, rgb, top_k: int,
                device) -> Row:
    """Input, method maps, sampled images, Grad-CAM: one row of panels."""
    import torch
    import torch.nn.functional as F

    array = preprocess_eval(rgb, preprocess)
    image = display_image(array, preprocess)
    size = image.shape[0]
    x = _as_batch(array, device)
    cam, logits = grad_cam(model, x)
    probabilities = softmax(logits.astype(np.float64))[0]
    panels = [Panel("input", image, note=f"{size}x{size} centre crop")]
    with torch.no_grad():
        for name, attention in model.attention_maps(x).items():
            upsampled = F.interpolate(attention[:, None].float(), size=(size, size), mode="bilinear",
                                      align_corners=False)[0, 0].cpu().numpy()
            heat, low, high = normalise(upsampled)
            title = name.replace("_", " ")
            if heat.any():
                panels.append(Panel(title, image, heat, note=f"raw {low:.3g} to {high:.3g}"))
            else:
                panels.append(Panel(title, image, note=f"flat at {low:.3g}: nothing to show"))
        sampled_images = model.sample_images(x) if hasattr(model, "sample_images") else {}
        for name, sampled in sampled_images.items():
            sampled_image = display_image(sampled[0].float().cpu().numpy(), preprocess)
            panels.append(Panel(f"{name}-sampled image", sampled_image, note=f"{sampled_image.shape[0]} px"))
    panels.append(grad_cam_panel("Grad-CAM (top-1)", image, cam[0]))
    caption, correct = _caption(path, probabilities, class_names, top_k)
    return Row(caption, panels, correct)


def draw_variant_grid(runners: dict, image_paths: list[str], out_path: Path, grid: int = 7,
                      progress: Callable[[int], object] | None = None) -> Path:
    """One row per image: the input, each runner's occlusion map, then Grad-CAM for each PyTorch runner;
    ``progress(1)`` per image.

    Occlusion maps in a row share one colour scale (0 to the row's largest probability drop), so an INT8 model
    that looks elsewhere, or relies less on a region, than FP32 shows it. Unreadable images raise BadImageError.
    """
    rows = []
    for path in image_paths:
        rows.append(_variant_row(runners, path, load_rgb(path), grid))
        if progress:
            progress(1)
    return save_rows(rows, out_path)


def _variant_row(runners: dict, path: str | Path, rgb, grid: int) -> Row:
    inputs = {name: preprocess_eval(rgb, runner.preprocess) for name, runner in runners.items()}
    images = {name: display_image(inputs[name], runner.preprocess) for name, runner in runners.items()}
    occlusions = {name: occlusion_map(runner, inputs[name], grid) for name, runner in runners.items()}
    scale = max(max(float(o.drop.max()) for o in occlusions.values()), 1e-6)
    first = next(iter(runners))
    panels = [Panel("input", images[first])]
    for name, occlusion in occlusions.items():
        label = runners[name].class_names[occlusion.class_index]
        heat = np.clip(cells_to_pixels(occlusion.drop, *images[name].shape[:2]) / scale, 0.0, 1.0)
        title = f"{name}: {label} ({occlusion.probabilities[occlusion.class_index]:.2f})"
        note = f"occlusion, max drop {occlusion.drop.max():.3f}"
        panels.append(Panel(title, images[name], heat if heat.any() else None, note))
    for name, runner in runners.items():
        if isinstance(runner, TorchRunner) and runner.precision == "fp32":  # a half-precision model's Grad-CAM adds nothing
            cam, _ = grad_cam(runner.model, _as_batch(inputs[name], runner.device))
            panels.append(grad_cam_panel(f"{name}: Grad-CAM", images[name], cam[0]))
    return Row(_image_label(path, runners[first].class_names), panels)


def _as_batch(array: np.ndarray, device):
    """A preprocessed ``(3, H, W)`` array as a ``(1, 3, H, W)`` tensor on ``device``."""
    import torch

    return torch.from_numpy(array)[None].to(device)
