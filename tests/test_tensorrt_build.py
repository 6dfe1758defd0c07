"""Engine building against faithful fakes of TensorRT 8.6 / 10.x / 11.x: which API calls each path makes."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
from fake_tensorrt import FakeCuda, install_fakes, write_classifier_onnx
from fake_tensorrt.trt import PLAN_MAGIC

from fgcli.calibration.dataset import CalibrationSet
from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.export.tensorrt import build_engine

V86, V10, V11 = "8.6.1", "10.3.0", "11.1.0"


@pytest.fixture
def models(tmp_path):
    return {
        "fp32": write_classifier_onnx(tmp_path / "model.onnx"),
        "int8": write_classifier_onnx(tmp_path / "model.int8.onnx", qdq=True),
        "fp16": write_classifier_onnx(tmp_path / "model.fp16.onnx", fp16=True),
    }


def write_calib(path, images: np.ndarray):
    """calib.npz as `fgcli calib` writes it."""
    preprocess = PreprocessConfig(img_size=images.shape[-1], resize_size=images.shape[-1] + 2)
    labels = np.arange(len(images)) % 3
    return CalibrationSet(images, labels, [f"img{i}.jpg" for i in range(len(images))], preprocess).save(path)


def plan_of(info) -> dict:
    data = info.engine_path.read_bytes()
    assert data.startswith(PLAN_MAGIC)  # a plain serialized plan: no header of ours in front
    return json.loads(data[len(PLAN_MAGIC):])


def test_missing_tensorrt_names_the_package_and_the_build_command(monkeypatch, models):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError) as caught:
        build_engine(models["fp32"])
    assert "'tensorrt'" in str(caught.value) and "fgcli build" in str(caught.value)


def test_tensorrt_older_than_8_6_is_refused(monkeypatch, models):
    install_fakes(monkeypatch, "8.5.3")
    with pytest.raises(FgcliError, match="8.6 or newer"):
        build_engine(models["fp32"])


@pytest.mark.parametrize("version, network_flags, builder_flags, path", [
    (V86, ("EXPLICIT_BATCH",), [("INT8",), ("FP16",)], "flags"),
    (V10, ("STRONGLY_TYPED",), [], "strongly-typed"),
    (V11, ("STRONGLY_TYPED",), [], "strongly-typed"),
])
def test_qdq_onnx_is_explicit_int8(monkeypatch, models, version, network_flags, builder_flags, path):
    trt, cuda = install_fakes(monkeypatch, version)
    info = build_engine(models["int8"])
    assert cuda.log.args("builder.create_network") == [network_flags]
    assert cuda.log.args("config.set_flag") == builder_flags
    assert "config.int8_calibrator" not in cuda.log.calls()
    assert (info.precision, info.build_path) == ("int8", path)
    assert info.engine_path == models["int8"].with_name("model.int8.engine")
    assert plan_of(info)["precision"] == "int8"


@pytest.mark.parametrize("version, network_flags, builder_flags", [
    (V86, ("EXPLICIT_BATCH",), [("FP16",)]),
    (V10, (), [("FP16",)]),
])
def test_fp16_from_a_float32_onnx_uses_the_builder_flag(monkeypatch, models, version, network_flags, builder_flags):
    trt, cuda = install_fakes(monkeypatch, version)
    info = build_engine(models["fp32"], precision="fp16")
    assert cuda.log.args("builder.create_network") == [network_flags]
    assert cuda.log.args("config.set_flag") == builder_flags
    assert (info.build_path, plan_of(info)["precision"]) == ("flags", "fp16")
    assert info.engine_path.name == "model.fp16.engine"


@pytest.mark.parametrize("version, path, builder_flags", [
    (V86, "flags", [("FP16",)]), (V10, "strongly-typed", []), (V11, "strongly-typed", []),
])
def test_float16_onnx_builds_fp16(monkeypatch, models, version, path, builder_flags):
    trt, cuda = install_fakes(monkeypatch, version)
    info = build_engine(models["fp16"])
    assert (info.precision, info.build_path) == ("fp16", path)
    assert cuda.log.args("config.set_flag") == builder_flags
    assert plan_of(info)["input"]["dtype"] == "HALF"


def test_tensorrt_11_refuses_precisions_the_onnx_does_not_carry(monkeypatch, models):
    install_fakes(monkeypatch, V11)
    with pytest.raises(FgcliError) as fp16:
        build_engine(models["fp32"], precision="fp16")
    assert "strongly typed" in str(fp16.value) and "--fp16" in fp16.value.hint
    with pytest.raises(FgcliError) as int8:
        build_engine(models["fp32"], precision="int8", calib_data=models["fp32"].with_name("calib.npz"))
    assert "--int8" in str(int8.value)


def test_tensorrt_10_int8_from_float32_needs_qdq_or_calibration_data(monkeypatch, models):
    install_fakes(monkeypatch, V10)
    with pytest.raises(FgcliError) as caught:
        build_engine(models["fp32"], precision="int8")
    assert "--int8" in caught.value.hint and "--calib-data" in caught.value.hint


def test_onnx_precision_conflicts_are_refused(monkeypatch, models):
    install_fakes(monkeypatch, V10)
    with pytest.raises(FgcliError, match="quantized .Q/DQ. model: it builds only with --precision int8"):
        build_engine(models["int8"], precision="fp16")
    with pytest.raises(FgcliError, match="only apply to INT8 builds of a float32 ONNX"):
        build_engine(models["int8"], calib_cache=models["int8"].with_name("x.cache"))


@pytest.mark.parametrize("version", [V86, V10])
def test_legacy_calibrator_writes_the_cache_then_reuses_it_without_data(monkeypatch, models, tmp_path, version):
    trt, cuda = install_fakes(monkeypatch, version)
    images = np.random.default_rng(0).normal(size=(10, 3, 8, 8)).astype(np.float32)
    calib = write_calib(tmp_path / "calib.npz", images)

    first = build_engine(models["fp32"], precision="int8", calib_data=calib, calib_batch=4)
    cache = tmp_path / "model.calib.cache"  # beside the ONNX, to travel with it to the device
    assert first.build_path == "legacy-calibrator"
    assert cuda.log.args("config.set_flag") == [("INT8",), ("FP16",)]
    assert cuda.log.args("config.int8_calibrator") == [("IInt8EntropyCalibrator2",)]
    assert cuda.log.args("config.set_calibration_profile") == [((4, 3, 8, 8),) * 3]
    assert len(cuda.log.args("calibrator.get_batch")) == 2  # 10 images -> two full batches of 4
    text = cache.read_text()
    assert text.startswith(f"TRT-{version.split('.')[0]}") and "EntropyCalibration2" in text
    assert float(text.split("images: ")[1]) == pytest.approx(np.abs(images[:8]).max(), rel=1e-5)
    assert first.sidecar["calibration"] == {"cache": str(cache), "cache_reused": False, "batches": 2,
                                            "batch_size": 4}
    assert cuda.heap == {}  # the calibration batch buffer was freed

    calib.unlink()  # the device has the ONNX and the cache, not the data
    cuda.log.clear()
    second = build_engine(models["fp32"], precision="int8", calib_cache=cache)
    assert cuda.log.args("calibrator.read_calibration_cache") == [(len(text),)]
    assert "calibrator.get_batch" not in cuda.log.calls() and "cudaMalloc" not in cuda.log.calls()
    assert second.sidecar["calibration"]["cache_reused"] is True
    assert plan_of(second)["calibration"] == {"source": "cache", "cache": text}


def test_calibration_without_data_or_cache_says_what_to_pass(monkeypatch, models, tmp_path):
    install_fakes(monkeypatch, V86)
    with pytest.raises(FgcliError) as caught:
        build_engine(models["fp32"], precision="int8", calib_cache=tmp_path / "absent.cache")
    assert "--calib-data" in caught.value.hint


def test_calibration_data_of_the_wrong_size_names_the_file(monkeypatch, models, tmp_path):
    install_fakes(monkeypatch, V10)
    calib = write_calib(tmp_path / "calib.npz", np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(FgcliError, match="calib.npz: images have shape"):
        build_engine(models["fp32"], precision="int8", calib_data=calib)


@pytest.mark.parametrize("version", [V86, V10])
def test_dla_sets_device_core_and_gpu_fallback(monkeypatch, models, version):
    trt, cuda = install_fakes(monkeypatch, version, num_dla_cores=2)
    info = build_engine(models["fp32"], precision="fp16", dla_core=1, batch=(1, 1, 1))
    assert cuda.log.args("config.default_device_type") == [("DLA",)]
    assert cuda.log.args("config.DLA_core") == [(1,)]
    assert ("GPU_FALLBACK",) in cuda.log.args("config.set_flag")
    assert info.sidecar["dla_core"] == 1 and plan_of(info)["device_type"] == "DLA"


def test_dla_is_refused_without_dla_cores_out_of_range_or_in_fp32(monkeypatch, models):
    install_fakes(monkeypatch, V10, num_dla_cores=0)
    with pytest.raises(FgcliError, match="no DLA"):
        build_engine(models["fp32"], precision="fp16", dla_core=0)
    install_fakes(monkeypatch, V10, num_dla_cores=2)
    with pytest.raises(FgcliError, match="DLA core 2 does not exist: this device has 2"):
        build_engine(models["fp32"], precision="fp16", dla_core=2)
    with pytest.raises(FgcliError, match="FP16 or INT8 only"):
        build_engine(models["fp32"], precision="fp32", dla_core=0)


def test_profile_from_batch_range_and_workspace_limit(monkeypatch, models):
    trt, cuda = install_fakes(monkeypatch, V10)
    info = build_engine(models["fp32"], batch=(1, 4, 16), workspace_gib=2.0)
    assert cuda.log.args("profile.set_shape") == [("images", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))]
    assert cuda.log.args("config.set_memory_pool_limit") == [("WORKSPACE", 2 << 30)]
    assert info.sidecar["profile"] == {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [16, 3, 8, 8]}
    assert plan_of(info)["input"]["profile"] == [[1, 3, 8, 8], [4, 3, 8, 8], [16, 3, 8, 8]]
    with pytest.raises(FgcliError, match="min <= opt <= max"):
        build_engine(models["fp32"], batch=(4, 2, 8))


def test_fixed_batch_onnx_accepts_only_its_batch(monkeypatch, tmp_path):
    install_fakes(monkeypatch, V10)
    fixed = write_classifier_onnx(tmp_path / "fixed.onnx", batch=2)
    with pytest.raises(FgcliError, match="fixed batch of 2"):
        build_engine(fixed, batch=(1, 8, 32))
    assert build_engine(fixed, batch=(2, 2, 2)).sidecar["profile"]["max"] == [2, 3, 8, 8]


@pytest.mark.parametrize("version", [V86, V10, V11])
def test_timing_cache_is_saved_and_reused(monkeypatch, models, tmp_path, version):
    trt, cuda = install_fakes(monkeypatch, version)
    timing = tmp_path / "timing.cache"
    build_engine(models["fp32"], timing_cache=timing)
    assert cuda.log.args("config.create_timing_cache") == [(b"",)]
    assert len(cuda.log.args("builder.timing_cache_miss")) == 1 and timing.is_file()
    cuda.log.clear()
    build_engine(models["fp32"], out_path=tmp_path / "again.engine", timing_cache=timing)
    assert cuda.log.args("config.create_timing_cache") == [(timing.read_bytes(),)]
    assert len(cuda.log.args("builder.timing_cache_hit")) == 1


def test_timing_cache_from_another_gpu_is_replaced(monkeypatch, models, tmp_path):
    timing = tmp_path / "timing.cache"
    install_fakes(monkeypatch, V10, cuda=FakeCuda(capability=(8, 9)))
    build_engine(models["fp32"], timing_cache=timing)
    foreign = timing.read_bytes()
    trt, cuda = install_fakes(monkeypatch, V10, cuda=FakeCuda(capability=(8, 7)))
    build_engine(models["fp32"], timing_cache=timing)
    assert cuda.log.args("config.create_timing_cache") == [(foreign,), (b"",)]
    assert json.loads(timing.read_bytes())["device"] == "8.7"


def test_sidecar_carries_versions_gpu_profile_hash_and_fgcli_metadata(monkeypatch, models):
    install_fakes(monkeypatch, V10, cuda=FakeCuda(name="NVIDIA H100", capability=(9, 0)))
    info = build_engine(models["int8"], batch=(1, 2, 4), timing_cache=None)
    sidecar = json.loads(info.sidecar_path.read_text())
    assert info.sidecar_path.name == "model.int8.engine.json"
    assert sidecar == info.sidecar
    assert sidecar["tensorrt_version"] == V10
    assert sidecar["gpu"] == {"name": "NVIDIA H100", "compute_capability": "9.0"}
    assert (sidecar["precision"], sidecar["build_path"], sidecar["dla_core"]) == ("int8", "strongly-typed", None)
    assert sidecar["onnx"]["sha256"] == hashlib.sha256(models["int8"].read_bytes()).hexdigest()
    assert sidecar["fgcli"]["class_names"] == ["alpha", "beta", "gamma"]
    assert sidecar["fgcli"]["preprocess"] == {"img_size": 8, "resize_size": 10, "mean": [0.485, 0.456, 0.406],
                                              "std": [0.229, 0.224, 0.225]}
    assert sidecar["build_seconds"] >= 0
    assert sorted(p.name for p in info.engine_path.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("version, where", [
    (V86, "node 0: UNSUPPORTED_NODE: No importer registered for op: FancyNorm"),
    (V10, "node 0 'fancy_norm' (FancyNorm): UNSUPPORTED_NODE"),
])
def test_parser_errors_name_the_node(monkeypatch, tmp_path, version, where):
    install_fakes(monkeypatch, version)
    model = write_classifier_onnx(tmp_path / "custom.onnx", custom_op=True)
    with pytest.raises(FgcliError) as caught:
        build_engine(model)
    assert f"could not parse {model}" in str(caught.value) and where in str(caught.value)


def test_onnx_without_fgcli_metadata_is_refused(monkeypatch, tmp_path):
    install_fakes(monkeypatch, V10)
    bare = write_classifier_onnx(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(FgcliError, match="lacks the fgcli metadata fgcli.class_names") as caught:
        build_engine(bare)
    assert "fgcli export" in caught.value.hint


def test_cuda_python_without_a_driver_records_an_unknown_gpu(monkeypatch, models):
    """A build server with cuda-python but no NVIDIA driver (where TensorRT-RTX builds): no crash, no guess."""
    install_fakes(monkeypatch, V11, cuda=FakeCuda(driver=False))
    info = build_engine(models["int8"])
    assert info.sidecar["gpu"] == {"name": "unknown", "compute_capability": "unknown"}
    assert info.sidecar["backend"] == "tensorrt"
