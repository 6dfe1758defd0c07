"""Synthetic fine-grained dataset in the CUB-200-2011 layout (numpy + PIL only).

Design, so that the demo, the tests and the benchmarks exercise what makes FGVC hard:

* One species shape. Every image shows the same stylised bird (tail, legs, body, breast, wing, neck,
  crest, head, beak, eye) in the same base colours. A class is a combination of four local details
  (``BirdClass``): the wing's pattern (solid, striped, spotted, tipped, barred) and colour, the crest
  colour and the tail-band colour, each colour from an 8-colour palette: 2560 distinct classes.
  ``class_catalogue`` orders the combinations by greedy farthest-point selection (Hamming distance
  over the four details), so the first N classes are as different as the catalogue allows and are
  identical for every N and seed: the first 5 differ in all four parts, the first 35 in at least
  three, the first 255 in at least two; larger catalogues hold pairs that differ in one part.
* Two classes in the same pose differ only inside those parts: 1-8% of the image (tests/test_synth.py:
  one part >= 1% at the typical scale 0.6, all four parts <= 8% even at the largest scale 0.7).
  The bird spans 30-70% of the shorter side, skewed to the large end, so a detail is still
  ~10-25 px wide after resizing the shorter side to 128 and centre-cropping.
* Nuisance per image: size (sides 120-260 px, aspect 0.7-1.4), position near the centre, rotation
  (+-30 deg), horizontal flip, cluttered background (gradient, blobs, polygons, branches, some in
  the bird's own colours), lighting (brightness, contrast, colour cast), mild blur and noise, and 3%
  grayscale images saved as mode "L" (CUB has a few).
* Intra-class variation: hue and shade drift of every colour, phase and angle of the wing pattern.
* Determinism: image ``i`` draws only from ``default_rng([seed, i])`` and the split / grayscale plan
  from ``default_rng([seed, 0])``, so the bytes depend only on the arguments.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fgcli.errors import FgcliError
from fgcli.utils import make_output_folder, write_json_atomic, write_text_atomic

PALETTE: dict[str, tuple[int, int, int]] = {
    "Red": (215, 35, 35),
    "Orange": (250, 140, 0),
    "Yellow": (245, 215, 30),
    "Green": (40, 160, 60),
    "Cyan": (30, 185, 200),
    "Blue": (35, 75, 215),
    "Purple": (135, 55, 185),
    "White": (245, 245, 245),
}
WING_PATTERNS = ("Solid", "Striped", "Spotted", "Tipped", "Barred")
MAX_CLASSES = len(WING_PATTERNS) * len(PALETTE) ** 3

# Shared look of the species; unit coordinates: the bird fills a 1 x 1 box, facing right, y down.
BODY, BREAST, WING_BASE, TAIL, HEAD = (150, 118, 84), (222, 205, 170), (105, 80, 60), (95, 75, 58), (140, 110, 80)
BEAK, LEGS, EYE_RING, PUPIL = (60, 55, 50), (80, 70, 60), (240, 240, 235), (15, 15, 15)
TAIL_SHAPE = ((0.27, 0.47), (0.02, 0.35), (0.0, 0.52), (0.03, 0.69), (0.28, 0.61))
TAIL_BAND_X = (0.05, 0.16)
CREST_SHAPE = ((0.64, 0.34), (0.57, 0.11), (0.69, 0.23), (0.71, 0.04), (0.77, 0.22), (0.87, 0.09), (0.84, 0.32))
BEAK_SHAPE = ((0.83, 0.31), (0.98, 0.37), (0.83, 0.42))
LEG_LINES = (((0.42, 0.68), (0.40, 0.90), (0.46, 0.91)), ((0.50, 0.69), (0.52, 0.90), (0.58, 0.91)))
WING_CENTER, WING_AXES, WING_TILT_DEG = (0.42, 0.53), (0.23, 0.1), 10.0
STRIPE_PERIOD, SPOT_SPACING, SPOT_RADIUS = 0.10, 0.085, 0.033  # unit coordinates
SUPERSAMPLE = 2  # parts are drawn at 2x and box-filtered down: anti-aliased edges

GRAYSCALE_SHARE = 0.03
JPEG_QUALITY = 90
MARKER = "fgcli_synth.json"
INDEX_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")
BoundingBox = tuple[float, float, float, float]  # x, y, width, height in pixels


@dataclass(frozen=True)
class BirdClass:
    """The four local details that make a class; everything else is shared by all classes."""

    wing_pattern: str
    wing_colour: str
    crest_colour: str
    tail_colour: str

    @property
    def name(self) -> str:
        return f"{self.wing_pattern}_{self.wing_colour}_Wing_{self.crest_colour}_Crest_{self.tail_colour}_Tail"


@dataclass(frozen=True)
class Pose:
    """Where the bird sits in a ``width`` x ``height`` image.

    ``scale`` is the bird's length over the shorter image side; ``angle`` is counter-clockwise in
    degrees; ``flip`` makes it face left; ``center`` is in pixels (None: the image centre) and is
    clamped so that the whole bird stays inside the image.
    """

    width: int
    height: int
    scale: float
    angle: float = 0.0
    flip: bool = False
    center: tuple[float, float] | None = None


@dataclass(frozen=True)
class Jitter:
    """Intra-class variation of one image: colour drift and where the wing pattern falls."""

    hue: float = 0.0  # shift of every colour's hue, as a fraction of the colour wheel
    shade: float = 1.0  # brightness factor of every colour of the bird
    pattern_phase: tuple[float, float] = (0.0, 0.0)  # in pattern periods
    pattern_angle: float = 0.0  # degrees


@dataclass(frozen=True)
class SynthSummary:
    out: Path
    num_classes: int
    num_images: int
    num_train: int
    num_test: int
    num_grayscale: int
    class_names: tuple[str, ...]


@lru_cache(maxsize=1)
def _ordered_catalogue() -> tuple[BirdClass, ...]:
    """Every detail combination, each next one as far (Hamming) as possible from those before it."""
    colours = tuple(PALETTE)
    combos = np.array(list(product(range(len(WING_PATTERNS)), *[range(len(colours))] * 3)))
    # A fixed shuffle (not the dataset seed) breaks ties, so neighbours vary in every detail.
    combos = combos[np.random.default_rng(2011).permutation(len(combos))]
    order = [0]
    min_distance = (combos != combos[0]).sum(axis=1)
    for _ in range(len(combos) - 1):
        chosen = int(np.argmax(min_distance))
        order.append(chosen)
        min_distance = np.minimum(min_distance, (combos != combos[chosen]).sum(axis=1))
    return tuple(
        BirdClass(WING_PATTERNS[p], colours[w], colours[c], colours[t]) for p, w, c, t in combos[order]
    )


def class_catalogue(num_classes: int) -> list[BirdClass]:
    """The first ``num_classes`` classes; class k is the same for every ``num_classes`` and seed."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise FgcliError(f"the synthetic dataset has 1 to {MAX_CLASSES} classes, not {num_classes}",
                         hint=f"use --classes between 2 and {MAX_CLASSES}")
    return list(_ordered_catalogue()[:num_classes])


def _jittered(rgb: tuple[int, int, int], jitter: Jitter) -> tuple[int, int, int]:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    r, g, b = colorsys.hsv_to_rgb((h + jitter.hue) % 1.0, s, min(1.0, v * jitter.shade))
    return round(r * 255), round(g * 255), round(b * 255)


def _wing_pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, jitter: Jitter) -> np.ndarray:
    """Where the class colour goes on the wing; ``u`` runs tail-to-head along the wing, unit coordinates."""
    angle = math.radians(jitter.pattern_angle)
    pu = u * math.cos(angle) - v * math.sin(angle)
    pv = u * math.sin(angle) + v * math.cos(angle)
    phase_u, phase_v = jitter.pattern_phase
    half_length = WING_AXES[0]
    if pattern == "Solid":  # all but a rim of the base colour
        return (u / half_length) ** 2 + (v / WING_AXES[1]) ** 2 <= 0.85**2
    if pattern == "Striped":
        return (pu / STRIPE_PERIOD + phase_u) % 1.0 < 0.5
    if pattern == "Spotted":
        du = (pu / SPOT_SPACING + phase_u) % 1.0 - 0.5
        dv = (pv / SPOT_SPACING + phase_v) % 1.0 - 0.5
        return du**2 + dv**2 < (SPOT_RADIUS / SPOT_SPACING) ** 2
    if pattern == "Tipped":  # the rear half, towards the wing tip
        return u < 0.1 * (phase_u - 0.5) * half_length
    if pattern == "Barred":  # one broad bar across the middle
        return np.abs(u - (0.15 + 0.1 * (phase_u - 0.5)) * half_length) < 0.36 * half_length
    raise ValueError(f"unknown wing pattern {pattern!r}; expected one of {WING_PATTERNS}")


def _draw_wing(canvas: Image.Image, bird: BirdClass, jitter: Jitter) -> None:
    size = canvas.width
    cx, cy = WING_CENTER[0] * size, WING_CENTER[1] * size
    reach = WING_AXES[0] * size + 1
    x0, y0, x1, y1 = (int(cx - reach), int(cy - reach), int(cx + reach) + 1, int(cy + reach) + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xs + 0.5) / size - WING_CENTER[0], (ys + 0.5) / size - WING_CENTER[1]
    tilt = math.radians(WING_TILT_DEG)  # the front of the wing is raised: y decreases towards the head
    u = dx * math.cos(tilt) - dy * math.sin(tilt)
    v = dx * math.sin(tilt) + dy * math.cos(tilt)
    inside = (u / WING_AXES[0]) ** 2 + (v / WING_AXES[1]) ** 2 <= 1.0
    coloured = inside & _wing_pattern_mask(bird.wing_pattern, u, v, jitter)
    rgba = np.zeros(inside.shape + (4,), dtype=np.uint8)
    rgba[inside] = (*_jittered(WING_BASE, jitter), 255)
    rgba[coloured] = (*_jittered(PALETTE[bird.wing_colour], jitter), 255)
    layer = Image.fromarray(rgba, "RGBA")
    canvas.paste(layer, (x0, y0), layer)


def _tail_band(x_from: float, x_to: float) -> list[tuple[float, float]]:
    """The part of the tail between two x positions, from its top and bottom edges."""
    (top_x0, top_y0), (top_x1, top_y1) = TAIL_SHAPE[0], TAIL_SHAPE[1]
    (bot_x0, bot_y0), (bot_x1, bot_y1) = TAIL_SHAPE[4], TAIL_SHAPE[3]

    def on_edge(x, ax, ay, bx, by):
        return x, ay + (by - ay) * (x - ax) / (bx - ax)

    return [on_edge(x_from, top_x0, top_y0, top_x1, top_y1), on_edge(x_to, top_x0, top_y0, top_x1, top_y1),
            on_edge(x_to, bot_x0, bot_y0, bot_x1, bot_y1), on_edge(x_from, bot_x0, bot_y0, bot_x1, bot_y1)]


def draw_bird(bird: BirdClass, length: float, jitter: Jitter = Jitter()) -> Image.Image:
    """The bird facing right on a transparent square of side ``length`` (premultiplied "RGBa")."""
    size = max(8, round(length * SUPERSAMPLE))
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)

    def fill(rgb):
        return (*_jittered(rgb, jitter), 255)

    def at(points):
        return [(x * size, y * size) for x, y in points]

    def box(x0, y0, x1, y1):
        return [x0 * size, y0 * size, x1 * size, y1 * size]

    for leg in LEG_LINES:
        draw.line(at(leg), fill=fill(LEGS), width=max(1, round(0.02 * size)), joint="curve")
    draw.polygon(at(TAIL_SHAPE), fill=fill(TAIL))
    draw.polygon(at(_tail_band(*TAIL_BAND_X)), fill=fill(PALETTE[bird.tail_colour]))
    draw.ellipse(box(0.19, 0.39, 0.71, 0.71), fill=fill(BODY))
    draw.ellipse(box(0.50, 0.50, 0.72, 0.70), fill=fill(BREAST))
    _draw_wing(canvas, bird, jitter)
    draw.ellipse(box(0.58, 0.36, 0.76, 0.54), fill=fill(BODY))
    draw.polygon(at(CREST_SHAPE), fill=fill(PALETTE[bird.crest_colour]))
    draw.ellipse(box(0.625, 0.245, 0.855, 0.475), fill=fill(HEAD))
    draw.polygon(at(BEAK_SHAPE), fill=fill(BEAK))
    draw.ellipse(box(0.75, 0.31, 0.81, 0.37), fill=fill(EYE_RING))
    draw.ellipse(box(0.765, 0.325, 0.795, 0.355), fill=fill(PUPIL))
    return canvas.convert("RGBa").reduce(SUPERSAMPLE)


def render_scene(bird: BirdClass, pose: Pose, background: Image.Image,
                 jitter: Jitter = Jitter()) -> tuple[Image.Image, BoundingBox]:
    """Composite the bird onto ``background`` (RGB, pose-sized): the image and the bird's box.

    No photometric change here, so two classes rendered with the same pose, background and jitter
    differ only where their details are.
    """
    if background.size != (pose.width, pose.height):
        raise ValueError(f"background is {background.size}, the pose needs {(pose.width, pose.height)}")
    sprite = draw_bird(bird, pose.scale * min(pose.width, pose.height), jitter)
    if pose.flip:
        sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
    sprite = sprite.rotate(pose.angle, resample=Image.BICUBIC, expand=True)
    sprite = sprite.crop(sprite.getchannel("a").getbbox()).convert("RGBA")
    width, height = sprite.size
    if width > pose.width or height > pose.height:
        raise ValueError(f"a bird of scale {pose.scale} ({width}x{height} px) does not fit a "
                         f"{pose.width}x{pose.height} image")
    cx, cy = pose.center if pose.center is not None else (pose.width / 2, pose.height / 2)
    x = min(max(round(cx - width / 2), 0), pose.width - width)
    y = min(max(round(cy - height / 2), 0), pose.height - height)
    image = background.convert("RGB")
    image.paste(sprite, (x, y), sprite)
    return image, (float(x), float(y), float(width), float(height))


def sample_pose(rng: np.random.Generator) -> Pose:
    short = int(rng.integers(120, 211))
    long = min(260, round(short * rng.uniform(1.0, 1.4)))
    width, height = (long, short) if rng.random() < 0.65 else (short, long)
    # sqrt skews the scale to large birds: the details must stay visible at 128 px.
    scale = 0.3 + 0.4 * math.sqrt(rng.random())
    # Near the centre, so a centre crop keeps the bird.
    offset_x, offset_y = rng.uniform(-0.15, 0.15, size=2) * short
    return Pose(width, height, scale, angle=float(rng.uniform(-30, 30)), flip=bool(rng.random() < 0.5),
                center=(width / 2 + offset_x, height / 2 + offset_y))


def sample_jitter(rng: np.random.Generator) -> Jitter:
    return Jitter(hue=float(rng.uniform(-0.02, 0.02)), shade=float(rng.uniform(0.9, 1.1)),
                  pattern_phase=(float(rng.random()), float(rng.random())),
                  pattern_angle=float(rng.uniform(-12, 12)))


def _scene_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9))
    return round(r * 255), round(g * 255), round(b * 255)


DECOY_COLOURS = (*PALETTE.values(), BODY, WING_BASE, BREAST, TAIL)


def make_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A gradient with out-of-focus clutter; about a third of it in the bird's own colours."""
    direction = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * math.cos(direction) + ys * math.sin(direction)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    start, end = np.array(_scene_colour(rng), np.float32), np.array(_scene_colour(rng), np.float32)
    image = Image.fromarray((start + (end - start) * ramp[..., None]).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(int(rng.integers(4, 12))):
        colour = (DECOY_COLOURS[int(rng.integers(len(DECOY_COLOURS)))] if rng.random() < 0.35
                  else _scene_colour(rng))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        reach = rng.uniform(0.05, 0.25) * short
        kind = rng.integers(3)
        if kind == 0:
            rx, ry = reach, reach * rng.uniform(0.3, 1.0)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        elif kind == 1:
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(3, 7))))
            radii = reach * rng.uniform(0.4, 1.0, size=len(angles))
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=colour)
        else:  # a branch: a bent line
            points = [(cx, cy)]
            heading = rng.uniform(0, 2 * math.pi)
            for _ in range(int(rng.integers(2, 5))):
                heading += rng.uniform(-0.6, 0.6)
                points.append((points[-1][0] + 2 * reach * math.cos(heading),
                               points[-1][1] + 2 * reach * math.sin(heading)))
            draw.line(points, fill=colour, width=int(rng.integers(2, 8)), joint="curve")
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))


def apply_photometric(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lighting (brightness, contrast, colour cast), then sometimes sensor noise and a slight blur."""
    pixels = np.asarray(image, dtype=np.float32)
    mean = float(pixels.mean())
    contrast, brightness = rng.uniform(0.75, 1.25, size=2)
    cast = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    pixels = ((pixels - mean) * contrast + mean) * brightness * cast
    if rng.random() < 0.5:
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * rng.uniform(1.0, 6.0)
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image


def render_sample(bird: BirdClass, rng: np.random.Generator) -> tuple[Image.Image, BoundingBox]:
    """One dataset image of ``bird`` with all nuisance factors drawn from ``rng`` (RGB)."""
    pose = sample_pose(rng)
    image, box = render_scene(bird, pose, make_background(rng, pose.width, pose.height), sample_jitter(rng))
    return apply_photometric(image, rng), box


def _prepare_output(out: Path) -> None:
    """Accept a new or empty folder, or clear a previous synthetic dataset; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise FgcliError(f"{out} is a file, not a folder", hint="choose a new folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER
        try:
            ours = json.loads(marker.read_text()).get("generator") == __name__
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FgcliError(f"{out} is not empty and is not a synthetic dataset written by fgcli",
                             hint="choose a new or empty folder; fgcli only overwrites its own synthetic datasets")
        # Index files first: a dataset without images.txt is never mistaken for a complete one.
        for name in INDEX_FILES:
            (out / name).unlink(missing_ok=True)
        if (out / "images").exists():
            shutil.rmtree(out / "images")
    make_output_folder(out)


def generate_synthetic(out: str | Path, num_classes: int = 10, per_class: int = 40, seed: int = 0,
                       test_fraction: float = 0.3,
                       progress: Callable[[int], object] | None = None) -> SynthSummary:
    """Write ``num_classes`` x ``per_class`` images to ``out`` in the CUB-200-2011 layout.

    The marker file goes first (an interrupted run can be regenerated in place), images.txt last
    (its presence means the dataset is complete). ``progress(1)`` is called after each image.
    """
    if num_classes < 2:
        raise FgcliError(f"a classification dataset needs at least 2 classes, not {num_classes}",
                         hint="use --classes 2 or more")
    classes = class_catalogue(num_classes)
    if per_class < 2:
        raise FgcliError(f"each class needs at least 2 images (one train, one test), not {per_class}",
                         hint="use --per-class 2 or more")
    if not 0.0 < test_fraction < 1.0:
        raise FgcliError(f"test_fraction must be between 0 and 1, not {test_fraction}", hint="e.g. 0.3")
    if seed < 0:
        raise FgcliError(f"seed must be 0 or more, not {seed}", hint="use --seed 0")
    out = Path(out)
    _prepare_output(out)
    write_json_atomic(out / MARKER, {"generator": __name__, "num_classes": num_classes, "per_class": per_class,
                                     "seed": seed, "test_fraction": test_fraction})

    plan_rng = np.random.default_rng([seed, 0])
    num_test = min(per_class - 1, max(1, round(per_class * test_fraction)))
    is_test = np.zeros((num_classes, per_class), dtype=bool)
    for row in is_test:
        row[plan_rng.choice(per_class, size=num_test, replace=False)] = True
    total = num_classes * per_class
    grayscale = set((plan_rng.choice(total, size=max(1, round(GRAYSCALE_SHARE * total)), replace=False) + 1).tolist())

    digits = max(3, len(str(num_classes)))
    folders = [f"{label:0{digits}d}.{bird.name}" for label, bird in enumerate(classes, start=1)]
    images, labels, split, boxes = [], [], [], []
    for label, (bird, folder) in enumerate(zip(classes, folders), start=1):
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image_id = (label - 1) * per_class + index + 1
            image, (x, y, w, h) = render_sample(bird, np.random.default_rng([seed, image_id]))
            if image_id in grayscale:
                image = image.convert("L")
            relpath = f"{folder}/{bird.name}_{image_id:05d}.jpg"
            # Written in place: until images.txt exists the folder is not a dataset, so a torn
            # image after a crash is never read.
            image.save(out / "images" / relpath, format="JPEG", quality=JPEG_QUALITY)
            images.append(f"{image_id} {relpath}")
            labels.append(f"{image_id} {label}")
            split.append(f"{image_id} {0 if is_test[label - 1, index] else 1}")
            boxes.append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
            if progress is not None:
                progress(1)

    write_text_atomic(out / "classes.txt", "".join(f"{i} {f}\n" for i, f in enumerate(folders, start=1)))
    for name, lines in (("image_class_labels.txt", labels), ("train_test_split.txt", split),
                        ("bounding_boxes.txt", boxes), ("images.txt", images)):
        write_text_atomic(out / name, "\n".join(lines) + "\n")
    return SynthSummary(out=out, num_classes=num_classes, num_images=total,
                        num_train=total - num_classes * num_test, num_test=num_classes * num_test,
                        num_grayscale=len(grayscale), class_names=tuple(folders))
