"""The installed extras fit together: `fgcli[onnx,quant]` must leave a working CPU onnxruntime.

nvidia-modelopt's own ``[onnx]`` extra installs onnxruntime-gpu, which shares the ``onnxruntime`` package
folder with onnxruntime (the last one installed overwrites the other's files, uninstalling either breaks
both), and pins an older onnx. fgcli's ``quant`` extra lists only what modelopt's ONNX PTQ imports.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_onnxruntime_imports_with_the_cpu_provider():
    import onnxruntime

    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()


def test_onnxruntime_gpu_is_not_installed_beside_onnxruntime():
    both = installed("onnxruntime") and installed("onnxruntime-gpu")
    assert not both, "onnxruntime and onnxruntime-gpu overwrite each other: pip uninstall -y onnxruntime-gpu " \
                     "onnxruntime && pip install onnxruntime (was nvidia-modelopt[onnx] installed?)"


def test_onnxruntime_runs_a_model_made_by_the_installed_onnx():
    """An onnx newer than onnxruntime writes an IR version onnxruntime refuses to load."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
    assert result.tolist() == [0.0, 2.0]


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None, reason="nvidia-modelopt not installed")
def test_modelopt_onnx_quantization_imports():
    """modelopt imports fine without its ONNX dependencies; the failure only shows on the ONNX path."""
    from modelopt.onnx.quantization import quantize

    assert callable(quantize)
