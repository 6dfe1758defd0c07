"""Faithful fakes of the ``tensorrt`` module (8.6 / 10.x / 11.x) and of cuda-python, for tests without a GPU."""

from __future__ import annotations

import sys

from .cuda import FakeCuda
from .log import CallLog
from .onnx_models import write_classifier_onnx
from .trt import fake_logits, make_fake_tensorrt

__all__ = ["CallLog", "FakeCuda", "fake_logits", "install_fakes", "make_fake_tensorrt", "write_classifier_onnx"]


def install_fakes(monkeypatch, version: str, *, num_dla_cores: int = 0, cuda: FakeCuda | None = None,
                  recorder: set | None = None):
    """Put a fake tensorrt ``version`` and a fake cuda-python into ``sys.modules``; returns (trt, cuda).
    ``recorder`` collects the TensorRT names fgcli looks up (see ``make_fake_tensorrt``)."""
    cuda = cuda if cuda is not None else FakeCuda()
    trt = make_fake_tensorrt(version, cuda, num_dla_cores=num_dla_cores, recorder=recorder)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, module in cuda.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return trt, cuda
