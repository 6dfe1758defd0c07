"""Run an fgcli ONNX model with ONNX Runtime (no torch, no onnx package: a Jetson needs only onnxruntime).

The model carries everything needed to use it in its ``metadata_props`` (class names, preprocessing,
precision), so ``fgcli predict model.onnx`` needs no checkpoint; ``onnx_meta`` decodes them from the session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fgcli.data.preprocess import PreprocessConfig
from fgcli.devices import parse_device
from fgcli.errors import FgcliError
from fgcli.runtime.base import Runner
from fgcli.runtime.onnx_meta import EXPORT_HINT, decode_fgcli_metadata
from fgcli.utils import optional_import

#: ONNX Runtime (1.2x+) optimizer that quantizes, at load, the float weights of a Conv / Gemm / MatMul lying
#: between Q/DQ nodes: it undoes a node an INT8 model keeps in float on purpose. Measured (ORT 1.32): a conv
#: kept FP32 for its outlier weights came back INT8 and top-1 agreement with FP32 fell from 97 % to 3 %.
KEEPS_FLOAT_NODES_OFF = ["WeightBiasQuantization"]
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ORT_DEVICES = ("auto", "cpu", "cuda", "tensorrt")


def select_providers(available: list[str], device: str = "auto", providers: list[str] | None = None) -> list[str]:
    """Execution providers to ask ONNX Runtime for, best first, CPU always last as the fallback.

    ``providers`` (explicit) wins over ``device``; "auto" takes CUDA when this onnxruntime build has it,
    "cuda" requires it, "tensorrt" asks for the TensorRT EP (then CUDA), "cpu" takes CPU only.
    """
    if providers:
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise FgcliError(f"ONNX Runtime has no {', '.join(unknown)} here",
                             hint=f"available providers: {', '.join(available)}")
        return list(dict.fromkeys([*providers, CPU]))
    kind, _ = parse_device(device, allowed=ORT_DEVICES)
    wanted = {"cpu": [], "auto": [CUDA], "cuda": [CUDA], "tensorrt": [TENSORRT, CUDA]}[kind]
    if kind in ("cuda", "tensorrt") and wanted[0] not in available:
        raise FgcliError(
            f"--device {device} needs ONNX Runtime's {wanted[0]}, but this onnxruntime only has "
            f"{', '.join(available)}", hint="pip install onnxruntime-gpu (matching your CUDA), or use --device cpu")
    return [p for p in wanted if p in available] + [CPU]


def _open_session(ort, path: Path, device: str, providers: list[str] | None, spin_wait: bool = True):
    """An InferenceSession on the chosen providers; refuses a silent CPU fallback when a GPU was asked for."""
    chosen = select_providers(ort.get_available_providers(), device, providers)
    kind, device_index = parse_device(device, allowed=ORT_DEVICES)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the provider in use is reported through the runner's name
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=chosen, disabled_optimizers=KEEPS_FLOAT_NODES_OFF,
            provider_options=[{"device_id": device_index} if p in (CUDA, TENSORRT) else {} for p in chosen])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid files
        raise FgcliError(f"ONNX Runtime cannot load {path}: {exc}", hint=EXPORT_HINT) from exc
    gpu_required = bool(providers) or kind in ("cuda", "tensorrt")
    if gpu_required and chosen[0] != CPU and session.get_providers()[0] == CPU:
        raise FgcliError(f"ONNX Runtime could not start {chosen[0]} for {path} (missing CUDA/cuDNN libraries?)",
                         hint="install the CUDA and cuDNN versions your onnxruntime-gpu needs, or use --device cpu")
    return session


def _fixed(dim) -> int | None:
    """A graph dimension as an int; None when it is symbolic ("batch") or unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


def check_graph_matches_metadata(path: Path, inputs, outputs, chw: tuple[int, int, int], num_classes: int) -> None:
    """Refuse a model whose fgcli metadata does not describe its graph: its predictions would carry the wrong
    class names (shifted by the difference) or fail on the first batch."""
    if len(inputs) != 1 or len(outputs) < 1:
        raise FgcliError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; fgcli models have one "
                         "images input and a logits output", hint=EXPORT_HINT)
    input_shape, output_shape = list(inputs[0].shape), list(outputs[0].shape)
    if len(input_shape) != 4 or any(_fixed(g) not in (None, want) for g, want in zip(input_shape[1:], chw)):
        raise FgcliError(f"{path}: its graph input {inputs[0].name} is {input_shape}, but its fgcli metadata "
                         f"says images of (batch, {', '.join(map(str, chw))})", hint=EXPORT_HINT)
    if len(output_shape) != 2 or _fixed(output_shape[1]) not in (None, num_classes):
        raise FgcliError(f"{path}: its graph output {outputs[0].name} is {output_shape}, but its fgcli metadata "
                         f"lists {num_classes} class names; every prediction would carry the wrong name",
                         hint=EXPORT_HINT)


class OnnxRunner(Runner):
    """Runner over an ONNX Runtime session; the name records the provider that actually runs the graph."""

    def __init__(self, path: str | Path, device: str = "auto", providers: list[str] | None = None,
                 spin_wait: bool = True):
        """``spin_wait=False``: ONNX Runtime's threads sleep after a call instead of busy-waiting for the next
        one. Busy-waiting helps a model that runs alone, and steals the cores from whatever runs next: measured
        on 2 cores, a PyTorch call right after an ORT call took 22 ms instead of 9.8 ms."""
        ort = optional_import("onnxruntime", "onnx", f"Running the ONNX model {path}")
        self.path = Path(path)
        self._session = _open_session(ort, self.path, device, providers, spin_wait)
        active = self._session.get_providers()[0]
        meta = decode_fgcli_metadata(self._session.get_modelmeta().custom_metadata_map, self.path)
        super().__init__(name=f"onnxruntime:{active}", class_names=meta["class_names"],
                         preprocess=PreprocessConfig.from_dict(meta["preprocess"], self.path),
                         precision=meta["precision"])
        self.metadata = meta
        self._device = "cpu" if active == CPU else f"cuda:{parse_device(device, allowed=ORT_DEVICES)[1]}"
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self._input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._chw = (3, self.preprocess.img_size, self.preprocess.img_size)
        check_graph_matches_metadata(self.path, self._session.get_inputs(), self._session.get_outputs(),
                                     self._chw, len(self.class_names))

    @property
    def placement(self) -> tuple[str, str]:
        return self._device, self.name.split(":", 1)[1]

    def run(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self._chw:
            raise FgcliError(f"{self.path.name} expects images of shape (B, {', '.join(map(str, self._chw))}), "
                             f"got {images.shape}")
        feed = {self._input_name: np.ascontiguousarray(images, dtype=self._input_dtype)}
        logits = self._session.run(None, feed)[0]
        if logits.ndim != 2 or logits.shape[1] != len(self.class_names):
            raise FgcliError(f"{self.path} returned logits of shape {logits.shape}, but its fgcli metadata lists "
                             f"{len(self.class_names)} class names", hint=EXPORT_HINT)
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        self._session = None


def onnxruntime_logits(path: str | Path, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Logits of an ONNX model on ONNX Runtime CPU: the platform every export check and INT8 measurement compares
    on (the same kernels for every model compared)."""
    with OnnxRunner(path, device="cpu") as runner:
        return np.concatenate([runner.run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
