"""The files a report measures: exported from the checkpoint when missing, reused only when provably current.

From a checkpoint, the report exports into its own folder (OUT/export) with ``export_all`` and records in
``source.json`` the checkpoint's sha256 and the calibration settings. A later report reuses those files only
when the record matches; otherwise every file the report made there is removed and exported again, so a
report never measures a model made from another checkpoint. Files it did not make (no record: e.g. written
by ``fgcli export`` into RUN/export, met with ``--out RUN``) are never removed: the report refuses.
TensorRT engines are built beside the ONNX they come from (also in a given export folder: engines must be
built on the machine that runs them) and reused only while their sidecar names the same ONNX sha256, TensorRT
version and GPU, with a batch profile large enough for the report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from fgcli.devices import parse_device
from fgcli.errors import FgcliError
from fgcli.export.onnx import export_fp16
from fgcli.export.options import ExportOptions
from fgcli.export.pipeline import EXPORT_RECORD, export_all
from fgcli.export.tensorrt import build_engine, default_engine_path
from fgcli.formats import (BY_NAME, FORMATS, ONNX_EXPORT, ONNX_FILES, ONNX_FP16, ONNX_FP32, ONNX_INT8_MODELOPT,
                           MODELOPT, ORT, TENSORRT, TORCH, TRT_FP16, file_of, int8_format)
from fgcli.report.options import ReportOptions
from fgcli.report.variants import QAT_VARIANT, Variant
from fgcli.runtime.tensorrt_runner import check_engine_compatible, cuda_device_info, import_tensorrt, read_sidecar, sidecar_path
from fgcli.utils import read_json_object, sha256_file, write_json_atomic

SOURCE_RECORD = "source.json"
#: files built from model.onnx that a new export does not rewrite itself: stale as soon as model.onnx is
#: rewritten (the FP16 ONNX the report converts, the engines and their sidecars)
ENGINE_FILES = tuple(fmt.file for fmt in FORMATS if fmt.runtime == TENSORRT)
DERIVED_FILES = (file_of(ONNX_FP16), *ENGINE_FILES, *(sidecar_path(Path(name)).name for name in ENGINE_FILES))
#: every file the report writes into its export folder (timing.cache is kept: it belongs to the GPU)
EXPORT_FILES = (*(name for key, name in ONNX_FILES.items() if key != ONNX_FP16), "calib.npz", EXPORT_RECORD,
                *DERIVED_FILES, SOURCE_RECORD)


def export_for_report(checkpoint: Path, export_dir: Path, variants: list[Variant], data: Path, opts: ReportOptions,
                      step: Callable[[str], None], qat_checkpoint: Path | None = None) -> list[str]:
    """Export the ONNX files the runnable ``variants`` need into ``export_dir`` (or reuse current ones) and
    set each ONNX variant's path and export / calibration seconds. From ``opts``: ``calib_size``, and for the
    mixed-precision (auto) variants ``target_agreement`` / ``max_drop``, measured on ``val_size`` val (else test)
    images, calibrated with the method closest to FP32 when ``auto_calib`` (``fgcli export --auto-calib``).
    ``qat_checkpoint``: the QAT run (``fgcli train --qat``) whose model.qat.onnx the ``onnx-int8-qat`` variant
    measures. Returns notes for the report."""
    needed = _needed_onnx(variants)
    if not needed:
        return []
    record = {"checkpoint": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint),
              "calib_data": str(Path(data).resolve()), "calib_size": opts.calib_size,
              "target_agreement": opts.target_agreement,
              "val_size": opts.val_size if opts.target_agreement is not None else None, "max_drop": opts.max_drop,
              "auto_calib": opts.auto_calib or None,  # None, not False: records written before the option match
              "qat_sha256": sha256_file(qat_checkpoint) if QAT_VARIANT in needed else None}
    notes = _clear_other_source(export_dir, record)
    artifacts = read_export_record(export_dir)
    missing = [key for key in needed if key not in artifacts or not (export_dir / ONNX_FILES[key]).is_file()]
    from_checkpoint = [key for key in missing if key != QAT_VARIANT]
    if from_checkpoint:
        _remove(export_dir, DERIVED_FILES)
        qat_artifact = {k: v for k, v in artifacts.items() if k == QAT_VARIANT}  # export_all rewrites export.json
        summary = export_all(checkpoint, _export_options(export_dir, data, opts, needed), step=step)
        artifacts = {**summary.artifacts, **qat_artifact}
        notes.extend(summary.notes)
        write_json_atomic(export_dir / SOURCE_RECORD, record)  # the files are ours now, even if the QAT export fails
    if QAT_VARIANT in missing:
        artifacts[QAT_VARIANT] = _export_qat(qat_checkpoint, export_dir, data, step)
    if missing:
        record_file = export_dir / EXPORT_RECORD
        write_json_atomic(record_file, {**_read_json(record_file), "artifacts": artifacts})
        write_json_atomic(export_dir / SOURCE_RECORD, record)
    else:
        step(f"reusing the ONNX files in {export_dir} (made from the same checkpoint)")
    for variant in variants:
        if variant.name in ONNX_FILES and variant.available:
            attach_onnx_artifact(variant, export_dir, artifacts)
    return notes


def _clear_other_source(export_dir: Path, record: dict[str, Any]) -> list[str]:
    """Remove the report's files made from another checkpoint or other settings than ``record`` (a note says so);
    refuse to touch files no report made."""
    previous = _read_json(export_dir / SOURCE_RECORD)
    if _same_source(previous, record):
        return []
    foreign = [name for name in EXPORT_FILES if (export_dir / name).is_file()]
    if foreign and not previous:
        raise FgcliError(
            f"{export_dir} holds files no report made (no {SOURCE_RECORD}): {', '.join(foreign)}; "
            "the report would replace them",
            hint="choose another --out (the default, RUN/report, keeps its own export folder), or report on "
                 f"that export folder itself: fgcli report {export_dir} --data DATASET")
    removed = _remove(export_dir, EXPORT_FILES)
    return [f"{export_dir} held files made from another checkpoint or other calibration settings: "
            f"removed {', '.join(removed)} and exported again"] if removed else []


def _export_options(export_dir: Path, data: Path, opts: ReportOptions, needed: list[str]) -> ExportOptions:
    """The ``fgcli export`` options that write the ``needed`` formats: the INT8 backends of the plain and of the
    mixed-precision INT8 formats, with the report's calibration and target settings."""
    options = ExportOptions(out_dir=export_dir, calib_data=str(data), calib_size=opts.calib_size, check_data=str(data))
    plain = [BY_NAME[key].builder for key in needed if BY_NAME[key].builder in (MODELOPT, ORT) and not BY_NAME[key].auto]
    if plain:
        options.int8, options.int8_backend = True, _backend_option(plain)
    auto = [BY_NAME[key].builder for key in needed if BY_NAME[key].auto]
    if auto:
        options.target_agreement, options.val_size, options.max_drop = opts.target_agreement, opts.val_size, opts.max_drop
        options.auto_calib, options.auto_backend = opts.auto_calib, _backend_option(auto)
    return options


def _export_qat(qat_checkpoint: Path, export_dir: Path, data: Path, step: Callable[[str], None]) -> dict[str, Any]:
    """model.qat.onnx of the QAT run in ``export_dir`` (checked against its fake-quantized PyTorch model on test
    images of ``data``); its export.json entry."""
    step(f"exporting the QAT run {qat_checkpoint} (Q/DQ INT8)")
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fgcli-qat-", dir=export_dir) as work:
        info = export_all(qat_checkpoint, ExportOptions(out_dir=Path(work), check_data=str(data))).artifacts[QAT_VARIANT]
        target = export_dir / ONNX_FILES[QAT_VARIANT]
        Path(info["path"]).replace(target)
    return {**info, "path": str(target)}


def attach_onnx_artifact(variant: Variant, export_dir: Path, artifacts: dict[str, Any]) -> None:
    """Path of an ONNX variant, and from export.json (when it has the entry) how long making it took."""
    variant.path = export_dir / ONNX_FILES[variant.name]
    info = artifacts.get(variant.name, {})
    if BY_NAME[variant.name].builder == ONNX_EXPORT:  # exported from a checkpoint, not quantized
        variant.build_seconds = info.get("seconds")
    else:
        variant.calib_seconds = info.get("calibration_seconds")
        kept_float = info.get("extra", {}).get("float_nodes")
        variant.float_nodes = None if kept_float is None else len(kept_float)


def read_export_record(export_dir: Path) -> dict[str, Any]:
    """The artifacts of ``export_dir/export.json`` ({} when the folder has none)."""
    return _read_json(export_dir / EXPORT_RECORD).get("artifacts", {})


def prepare_engines(export_dir: Path, variants: list[Variant], max_batch: int, device: str,
                    step: Callable[[str], None]) -> None:
    """Build (or reuse) the engine of every runnable TensorRT variant; a build TensorRT refuses makes that
    variant unavailable with TensorRT's message, since engine support differs per TensorRT version and GPU."""
    int8_calibration = read_export_record(export_dir).get(ONNX_INT8_MODELOPT, {}).get("calibration_seconds")
    for variant in variants:
        if variant.backend != TENSORRT or not variant.available:
            continue
        source = export_dir / variant.source_onnx
        engine = default_engine_path(source, variant.precision)
        try:
            if variant.name == TRT_FP16 and not source.is_file():
                step(f"converting {file_of(ONNX_FP32)} to FP16 for the TensorRT FP16 engine")
                export_fp16(export_dir / file_of(ONNX_FP32), source)
            if not engine_is_current(engine, source, max_batch, gpu=parse_device(device)[1]):
                step(f"building {engine.name} with TensorRT (minutes on a Jetson)")
                build_engine(source, engine, precision=variant.precision, batch=(1, max_batch, max_batch),
                             timing_cache=export_dir / "timing.cache")
        except FgcliError as exc:
            variant.refuse(f"TensorRT could not build {engine.name}: {exc.message}")
            continue
        variant.path = engine
        variant.build_seconds = _read_json(engine.with_name(engine.name + ".json")).get("build_seconds")
        if variant.precision == "int8":
            variant.calib_seconds = int8_calibration


def engine_is_current(engine: Path, source: Path, max_batch: int, gpu: int = 0) -> bool:
    """Whether ``engine`` was built from this very ``source`` ONNX, by this TensorRT for GPU ``gpu``'s
    generation, with a batch profile reaching ``max_batch``."""
    if not engine.is_file():
        return False
    try:
        sidecar = read_sidecar(engine)
        trt = import_tensorrt("Checking a TensorRT engine")
        check_engine_compatible(engine, sidecar, str(trt.__version__), cuda_device_info(gpu))
    except FgcliError:
        return False
    return (sidecar["onnx"].get("sha256") == sha256_file(source)
            and sidecar.get("profile", {}).get("max", [0])[0] >= max_batch)


def _needed_onnx(variants: list[Variant]) -> list[str]:
    """The export_all artifacts the runnable variants depend on (every engine starts from an ONNX)."""
    runnable = [BY_NAME[v.name] for v in variants if v.available]
    needed = {ONNX_FP32} if any(fmt.runtime != TORCH for fmt in runnable) else set()
    for fmt in runnable:
        if fmt.runtime == TENSORRT:
            needed.add(fmt.built_from)  # model.fp16.onnx is converted beside the engine when missing
        elif fmt.runtime != TORCH:
            needed.add(fmt.name)
        if fmt.auto:  # the auto variant's step 0, and what the report compares it with
            needed.add(int8_format(fmt.builder).name)
    return [fmt.name for fmt in FORMATS if fmt.name in needed and fmt.name != ONNX_FP16]


def _backend_option(backends: list[str]) -> str:
    """``--int8-backend`` for ``backends`` (modelopt, ort or both)."""
    return "both" if len(set(backends)) == 2 else backends[0]


def _same_source(previous: dict[str, Any], record: dict[str, Any]) -> bool:
    """Same checkpoint bytes and calibration settings (the checkpoint may have moved)."""
    return all(previous.get(key) == record[key] for key in ("sha256", "calib_data", "calib_size", "target_agreement",
                                                         "val_size", "max_drop", "qat_sha256", "auto_calib"))


def _remove(folder: Path, names: tuple[str, ...]) -> list[str]:
    removed = [name for name in names if (folder / name).is_file()]
    for name in removed:
        (folder / name).unlink()
    return removed


def _read_json(path: Path) -> dict[str, Any]:
    """``{}`` for a missing file; an unreadable one is an error naming it (it would otherwise look stale)."""
    if not path.is_file():
        return {}
    return read_json_object(path, hint=f"delete {path}; the report writes it again")
