"""DeepStream: an nvinfer config (``config_infer_<name>.txt``) and its label file for an fgcli classifier.

Keys and values as DeepStream's Gst-nvinfer documentation gives them: ``network-type=1`` (classifier),
``network-mode`` 0 FP32 / 1 INT8 / 2 FP16, ``process-mode`` 1 primary (whole frames) / 2 secondary (objects of
an upstream detector), ``model-color-format=0`` (RGB), ``infer-dims`` C;H;W. nvinfer preprocesses each pixel
``x`` (0..255) as ``y = net-scale-factor * (x - offsets[c])``: one scale for every channel, so fgcli's
``(x / 255 - mean[c]) / std[c]`` fits only when the three std are equal. Otherwise export with
``embed_preprocess`` (the normalisation inside the ONNX, input 0..255): then the scale is 1 and the offsets 0.
The classifier label file holds one line per output layer with that layer's labels separated by ``;``
(nvinfer's ``parseLabelsFile``). Paths in the config are relative to it, as nvinfer resolves them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from fgcli.errors import FgcliError
from fgcli.export.tensorrt import default_engine_path
from fgcli.runtime.onnx_meta import read_onnx_metadata
from fgcli.utils import write_text_atomic

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
PROCESS_MODES = {"primary": 1, "secondary": 2}
#: std values closer than this count as one scalar (DeepStream's single net-scale-factor)
STD_TOLERANCE = 1e-6


@dataclass(frozen=True)
class DeepStreamFiles:
    config: Path
    labels: Path


def deploy_name(meta: dict) -> str:
    """A file- and Triton-safe model name from the ONNX metadata: ``<method>_<backbone>``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{meta.get('method') or 'model'}_{meta.get('backbone') or 'net'}")


def preprocess_to_nvinfer(preprocess: dict) -> tuple[float, list[float]]:
    """``(net-scale-factor, offsets)`` equal to fgcli's normalisation; raises when the std differ by channel."""
    mean, std = [float(v) for v in preprocess["mean"]], [float(v) for v in preprocess["std"]]
    if max(std) - min(std) > STD_TOLERANCE * max(std):
        raise FgcliError(
            f"DeepStream scales every channel by one net-scale-factor, but this model normalises with per-channel "
            f"std {std}", hint="export with --embed-preprocess: the normalisation goes into the ONNX graph")
    return 1.0 / (255.0 * std[0]), [255.0 * m for m in mean]


def write_deepstream_config(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    precision: str = "fp32",
    batch_size: int = 1,
    process_mode: str = "secondary",
    classifier_threshold: float = 0.0,
    maintain_aspect_ratio: bool = False,
    int8_calib_file: str | os.PathLike | None = None,
    name: str | None = None,
    gie_unique_id: int = 2,
) -> DeepStreamFiles:
    """Write ``config_infer_<name>.txt`` and ``labels_<name>.txt`` beside ``onnx_path``.

    ``engine_path``: the engine nvinfer loads (default: ``fgcli build``'s ``<model>.<precision>.engine``); when it
    is missing, nvinfer builds one from the ONNX. ``int8_calib_file``: a TensorRT calibration cache for the
    implicit INT8 path (an FP32 ONNX built in INT8); a Q/DQ ONNX (modelopt) needs none. ``classifier_threshold``
    is compared with the model's largest output, which is a logit (fgcli exports no softmax).
    """
    onnx_path = Path(onnx_path)
    if precision not in NETWORK_MODES:
        raise FgcliError(f"unknown precision '{precision}'", hint=f"use one of {', '.join(NETWORK_MODES)}")
    if process_mode not in PROCESS_MODES:
        raise FgcliError(f"unknown process mode '{process_mode}'", hint=f"use one of {', '.join(PROCESS_MODES)}")
    if int8_calib_file is not None and precision != "int8":
        raise FgcliError("a calibration cache only applies to INT8", hint="drop it, or ask for precision int8")
    meta = read_onnx_metadata(onnx_path)
    scale, offsets = preprocess_to_nvinfer(meta["preprocess"])
    bad = [c for c in meta["class_names"] if ";" in c or "\n" in c]
    if bad:
        raise FgcliError(f"class names {bad} contain ';' or a newline, which nvinfer's label file cannot hold",
                         hint="rename those class folders and retrain, or edit the label file by hand")
    name = name or deploy_name(meta)
    folder = onnx_path.parent
    labels = write_text_atomic(folder / f"labels_{name}.txt", ";".join(meta["class_names"]) + "\n")
    size = meta["preprocess"]["img_size"]
    engine = Path(engine_path) if engine_path else default_engine_path(onnx_path, precision)
    lines = [
        f"# nvinfer config for the fgcli {meta.get('method')} / {meta.get('backbone')} classifier "
        f"({len(meta['class_names'])} classes), written by fgcli {meta.get('version')}.",
        "# Output 'logits' (no softmax): classifier-threshold applies to the largest logit.",
        *(["# Q/DQ INT8 model: load the engine fgcli builds (model-engine-file); that nvinfer builds a Q/DQ ONNX",
           "# in INT8 by itself without int8-calib-file is not verified."] if precision == "int8"
          and int8_calib_file is None else []),
        "[property]",
        "gpu-id=0",
        f"net-scale-factor={scale:.10g}",
        f"offsets={';'.join(f'{o:.10g}' for o in offsets)}",
        "model-color-format=0",
        f"onnx-file={_relative(onnx_path, folder)}",
        f"model-engine-file={_relative(engine, folder)}",
        f"labelfile-path={labels.name}",
        f"batch-size={batch_size}",
        f"network-mode={NETWORK_MODES[precision]}",
        "network-type=1",
        f"process-mode={PROCESS_MODES[process_mode]}",
        f"gie-unique-id={gie_unique_id}",
        f"infer-dims=3;{size};{size}",
        f"maintain-aspect-ratio={int(maintain_aspect_ratio)}",
        f"classifier-threshold={classifier_threshold:g}",
        "output-blob-names=logits",
    ]
    if int8_calib_file is not None:
        lines.append(f"int8-calib-file={_relative(Path(int8_calib_file), folder)}")
    config = write_text_atomic(folder / f"config_infer_{name}.txt", "\n".join(lines) + "\n")
    return DeepStreamFiles(config=config, labels=labels)


def read_nvinfer_config(path: str | os.PathLike) -> dict[str, str]:
    """The ``[property]`` keys of an nvinfer config (GKeyFile syntax: ``key=value``, ``#`` comments)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return dict(parser["property"])


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(Path(os.path.relpath(path, folder)))
    except ValueError:  # another drive on Windows
        return str(path)
