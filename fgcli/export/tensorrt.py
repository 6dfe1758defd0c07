"""Build a TensorRT engine from an fgcli ONNX model on TensorRT 8.6, 10.x or 11.x.

Build paths (ONNX kind: Q/DQ nodes -> int8, float16 tensors -> fp16, else fp32):

| ONNX, --precision     | TensorRT 8.6                  | TensorRT 10.x                  | TensorRT 11.x              |
|-----------------------|-------------------------------|--------------------------------|----------------------------|
| Q/DQ, int8            | flags INT8 + FP16             | strongly typed                 | strongly typed             |
| fp16, fp16            | flag FP16                     | strongly typed                 | strongly typed             |
| fp32, fp32            | no flag                       | strongly typed                 | strongly typed             |
| fp32, fp16            | flag FP16                     | flag FP16 (deprecated 10.12)   | refused: export --fp16     |
| fp32, int8 + calib    | INT8 + FP16 + calibrator      | same (deprecated 10.1)         | refused: export --int8     |

TensorRT for RTX (``backend="tensorrt-rtx"``, ``import tensorrt_rtx``) has TensorRT 11's API and takes the
11.x column; it builds without a GPU.

FP16 rides along with INT8 so layers without an INT8 kernel run in FP16 rather than FP32 (as NVIDIA's
efficientdet sample does). Every TensorRT name used here is held to the real bindings of 8.6.1, 10.3.0,
10.16.1.11 and 11.4.0.106 by ``tests/test_trt_surface.py``. What was checked, and where:
- NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` at tags v8.6.1, v10.0.0, v10.16, v11.1:
  8.6 has ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (no STRONGLY_TYPED), ``BuilderFlag.FP16/INT8``,
  ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, size)``, ``int8_calibrator``,
  ``set_calibration_profile``, ``create_timing_cache``/``set_timing_cache``/``get_timing_cache``,
  ``default_device_type``, ``DLA_core``, ``Builder.num_DLA_cores``, ``build_serialized_network``.
  10.x adds ``STRONGLY_TYPED``; EXPLICIT_BATCH is "Ignored because networks are always explicit batch";
  ``int8_calibrator`` is "Deprecated in TensorRT 10.1. Superseded by explicit quantization"; BuilderFlag
  FP16/INT8 are "Deprecated in TensorRT 10.12. Superseded by strong typing".
  11.1: BuilderFlag has no FP16/BF16/INT8/FP8/INT4, there is no EXPLICIT_BATCH, no ``int8_calibrator``,
  no ``IInt8EntropyCalibrator2`` (pyInt8.cpp is gone) and STRONGLY_TYPED is "Deprecated in TensorRT 11.0.
  Strongly typed mode is always enabled ... retained for API compatibility but is ignored".
- ``.agents/skills/trt-strong-typing-migration/SKILL.md`` (NVIDIA/TensorRT main, 11.1): do not set
  FP16/INT8 flags on a strongly typed network ("on TRT 10.12+ they conflict with strong typing");
  ``IInt8Calibrator`` -> "Remove. PTQ calibration is replaced by Q/DQ in the ONNX".
- TensorRT 8.x developer guide, "Working with INT8": "To enable the use of any quantized operations, the
  INT8 flag must be set in the builder configuration", so a Q/DQ ONNX builds with BuilderFlag.INT8 on 8.6.
- ``NvInfer.h`` v8.6.1 ``setCalibrationProfile``: "Calibration optimization profile must be set if int8
  calibration is used to set scales for a network with runtime dimensions"; its MIN/MAX become OPT.
- ``python/src/parsers/pyOnnx.cpp``: ``parse_from_file``, ``num_errors``, ``get_error(i)`` with
  ``code() desc() node()``; ``node_name()``/``node_operator()`` only from 10.0.
- Polygraphy ``backend/trt/config.py`` and ``loader.py``: timing cache load (``create_timing_cache(b"")``
  when absent) and save (``get_timing_cache().serialize()``).
- TensorRT 11.1-11.3 docs, "Working with DLA": DLA unavailable in 11.0-11.3 (10.7 was the last 10.x with
  DLA); 11.4.1 brings it back on AGX Orin with strongly typed networks. A missing DLA shows up as
  ``num_DLA_cores == 0``, which is refused here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fgcli.calibration import QDQ_OP_TYPES
from fgcli.errors import FgcliError
from fgcli.export.options import DEFAULT_BATCH, DEFAULT_WORKSPACE_GIB
from fgcli.runtime.onnx_meta import decode_fgcli_metadata, load_onnx, metadata_props
from fgcli.runtime.tensorrt_runner import (
    TENSORRT, TENSORRT_RTX, backend_of, cuda_device_info, import_tensorrt, sidecar_path, tensorrt_version,
)
from fgcli.utils import atomic_path, optional_import, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
STRONGLY_TYPED, FLAGS, LEGACY_CALIBRATOR = "strongly-typed", "flags", "legacy-calibrator"


@dataclass(frozen=True)
class OnnxSummary:
    """What the builder needs to know about an ONNX file before TensorRT parses it."""

    kind: str  # "int8" (Q/DQ nodes), "fp16" (float16 tensors) or "fp32"
    metadata_props: dict[str, str]
    sha256: str


@dataclass(frozen=True)
class BuildPlan:
    precision: str
    path: str  # STRONGLY_TYPED, FLAGS or LEGACY_CALIBRATOR
    flags: tuple[str, ...]  # BuilderFlag member names


@dataclass(frozen=True)
class EngineInfo:
    engine_path: Path
    sidecar_path: Path
    precision: str
    build_path: str
    tensorrt_version: str
    build_seconds: float
    sidecar: dict


def inspect_onnx(onnx_path: str | Path) -> OnnxSummary:
    """Classify the ONNX (Q/DQ, float16 or float32) and collect its fgcli metadata_props."""
    onnx = optional_import("onnx", "onnx", "Reading the ONNX model before building the engine")
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path, load_external_data=False)
    graph = model.graph
    float16 = onnx.TensorProto.FLOAT16
    value_infos = [*graph.input, *graph.output, *graph.value_info]
    has_fp16 = (any(init.data_type == float16 for init in graph.initializer)
                or any(v.type.tensor_type.elem_type == float16 for v in value_infos)
                or any(node.op_type == "Cast" and attr.name == "to" and attr.i == float16
                       for node in graph.node for attr in node.attribute))
    has_qdq = any(node.op_type in QDQ_OP_TYPES for node in graph.node)
    kind = "int8" if has_qdq else "fp16" if has_fp16 else "fp32"
    props = metadata_props(model, fgcli_only=True)
    return OnnxSummary(kind=kind, metadata_props=props, sha256=sha256_file(onnx_path))


def choose_plan(trt, onnx_path: Path, onnx_kind: str, precision: str | None, use_calibrator: bool) -> BuildPlan:
    """Pick the build path for this TensorRT and ONNX (the table in the module docstring)."""
    requested = precision or onnx_kind
    if requested not in PRECISIONS:
        raise FgcliError(f"unknown precision {requested!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    what = {"int8": "a quantized (Q/DQ)", "fp16": "a float16", "fp32": "a float32"}[onnx_kind]
    if onnx_kind != "fp32" and requested != onnx_kind:
        raise FgcliError(f"{onnx_path} is {what} model: it builds only with --precision {onnx_kind}",
                         hint="export a float32 ONNX to build other precisions")
    if use_calibrator and (requested, onnx_kind) != ("int8", "fp32"):
        raise FgcliError("--calib-data / --calib-cache only apply to INT8 builds of a float32 ONNX "
                         f"(TensorRT's legacy calibrator), and {onnx_path} is {what} model built as {requested}",
                         hint="drop the calibration options")
    can_strongly_type = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if onnx_kind != "fp32" or requested == "fp32":
        if can_strongly_type:
            return BuildPlan(requested, STRONGLY_TYPED, ())
        return BuildPlan(requested, FLAGS, {"int8": ("INT8", "FP16"), "fp16": ("FP16",), "fp32": ()}[requested])
    # A float32 ONNX built in reduced precision: only weak typing can do that.
    export_flag = "--int8 (ModelOpt Q/DQ)" if requested == "int8" else "--fp16"
    if not hasattr(trt.BuilderFlag, requested.upper()):
        raise FgcliError(
            f"TensorRT {trt.__version__} builds strongly typed networks only: the precision comes from the ONNX, "
            f"and {onnx_path} is float32.",
            hint=f"export a {requested} ONNX first: fgcli export CHECKPOINT {export_flag}, then build that")
    if requested == "fp16":
        return BuildPlan("fp16", FLAGS, ("FP16",))
    if not use_calibrator:
        raise FgcliError(
            f"INT8 from the float32 {onnx_path} needs calibration.",
            hint=f"preferred: export a Q/DQ ONNX with `fgcli export CHECKPOINT {export_flag}`; or calibrate here "
                 "with --calib-data calib.npz (TensorRT's legacy calibrator, deprecated since TensorRT 10.1)")
    return BuildPlan("int8", LEGACY_CALIBRATOR, ("INT8", "FP16"))


def _model_name(onnx_path: Path) -> str:
    """``model.onnx`` and ``model.int8.onnx`` -> ``model``."""
    base, _, suffix = onnx_path.stem.rpartition(".")
    return base if base and suffix in PRECISIONS else onnx_path.stem


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """``model.<precision>.engine`` beside the ONNX."""
    return onnx_path.with_name(f"{_model_name(onnx_path)}.{precision}.engine")


def default_calibration_cache(onnx_path: Path) -> Path:
    """``model.calib.cache`` beside the ONNX, so the pair can be copied to the device together."""
    return onnx_path.with_name(f"{_model_name(onnx_path)}.calib.cache")


def _network_flags(trt, plan: BuildPlan) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if not hasattr(creation, "STRONGLY_TYPED"):  # 8.6: the ONNX parser needs explicit batch (on from 10, gone in 11)
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if plan.path == STRONGLY_TYPED:  # opt-in on 10.x; accepted and ignored on 11 (always strongly typed)
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def _parse_error(parser, onnx_path: Path) -> FgcliError:
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"node {error.node()}"
        if hasattr(error, "node_name"):  # TensorRT >= 10 names the node and its operator
            where += f" '{error.node_name()}' ({error.node_operator()})"
        lines.append(f"{where}: {error.code().name}: {error.desc()}")  # str() would give "ErrorCode.X"
    details = "\n  ".join(lines) or "no details (rerun with --verbose)"
    return FgcliError(f"TensorRT could not parse {onnx_path}:\n  {details}",
                      hint="re-export with `fgcli export` (opset 17), or check the operator against the TensorRT "
                           "ONNX operator support list for this version")


def _input_tensor(network, onnx_path: Path):
    if network.num_inputs != 1:
        raise FgcliError(f"{onnx_path} has {network.num_inputs} inputs; fgcli models take one 'images' input")
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    if len(shape) != 4 or any(d < 1 for d in shape[1:]):
        raise FgcliError(f"{onnx_path}: input '{tensor.name}' has shape {shape}; expected (batch, C, H, W) with "
                         "only the batch axis dynamic", hint="re-export with `fgcli export`")
    return tensor


def _profile_shapes(tensor, batch: tuple[int, int, int], onnx_path: Path) -> dict[str, list[int]]:
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise FgcliError(f"batch range {batch} is not min <= opt <= max with min >= 1", hint="e.g. --batch 1,8,32")
    shape = tuple(tensor.shape)
    if shape[0] != -1 and batch != (shape[0],) * 3:
        raise FgcliError(f"{onnx_path} has a fixed batch of {shape[0]}, so the batch range {batch} cannot apply",
                         hint=f"use --batch {shape[0]},{shape[0]},{shape[0]} or export with a dynamic batch axis")
    return {name: [size, *shape[1:]] for name, size in zip(("min", "opt", "max"), batch)}


def _check_dla(builder, dla_core: int | None, plan: BuildPlan) -> None:
    if dla_core is None:
        return
    available = builder.num_DLA_cores
    if available == 0:
        raise FgcliError("this device has no DLA (Orin Nano, Jetson Thor and discrete GPUs have none; TensorRT "
                         "11.0-11.3 has no DLA support)", hint="build without --dla-core")
    if not 0 <= dla_core < available:
        raise FgcliError(f"DLA core {dla_core} does not exist: this device has {available} (0..{available - 1})",
                         hint="pick --dla-core 0" + (" or 1" if available > 1 else ""))
    if plan.precision == "fp32":
        raise FgcliError("DLA runs FP16 or INT8 only", hint="add --precision fp16 or --precision int8")


def _attach_timing_cache(trt, config, path: Path | None):
    if path is None:
        return
    if backend_of(trt) == TENSORRT_RTX:
        raise FgcliError("TensorRT-RTX has no timing cache (its timing cache calls are no-ops since 1.2)",
                         hint="drop --timing-cache for --backend tensorrt-rtx")
    data = path.read_bytes() if path.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        log.warning("timing cache %s was made on another device or TensorRT version; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _builder_config(trt, builder, plan: BuildPlan, input_name: str, profile_shapes: dict, workspace_gib: float,
                    dla_core: int | None):
    """The builder config: workspace limit, the (min, opt, max) profile of the input, the plan's flags (plus GPU
    fallback on a DLA core); returns it with the flags set, which the sidecar records."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    flags = list(plan.flags)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *profile_shapes.values())
    config.add_optimization_profile(profile)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        flags.append("GPU_FALLBACK")
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    return config, flags


def _build_serialized(builder, network, config, calibrator, onnx_path: Path):
    """(the serialized engine, build seconds); a build TensorRT refuses is an FgcliError (naming a calibration
    cache it may have rejected)."""
    start = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    seconds = time.perf_counter() - start
    if serialized is None:
        cause = ""
        if calibrator is not None and calibrator.cache_read and calibrator.calib_data is None:
            cause = f" (TensorRT may have rejected the calibration cache {calibrator.cache_path})"
        raise FgcliError(f"TensorRT failed to build {onnx_path}{cause}",
                         hint="rerun with --verbose to see the builder log")
    return serialized, seconds


def _attach_calibrator(trt, builder, config, input_name: str, chw: tuple[int, int, int], cache: Path,
                       calib_data, calib_batch: int):
    """Entropy calibrator 2 plus the fixed-shape calibration profile TensorRT needs for a dynamic batch."""
    from fgcli.calibration.trt_calibrator import create_entropy_calibrator

    calibrator = create_entropy_calibrator(trt, cache, calib_data, chw, calib_batch)
    if not calibrator.has_cache():
        calibrator.prepare()
    shape = (calibrator.get_batch_size(), *chw)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shape, shape, shape)
    config.set_calibration_profile(profile)
    config.int8_calibrator = calibrator
    return calibrator


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path | None = None,
    precision: str | None = None,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | Path | None = None,
    dla_core: int | None = None,
    calib_cache: str | Path | None = None,
    calib_data: str | Path | None = None,
    calib_batch: int = 8,
    verbose: bool = False,
    backend: str = TENSORRT,
) -> EngineInfo:
    """Build ``model.<precision>.engine`` and its ``.json`` sidecar from an fgcli ONNX.

    ``precision=None`` builds what the ONNX carries (int8 for Q/DQ, fp16 for float16, else fp32).
    ``calib_data``/``calib_cache`` select TensorRT's legacy INT8 calibrator (8.6 / 10.x, float32 ONNX);
    the cache defaults to ``<model>.calib.cache`` beside the ONNX so it can travel with it.
    ``backend="tensorrt-rtx"`` builds with TensorRT for RTX, which needs no GPU to build (the engine then
    runs on RTX GPUs of compute capability 8.0+); its API is TensorRT 11's, so the same strongly typed path.
    """
    onnx_path = Path(onnx_path)
    trt = import_tensorrt("Building a TensorRT engine", backend)
    tensorrt_version(trt)
    summary = inspect_onnx(onnx_path)
    meta = {**decode_fgcli_metadata(summary.metadata_props, onnx_path), "metadata_props": summary.metadata_props}
    use_calibrator = calib_data is not None or calib_cache is not None
    plan = choose_plan(trt, onnx_path, summary.kind, precision, use_calibrator)
    engine_path = Path(out_path) if out_path is not None else default_engine_path(onnx_path, plan.precision)
    timing_cache = Path(timing_cache) if timing_cache is not None else None

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    _check_dla(builder, dla_core, plan)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)  # kept referenced until the build: the network reads its weights
    if not parser.parse_from_file(str(onnx_path)):
        raise _parse_error(parser, onnx_path)
    tensor = _input_tensor(network, onnx_path)
    profile_shapes = _profile_shapes(tensor, tuple(batch), onnx_path)
    config, flags = _builder_config(trt, builder, plan, tensor.name, profile_shapes, workspace_gib, dla_core)
    _attach_timing_cache(trt, config, timing_cache)
    calibrator = None
    if plan.path == LEGACY_CALIBRATOR:
        cache = Path(calib_cache) if calib_cache is not None else default_calibration_cache(onnx_path)
        calibrator = _attach_calibrator(trt, builder, config, tensor.name, tuple(tensor.shape[1:]), cache,
                                        calib_data, calib_batch)

    log.info("building %s (%s, %s) with TensorRT %s", engine_path, plan.precision, plan.path, trt.__version__)
    serialized, seconds = _build_serialized(builder, network, config, calibrator, onnx_path)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))

    sidecar = {
        "engine": engine_path.name,
        "backend": backend_of(trt),
        "tensorrt_version": str(trt.__version__),
        "gpu": cuda_device_info(0),
        "precision": plan.precision,
        "build_path": plan.path,
        "builder_flags": flags,
        "input": {"name": tensor.name, "shape": list(tensor.shape)},
        "profile": profile_shapes,
        "workspace_gib": workspace_gib,
        "dla_core": dla_core,
        "build_seconds": round(seconds, 3),
        "onnx": {"file": onnx_path.name, "sha256": summary.sha256, "kind": summary.kind},
        "calibration": None if calibrator is None else {
            "cache": str(calibrator.cache_path), "cache_reused": calibrator.cache_read,
            "batches": calibrator.batches_fed, "batch_size": calibrator.get_batch_size(),
        },
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
        "fgcli": meta,
    }
    sidecar_file = write_json_atomic(sidecar_path(engine_path), sidecar)
    return EngineInfo(engine_path=engine_path, sidecar_path=sidecar_file, precision=plan.precision,
                      build_path=plan.path, tensorrt_version=str(trt.__version__), build_seconds=seconds,
                      sidecar=sidecar)
