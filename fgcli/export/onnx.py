"""Checkpoint -> self-describing ONNX (DIR/model.onnx), checked against eager PyTorch; FP16 variant.

Steps of :func:`export_onnx`, one function each: load the checkpoint, trace the eval-mode graph with the
TorchScript exporter (``dynamo=False``: one static graph with a dynamic batch axis, which TensorRT 8.6 on
JetPack 5 parses), simplify with onnxslim, validate with onnx.checker, attach the fgcli metadata, write
atomically, then compare ONNX Runtime with PyTorch on real or generated images and refuse a drifting graph.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import fgcli
from fgcli.calibration import WEIGHTED_OP_TYPES, quantized_nodes
from fgcli.data.images import BadImageError, load_rgb
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.training.config import check_img_size
from fgcli.training.qat import is_qat_checkpoint
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.export.options import MIN_OPSET
from fgcli.formats import ONNX_FP16, ONNX_FP32, ONNX_INT8_QAT, file_of
from fgcli.runtime.comparator import Comparison, compare_logits, logit_tolerance, within_tolerance
from fgcli.runtime.onnx_meta import load_onnx, onnx_metadata, set_onnx_metadata
from fgcli.runtime.onnx_runner import onnxruntime_logits
from fgcli.utils import atomic_path, optional_import

#: max |logit difference| allowed between ONNX Runtime (FP32) and eager PyTorch: 1e-3, or 1e-4 of the largest
#: |logit| when that is above 10. Float32 rounding is relative, so it grows with the logits: a random-weight
#: ResNet-50 TASN at 448 px has logits up to 37.8 and differs by 1.06e-3 (2.8e-5 relative) after its sampler.
PARITY_ATOL = 1e-3
PARITY_RTOL = 1e-4
#: FP16 tolerance, relative to the largest FP32 |logit| (at least 1). FP16 keeps 11 significant bits
#: (rounding ~4.9e-4 per op); measured on ORT CPU (96 px, resnet18): baseline / SSANet / CLAN <= 1e-3,
#: TASN 1.1e-2 (its attention sampler amplifies rounding). A broken conversion (overflow to inf/NaN, a
#: wrong cast) errs by the size of the logits themselves, far above 5e-2.
FP16_RTOL = 5e-2
PARITY_BATCH = 16
#: a QAT checkpoint's Q/DQ ONNX against its fake-quantized PyTorch model: RMS logit difference at most this
#: fraction of the RMS logit. Not the max difference: float rounding moves some activations across an INT8
#: rounding boundary, one INT8 step, and later layers carry that on, so single logits jump. Measured (64 test
#: images, rel. RMS / max diff / agreement): a 3-epoch MobileNetV3 baseline, ONNX Runtime 0.098 / 0.90 of a
#: largest logit of 4.6 / 92 %, the same model in float64 PyTorch 0.035 / 0.43 / 98 %, and with its quantizers off
#: (FP32) 0.29 / 2.4 / 62 %. A lost quantizer is caught by counting them (``require_quantized``)
QAT_RMS_RTOL = 0.2


@dataclass(frozen=True)
class Parity:
    """The export check of one file: how closely it reproduces its reference, and the tolerance it met."""

    comparison: Comparison
    tolerance: float
    metric: str = "max"  # which difference the tolerance bounds: "max" (FP32, FP16) or "rms" (QAT Q/DQ)

    @property
    def max_abs_diff(self) -> float:
        return self.comparison.max_abs_diff

    @property
    def top1_agreement(self) -> float:
        return self.comparison.agreement

    @property
    def n_images(self) -> int:
        return self.comparison.n_images

    def to_dict(self) -> dict[str, Any]:
        """export.json's parity fields."""
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement, "n_images": self.n_images,
                "tolerance": self.tolerance, "rms_diff": self.comparison.logit_rmse, "metric": self.metric}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    img_size: int
    parity: Parity

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "opset": self.opset, "img_size": self.img_size, **self.parity.to_dict()}


# --------------------------------------------------------------------------- entry points
def export_onnx(
    checkpoint: str | os.PathLike | dict[str, Any],
    out_dir: str | os.PathLike,
    opset: int = MIN_OPSET,
    img_size: int | None = None,
    check_images: np.ndarray | None = None,
    simplify: bool = True,
    embed_preprocess: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir/model.onnx`` and check it against PyTorch; a QAT checkpoint
    (``fgcli train --qat``) exports its quantizers as Q/DQ INT8 to ``out_dir/model.qat.onnx`` instead.

    ``img_size`` overrides the checkpoint's crop size (the resize size scales with it); ``check_images``
    is a preprocessed ``(N, 3, S, S)`` float32 batch, generated when None. ``embed_preprocess`` puts the
    mean / std normalisation into the graph (see :func:`embed_normalization`). Raises FgcliError when ONNX
    Runtime and PyTorch disagree by more than ``logit_tolerance(..., PARITY_ATOL, PARITY_RTOL)`` or on any
    top-1 class.
    """
    if opset < MIN_OPSET:
        raise FgcliError(f"opset {opset} is too old for fgcli models", hint=f"use --opset {MIN_OPSET} or newer")
    ckpt, model = load_eval_model(checkpoint)
    qat = is_qat_checkpoint(ckpt)
    preprocess = export_preprocess(ckpt, img_size)
    images = validated_check_images(check_images, preprocess.img_size)
    proto = trace_to_onnx(model, preprocess.img_size, opset)
    reference = torch_logits(model, images)
    graph_preprocess, graph_images = preprocess, images
    if embed_preprocess:
        proto = embed_normalization(proto, preprocess)
        graph_preprocess, graph_images = raw_pixel_preprocess(preprocess), denormalize(images, preprocess)
    if simplify:
        proto = simplify_onnx(proto)
    if qat:
        proto = store_int8_weights(proto)
    set_onnx_metadata(proto, checkpoint_metadata(ckpt, graph_preprocess, model))
    check_onnx(proto, "the exported graph")
    if qat:
        require_quantized(proto, "the checkpoint" if isinstance(checkpoint, dict) else checkpoint, model, images)
        path, tolerance = Path(out_dir) / file_of(ONNX_INT8_QAT), QAT_RMS_RTOL * float(np.sqrt(np.mean(reference ** 2)))
    else:
        path, tolerance = Path(out_dir) / file_of(ONNX_FP32), logit_tolerance(reference, PARITY_ATOL, PARITY_RTOL)
    parity = save_checked_onnx(proto, path, graph_images, reference, tolerance,
                               "the fake-quantized PyTorch model" if qat else "PyTorch", strict_top1=not qat,
                               metric="rms" if qat else "max")
    return ExportResult(path=path, opset=opset, img_size=preprocess.img_size, parity=parity)


def store_int8_weights(proto):
    """Quantize the graph's constant weights once, at export: each QuantizeLinear of a float initializer becomes
    the INT8 initializer it would compute, read by its DequantizeLinear. modelopt exports QAT weights as float
    followed by Q/DQ; stored as INT8 they take a quarter of the space (QuantizeLinear semantics: round half to
    even, add the zero point, saturate to the int8 range). The graph keeps TensorRT's Q/DQ placement (quantized
    inputs, BatchNorm after the Conv): ONNX Runtime's CPU kernels do not fuse it, so like modelopt's PTQ model it
    runs there at about FP32 speed; TensorRT folds the BatchNorm and runs the Conv in INT8."""
    from onnx import numpy_helper

    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers = Counter(name for node in graph.node for name in node.input)
    folded, replaced = [], {}
    for node in graph.node:
        if (node.op_type != "QuantizeLinear" or len(node.input) < 3
                or not all(name in initializers for name in node.input[:3])):
            continue
        weight, scale, zero_point = (numpy_helper.to_array(initializers[name]) for name in node.input[:3])
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim == 1 and weight.ndim:
            shape[axis % weight.ndim] = -1
        info = np.iinfo(zero_point.dtype)
        quantized = np.clip(np.rint(weight / scale.reshape(shape)) + zero_point.reshape(shape).astype(np.int64),
                            info.min, info.max).astype(zero_point.dtype)
        name = node.output[0]
        graph.initializer.append(numpy_helper.from_array(quantized, name))
        folded.append(node)
        replaced[node.input[0]] = consumers[node.input[0]] == 1
    for node in folded:
        graph.node.remove(node)
    unused = {name for name, only_user in replaced.items() if only_user}
    kept = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


def require_quantized(proto, source: str, model, images: np.ndarray) -> None:
    """Every layer the QAT ``model`` runs quantized at test time (an enabled weight quantizer, called on
    ``images``) must be a quantized Conv / Gemm / MatMul of the exported graph: a quantizer lost in export would
    make TensorRT run that layer in float."""
    import torch

    called = set()
    hooks = [module.register_forward_hook(lambda m, args, out: called.add(id(m))) for module in model.modules()
             if getattr(getattr(module, "weight_quantizer", None), "is_enabled", False)]
    try:
        with torch.no_grad():
            model(torch.from_numpy(images[:1]))
    finally:
        for hook in hooks:
            hook.remove()
    counts, _ = quantized_nodes(proto)
    exported = sum(n for op_type, n in counts.items() if op_type in WEIGHTED_OP_TYPES)
    if exported != len(called) or not called:
        raise FgcliError(f"the ONNX export of the QAT checkpoint {source} quantizes {exported} layers, and the "
                         f"model {len(called)}", hint="report this with the method, the backbone and the modelopt version")


def export_fp16(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    keep_io_fp32: bool = True,
    check_images: np.ndarray | None = None,
) -> ExportResult:
    """Convert an FP32 fgcli ONNX to FP16 (default: beside it as model.fp16.onnx) and check it on ORT CPU.

    Every float tensor, weight and Cast(to=float) becomes float16, so a strongly typed TensorRT build
    runs it in FP16 as written; ops the converter keeps in FP32 (Min, Max, CumSum, TopK, Range: TASN's
    sampler) get explicit Casts around them, and so do the nodes the model keeps out of INT8 for precision
    (:func:`high_precision_nodes`). ``keep_io_fp32`` keeps the ``images`` input and ``logits``
    output float32 so callers feed the same arrays as to the FP32 model. Raises FgcliError when the FP16
    logits differ from FP32 by more than FP16_RTOL x max(1, max |FP32 logit|).
    """
    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path is not None else onnx_path.with_name(file_of(ONNX_FP16))
    proto = load_onnx(onnx_path)
    meta = onnx_metadata(proto, onnx_path)
    if meta["precision"] != "fp32":
        raise FgcliError(f"{onnx_path} is already {meta['precision']}", hint="convert the FP32 model.onnx")
    proto = convert_to_fp16(proto, keep_io_fp32, high_precision_nodes(proto, meta))
    set_onnx_metadata(proto, {**meta, "precision": "fp16"})
    check_onnx(proto, f"the FP16 conversion of {onnx_path}")
    img_size = meta["preprocess"]["img_size"]
    images = validated_check_images(check_images, img_size)
    reference = onnxruntime_logits(onnx_path, images)
    parity = save_checked_onnx(proto, out_path, images, reference, logit_tolerance(reference, FP16_RTOL, FP16_RTOL),
                               f"the FP32 model {onnx_path.name}", strict_top1=False)
    return ExportResult(path=out_path, opset=_opset_of(proto), img_size=img_size, parity=parity)


def high_precision_nodes(proto, meta: dict[str, Any]) -> list[str]:
    """The nodes outside the model's ``symmetric_int8_nodes`` (TASN: its attention net, trilinear step and
    sampler), which stay FP32 in the FP16 model for the reason they stay out of INT8: ``softmax(7 X)`` turns
    float16's rounding of X (steps of 0.25 at X = 500) into factors on the weights, which move where the sampler
    looks. Measured on a TASN at 64 px with attention features of about 600: FP16 logits off by 72 % of the largest
    FP32 logit with them in float16, 9 % with them in float32."""
    allowed = meta.get("symmetric_int8_nodes")
    return [node.name for node in proto.graph.node if allowed and not re.fullmatch(allowed, node.name)]


def convert_to_fp16(proto, keep_io_fp32: bool, fp32_nodes: Sequence[str] = ()):
    """ONNX Runtime's float16 converter (``onnxruntime.transformers``, shipped in every onnxruntime wheel);
    the nodes named in ``fp32_nodes`` stay float32, with Casts around them.

    Chosen over onnxconverter-common 1.16, whose converter leaves the graph's own Cast(to=float) nodes
    in float32 (TASN then fails onnx.checker with mixed-type inputs); ORT's fork rewrites them, and its
    OnnxModel wrapper drops the redundant casts. The converter appends nodes out of order, hence the sort.
    """
    try:
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "onnx", "FP16 export") from exc
    model = OnnxModel(proto)
    model.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=keep_io_fp32,
                                   node_block_list=list(fp32_nodes))
    model.topological_sort()
    return model.model


# --------------------------------------------------------------------------- steps
def load_eval_model(checkpoint: str | os.PathLike | dict[str, Any]):
    """(checkpoint dict, eval-mode model on CPU) from a path or an already-loaded checkpoint."""
    from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint  # imports torch

    if isinstance(checkpoint, dict):
        return checkpoint, model_from_checkpoint(checkpoint).cpu().eval()
    ckpt = load_checkpoint(checkpoint)
    return ckpt, model_from_checkpoint(ckpt, checkpoint).cpu().eval()


def export_preprocess(ckpt: dict[str, Any], img_size: int | None) -> PreprocessConfig:
    """The checkpoint's preprocessing, with the crop changed to ``img_size`` and the resize scaled alike."""
    trained = PreprocessConfig.from_dict(ckpt["preprocess"])
    if img_size is None or img_size == trained.img_size:
        return trained
    check_img_size(img_size)
    resize_size = int(img_size * trained.resize_size / trained.img_size + 0.5)
    return PreprocessConfig(img_size, resize_size, trained.mean, trained.std)


def checkpoint_metadata(ckpt: dict[str, Any], preprocess: PreprocessConfig, model) -> dict[str, Any]:
    """The decoded fgcli metadata of the export of ``ckpt`` (FP32, or INT8 for a QAT run); the ``model``'s INT8
    node choices travel to the quantizers (``FGVCModel.symmetric_int8_nodes`` / ``float_nodes``)."""
    qat = is_qat_checkpoint(ckpt)
    return {
        "method": ckpt["method"], "backbone": ckpt["backbone"], "class_names": list(ckpt["class_names"]),
        "preprocess": preprocess.to_dict(), "version": fgcli.__version__, "precision": "int8" if qat else "fp32",
        "symmetric_int8_nodes": model.symmetric_int8_nodes, "float_nodes": model.float_nodes,
        "quantization": "qat" if qat else None,
    }


def trace_to_onnx(model, img_size: int, opset: int):
    """TorchScript-trace the eval graph: input ``images`` (B,3,S,S) float32, output ``logits``, dynamic B."""
    import torch

    onnx = optional_import("onnx", "onnx", "ONNX export")
    buffer = io.BytesIO()
    example = torch.zeros(2, 3, img_size, img_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose
        # The spatial size is fixed in the graph on purpose (only the batch axis is dynamic), so the tracer's
        # "Python value treated as a constant" warnings (TASN's sizes) are expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def embed_normalization(proto, preprocess: PreprocessConfig):
    """The graph with ``(x / 255 - mean) / std`` in front, as one Mul and one Add per channel: its ``images`` input
    is then RGB 0..255 float. DeepStream's nvinfer scales every channel by one scalar (``net-scale-factor``), so
    a per-channel std only fits there inside the model."""
    onnx = optional_import("onnx", "onnx", "ONNX export")
    from onnx import helper, numpy_helper

    graph = proto.graph
    source = graph.input[0].name
    normalized = f"{source}_normalized"
    for node in graph.node:
        node.input[:] = [normalized if name == source else name for name in node.input]
    mean, std = np.asarray(preprocess.mean, np.float32), np.asarray(preprocess.std, np.float32)
    scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
    shift = (-mean / std).reshape(1, 3, 1, 1).astype(np.float32)
    graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), "embedded_preprocess_scale"),
                              numpy_helper.from_array(shift, "embedded_preprocess_shift")])
    nodes = [helper.make_node("Mul", [source, "embedded_preprocess_scale"], ["embedded_preprocess_scaled"],
                              name="/embedded_preprocess/Mul"),
             helper.make_node("Add", ["embedded_preprocess_scaled", "embedded_preprocess_shift"], [normalized],
                              name="/embedded_preprocess/Add")]
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    return onnx.shape_inference.infer_shapes(proto)


def raw_pixel_preprocess(preprocess: PreprocessConfig) -> PreprocessConfig:
    """The preprocessing that feeds a graph with embedded normalisation: the same resize and crop, then
    ``(x - 0) / (1 / 255)``, i.e. RGB 0..255; every fgcli runtime and the calibration set follow it unchanged."""
    return PreprocessConfig(preprocess.img_size, preprocess.resize_size, (0.0, 0.0, 0.0), (1 / 255,) * 3)


def denormalize(images: np.ndarray, preprocess: PreprocessConfig) -> np.ndarray:
    """Normalised images back to RGB 0..255 floats: the inputs of an embedded-normalisation graph."""
    mean = np.asarray(preprocess.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocess.std, np.float32).reshape(1, 3, 1, 1)
    return ((images * std + mean) * 255.0).astype(np.float32)


def simplify_onnx(proto):
    """onnxslim: constant folding, dead-node removal and shape inference (batch axis stays symbolic)."""
    onnxslim = optional_import("onnxslim", "onnx", "Simplifying the exported ONNX graph")
    return onnxslim.slim(proto)


def check_onnx(proto, what: str) -> None:
    """onnx.checker with shape inference; a failure is a bug in the model or the exporter, so say so."""
    onnx = optional_import("onnx", "onnx", "ONNX validation")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise FgcliError(f"{what} is not a valid ONNX model: {exc}",
                         hint="try another --opset, and report the method that fails") from exc


def save_checked_onnx(proto, path: Path, images: np.ndarray, reference: np.ndarray, tolerance: float,
                      reference_name: str, strict_top1: bool, metric: str = "max") -> Parity:
    """Write ``proto`` (weights inline) beside ``path``, run it with ONNX Runtime on ``images`` and move it
    into place only if its logits match ``reference`` (``metric``: max or RMS difference within ``tolerance``):
    a drifting model never lands where later steps look."""
    onnx = optional_import("onnx", "onnx", "ONNX export")
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        parity = Parity(compare_logits(reference, onnxruntime_logits(tmp, images)), tolerance, metric)
        require_parity(parity, path, reference_name, strict_top1)
    return parity


def _opset_of(proto) -> int:
    return max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


# --------------------------------------------------------------------------- parity
def synthetic_check_images(img_size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Deterministic normalised-image-like noise (N(0, 1) per pixel) for when no dataset is given."""
    return np.random.default_rng(seed).standard_normal((count, 3, img_size, img_size)).astype(np.float32)


def check_images_from_split(split, preprocess: PreprocessConfig, count: int = 16) -> np.ndarray:
    """Up to ``count`` preprocessed images spread evenly over a DatasetSplit (so several classes show up);
    unreadable files are skipped."""
    samples = split.samples
    picks = [samples[i] for i in np.linspace(0, len(samples) - 1, min(count, len(samples)), dtype=int)]
    arrays = []
    for sample in picks:
        try:
            arrays.append(preprocess_eval(load_rgb(sample.path, sample.bottom_crop), preprocess))
        except BadImageError:
            continue
    if not arrays:
        raise FgcliError(f"none of the {len(picks)} images picked from {split.root} ({split.split}) could be read",
                         hint="run fgcli data check on the dataset, or export without --data")
    return np.stack(arrays)


def validated_check_images(images: np.ndarray | None, img_size: int) -> np.ndarray:
    if images is None:
        return synthetic_check_images(img_size)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (3, img_size, img_size) or len(images) == 0:
        raise FgcliError(f"check images have shape {images.shape}, expected (N, 3, {img_size}, {img_size})",
                         hint="preprocess them with the exported img_size")
    return images


def _batches(images: np.ndarray) -> Sequence[np.ndarray]:
    return [images[i:i + PARITY_BATCH] for i in range(0, len(images), PARITY_BATCH)]


def torch_logits(model, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(batch)).float().numpy() for batch in _batches(images)])


def require_parity(parity: Parity, path: Path, reference_name: str, strict_top1: bool) -> None:
    """Raise when ``path`` drifted from its reference."""
    if not within_tolerance(parity.comparison, parity.tolerance, parity.metric, strict_top1):
        raise FgcliError(
            f"{path} does not match {reference_name}: {'RMS' if parity.metric == 'rms' else 'max'} |logit diff| "
            f"{parity.comparison.difference(parity.metric):.3g} (allowed {parity.tolerance:.3g}; max "
            f"{parity.max_abs_diff:.3g}), top-1 agreement {parity.top1_agreement:.1%} on {parity.n_images} images",
            hint="re-export with another --opset; if it persists, the model uses an op the "
                 "exporter translates wrongly: report it with the method and backbone",
        )
