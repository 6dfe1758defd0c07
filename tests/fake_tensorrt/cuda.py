"""Fake of cuda-python's runtime module (``cuda.bindings.runtime``) with device memory kept in host RAM.

The surface mirrors cuda-bindings 13.5 as installed in this venv: every call returns a tuple whose first
item is a ``cudaError_t`` (an int enum), ``cudaMalloc`` gives an int pointer, ``cudaStream_t`` supports
``int()``, ``cudaDeviceProp.name`` is bytes, and ``cudaMemcpyAsync(dst, src, count, kind, stream)`` takes
host addresses as ints (``ndarray.ctypes.data``). Host memory is read and written through those addresses.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum
from types import ModuleType, SimpleNamespace

from .log import CallLog


class cudaError_t(IntEnum):  # noqa: N801 - names as in cuda-python
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:  # noqa: N801
    def __init__(self, handle: int = 0):
        self._handle = handle

    def __int__(self) -> int:
        return self._handle

    __index__ = __int__

    def getPtr(self) -> int:  # noqa: N802
        return self._handle


class FakeCuda:
    """One fake GPU: a heap of device allocations, live streams, and the module objects to install."""

    def __init__(self, name: str = "NVIDIA Jetson AGX Orin", capability: tuple[int, int] = (8, 7),
                 log: CallLog | None = None, driver: bool = True):
        """``driver=False``: cuda-python installed on a machine without an NVIDIA driver (a build server)."""
        self.name, self.capability, self.driver = name, capability, driver
        self.log = log if log is not None else CallLog()
        self.heap: dict[int, bytearray] = {}
        self.streams: set[int] = set()
        self._next_ptr = 0x7F00_0000_0000
        self._next_stream = 0x5000
        self.runtime = self._runtime_module()

    def _region(self, ptr: int, nbytes: int) -> tuple[bytearray, int]:
        for base, block in self.heap.items():
            if base <= ptr and ptr + nbytes <= base + len(block):
                return block, ptr - base
        raise ValueError(f"fake CUDA: {nbytes} bytes at {ptr:#x} are not inside one device allocation")

    def read(self, ptr: int, nbytes: int) -> bytes:
        block, offset = self._region(ptr, nbytes)
        return bytes(block[offset:offset + nbytes])

    def write(self, ptr: int, data: bytes) -> None:
        block, offset = self._region(ptr, len(data))
        block[offset:offset + len(data)] = data

    def modules(self) -> dict[str, ModuleType]:
        """``sys.modules`` entries that make ``import cuda.bindings.runtime`` return this fake."""
        cuda, bindings = ModuleType("cuda"), ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, self.runtime
        return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": self.runtime}

    def _runtime_module(self) -> ModuleType:
        fake = self
        ok = cudaError_t.cudaSuccess
        module = ModuleType("cuda.bindings.runtime")
        module.cudaError_t, module.cudaMemcpyKind, module.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t

        def cudaGetErrorName(error):  # noqa: N802
            return ok, cudaError_t(error).name.encode()

        def cudaSetDevice(device: int):  # noqa: N802
            fake.log.add("cudaSetDevice", device)
            return (ok,) if device == 0 else (cudaError_t.cudaErrorInvalidDevice,)

        def cudaGetDeviceProperties(device: int):  # noqa: N802
            if not fake.driver:
                return cudaError_t.cudaErrorInsufficientDriver, None
            if device != 0:
                return cudaError_t.cudaErrorInvalidDevice, None
            prop = SimpleNamespace(name=fake.name.encode(), major=fake.capability[0], minor=fake.capability[1])
            return ok, prop

        def cudaMalloc(size: int):  # noqa: N802
            fake.log.add("cudaMalloc", size)
            if size <= 0:
                return cudaError_t.cudaErrorInvalidValue, 0
            ptr = fake._next_ptr
            fake.heap[ptr] = bytearray(size)
            fake._next_ptr += (size + 255) // 256 * 256 + 256
            return ok, ptr

        def cudaFree(ptr):  # noqa: N802
            fake.log.add("cudaFree", int(ptr))
            return (ok,) if fake.heap.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidDevicePointer,)

        def cudaStreamCreate():  # noqa: N802
            fake._next_stream += 16
            fake.streams.add(fake._next_stream)
            return ok, cudaStream_t(fake._next_stream)

        def _live(stream) -> bool:
            return int(stream) in fake.streams

        def cudaStreamSynchronize(stream):  # noqa: N802
            fake.log.add("cudaStreamSynchronize")
            return (ok,) if _live(stream) else (cudaError_t.cudaErrorInvalidResourceHandle,)

        def cudaStreamDestroy(stream):  # noqa: N802
            if not _live(stream):
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            fake.streams.discard(int(stream))
            return (ok,)

        def cudaMemcpyAsync(dst, src, count: int, kind, stream):  # noqa: N802
            fake.log.add("cudaMemcpyAsync", cudaMemcpyKind(kind).name, count)
            if not _live(stream):
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            try:
                if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
                    fake.write(int(dst), ctypes.string_at(int(src), count))
                elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
                    ctypes.memmove(int(dst), fake.read(int(src), count), count)
                else:
                    return (cudaError_t.cudaErrorInvalidValue,)
            except ValueError:
                return (cudaError_t.cudaErrorInvalidValue,)
            return (ok,)

        for function in (cudaGetErrorName, cudaSetDevice, cudaGetDeviceProperties, cudaMalloc, cudaFree,
                         cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy, cudaMemcpyAsync):
            setattr(module, function.__name__, function)
        return module
