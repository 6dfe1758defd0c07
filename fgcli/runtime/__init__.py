"""One way to run any fgcli model: ``open_runner(path)`` picks the backend from the file suffix.

Nothing here imports torch, onnxruntime or tensorrt at module level: a deployment box with only
onnxruntime (or only TensorRT) imports this package and the backend it needs.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.errors import FgcliError
from fgcli.devices import parse_device
from fgcli.runtime.base import Runner

RUNNER_SUFFIXES = {".pt": "PyTorch checkpoint", ".onnx": "ONNX model", ".engine": "TensorRT engine"}


def open_runner(path: str | Path, device: str = "auto", providers: list[str] | None = None,
                spin_wait: bool = True) -> Runner:
    """Load ``path`` (.pt, .onnx or .engine) on ``device`` ("auto", "cpu", "cuda", "cuda:N").

    ``providers`` (ONNX Runtime execution provider names) and ``spin_wait`` (see ``OnnxRunner``) apply to .onnx
    models only.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RUNNER_SUFFIXES:
        accepted = ", ".join(f"{s} ({kind})" for s, kind in RUNNER_SUFFIXES.items())
        raise FgcliError(f"cannot run {path}: unknown model file type '{suffix or path.name}'",
                         hint=f"pass one of: {accepted}")
    if not path.is_file():
        raise FgcliError(f"model file not found: {path}", hint="check the path (fgcli export writes DIR/model.onnx)")
    if providers and suffix != ".onnx":
        raise FgcliError(f"execution providers apply to .onnx models only, not {path.name}")
    if suffix == ".pt":
        from fgcli.runtime.torch_runner import TorchRunner

        return TorchRunner(path, device=device)
    if suffix == ".onnx":
        from fgcli.runtime.onnx_runner import OnnxRunner

        return OnnxRunner(path, device=device, providers=providers, spin_wait=spin_wait)
    return _open_engine(path, device)


def _open_engine(path: Path, device: str) -> Runner:
    """TensorRT engines run on a GPU only: "auto" / "cuda" mean GPU 0."""
    kind, index = parse_device(device)
    if kind == "cpu":
        raise FgcliError(f"{path.name} is a TensorRT engine, which runs on an NVIDIA GPU only",
                         hint="run the .onnx model on CPU instead (fgcli predict DIR/model.onnx --device cpu)")
    from fgcli.runtime.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(path, device=index)


__all__ = ["Runner", "open_runner", "RUNNER_SUFFIXES"]
