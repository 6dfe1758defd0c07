"""One entry point from a checkpoint to every deployment artifact (the ultralytics-exporter idea).

``export_all`` writes, in order and each only when asked: ``model.onnx`` (always: every other
artifact derives from it; a QAT checkpoint writes its Q/DQ ``model.qat.onnx`` instead, and nothing but engines
and serving configs derive from that), ``model.fp16.onnx``, ``calib.npz`` + ``model.int8.onnx`` (modelopt Q/DQ)
and/or ``model.ort-int8.onnx`` (ONNX Runtime static INT8), then TensorRT engines. The ONNX
artifacts are written before TensorRT is even imported, so a machine without TensorRT still gets
everything it needs to run ``fgcli build`` on the target.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fgcli.calibration.dataset import build_calibration_set
from fgcli.calibration.modelopt_ptq import quantize_modelopt
from fgcli.calibration.ort_int8 import quantize_ort
from fgcli.calibration.int8_builder import Int8Builder, best_calibration, check_backend
from fgcli.calibration.mixed_precision import check_targets, choose_float_nodes
from fgcli.calibration.sensitivity import (DEFAULT_CALIBRATION_SIZE, DEFAULT_VALIDATION_SIZE, SensitivityResult,
                                           calibration_and_validation, check_validation, measure_sensitivity,
                                           validation_subset, write_sensitivity)
from fgcli.data import dataset_splits, detect_layout, load_split
from fgcli.data.preprocess import PreprocessConfig
from fgcli.engine.qat import is_qat_checkpoint
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.export.deepstream import preprocess_to_nvinfer, write_deepstream_config
from fgcli.export.onnx import (check_images_from_split, denormalize, export_fp16, export_onnx,
                               export_preprocess)
from fgcli.export.tensorrt import build_engine
from fgcli.export.triton import write_triton_repository
from fgcli.runtime.onnx_meta import read_onnx_metadata, update_onnx_metadata
from fgcli.utils import write_json_atomic

INT8_BACKENDS = ("modelopt", "ort", "both")


@dataclass
class ExportOptions:
    out_dir: Path
    opset: int = 17
    img_size: int | None = None
    batch: tuple[int, int, int] = (1, 8, 32)
    fp16: bool = False
    int8: bool = False
    int8_backend: str = "modelopt"
    calib_data: str | None = None
    calib_size: int = 512
    calib_method: str = "max"
    check_data: str | None = None  # dataset whose test images check ONNX parity
    trt: bool = False
    workspace_gib: float = 4.0
    dla_core: int | None = None
    device: str = "cpu"  # where modelopt calibrates
    target_agreement: float | None = None  # automatic mixed precision: keep nodes float until this is met
    max_drop: float | None = None  # ... and / or until top-1 is at most this many points below FP32
    val_size: int = 256  # validation images (val / test split) the target is measured on
    auto_backend: str | None = None  # which INT8 backends get the mixed-precision model (None: int8_backend)
    min_speedup: float | None = None  # ... never keeping a node float that takes the CPU speed-up below this
    auto_calib: bool = False  # ... starting from the calibration method whose full INT8 is closest to FP32

    @property
    def auto_precision(self) -> bool:
        return self.target_agreement is not None or self.max_drop is not None
    embed_preprocess: bool = False  # mean / std inside the ONNX graph: input RGB 0..255 (DeepStream)
    deepstream: bool = False  # config_infer_<name>.txt + labels_<name>.txt beside the model
    deepstream_mode: str = "secondary"
    deepstream_threshold: float = 0.0
    deepstream_calib_cache: str | None = None  # implicit INT8: the FP32 ONNX + a TensorRT calibration cache
    triton_repo: str | None = None  # a Triton model repository to write the model into


@dataclass
class ExportSummary:
    out_dir: Path
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "artifacts": self.artifacts, "notes": self.notes}


def export_all(checkpoint: str | Path, opts: ExportOptions, step: Callable[[str], None] | None = None) -> ExportSummary:
    """Write the requested artifacts into ``opts.out_dir`` and ``export.json`` describing them."""

    from fgcli.engine.checkpoint import load_checkpoint  # imports torch: the ONNX-only install never exports

    step = step or (lambda message: None)
    if opts.int8_backend not in INT8_BACKENDS:
        raise FgcliError(f"unknown --int8-backend '{opts.int8_backend}'", hint=f"use one of: {', '.join(INT8_BACKENDS)}")
    if opts.trt and opts.int8 and opts.int8_backend == "ort":
        raise FgcliError("TensorRT INT8 builds from the modelopt Q/DQ model", hint="use --int8-backend modelopt or both")
    if opts.deepstream_mode not in ("primary", "secondary"):
        raise FgcliError(f"unknown --deepstream-mode '{opts.deepstream_mode}'", hint="use primary or secondary")
    if opts.deepstream_calib_cache and not opts.deepstream:
        raise FgcliError("--deepstream-calib-cache is for the DeepStream config", hint="add --deepstream")
    if opts.int8 and not (opts.calib_data or opts.check_data):
        raise FgcliError("--int8 needs calibration images", hint="pass --calib-data DATASET (its train split is sampled)")
    if opts.min_speedup is not None and not opts.auto_precision:
        raise FgcliError("--min-speedup bounds automatic mixed precision", hint="add --target-agreement or --max-drop")
    if opts.auto_calib and not opts.auto_precision:
        raise FgcliError("--auto-calib chooses the calibration of the mixed-precision model",
                         hint="add --target-agreement or --max-drop")
    if opts.auto_precision:
        check_targets(opts.target_agreement, opts.max_drop, opts.min_speedup)
        if not opts.int8:
            raise FgcliError("--target-agreement / --max-drop choose INT8's float nodes", hint="add --int8")
    out = Path(opts.out_dir)
    summary = ExportSummary(out)
    ckpt = load_checkpoint(checkpoint)
    qat = is_qat_checkpoint(ckpt)
    if qat:
        _check_qat_options(checkpoint, opts)
    if opts.deepstream and not opts.embed_preprocess:
        preprocess_to_nvinfer(ckpt["preprocess"])  # refuses a per-channel std before any export work

    step("exporting ONNX")
    check_images = _check_images(ckpt, opts)
    onnx_result = _timed(lambda: export_onnx(ckpt, out, opset=opts.opset, img_size=opts.img_size,
                                             check_images=check_images, embed_preprocess=opts.embed_preprocess))
    summary.artifacts[QAT_ARTIFACT if qat else "onnx-fp32"] = _describe(onnx_result)
    onnx_path = onnx_result[0].path
    if opts.embed_preprocess and check_images is not None:  # later checks feed the graph its 0..255 input
        check_images = denormalize(check_images, export_preprocess(ckpt, opts.img_size))
    if opts.fp16:
        step("converting to FP16")
        summary.artifacts["onnx-fp16"] = _describe(_timed(lambda: export_fp16(onnx_path, check_images=check_images)))
    if opts.int8:
        _quantize(onnx_path, opts, summary, step)
    write_json_atomic(out / "export.json", summary.to_dict())
    if opts.trt:
        _build_engines(summary, opts, step)
        write_json_atomic(out / "export.json", summary.to_dict())
    if opts.deepstream or opts.triton_repo:
        _write_serving_configs(summary, opts, step)
        write_json_atomic(out / "export.json", summary.to_dict())
    return summary


#: export.json's key for the Q/DQ ONNX of a QAT checkpoint (the report variant of the same name)
QAT_ARTIFACT = "onnx-int8-qat"


def _check_qat_options(checkpoint, opts: ExportOptions) -> None:
    """A QAT checkpoint exports as INT8 already: converting or quantizing it again is refused."""
    asked = [flag for flag, given in (("--fp16", opts.fp16), ("--int8", opts.int8),
                                      ("--target-agreement / --max-drop", opts.auto_precision),
                                      ("--deepstream-calib-cache", opts.deepstream_calib_cache)) if given]
    if asked:
        raise FgcliError(f"{checkpoint} is a QAT run: it exports as Q/DQ INT8 (model.qat.onnx) with the ranges it "
                         f"was trained with, so {', '.join(asked)} has nothing to do",
                         hint=f"drop {', '.join(asked)} (add --trt to build its INT8 engine), or export the FP32 run "
                              "it was fine-tuned from")


def _primary_onnx(summary: ExportSummary) -> Path:
    """The ONNX exported from the checkpoint: model.onnx, or a QAT run's model.qat.onnx."""
    return Path(summary.artifacts.get("onnx-fp32", summary.artifacts.get(QAT_ARTIFACT))["path"])


def _write_serving_configs(summary: ExportSummary, opts: ExportOptions, step) -> None:
    """DeepStream's nvinfer config and / or a Triton model repository for the deployed model: the engine when
    one was built, else the ONNX TensorRT would build it from (Q/DQ INT8, else FP16, else FP32)."""
    engine = next((info for key, info in summary.artifacts.items() if key.startswith("engine-")), None)
    if opts.deepstream_calib_cache:  # implicit INT8: TensorRT calibrates the float32 graph itself
        onnx_path, precision = Path(summary.artifacts["onnx-fp32"]["path"]), "int8"
    else:
        onnx_path = _engine_source(summary)
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
        served_onnx = onnx_path if engine else _primary_onnx(summary)  # ORT serves FP32 (or the QAT Q/DQ model)
        config = write_triton_repository(opts.triton_repo, served_onnx, engine_path=engine["path"] if engine else None,
                                         max_batch_size=opts.batch[2])
        summary.artifacts["triton"] = {"path": str(config), "platform": "tensorrt_plan" if engine else "onnxruntime_onnx"}


def _check_images(ckpt: dict, opts: ExportOptions):
    """Real test images for the parity check when a dataset is given, else generated ones."""
    data = opts.check_data or opts.calib_data
    if not data:
        return None
    preprocess = export_preprocess(ckpt, opts.img_size)
    splits = dataset_splits(data, detect_layout(data))
    split = load_split(data, "test") if "test" in splits else None
    if split is None or not split.samples:
        split = load_split(data, splits[0])
    return check_images_from_split(split, preprocess)


def _quantize(onnx_path: Path, opts: ExportOptions, summary: ExportSummary, step) -> None:
    step(f"building the calibration set ({opts.calib_size} images)")
    preprocess = PreprocessConfig.from_dict(read_onnx_metadata(onnx_path)["preprocess"])
    calib = build_calibration_set(opts.calib_data or opts.check_data, preprocess, size=opts.calib_size)
    calib_path = calib.save(onnx_path.with_name("calib.npz"))
    summary.artifacts["calibration"] = {"path": str(calib_path), "images": len(calib),
                                        "skipped": [p for p, _ in calib.skipped]}
    summary.notes.extend(calib.warnings)
    if opts.int8_backend in ("modelopt", "both"):
        step("quantizing with modelopt (Q/DQ for TensorRT)")
        result = quantize_modelopt(onnx_path, calib, onnx_path.with_name("model.int8.onnx"),
                                   calib_method=opts.calib_method, fp16=opts.fp16, device=opts.device)
        summary.artifacts["onnx-int8-modelopt"] = result.to_dict()
    if opts.int8_backend in ("ort", "both"):
        step("quantizing with ONNX Runtime (CPU / ARM INT8)")
        method = {"max": "minmax"}.get(opts.calib_method, opts.calib_method)
        result = quantize_ort(onnx_path, calib, onnx_path.with_name("model.ort-int8.onnx"), calib_method=method)
        summary.artifacts["onnx-int8-ort"] = result.to_dict()
    if opts.auto_precision:
        _auto_precision(onnx_path, calib, opts, summary, step)


#: the automatic mixed-precision artifact of each --int8-backend, and its file
AUTO_ARTIFACTS = {"modelopt": ("onnx-int8-modelopt-auto", "model.int8-auto.onnx"),
                  "ort": ("onnx-int8-ort-auto", "model.ort-int8-auto.onnx")}


def _auto_precision(onnx_path: Path, calib, opts: ExportOptions, summary: ExportSummary, step) -> None:
    """Per backend: measure every node's INT8 sensitivity on a validation subset disjoint from ``calib``, then
    keep the most sensitive in float one at a time until the target is met; record the choice in export.json
    and in the model's metadata."""
    validation = validation_subset(opts.check_data or opts.calib_data, calib.preprocess, size=opts.val_size)
    check_validation(validation.images, calib, validation.paths)
    auto_backend = opts.auto_backend or opts.int8_backend
    backends = ("modelopt", "ort") if auto_backend == "both" else (auto_backend,)
    chosen: list[str] = []
    for backend in backends:
        key, name = AUTO_ARTIFACTS[backend]
        with tempfile.TemporaryDirectory(prefix="fgcli-auto-precision-") as work:
            tried = {}
            if opts.auto_calib:
                builder, tried = best_calibration(onnx_path, backend, calib, work, validation.images,
                                                  validation.labels, fp16=opts.fp16, device=opts.device)
                step(f"{backend} calibration: {builder.calib_method} is closest to FP32 (full INT8 agreement "
                     + ", ".join(f"{method} {error.agreement:.1%}" for method, error in tried.items()) + ")")
            else:
                builder = Int8Builder(onnx_path, backend, calib, work, fp16=opts.fp16,
                                      calib_method=opts.calib_method, device=opts.device)
            measured = []

            def ranked() -> list[str]:  # only when full INT8 misses the target
                measured.append(measure_sensitivity(
                    onnx_path, calib, validation.images, backend=backend, labels=validation.labels, builder=builder,
                    alone=False, progress=lambda node, total: step(f"{backend} INT8 sensitivity: {node} ({total})")))
                return measured[0].ranked_names

            choice, result = choose_float_nodes(
                builder, ranked, onnx_path.with_name(name), validation.images, validation.labels,
                target_agreement=opts.target_agreement, max_drop=opts.max_drop, min_speedup=opts.min_speedup,
                step_done=lambda s: step(f"{backend} mixed precision: {len(s.float_nodes)} float nodes, agreement "
                                         f"{s.error.agreement:.1%}, CPU {s.speedup:.2f}x FP32"
                                         + (" (too slow: back to INT8)" if s.too_slow else "")))
        update_onnx_metadata(result.output_path, auto_float_nodes=choice.chosen.float_nodes,
                        target_agreement=choice.target_agreement, max_drop=choice.max_drop,
                        min_speedup=choice.min_speedup, auto_agreement=choice.chosen.error.agreement)
        chosen.extend(choice.chosen.float_nodes)
        summary.artifacts[key] = {**result.to_dict(), "auto_precision": choice.to_dict(),
                                  "sensitivity": measured[0].to_dict() if measured else None,
                                  "calibration_methods": {method: asdict(error) for method, error in tried.items()}}
        too_slow = [s.float_nodes[-1] for s in choice.steps if s.too_slow]
        if too_slow:
            summary.notes.append(f"{backend}: {len(too_slow)} nodes stayed INT8 because keeping them float took the "
                                 f"CPU speed-up below --min-speedup {choice.min_speedup} (first: {too_slow[0]})")
        if not choice.met:
            summary.notes.append(f"{backend}: the target was not met with up to {len(choice.steps[-1].float_nodes)} "
                                 f"of the {len(measured[0].nodes)} measured nodes in float; kept the closest step: "
                                 f"{len(choice.chosen.float_nodes)} float nodes, agreement "
                                 f"{choice.chosen.error.agreement:.1%} (lower the target, or fine-tune)")
    # the FP32 model carries the choice too, so quantizing it again (fgcli export, quantize_ort / _modelopt)
    # keeps those nodes float without measuring again
    update_onnx_metadata(onnx_path, auto_float_nodes=list(dict.fromkeys(chosen)))


def _engine_source(summary: ExportSummary) -> Path:
    """The ONNX the engine is built from: a QAT run's Q/DQ model, the modelopt Q/DQ model (its mixed-precision one
    when measured), else FP16, else FP32."""
    artifacts = summary.artifacts
    if QAT_ARTIFACT in artifacts:
        return Path(artifacts[QAT_ARTIFACT]["path"])
    if "onnx-int8-modelopt-auto" in artifacts:
        return Path(artifacts["onnx-int8-modelopt-auto"]["output_path"])
    if "onnx-int8-modelopt" in artifacts:
        return Path(artifacts["onnx-int8-modelopt"]["output_path"])
    return Path(artifacts.get("onnx-fp16", artifacts["onnx-fp32"])["path"])


def _build_engines(summary: ExportSummary, opts: ExportOptions, step) -> None:
    """Build the engine; without TensorRT, say which command to run on the target."""
    onnx_path = _engine_source(summary)
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


def _timed(fn):
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def _describe(timed) -> dict[str, Any]:
    result, seconds = timed
    return {**result.to_dict(), "seconds": seconds}


# --------------------------------------------------------------------------- INT8 sensitivity of a model
def fp32_onnx_of(model: str | Path, out_dir: str | Path) -> Path:
    """The FP32 ONNX to measure: ``model`` itself (.onnx), an export folder's model.onnx, or a .pt checkpoint
    exported (and checked against PyTorch) to ``out_dir``/model.onnx."""
    model = Path(model)
    if model.is_file() and model.suffix == ".pt":
        return export_onnx(model, out_dir).path
    path = model / "model.onnx" if model.is_dir() else model
    if not path.is_file():
        raise FgcliError(f"{model} is neither a .pt checkpoint, an .onnx file nor an export folder with model.onnx",
                         hint="pass RUN/best.pt or the folder fgcli export wrote")
    precision = read_onnx_metadata(path)["precision"]
    if precision != "fp32":
        raise FgcliError(f"{path} is {precision}; sensitivity quantizes the FP32 model", hint="pass model.onnx")
    return path


def sensitivity_of(model: str | Path, data: str | Path, out_dir: str | Path, backend: str = "ort",
                   calib_size: int = DEFAULT_CALIBRATION_SIZE, val_size: int = DEFAULT_VALIDATION_SIZE,
                   progress: Callable[[str, int], None] | None = None) -> tuple[SensitivityResult, Path]:
    """``measure_sensitivity`` of a checkpoint / export folder / ONNX on ``data``'s splits; writes
    sensitivity.json into ``out_dir`` and returns its path."""
    check_backend(backend)
    onnx_path = fp32_onnx_of(model, out_dir)
    preprocess = PreprocessConfig.from_dict(read_onnx_metadata(onnx_path)["preprocess"])
    calib, validation = calibration_and_validation(data, preprocess, calib_size, val_size)
    result = measure_sensitivity(onnx_path, calib, validation.images, backend=backend, labels=validation.labels,
                                 progress=progress)
    return result, write_sensitivity(result, out_dir)
