"""Run a TensorRT engine built by ``fgcli build`` (TensorRT 8.6, 10.x, 11.x). No torch or tensorrt import here.

The engine is a plain serialized plan; ``<engine>.json`` beside it (written by the builder) carries the
class names, preprocessing, TensorRT version and GPU compute capability, so nothing else is needed.
A plan only loads on the TensorRT version and GPU generation that built it, so both are checked first
and a mismatch asks for a rebuild instead of failing inside TensorRT.

I/O API, read from NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` at tags v8.6.1, v10.0.0, v10.16, v11.1:
- The binding API (``num_bindings``, ``get_binding_name``, ``binding_is_input``, ``get_binding_dtype``,
  ``get_profile_shape(profile_index, binding)``, ``set_binding_shape``, ``execute_async_v2(bindings,
  stream_handle)``) is deprecated in 8.5/8.6 and removed in 10.0.
- The named-tensor API (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``,
  ``get_tensor_profile_shape(name, profile_index)``, ``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3(stream_handle)``) exists from 8.5 on.
The binding API is used where the engine still has ``num_bindings`` (TensorRT < 10), as Ultralytics'
``AutoBackend`` does, and named tensors otherwise. ``Runtime.DLA_core`` is set before deserializing a DLA
engine (also as AutoBackend does).

Device memory: cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` in old releases), following
``samples/python/common_runtime.py`` (v11.1): ``cudaMalloc``, ``cudaMemcpyAsync``, ``cudaStreamCreate``;
each call returns ``(cudaError_t, value...)``. PyTorch with CUDA is the fallback when cuda-python is absent.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.runtime.base import Runner
from fgcli.utils import read_json_object

MIN_TENSORRT = (8, 6)
REBUILD_HINT = "rebuild the engine on this machine: fgcli build {onnx} --precision {precision}"
# Builder/runtime libraries: TensorRT, and TensorRT for RTX (`import tensorrt_rtx`, its own 1.x versions;
# TensorRT 11's strongly typed API, engines built ahead of time without a GPU, portable across RTX GPUs).
TENSORRT, TENSORRT_RTX = "tensorrt", "tensorrt-rtx"
BACKEND_MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx"}
NO_GPU_ERRORS = ("cudaErrorNoDevice", "cudaErrorInsufficientDriver")


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.int8.engine`` -> ``model.int8.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def import_tensorrt(purpose: str, backend: str = TENSORRT):
    """Import tensorrt (or tensorrt_rtx) lazily; say where to install it and that engines are built on the target."""
    if backend not in BACKEND_MODULES:
        raise FgcliError(f"unknown TensorRT backend {backend!r}", hint=f"use one of {', '.join(BACKEND_MODULES)}")
    module = BACKEND_MODULES[backend]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        error = MissingDependencyError.from_import_error(module, "rtx" if backend == TENSORRT_RTX else "trt", purpose,
                                                         exc)
        if getattr(error, "package", None) != module:  # installed, but broken or missing one of its own imports
            raise error from exc
        if backend == TENSORRT_RTX:
            error.hint = "pip install 'fgcli[rtx]' (TensorRT for RTX from PyPI; builds engines without a GPU)"
            raise error from exc
        error.hint = (
            "install TensorRT on the machine that runs the engine (JetPack ships it; on x86: pip install "
            "tensorrt), copy the .onnx there and run `fgcli build model.onnx` on that machine: engines only "
            "run on the TensorRT version and GPU that built them"
        )
        raise error from exc


def backend_of(trt) -> str:
    """Which library an imported module is: TensorRT or TensorRT for RTX."""
    return TENSORRT_RTX if str(trt.__name__).split(".")[0] == BACKEND_MODULES[TENSORRT_RTX] else TENSORRT


def tensorrt_version(trt) -> tuple[int, int]:
    """(major, minor) of the imported tensorrt; refuses TensorRT older than 8.6 (any TensorRT-RTX is fine)."""
    parts = str(trt.__version__).split(".")
    version = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    if backend_of(trt) == TENSORRT and version < MIN_TENSORRT:
        raise FgcliError(
            f"TensorRT {trt.__version__} is too old: fgcli needs TensorRT 8.6 or newer.",
            hint="upgrade TensorRT (JetPack 6.0 ships 8.6, JetPack 6.1+ ships 10.3)",
        )
    return version


def _import_cudart():
    """cuda-python's runtime module, or None when cuda-python is not installed."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _import_cuda_torch():
    """torch when it is installed with a usable CUDA device, else None (imported only as a fallback)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _cuda_call(cudart, result: tuple, what: str):
    """Unpack a cuda-python ``(error, *values)`` result, raising a readable error when it failed."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(error)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise FgcliError(
            f"CUDA call {what} failed with {name}.",
            hint="check the NVIDIA driver and that cuda-python matches the installed CUDA major version",
        )
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_device_info(device: int = 0) -> dict[str, str]:
    """Name and compute capability of a GPU, for the sidecar and the load-time check.

    Uses cuda-python, else torch.cuda; ``"unknown"`` when neither can see a GPU (cuda-python on a machine
    without a driver or GPU, where TensorRT for RTX still builds engines).
    """
    cudart = _import_cudart()
    if cudart is not None:
        result = cudart.cudaGetDeviceProperties(device)
        no_gpu = {getattr(cudart.cudaError_t, name, None) for name in NO_GPU_ERRORS}
        if result[0] in no_gpu:
            return {"name": "unknown", "compute_capability": "unknown"}
        prop = _cuda_call(cudart, result, "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {"name": name.rstrip("\x00"), "compute_capability": f"{prop.major}.{prop.minor}"}
    torch = _import_cuda_torch()
    if torch is not None:
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
    return {"name": "unknown", "compute_capability": "unknown"}


class _CudaPythonMemory:
    """Device buffers and one stream through cuda-python."""

    backend = "cuda-python"

    def __init__(self, cudart, device: int):
        self._cudart = cudart
        self._call(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._stream = self._call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream_handle = int(self._stream)
        self._buffers: list[int] = []

    def _call(self, result: tuple, what: str):
        return _cuda_call(self._cudart, result, what)

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._call(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
        self._buffers.append(ptr)
        return ptr

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        """Enqueue a host-to-device copy. A pageable source is staged before the call returns
        (CUDA runtime API, "API synchronization behavior"), so ``host`` may be freed afterwards."""
        host = np.ascontiguousarray(host)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self._stream),
                   "cudaMemcpyAsync")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        """Copy device memory into the C-contiguous ``host`` array once the stream's work is done."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self._stream),
                   "cudaMemcpyAsync")
        self.synchronize()

    def synchronize(self) -> None:
        self._call(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._buffers:
            self._call(self._cudart.cudaFree(ptr), "cudaFree")
        self._buffers = []
        if self._stream is not None:
            self._call(self._cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class _TorchMemory:
    """The same interface over torch CUDA tensors, for machines with PyTorch but no cuda-python."""

    backend = "torch"

    def __init__(self, torch, device: int):
        self._torch = torch
        self._device = torch.device("cuda", device)
        self._stream = torch.cuda.Stream(device=self._device)
        self.stream_handle = int(self._stream.cuda_stream)
        self._buffers: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        buffer = self._torch.empty(nbytes, dtype=self._torch.uint8, device=self._device)
        self._buffers[buffer.data_ptr()] = buffer
        return buffer.data_ptr()

    def _bytes_of(self, array: np.ndarray):
        return self._torch.from_numpy(array.reshape(-1).view(np.uint8))

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        source = self._bytes_of(np.ascontiguousarray(host))
        with self._torch.cuda.stream(self._stream):
            self._buffers[ptr][: source.numel()].copy_(source)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        target = self._bytes_of(host)
        with self._torch.cuda.stream(self._stream):
            target.copy_(self._buffers[ptr][: target.numel()])
        self.synchronize()

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self._buffers.clear()


def open_device_memory(device: int = 0):
    """Device memory + one stream on ``device``: ``alloc(nbytes) -> ptr``, ``to_device(ptr, array)``,
    ``to_host(array, ptr)`` (synchronizes), ``synchronize()``, ``stream_handle``, ``close()``."""
    cudart = _import_cudart()
    if cudart is not None:
        return _CudaPythonMemory(cudart, device)
    torch = _import_cuda_torch()
    if torch is not None:
        return _TorchMemory(torch, device)
    error = MissingDependencyError("cuda-python", "trt", "Moving data to and from a TensorRT engine")
    error.hint = "pip install 'cuda-python>=12' (same CUDA major version as TensorRT), or PyTorch with CUDA"
    raise error


def read_sidecar(engine_path: str | Path) -> dict:
    """The builder's ``<engine>.json``: without it the class names and preprocessing are unknown."""
    path = sidecar_path(engine_path)
    try:
        sidecar = read_json_object(path, hint="rebuild the engine with `fgcli build`")
    except FileNotFoundError:
        raise FgcliError(
            f"{path} is missing: it describes {Path(engine_path).name} (class names, preprocessing, TensorRT "
            "version).", hint="build engines with `fgcli build model.onnx`, which writes both files",
        ) from None
    missing = {"tensorrt_version", "gpu", "precision", "onnx", "fgcli"} - sidecar.keys()
    if missing:
        raise FgcliError(f"{path} lacks {sorted(missing)}", hint="rebuild the engine with `fgcli build`")
    not_objects = [key for key in ("gpu", "onnx", "fgcli") if not isinstance(sidecar[key], dict)]
    if not_objects:
        raise FgcliError(f"{path}: {', '.join(not_objects)} should each be a JSON object",
                         hint="rebuild the engine with `fgcli build`")
    missing = {"class_names", "preprocess"} - sidecar["fgcli"].keys()
    if missing:
        raise FgcliError(f"{path} lacks fgcli.{', fgcli.'.join(sorted(missing))}",
                         hint="rebuild the engine with `fgcli build`")
    return sidecar


def check_engine_compatible(engine_path: str | Path, sidecar: dict, trt_version: str, gpu: dict) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU generation."""
    hint = REBUILD_HINT.format(onnx=sidecar["onnx"].get("file", "model.onnx"), precision=sidecar["precision"])
    if sidecar["tensorrt_version"] != trt_version:
        raise FgcliError(
            f"{engine_path} was built with TensorRT {sidecar['tensorrt_version']}, but this machine has "
            f"TensorRT {trt_version}; plans do not load across TensorRT versions.", hint=hint,
        )
    built_cc = sidecar["gpu"].get("compute_capability", "unknown")
    here_cc = gpu["compute_capability"]
    portable = sidecar.get("backend") == TENSORRT_RTX  # AOT engines run on any RTX GPU of CC 8.0+ (the JIT step)
    if not portable and "unknown" not in (built_cc, here_cc) and built_cc != here_cc:
        raise FgcliError(
            f"{engine_path} was built for compute capability {built_cc} ({sidecar['gpu'].get('name')}), but "
            f"this GPU ({gpu['name']}) has {here_cc}; plans are specific to the GPU generation.", hint=hint,
        )


def _single_io(engine_path: Path, names: list[str], is_input) -> tuple[str, str]:
    inputs = [n for n in names if is_input(n)]
    outputs = [n for n in names if not is_input(n)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise FgcliError(f"{engine_path} has inputs {inputs} and outputs {outputs}; fgcli engines have one "
                         "images input and one logits output", hint="build it from an `fgcli export` ONNX")
    return inputs[0], outputs[0]


class _BindingIO:
    """TensorRT < 10: binding indices, ``set_binding_shape`` and ``execute_async_v2``."""

    api = "bindings"

    def __init__(self, trt, engine, context, engine_path: Path):
        self._context = context
        names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        input_name, output_name = _single_io(engine_path, names, lambda n: engine.binding_is_input(names.index(n)))
        self._input, self._output = names.index(input_name), names.index(output_name)
        self._bindings = [0] * engine.num_bindings
        self.input_dtype = np.dtype(trt.nptype(engine.get_binding_dtype(self._input)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_binding_dtype(self._output)))
        self.profile = [tuple(shape) for shape in engine.get_profile_shape(0, self._input)]

    def bind(self, input_ptr: int, output_ptr: int) -> None:
        self._bindings[self._input], self._bindings[self._output] = input_ptr, output_ptr

    def set_input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Set the batch shape; returns the resulting output shape."""
        if not self._context.set_binding_shape(self._input, shape):
            raise FgcliError(f"TensorRT rejected input shape {shape} (profile {self.profile})")
        return tuple(self._context.get_binding_shape(self._output))

    def execute(self, stream_handle: int) -> bool:
        return self._context.execute_async_v2(self._bindings, stream_handle)


class _NamedTensorIO:
    """TensorRT >= 10 (and 8.5+): tensor names, ``set_input_shape`` and ``execute_async_v3``."""

    api = "named-tensors"

    def __init__(self, trt, engine, context, engine_path: Path):
        self._context = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input, self._output = _single_io(
            engine_path, names, lambda n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._input)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._output)))
        self.profile = [tuple(shape) for shape in engine.get_tensor_profile_shape(self._input, 0)]

    def bind(self, input_ptr: int, output_ptr: int) -> None:
        for name, ptr in ((self._input, input_ptr), (self._output, output_ptr)):
            if not self._context.set_tensor_address(name, ptr):
                raise FgcliError(f"TensorRT rejected the device address of tensor '{name}'")

    def set_input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not self._context.set_input_shape(self._input, shape):
            raise FgcliError(f"TensorRT rejected input shape {shape} (profile {self.profile})")
        return tuple(self._context.get_tensor_shape(self._output))

    def execute(self, stream_handle: int) -> bool:
        return self._context.execute_async_v3(stream_handle)


class TensorRTRunner(Runner):
    """Runner over a TensorRT engine; batches larger than the profile's max are run in chunks."""

    def __init__(self, engine_path: str | Path, device: int = 0):
        self.engine_path = Path(engine_path)
        self.sidecar = read_sidecar(self.engine_path)
        trt = import_tensorrt("Running a TensorRT engine", self.sidecar.get("backend", TENSORRT))
        tensorrt_version(trt)
        check_engine_compatible(self.engine_path, self.sidecar, str(trt.__version__), cuda_device_info(device))
        self._memory = None
        meta = self.sidecar["fgcli"]
        super().__init__(
            name=f"tensorrt:{self._device_label(device)}", class_names=list(meta["class_names"]),
            preprocess=PreprocessConfig.from_dict(meta["preprocess"], self.engine_path),
            precision=self.sidecar["precision"],
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.sidecar.get("dla_core") is not None:
            self._runtime.DLA_core = int(self.sidecar["dla_core"])
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise FgcliError(f"TensorRT could not load {self.engine_path} (corrupt or foreign plan)",
                             hint=REBUILD_HINT.format(onnx=self.sidecar["onnx"].get("file", "model.onnx"),
                                                      precision=self.sidecar["precision"]))
        self._context = self._engine.create_execution_context()
        io_class = _BindingIO if hasattr(self._engine, "num_bindings") else _NamedTensorIO
        self._io = io_class(trt, self._engine, self._context, self.engine_path)
        min_shape, opt_shape, max_shape = self._io.profile
        self._min_batch, self._max_batch, self._chw = min_shape[0], max_shape[0], tuple(max_shape[1:])
        expected_chw = (3, self.preprocess.img_size, self.preprocess.img_size)
        if self._chw != expected_chw:
            raise FgcliError(f"{self.engine_path} takes images of {self._chw}, but its sidecar's preprocessing gives "
                             f"{expected_chw}", hint="rebuild the engine with `fgcli build`")
        num_outputs = self._io.set_input_shape(tuple(opt_shape))[1]
        if num_outputs != len(self.class_names):
            raise FgcliError(f"{self.engine_path} outputs {num_outputs} logits but its sidecar lists "
                             f"{len(self.class_names)} classes", hint="rebuild the engine with `fgcli build`")
        self._memory = open_device_memory(device)
        try:
            self._input_ptr = self._memory.alloc(int(np.prod(max_shape)) * self._io.input_dtype.itemsize)
            self._output_ptr = self._memory.alloc(self._max_batch * num_outputs * self._io.output_dtype.itemsize)
            self._io.bind(self._input_ptr, self._output_ptr)
        except BaseException:
            self.close()
            raise

    def _device_label(self, device: int) -> str:
        dla_core = self.sidecar.get("dla_core")
        return f"dla{dla_core}" if dla_core is not None else f"cuda:{device}"

    @property
    def placement(self) -> tuple[str, str]:
        backend = "TensorRT-RTX" if self.sidecar.get("backend") == TENSORRT_RTX else "TensorRT"
        return self.name.split(":", 1)[1], f"{backend} {self.sidecar['tensorrt_version']}"

    @property
    def io_api(self) -> str:
        """"bindings" (TensorRT < 10) or "named-tensors"."""
        return self._io.api

    def run(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self._chw:
            raise FgcliError(f"{self.engine_path.name} expects images of shape (B, {', '.join(map(str, self._chw))}),"
                             f" got {images.shape}")
        chunks = [self._run_chunk(images[start:start + self._max_batch])
                  for start in range(0, len(images), self._max_batch)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.class_names)), np.float32)

    def _run_chunk(self, images: np.ndarray) -> np.ndarray:
        count = len(images)
        if count < self._min_batch:  # the profile cannot run smaller batches: pad, then drop the padding
            padding = np.zeros((self._min_batch - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        host_input = np.ascontiguousarray(images, dtype=self._io.input_dtype)
        host_output = np.empty(self._io.set_input_shape(host_input.shape), dtype=self._io.output_dtype)
        self._memory.to_device(self._input_ptr, host_input)
        if not self._io.execute(self._memory.stream_handle):
            raise FgcliError(f"TensorRT failed to run {self.engine_path.name}")
        self._memory.to_host(host_output, self._output_ptr)
        return host_output[:count].astype(np.float32)

    def close(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory = None
        self._context = self._engine = self._runtime = None
