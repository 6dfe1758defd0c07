"""One entry point from a checkpoint to every deployment artifact (the ultralytics-exporter idea).

``export_all`` runs named steps, each only when asked: the ONNX export (always: every other artifact derives
from ``model.onnx``; a QAT checkpoint writes its Q/DQ ``model.qat.onnx`` instead, and nothing but engines and
serving configs derive from that), the FP16 conversion, the INT8 steps (``export/int8.py``), the TensorRT engine
and the DeepStream / Triton configs; then ``export.json`` records what was made. Which file each format is and
what it is made from is the table in ``fgcli/formats.py``. The ONNX artifacts are written before TensorRT is even
imported, so a machine without TensorRT still gets everything it needs to run ``fgcli build`` on the target.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from fgcli.data import dataset_splits, detect_layout, load_split
from fgcli.training.qat import is_qat_checkpoint
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.export.deepstream import preprocess_to_nvinfer, write_deepstream_config
from fgcli.export.int8 import quantize
from fgcli.export.onnx import check_images_from_split, denormalize, export_fp16, export_onnx, export_preprocess
from fgcli.export.options import ExportOptions, ExportSummary
from fgcli.export.tensorrt import build_engine
from fgcli.export.triton import write_triton_repository
from fgcli.formats import ENGINE_SOURCE_PREFERENCE, ONNX_FP16, ONNX_FP32, ONNX_INT8_QAT
from fgcli.runtime.onnx_meta import read_onnx_metadata
from fgcli.utils import write_json_atomic

EXPORT_RECORD = "export.json"


def export_all(checkpoint: str | Path, opts: ExportOptions, step: Callable[[str], None] | None = None) -> ExportSummary:
    """Write the requested artifacts into ``opts.out_dir`` and ``export.json`` describing them (also when a later
    step, such as the TensorRT build on a machine without TensorRT, fails: what was made is recorded)."""
    from fgcli.training.checkpoint import load_checkpoint  # imports torch: the ONNX-only install never exports

    step = step or (lambda message: None)
    opts.validate()
    ckpt = load_checkpoint(checkpoint)
    if is_qat_checkpoint(ckpt):
        opts.validate_for_qat(checkpoint)
    if opts.deepstream and not opts.embed_preprocess:
        preprocess_to_nvinfer(ckpt["preprocess"])  # refuses a per-channel std before any export work
    summary = ExportSummary(Path(opts.out_dir))
    onnx_path = export_onnx_files(ckpt, opts, summary, step)
    try:
        if opts.int8:
            quantize(onnx_path, opts, summary, step)
        if opts.trt:
            build_engines(summary, opts, step)
        if opts.deepstream or opts.triton_repo:
            write_serving_configs(summary, opts, step)
    finally:
        write_json_atomic(summary.out_dir / EXPORT_RECORD, summary.to_dict())
    return summary


def export_onnx_files(ckpt: dict, opts: ExportOptions, summary: ExportSummary, step: Callable[[str], None]) -> Path:
    """model.onnx (or a QAT run's model.qat.onnx), checked against PyTorch, and model.fp16.onnx when asked;
    returns the path of the first."""
    step("exporting ONNX")
    check_images = _check_images(ckpt, opts)
    exported = _timed(lambda: export_onnx(ckpt, summary.out_dir, opset=opts.opset, img_size=opts.img_size,
                                          check_images=check_images, embed_preprocess=opts.embed_preprocess))
    summary.artifacts[ONNX_INT8_QAT if is_qat_checkpoint(ckpt) else ONNX_FP32] = _describe(exported)
    onnx_path = exported[0].path
    if opts.embed_preprocess and check_images is not None:  # later checks feed the graph its 0..255 input
        check_images = denormalize(check_images, export_preprocess(ckpt, opts.img_size))
    if opts.fp16:
        step("converting to FP16")
        summary.artifacts[ONNX_FP16] = _describe(_timed(lambda: export_fp16(onnx_path, check_images=check_images)))
    return onnx_path


def artifact_path(summary: ExportSummary, name: str) -> Path:
    """The file of artifact ``name`` (format name) in ``summary`` (ONNX exports record ``path``, quantizers
    ``output_path``)."""
    info = summary.artifacts[name]
    return Path(info.get("path") or info["output_path"])


def primary_onnx(summary: ExportSummary) -> Path:
    """The ONNX exported from the checkpoint: model.onnx, or a QAT run's model.qat.onnx."""
    return artifact_path(summary, ONNX_FP32 if ONNX_FP32 in summary.artifacts else ONNX_INT8_QAT)


def engine_source(summary: ExportSummary) -> Path:
    """The ONNX the engine is built from: the first of ``ENGINE_SOURCE_PREFERENCE`` this export wrote (a QAT
    run's Q/DQ model, the modelopt Q/DQ model, its mixed-precision one when measured, else FP16, else FP32)."""
    return artifact_path(summary, next(name for name in ENGINE_SOURCE_PREFERENCE if name in summary.artifacts))


def build_engines(summary: ExportSummary, opts: ExportOptions, step) -> None:
    """Build the engine; without TensorRT, say which command to run on the target."""
    onnx_path = engine_source(summary)
    step(f"building a TensorRT engine from {onnx_path.name}")
    try:
        info = build_engine(onnx_path, batch=opts.batch, workspace_gib=opts.workspace_gib,
                            timing_cache=Path(opts.out_dir) / "timing.cache", dla_core=opts.dla_core)
    except MissingDependencyError as exc:
        raise FgcliError(
            f"the ONNX artifacts are in {opts.out_dir}, but building the engine needs TensorRT: {exc.message}",
            hint=f"copy {onnx_path.name} to the target (e.g. the Jetson) and run there: fgcli build "
                 f"{onnx_path.name} --batch {','.join(map(str, opts.batch))}",
        ) from exc
    summary.artifacts[f"engine-{info.precision}"] = {
        "path": str(info.engine_path), "sidecar": str(info.sidecar_path), "build_path": info.build_path,
        "tensorrt": info.tensorrt_version, "build_seconds": info.build_seconds,
    }


def write_serving_configs(summary: ExportSummary, opts: ExportOptions, step) -> None:
    """DeepStream's nvinfer config and / or a Triton model repository for the deployed model: the engine when
    one was built, else the ONNX TensorRT would build it from (Q/DQ INT8, else FP16, else FP32)."""
    engine = next((info for key, info in summary.artifacts.items() if key.startswith("engine-")), None)
    if opts.deepstream_calib_cache:  # implicit INT8: TensorRT calibrates the float32 graph itself
        onnx_path, precision = artifact_path(summary, ONNX_FP32), "int8"
    else:
        onnx_path = engine_source(summary)
        precision = read_onnx_metadata(onnx_path)["precision"]
    if opts.deepstream:
        step("writing the DeepStream nvinfer config")
        files = write_deepstream_config(
            onnx_path, engine_path=engine["path"] if engine else None, precision=precision,
            batch_size=opts.batch[1], process_mode=opts.deepstream_mode,
            classifier_threshold=opts.deepstream_threshold, int8_calib_file=opts.deepstream_calib_cache)
        summary.artifacts["deepstream"] = {"path": str(files.config), "labels": str(files.labels),
                                           "precision": precision}
    if opts.triton_repo:
        step(f"writing the Triton model repository {opts.triton_repo}")
        served_onnx = onnx_path if engine else primary_onnx(summary)  # ORT serves FP32 (or the QAT Q/DQ model)
        config = write_triton_repository(opts.triton_repo, served_onnx, engine_path=engine["path"] if engine else None,
                                         max_batch_size=opts.batch[2])
        summary.artifacts["triton"] = {"path": str(config), "platform": "tensorrt_plan" if engine else "onnxruntime_onnx"}


def _check_images(ckpt: dict, opts: ExportOptions):
    """Real test images for the parity check when a dataset is given, else generated ones."""
    data = opts.data
    if not data:
        return None
    preprocess = export_preprocess(ckpt, opts.img_size)
    splits = dataset_splits(data, detect_layout(data))
    split = load_split(data, "test") if "test" in splits else None
    if split is None or not split.samples:
        split = load_split(data, splits[0])
    return check_images_from_split(split, preprocess)


def _timed(fn):
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def _describe(timed) -> dict[str, Any]:
    result, seconds = timed
    return {**result.to_dict(), "seconds": seconds}
