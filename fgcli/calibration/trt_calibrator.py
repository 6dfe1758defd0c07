"""TensorRT's legacy INT8 calibration (entropy calibrator 2) fed from calib.npz, with a reusable cache.

Implicit INT8 for a float32 ONNX on TensorRT 8.6 and 10.x only: the calibrator interface is deprecated
since 10.1 ("Superseded by explicit quantization") and gone in 11.0 (no ``IInt8EntropyCalibrator2`` in
``python/src/infer`` at tag v11.1), where INT8 comes from a Q/DQ ONNX instead. Entropy calibrator 2 is
"the required calibrator for DLA" (TensorRT C++ API reference).

The cache is the point of this module: calibrate once where calib.npz lives, copy the ONNX and the cache
to the device (a Jetson), and build there. TensorRT calls ``read_calibration_cache`` first and only asks
for batches when it returns nothing, so a build that finds the cache never opens calib.npz.

Interface (NVIDIA/TensorRT ``python/src/infer/pyInt8.cpp`` v8.6.1 / v10.16 and
``samples/python/efficientdet/build_engine.py``): subclass ``trt.IInt8EntropyCalibrator2``, call its
``__init__``, implement ``get_batch_size()``, ``get_batch(names) -> [device_ptr] | None``,
``read_calibration_cache() -> bytes | None`` and ``write_calibration_cache(cache)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fgcli.calibration.dataset import CREATE_HINT, load_calibration_set
from fgcli.errors import DataError, FgcliError
from fgcli.utils import atomic_path

log = logging.getLogger(__name__)


def load_calibration_images(path: str | Path, chw: tuple[int, int, int]) -> np.ndarray:
    """The images of calib.npz (``fgcli calib``), checked against the network input's (C, H, W)."""
    images = load_calibration_set(path).images
    if tuple(images.shape[1:]) != tuple(chw):
        raise DataError(f"{path}: images have shape {images.shape}, the network expects "
                        f"(N, {', '.join(map(str, chw))})", hint=CREATE_HINT + " at the model's image size")
    return images


def create_entropy_calibrator(trt, cache_path: str | Path | None, calib_data: str | Path | None,
                              chw: tuple[int, int, int], batch_size: int = 8, device: int = 0):
    """An ``IInt8EntropyCalibrator2`` instance reading ``calib_data`` batch by batch into device memory.

    The class is created here because its base class only exists once tensorrt is imported.
    """
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise FgcliError(
            f"TensorRT {trt.__version__} has no INT8 calibrator (removed in TensorRT 11).",
            hint="export a Q/DQ ONNX with `fgcli export CHECKPOINT --int8` and build that",
        )

    class NpzEntropyCalibrator(base):
        """Entropy calibrator 2 over calib.npz; ``prepare()`` loads the data, otherwise it loads lazily."""

        def __init__(self):
            base.__init__(self)  # pybind11 trampolines need the base constructor called explicitly
            self.cache_path = Path(cache_path) if cache_path is not None else None
            self.calib_data = Path(calib_data) if calib_data is not None else None
            self.batch_size = batch_size
            self.cache_read = False
            self.batches_fed = 0
            self._images: np.ndarray | None = None
            self._next = 0
            self._memory = None
            self._device_ptr = 0

        def has_cache(self) -> bool:
            return self.cache_path is not None and self.cache_path.is_file()

        def prepare(self) -> None:
            """Load calib.npz and allocate the device batch, so data errors surface before the build."""
            if self.calib_data is None:
                raise FgcliError("INT8 calibration needs calibration images, and there is no calibration cache"
                                 + (f" at {self.cache_path}" if self.cache_path else ""),
                                 hint="pass --calib-data calib.npz (made by `fgcli calib`) or an existing "
                                      "--calib-cache")
            from fgcli.runtime.tensorrt_runner import open_device_memory

            self._images = load_calibration_images(self.calib_data, chw)
            self.batch_size = min(self.batch_size, len(self._images))
            self._memory = open_device_memory(device)
            self._device_ptr = self._memory.alloc(self.batch_size * int(np.prod(chw)) * 4)

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names):
            if self._images is None:
                if self.calib_data is None:  # the cache was rejected and there is nothing to calibrate from
                    return None
                self.prepare()
            start, stop = self._next, self._next + self.batch_size
            if stop > len(self._images):  # a ragged last batch would not match the calibration profile
                return None
            self._memory.to_device(self._device_ptr, np.ascontiguousarray(self._images[start:stop], np.float32))
            self._memory.synchronize()
            self._next = stop
            self.batches_fed += 1
            log.info("calibration batch %d (%d/%d images)", self.batches_fed, stop, len(self._images))
            return [self._device_ptr]

        def read_calibration_cache(self):
            if not self.has_cache():
                return None
            self.cache_read = True
            log.info("using calibration cache %s", self.cache_path)
            return self.cache_path.read_bytes()

        def write_calibration_cache(self, cache) -> None:
            if self.cache_path is None:
                return
            with atomic_path(self.cache_path) as tmp:
                tmp.write_bytes(bytes(cache))
            log.info("wrote calibration cache %s", self.cache_path)

        def close(self) -> None:
            if self._memory is not None:
                self._memory.close()
                self._memory = None

    return NpzEntropyCalibrator()
