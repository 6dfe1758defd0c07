"""TensorRTRunner against the fake TensorRT and fake cuda-python: API choice per version, data path, refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fake_tensorrt import FakeCuda, fake_logits, install_fakes, write_classifier_onnx

from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.export.tensorrt import build_engine
from fgcli.runtime.tensorrt_runner import TensorRTRunner

BINDING_CALLS = {"context.set_binding_shape", "context.execute_async_v2", "engine.get_profile_shape"}
NAMED_CALLS = {"context.set_input_shape", "context.set_tensor_address", "context.execute_async_v3",
               "engine.get_tensor_profile_shape"}


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, 8, 8)).astype(np.float32)


def built_engine(monkeypatch, tmp_path, version: str, cuda: FakeCuda | None = None, **build):
    """Build model.onnx with fake TensorRT ``version``; returns the engine path and the fake GPU."""
    _, cuda = install_fakes(monkeypatch, version, cuda=cuda, num_dla_cores=build.pop("num_dla_cores", 0))
    onnx = write_classifier_onnx(tmp_path / "model.onnx", fp16=build.pop("fp16", False))
    return build_engine(onnx, **build).engine_path, cuda


@pytest.mark.parametrize("version, api, used, unused", [
    ("8.6.1", "bindings", BINDING_CALLS, NAMED_CALLS),
    ("10.3.0", "named-tensors", NAMED_CALLS, BINDING_CALLS),
    ("11.1.0", "named-tensors", NAMED_CALLS, BINDING_CALLS),
])
def test_runner_picks_the_io_api_of_the_version_and_returns_engine_outputs(monkeypatch, tmp_path, version, api,
                                                                          used, unused):
    engine, cuda = built_engine(monkeypatch, tmp_path, version, batch=(1, 4, 4))
    cuda.log.clear()
    batch = images(3)
    with TensorRTRunner(engine) as runner:
        logits = runner.run(batch)
        assert runner.io_api == api
        assert (runner.name, runner.precision) == ("tensorrt:cuda:0", "fp32")
        assert runner.class_names == ["alpha", "beta", "gamma"]
    np.testing.assert_allclose(logits, fake_logits(batch, 3), rtol=1e-6)
    assert logits.dtype == np.float32 and logits.shape == (3, 3)
    calls = set(cuda.log.calls())
    assert used <= calls and not unused & calls


def test_batches_beyond_the_profile_run_in_chunks_and_small_ones_are_padded(monkeypatch, tmp_path):
    engine, cuda = built_engine(monkeypatch, tmp_path, "10.3.0", batch=(2, 2, 4))
    batch = images(9, seed=1)
    with TensorRTRunner(engine) as runner:
        cuda.log.clear()
        logits = runner.run(batch)
        single = runner.run(batch[:1])
    np.testing.assert_allclose(logits, fake_logits(batch, 3), rtol=1e-6)
    np.testing.assert_allclose(single, fake_logits(batch[:1], 3), rtol=1e-6)
    shapes = [args[1][0] for args in cuda.log.args("context.set_input_shape")]
    assert shapes == [4, 4, 2, 2]  # 9 = 4 + 4 + 1 (padded to the profile minimum of 2), then 1 -> 2


def test_float16_engine_io_is_converted(monkeypatch, tmp_path):
    engine, _ = built_engine(monkeypatch, tmp_path, "10.3.0", fp16=True)
    batch = images(2, seed=2)
    with TensorRTRunner(engine) as runner:
        logits = runner.run(batch)
    expected = fake_logits(batch.astype(np.float16), 3).astype(np.float16).astype(np.float32)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-3)


def test_wrong_image_shape_is_refused(monkeypatch, tmp_path):
    engine, _ = built_engine(monkeypatch, tmp_path, "10.3.0")
    with TensorRTRunner(engine) as runner, pytest.raises(FgcliError, match=r"expects images of shape \(B, 3, 8, 8\)"):
        runner.run(np.zeros((1, 3, 16, 16), np.float32))


def test_engine_from_another_tensorrt_version_asks_for_a_rebuild(monkeypatch, tmp_path):
    engine, _ = built_engine(monkeypatch, tmp_path, "10.3.0", precision="fp16")
    install_fakes(monkeypatch, "10.8.0")
    with pytest.raises(FgcliError, match="built with TensorRT 10.3.0, but this machine has TensorRT 10.8.0") as caught:
        TensorRTRunner(engine)
    assert caught.value.hint == "rebuild the engine on this machine: fgcli build model.onnx --precision fp16"


def test_engine_for_another_gpu_generation_asks_for_a_rebuild(monkeypatch, tmp_path):
    engine, _ = built_engine(monkeypatch, tmp_path, "8.6.1", cuda=FakeCuda("NVIDIA Jetson AGX Orin", (8, 7)))
    install_fakes(monkeypatch, "8.6.1", cuda=FakeCuda("NVIDIA GeForce RTX 4090", (8, 9)))
    with pytest.raises(FgcliError, match="compute capability 8.7 .* has 8.9") as caught:
        TensorRTRunner(engine)
    assert "fgcli build" in caught.value.hint


def test_missing_sidecar_is_explained(monkeypatch, tmp_path):
    engine, _ = built_engine(monkeypatch, tmp_path, "10.3.0")
    engine.with_name(engine.name + ".json").unlink()
    with pytest.raises(FgcliError, match="model.fp32.engine.json is missing"):
        TensorRTRunner(engine)


def test_dla_engine_sets_the_runtime_dla_core(monkeypatch, tmp_path):
    engine, cuda = built_engine(monkeypatch, tmp_path, "10.3.0", num_dla_cores=2, precision="fp16", dla_core=1,
                          batch=(1, 1, 1))
    cuda.log.clear()
    with TensorRTRunner(engine) as runner:
        assert runner.name == "tensorrt:dla1"
    runtime_calls = [c for c in cuda.log.calls() if c.startswith("runtime.")]
    assert runtime_calls == ["runtime.DLA_core", "runtime.deserialize_cuda_engine"]
    assert cuda.log.args("runtime.DLA_core") == [(1,)]


def test_close_frees_device_memory_and_the_stream(monkeypatch, tmp_path):
    engine, cuda = built_engine(monkeypatch, tmp_path, "11.1.0")
    runner = TensorRTRunner(engine)
    assert len(cuda.heap) == 2 and len(cuda.streams) == 1
    runner.close()
    assert cuda.heap == {} and cuda.streams == set()


def test_missing_tensorrt_at_load_names_the_package(monkeypatch, tmp_path):
    engine, _ = built_engine(monkeypatch, tmp_path, "10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="'tensorrt'"):
        TensorRTRunner(engine)


def test_without_cuda_python_or_cuda_torch_the_error_names_cuda_python(monkeypatch, tmp_path):
    engine, _ = built_engine(monkeypatch, tmp_path, "10.3.0")
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "torch"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match="'cuda-python'"):
        TensorRTRunner(engine)


def test_runtime_module_imports_neither_torch_nor_tensorrt():
    code = ("import sys, fgcli.runtime.tensorrt_runner, fgcli.export.tensorrt, fgcli.calibration.trt_calibrator; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'onnx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
