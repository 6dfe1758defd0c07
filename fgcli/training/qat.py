"""Quantization-aware training with NVIDIA modelopt's PyTorch quantization (``fgcli train --qat``).

A trained run is fine-tuned with fake INT8 quantizers in its Conv / Linear layers (``mtq.INT8_DEFAULT_CFG``:
per-channel weights, per-tensor activations, max calibration), so it learns weights that survive rounding. The
quantizers export to ONNX as QuantizeLinear / DequantizeLinear pairs, which TensorRT builds as explicit INT8.

What a QAT checkpoint adds to a normal one: ``ckpt["qat"]`` holds modelopt's own description of where the
quantizers are (``mto.modelopt_state``: plain dicts, lists and strings, so ``torch.load(weights_only=True)``
reads it) and what the run started from; the quantizer ranges (``*_quantizer._amax``) are ordinary buffers of
the state dict. ``restore_quantizers`` rebuilds the quantized model from the two, without calibrating again.

The layers the model keeps in high precision for INT8 (``FGVCModel.symmetric_int8_nodes`` /
``FGVCModel.float_nodes``, regexes over the exported ONNX node names) stay unquantized here too. The rules test
where a node sits in the module tree (TASN: ``/backbone/.*`` is its master net), so a module ``a.b`` is matched
as ``/a/b/<class name>``; the exporter's own names nest the same path (``/backbone/layer1/layer1.0/conv1/Conv``).
TASN's attention net, which steers its sampler, so keeps float weights as in its PTQ model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from typing import Any, Callable, Iterable

from fgcli.errors import FgcliError
from fgcli.utils import optional_import

PURPOSE = "Quantization-aware training (modelopt's PyTorch quantization)"
#: the modelopt configuration fgcli uses; recorded in the checkpoint
QUANT_CONFIG = "INT8_DEFAULT_CFG"
#: QAT defaults relative to the source run: 10 % of its epochs at 1 % of its learning rate, no warm-up (the
#: schedule NVIDIA's QAT guides start from), every layer at the same rate since all of them are trained now
QAT_EPOCH_FRACTION, QAT_LR_FACTOR = 0.1, 0.01


def _modelopt():
    """modelopt.torch.quantization and modelopt.torch.opt, imported quietly: on import modelopt warns about
    packages for language models, and torch's C++ extension loader logs that a CPU machine has no CUDA."""
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mtq = optional_import("modelopt.torch.quantization", "quant", PURPOSE)
            mto = optional_import("modelopt.torch.opt", "quant", PURPOSE)
    finally:
        extension_log.setLevel(level)
    return mtq, mto


@contextlib.contextmanager
def _quiet() -> Iterable[None]:
    """modelopt prints "Inserted N quantizers" to stdout and warns about devices; fgcli's stdout is for results
    (``--json``), so both are swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def is_qat_checkpoint(ckpt: dict[str, Any]) -> bool:
    return bool(ckpt.get("qat"))


def onnx_style_name(module_name: str, module) -> str:
    """``backbone.layer1.0.conv1`` (a Conv2d) -> ``/backbone/layer1/0/conv1/Conv2d``: the module's place in the
    tree, written as the INT8 rules' regexes expect a node name."""
    return "/" + module_name.replace(".", "/") + "/" + type(module).__name__


def kept_in_float(model) -> Callable[[str, Any], bool]:
    """Whether the module named ``name`` stays unquantized under ``model``'s INT8 rules."""
    allowed, floats = model.symmetric_int8_nodes, model.float_nodes

    def keep(name: str, module) -> bool:
        onnx_name = onnx_style_name(name, module)
        return bool((allowed and not re.fullmatch(allowed, onnx_name)) or (floats and re.fullmatch(floats, onnx_name)))

    return keep


def insert_quantizers(model, calibration_batches: Callable[[], Iterable], device) -> None:
    """Quantize ``model`` in place: fake INT8 quantizers calibrated (max) on ``calibration_batches()`` (an iterable
    of image tensors), then the quantizers of the layers the model keeps in float disabled."""
    import torch

    mtq, _ = _modelopt()

    def forward_loop(quantized) -> None:
        quantized.eval()
        with torch.no_grad():
            for images in calibration_batches():
                quantized(images.to(device))

    keep = kept_in_float(model)
    with _quiet():
        mtq.quantize(model, getattr(mtq, QUANT_CONFIG), forward_loop)
        float_modules = {name for name, module in model.named_modules() if _has_quantizers(module) and keep(name, module)}
        if float_modules:
            mtq.disable_quantizer(model, lambda name: name.rsplit(".", 1)[0] in float_modules)


def _has_quantizers(module) -> bool:
    return any(hasattr(module, attribute) for attribute in ("weight_quantizer", "input_quantizer"))


def freeze_batchnorm_statistics(model) -> None:
    """Put every BatchNorm of a model in training in eval mode: it normalises with its running statistics, which
    stay fixed, while its scale and shift still train. The quantizer ranges were calibrated on exactly those
    activations; with batch statistics instead, a short-trained run's activations can be orders of magnitude off
    its ranges (a 2-epoch ResNet-18: classifier input range 5.5e3, batch-statistics features near 1, so every
    feature rounded to 0 and BatchNorm's backward returned NaN). Frozen statistics are also what the exported
    model computes (the usual QAT fine-tuning recipe, e.g. torchvision's ``freeze_bn_stats``)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def qat_record(model, source: str, calibration_images: int) -> dict[str, Any]:
    """What a QAT checkpoint stores besides the state dict (see the module docstring)."""
    _, mto = _modelopt()
    return {"modelopt_state": mto.modelopt_state(model), "quant_config": QUANT_CONFIG, "source": source,
            "calibration_images": calibration_images}


def restore_quantizers(model, record: dict[str, Any]):
    """Put the quantizers of a QAT checkpoint's ``record`` back into a freshly built ``model`` (before its state
    dict is loaded: the quantizer ranges are in there)."""
    _, mto = _modelopt()
    try:
        with _quiet():
            return mto.restore_from_modelopt_state(model, record["modelopt_state"])
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise FgcliError(f"the QAT checkpoint's quantizer record does not fit the model: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}",
                         hint="use RUN/best.pt or RUN/last.pt as fgcli train --qat wrote it") from None


def qat_defaults(ckpt: dict[str, Any], source_checkpoint: str) -> dict[str, Any]:
    """The TrainConfig values a QAT run takes from the run it fine-tunes (``ckpt``, loaded from
    ``source_checkpoint``): its method, backbone, preprocessing and batch size, and a short low-rate schedule
    (``QAT_EPOCH_FRACTION`` of its epochs at ``QAT_LR_FACTOR`` of its learning rate). Explicit options override
    them."""
    if is_qat_checkpoint(ckpt):
        raise FgcliError(f"{source_checkpoint} is already a QAT run",
                         hint="resume it with --resume --out ITS_RUN_FOLDER, or start from the FP32 run it came from: "
                              f"--weights {ckpt['qat'].get('source', 'RUN/best.pt')}")
    trained = ckpt.get("train_config", {})
    preprocess = ckpt["preprocess"]
    defaults = {
        "method": ckpt["method"], "backbone": ckpt["backbone"], "model_kwargs": dict(ckpt.get("model_kwargs", {})),
        "img_size": preprocess["img_size"], "resize_size": preprocess["resize_size"],
        "mean": list(preprocess["mean"]), "std": list(preprocess["std"]),
        "epochs": max(1, math.ceil(QAT_EPOCH_FRACTION * trained.get("epochs", 10))),
        "lr": QAT_LR_FACTOR * trained.get("lr", 0.01), "backbone_lr_scale": 1.0, "warmup_epochs": 0,
        "schedule": "cosine", "pretrained": False,
    }
    for key in ("batch_size", "weight_decay", "momentum"):
        if key in trained:
            defaults[key] = trained[key]
    return defaults


def check_qat_source(ckpt: dict[str, Any], source: str, method: str, backbone: str | None,
                     class_names: list[str]) -> None:
    """Refuse a QAT run whose options contradict the checkpoint it fine-tunes."""
    if method != ckpt["method"] or (backbone is not None and backbone != ckpt["backbone"]):
        raise FgcliError(f"--qat: {source} is a {ckpt['method']} run ({ckpt['backbone']}), but this run asks for "
                         f"--method {method}" + (f" --backbone {backbone}" if backbone else ""),
                         hint="drop --method / --backbone: a QAT run takes them from --weights")
    if list(ckpt["class_names"]) != list(class_names):
        raise FgcliError(f"--qat: {source} was trained on {ckpt['num_classes']} other classes than the "
                         f"{len(class_names)} of this --data", hint="fine-tune on the dataset the run was trained on")
