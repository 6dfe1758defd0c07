"""What ``fgcli export`` is asked to do and what it made: ``ExportOptions`` with its defaults (written once, read
by the CLI too) and the checks that refuse contradictory options before any work starts; ``ExportSummary``, the
record written to export.json.

Light to import (no numpy, no onnx): the CLI reads the defaults when it declares its options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.errors import FgcliError
from fgcli.formats import ONNX_INT8_QAT, file_of

INT8_BACKENDS = ("modelopt", "ort", "both")
DEEPSTREAM_MODES = ("primary", "secondary")
#: adds LayerNormalization; the newest opset TensorRT 8.6's ONNX parser accepts
MIN_OPSET = 17
#: TensorRT optimization profile MIN, OPT, MAX
DEFAULT_BATCH = (1, 8, 32)
#: TensorRT builder workspace limit, GiB
DEFAULT_WORKSPACE_GIB = 4.0
#: INT8 calibration images from the train split (class-balanced; fewer than 300 are warned about)
DEFAULT_CALIB_SIZE = 512
#: validation images (val, else test split) INT8 is compared with FP32 on
DEFAULT_VAL_SIZE = 256
#: calibration images of ``fgcli sensitivity`` (it builds two INT8 models per node, so fewer than an export)
SENSITIVITY_CALIB_SIZE = 256


@dataclass
class ExportOptions:
    out_dir: Path
    opset: int = MIN_OPSET
    img_size: int | None = None
    batch: tuple[int, int, int] = DEFAULT_BATCH
    fp16: bool = False
    int8: bool = False
    int8_backend: str = "modelopt"
    calib_data: str | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: str = "max"
    check_data: str | None = None  # dataset whose test images check ONNX parity
    trt: bool = False
    workspace_gib: float = DEFAULT_WORKSPACE_GIB
    dla_core: int | None = None
    device: str = "cpu"  # where modelopt calibrates
    target_agreement: float | None = None  # automatic mixed precision: keep nodes float until this is met
    max_drop: float | None = None  # ... and / or until top-1 is at most this many points below FP32
    val_size: int = DEFAULT_VAL_SIZE  # validation images (val / test split) the target is measured on
    auto_backend: str | None = None  # which INT8 backends get the mixed-precision model (None: int8_backend)
    min_speedup: float | None = None  # ... never keeping a node float that takes the CPU speed-up below this
    auto_calib: bool = False  # ... starting from the calibration method whose full INT8 is closest to FP32
    embed_preprocess: bool = False  # mean / std inside the ONNX graph: input RGB 0..255 (DeepStream)
    deepstream: bool = False  # config_infer_<name>.txt + labels_<name>.txt beside the model
    deepstream_mode: str = "secondary"
    deepstream_threshold: float = 0.0
    deepstream_calib_cache: str | None = None  # implicit INT8: the FP32 ONNX + a TensorRT calibration cache
    triton_repo: str | None = None  # a Triton model repository to write the model into

    @property
    def auto_precision(self) -> bool:
        return self.target_agreement is not None or self.max_drop is not None

    @property
    def data(self) -> str | None:
        """The dataset the export reads images from: the parity check's, else the calibration's."""
        return self.check_data or self.calib_data

    def int8_backends(self, auto: bool = False) -> tuple[str, ...]:
        """The INT8 backends that quantize (``auto``: that get the mixed-precision model), modelopt first."""
        chosen = (self.auto_backend or self.int8_backend) if auto else self.int8_backend
        return ("modelopt", "ort") if chosen == "both" else (chosen,)

    def validate(self) -> None:
        """Refuse unknown choices and options that contradict each other (or need one that is missing)."""
        from fgcli.calibration.mixed_precision import check_targets  # numpy: kept off the CLI's import path

        if self.int8_backend not in INT8_BACKENDS:
            raise FgcliError(f"unknown --int8-backend '{self.int8_backend}'",
                             hint=f"use one of: {', '.join(INT8_BACKENDS)}")
        if self.trt and self.int8 and self.int8_backend == "ort":
            raise FgcliError("TensorRT INT8 builds from the modelopt Q/DQ model",
                             hint="use --int8-backend modelopt or both")
        if self.deepstream_mode not in DEEPSTREAM_MODES:
            raise FgcliError(f"unknown --deepstream-mode '{self.deepstream_mode}'", hint="use primary or secondary")
        if self.deepstream_calib_cache and not self.deepstream:
            raise FgcliError("--deepstream-calib-cache is for the DeepStream config", hint="add --deepstream")
        if self.int8 and not self.data:
            raise FgcliError("--int8 needs calibration images",
                             hint="pass --calib-data DATASET (its train split is sampled)")
        if self.min_speedup is not None and not self.auto_precision:
            raise FgcliError("--min-speedup bounds automatic mixed precision", hint="add --target-agreement or --max-drop")
        if self.auto_calib and not self.auto_precision:
            raise FgcliError("--auto-calib chooses the calibration of the mixed-precision model",
                             hint="add --target-agreement or --max-drop")
        if self.auto_precision:
            check_targets(self.target_agreement, self.max_drop, self.min_speedup)
            if not self.int8:
                raise FgcliError("--target-agreement / --max-drop choose INT8's float nodes", hint="add --int8")

    def validate_for_qat(self, checkpoint) -> None:
        """A QAT checkpoint exports as INT8 already: converting or quantizing it again is refused."""
        asked = [flag for flag, given in (("--fp16", self.fp16), ("--int8", self.int8),
                                          ("--target-agreement / --max-drop", self.auto_precision),
                                          ("--deepstream-calib-cache", self.deepstream_calib_cache)) if given]
        if asked:
            raise FgcliError(f"{checkpoint} is a QAT run: it exports as Q/DQ INT8 ({file_of(ONNX_INT8_QAT)}) with the ranges "
                             f"it was trained with, so {', '.join(asked)} has nothing to do",
                             hint=f"drop {', '.join(asked)} (add --trt to build its INT8 engine), or export the FP32 "
                                  "run it was fine-tuned from")


@dataclass
class ExportSummary:
    """export.json: every artifact written (keyed by its format name, see ``fgcli.formats``) and the notes."""

    out_dir: Path
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "artifacts": self.artifacts, "notes": self.notes}
