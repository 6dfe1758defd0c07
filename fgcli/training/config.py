"""Training configuration: typed defaults, per-method recipes, and command-line overrides.

Precedence (lowest to highest): ``TrainConfig`` defaults, the recipe (``--recipe paper|small``,
from ``fgcli/recipes/<method>.json``), for ``--qat`` the settings of the run it fine-tunes
(``fgcli.training.qat.qat_defaults``), for ``--resume`` the settings in the run's config.json, then every option
given explicitly on the command line (a resume that changes one says so in a note).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from fgcli.errors import FgcliError
from fgcli.utils import read_json_object

#: every backbone halves the image five times: a smaller input leaves nothing for the attention maps
BACKBONE_STRIDE = 32


def check_img_size(img_size: int) -> None:
    """Refuse an input size below the backbones' output stride (training, or exporting at another size)."""
    if img_size < BACKBONE_STRIDE:
        raise FgcliError(f"--img-size {img_size} is smaller than the {BACKBONE_STRIDE} px the ResNet backbones "
                         "reduce an image by (their output stride)", hint="use e.g. 224, 448 or, for a quick test, 64")


#: ``--amp`` values; ``auto`` is resolved on the device by ``fgcli.training.train.resolve_precision``
AMP_CHOICES = ("auto", "bf16", "fp16", "off")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The CPU recipe of the demo and the tests: small images, a small backbone, from scratch.
SMALL_RECIPE: dict[str, Any] = {
    "backbone": "resnet18",
    "pretrained": False,
    "img_size": 96,
    "resize_size": 110,
    "epochs": 15,
    "batch_size": 32,
    "lr": 0.02,
    "backbone_lr_scale": 1.0,  # from scratch: the backbone is as new as the head
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "warmup_epochs": 1,
    "schedule": "cosine",
}


@dataclass
class TrainConfig:
    method: str = "baseline"
    data: str = ""
    out: str = "runs/train"
    layout: str = "auto"
    train_split: str = "train"
    val_split: str = "test"
    backbone: str | None = None  # None: the method's paper default
    pretrained: bool = False
    weights: str | None = None
    img_size: int = 448
    resize_size: int = 512
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    epochs: int = 50
    batch_size: int = 16
    lr: float = 0.01
    backbone_lr_scale: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    schedule: str = "cosine"  # cosine | step
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    device: str = "auto"
    amp: str = "auto"  # auto | bf16 | fp16 | off: autocast precision; auto resolves per device (resolve_precision)
    compile: bool = False  # torch.compile the model for training (CUDA: worth its minutes of compiling)
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # start a new run in an out folder that holds one
    skip_bad: bool = False
    recipe: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    tensorboard: bool = False  # TensorBoard event files in the run folder
    tensorboard_every: int = 5  # epochs between attention-map images
    qat: bool = False  # quantization-aware fine-tuning of the fgcli checkpoint in ``weights`` (fgcli.training.qat)
    qat_calib_size: int = 256  # train images the INT8 quantizers are calibrated on before QAT starts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def validate(self) -> None:
        check_img_size(self.img_size)
        if self.amp not in AMP_CHOICES:
            raise FgcliError(f"--amp {self.amp} is not a precision", hint=f"use one of {', '.join(AMP_CHOICES)}")
        if self.img_size % BACKBONE_STRIDE:
            raise FgcliError(f"--img-size {self.img_size} is not divisible by {BACKBONE_STRIDE}", hint="use e.g. 224, 448 or 128")
        if self.resize_size < self.img_size:
            raise FgcliError(f"--resize-size {self.resize_size} is smaller than --img-size {self.img_size}")
        if self.schedule not in ("cosine", "step"):
            raise FgcliError(f"unknown schedule '{self.schedule}'", hint="use cosine or step")
        if self.tensorboard_every < 1:
            raise FgcliError(f"--tensorboard-every {self.tensorboard_every} must be at least 1")
        if self.epochs < 1 or self.batch_size < 1:
            raise FgcliError("--epochs and --batch-size must be at least 1")
        if not self.lr > 0:
            raise FgcliError(f"--lr {self.lr} is not a learning rate", hint="use a positive value, e.g. --lr 0.01")
        if self.qat and not self.weights:
            raise FgcliError("--qat fine-tunes a trained run with INT8 quantizers, and needs it",
                             hint="pass --weights RUN/best.pt (an fgcli checkpoint)")
        if self.qat and self.pretrained:
            raise FgcliError("--qat starts from the run in --weights, not from ImageNet weights",
                             hint="drop --pretrained")
        if self.qat_calib_size < 1:
            raise FgcliError(f"--qat-calib-size {self.qat_calib_size} must be at least 1")
        if self.resume and self.overwrite:
            raise FgcliError("--resume and --overwrite contradict each other",
                             hint="--resume continues the run in --out; --overwrite starts a new one there")


def load_recipe(method: str, name: str) -> dict[str, Any]:
    """The named recipe for ``method``: ``paper`` from its JSON file, ``small`` from it or the shared CPU recipe."""
    path = resources.files("fgcli.recipes").joinpath(f"{method}.json")
    recipes = json.loads(path.read_text()) if path.is_file() else {}
    if name == "small":
        return {**SMALL_RECIPE, **recipes.get("small", {})}
    if name not in recipes:
        available = sorted(k for k in recipes if k != "source") + ["small"]
        raise FgcliError(f"method '{method}' has no recipe '{name}'", hint=f"available: {', '.join(available)}")
    return dict(recipes[name])


def resolve_config(overrides: dict[str, Any], note: Callable[[str], None] = lambda message: None) -> TrainConfig:
    """Defaults, then the recipe named in ``overrides['recipe']``, then (``resume``) the run's config.json, then
    the explicit overrides (None = not given); ``note(message)`` hears of each setting a resume changes."""
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = {}
    if given.get("recipe"):
        values.update(load_recipe(given.get("method", "baseline"), given["recipe"]))
    if given.get("qat") and given.get("weights"):  # QAT: the trained run's settings, then a short low-rate schedule
        from fgcli.training.checkpoint import load_checkpoint  # imports torch
        from fgcli.training.qat import qat_defaults

        values.update(qat_defaults(load_checkpoint(given["weights"]), given["weights"]))
    if given.get("resume"):
        values.update(_resumed_settings(Path(given.get("out", TrainConfig.out)), given, note))
    values.update(given)
    config = TrainConfig.from_dict(values)
    config.validate()
    return config


#: settings that say where and how this process runs, not what the run trains: never taken from config.json
_NOT_RESUMED = ("out", "resume", "overwrite")
#: settings a resume may change without a note (how this process runs; the QAT calibration happened already)
_CHANGED_QUIETLY = ("workers", "device", "skip_bad", "tensorboard", "tensorboard_every", "qat_calib_size")
_OPTION_OF = {"layout": "--dataset", "model_kwargs": "--attention-backbone",
              "pretrained": "--pretrained/--no-pretrained"}


def _resumed_settings(out: Path, given: dict[str, Any], note: Callable[[str], None]) -> dict[str, Any]:
    """The settings of the run in ``out`` (its config.json), which a resume keeps unless an option is given again.

    Before, a resume took every option not repeated from the defaults (a ``--recipe small`` run came back at
    448 px) and used a changed ``--lr`` or ``--img-size`` without a word. The command line still wins (a lower
    ``--lr`` after a divergence is what the divergence hint asks for), with one note per changed setting."""
    path = out / "config.json"
    if not path.is_file():  # nothing to continue: the Trainer says so (no last.pt)
        return {}
    hint = "restore it, or delete it and give every option of the run again with --resume"
    recorded = read_json_object(path, hint=hint)
    defaults = TrainConfig().to_dict()
    settings = {k: v for k, v in recorded.items() if k in defaults and k not in _NOT_RESUMED}
    if isinstance(settings.get("amp"), bool):  # a run from before --amp took a precision: its checkpoint says which
        del settings["amp"]
    for key, value in settings.items():
        if not _same_kind(value, defaults[key]):
            raise FgcliError(f"--resume: {path} says {key} is {value!r}, where fgcli writes a "
                             f"value of type {type(defaults[key]).__name__}", hint=hint)
    for key, value in given.items():
        if key in settings and key not in _NOT_RESUMED + _CHANGED_QUIETLY and settings[key] != value:
            option = _OPTION_OF.get(key, "--" + key.replace("_", "-"))
            note(f"{option} {value} differs from the {settings[key]} this run was started with ({path}): the resumed "
                 f"epochs use {value}, and config.json now records it")
    return settings


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a value read from config.json has the JSON kind of the setting's default (a None default: any)."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
