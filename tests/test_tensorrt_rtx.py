"""Real engine builds with TensorRT for RTX (``pip install 'fgcli[rtx]'``), which builds ahead of time without a
GPU: its ONNX parser and builder run here for real. Running an engine needs an RTX GPU (not tested here).
Skipped when tensorrt_rtx is not installed."""

from __future__ import annotations

import numpy as np
import pytest
from fake_tensorrt import write_classifier_onnx

from fgcli.errors import FgcliError
from fgcli.export.tensorrt import build_engine
from fgcli.runtime.tensorrt_runner import check_engine_compatible

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install 'fgcli[rtx]')")
PLAN_MAGIC_BYTES = 4  # a serialized plan starts with a 4-byte tag, never our JSON or zeros


def built(onnx, **options):
    info = build_engine(onnx, backend="tensorrt-rtx", batch=(1, 2, 4), **options)
    data = info.engine_path.read_bytes()
    assert len(data) > 1000 and data[:PLAN_MAGIC_BYTES] != b"\0" * PLAN_MAGIC_BYTES
    assert info.sidecar["backend"] == "tensorrt-rtx" and info.sidecar["tensorrt_version"] == trt.__version__
    return info


@pytest.mark.parametrize("kind, options", [("fp32", {}), ("fp16", {"fp16": True}), ("int8", {"qdq": True})])
def test_rtx_parses_and_builds_fp32_fp16_and_qdq_int8_without_a_gpu(tmp_path, kind, options):
    onnx = write_classifier_onnx(tmp_path / f"model.{kind}.onnx", **options)
    info = built(onnx)
    assert (info.precision, info.build_path) == (kind, "strongly-typed")
    assert info.engine_path == tmp_path / f"model.{kind}.engine"


def test_rtx_refuses_weak_typing_calibration_dla_timing_cache_and_unsupported_nodes(tmp_path):
    fp32 = write_classifier_onnx(tmp_path / "model.onnx")
    with pytest.raises(FgcliError, match="strongly typed networks only"):
        build_engine(fp32, precision="fp16", backend="tensorrt-rtx")
    with pytest.raises(FgcliError, match="strongly typed networks only"):
        build_engine(fp32, precision="int8", calib_data=tmp_path / "calib.npz", backend="tensorrt-rtx")
    custom = write_classifier_onnx(tmp_path / "custom.onnx", custom_op=True)
    with pytest.raises(FgcliError, match="could not parse (?s:.*)'fancy_norm' \\(FancyNorm\\): INVALID_NODE"):
        build_engine(custom, backend="tensorrt-rtx")
    with pytest.raises(FgcliError, match="has no DLA"):  # RTX's Builder.num_DLA_cores is 0
        build_engine(write_classifier_onnx(tmp_path / "model.fp16.onnx", fp16=True), backend="tensorrt-rtx", dla_core=0)
    with pytest.raises(FgcliError, match="no timing cache"):
        build_engine(fp32, backend="tensorrt-rtx", timing_cache=tmp_path / "timing.cache")


def test_cli_builds_with_the_rtx_backend(tmp_path):
    from typer.testing import CliRunner

    from fgcli.cli import app

    onnx = write_classifier_onnx(tmp_path / "model.int8.onnx", qdq=True)
    result = CliRunner().invoke(app, ["build", str(onnx), "--backend", "tensorrt-rtx", "--batch", "1,1,2"])
    assert result.exit_code == 0, result.output
    assert f"int8 engine (strongly-typed, TensorRT-RTX {trt.__version__}" in " ".join(result.output.split())
    assert (tmp_path / "model.int8.engine").is_file() and (tmp_path / "model.int8.engine.json").is_file()


def test_rtx_engine_is_portable_across_gpu_generations(tmp_path):
    """AOT engines run on any RTX GPU of CC 8.0+, so the sidecar check does not pin the build machine's GPU."""
    info = built(write_classifier_onnx(tmp_path / "model.onnx"))
    sidecar = {**info.sidecar, "gpu": {"name": "NVIDIA RTX A6000", "compute_capability": "8.6"}}
    check_engine_compatible(info.engine_path, sidecar, trt.__version__, {"name": "RTX 4090", "compute_capability": "8.9"})
    with pytest.raises(FgcliError, match="plans do not load across TensorRT versions"):
        check_engine_compatible(info.engine_path, sidecar, "1.0.0", {"name": "x", "compute_capability": "8.9"})


@pytest.mark.deploy
@pytest.mark.filterwarnings("ignore::fgcli.calibration.dataset.CalibrationWarning")
def test_every_method_exports_fp32_fp16_and_qdq_onnx_that_rtx_parses_and_builds(tmp_path):
    """resnet18 at 64 px, random init: every node of every method's three ONNX files must import."""
    torch = pytest.importorskip("torch")
    from fgcli.calibration.dataset import CalibrationSet
    from fgcli.calibration.modelopt_ptq import quantize_modelopt
    from fgcli.data.preprocess import PreprocessConfig
    from fgcli.training.checkpoint import save_checkpoint
    from fgcli.export.onnx import export_fp16, export_onnx
    from fgcli.models import create_model, list_models

    preprocess = PreprocessConfig(img_size=64, resize_size=73)
    images = np.random.default_rng(0).standard_normal((16, 3, 64, 64)).astype(np.float32)
    calib = CalibrationSet(images, np.arange(16) % 3, [f"i{i}.jpg" for i in range(16)], preprocess)
    for method in list_models():
        folder = tmp_path / method
        folder.mkdir()
        torch.manual_seed(0)
        model = create_model(method, 3, backbone="resnet18")
        checkpoint = save_checkpoint(folder / "best.pt", {
            "method": method, "backbone": "resnet18", "num_classes": 3, "class_names": ["a", "b", "c"],
            "model_kwargs": {}, "preprocess": preprocess.to_dict(), "model": model.state_dict()})
        fp32 = export_onnx(checkpoint, folder).path
        sources = {"fp32": fp32, "fp16": export_fp16(fp32).path,
                   "int8": quantize_modelopt(fp32, calib, folder / "model.int8.onnx").output_path}
        for precision, onnx in sources.items():
            assert built(onnx).precision == precision, (method, precision)
