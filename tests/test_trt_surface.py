"""The fake tensorrt and fgcli's TensorRT code against the REAL API of each version (surfaces/*.json, recorded
from NVIDIA's bindings wheels by tools/trt_api_surface.py). No network, no TensorRT libraries."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_tensorrt import FakeCuda, install_fakes, make_fake_tensorrt, write_classifier_onnx
from fake_tensorrt.surface import (
    SURFACE_VERSIONS, fake_mismatches, load_surface, real_kind, recorded_mismatches,
)

from fgcli.calibration.dataset import CalibrationSet
from fgcli.calibration.trt_calibrator import create_entropy_calibrator
from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError
from fgcli.export.tensorrt import build_engine
from fgcli.runtime.tensorrt_runner import TensorRTRunner

REPO = Path(__file__).resolve().parents[1]
TRT_MODULES = ("fgcli/export/tensorrt.py", "fgcli/runtime/tensorrt_runner.py", "fgcli/calibration/trt_calibrator.py")
CALIBRATOR_VIRTUALS = ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache")


def _load_tool():
    spec = importlib.util.spec_from_file_location("trt_api_surface", REPO / "tools" / "trt_api_surface.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def major(version: str) -> int:
    return int(version.split(".")[0])


# ----------------------------------------------------------------------------- the tool

def test_tool_parses_single_and_overloaded_pybind11_signatures():
    single = "set_shape(self: tensorrt.tensorrt.IOptimizationProfile, input: str, min: tensorrt.tensorrt.Dims, " \
             "opt: tensorrt.tensorrt.Dims, max: tensorrt.tensorrt.Dims) -> None\n\n    Set the shapes..."
    assert tool.parse_signatures("set_shape", single) == [{
        "args": ["input", "min", "opt", "max"],
        "signature": "set_shape(self: IOptimizationProfile, input: str, min: Dims, opt: Dims, max: Dims) -> None"}]
    overloaded = ("get_binding_dtype(*args, **kwargs)\nOverloaded function.\n\n"
                  "1. get_binding_dtype(self: tensorrt.tensorrt.ICudaEngine, index: int) -> tensorrt.tensorrt.DataType\n"
                  "\n    text mentioning get_binding_dtype(old) in prose\n\n"
                  "2. get_binding_dtype(self: tensorrt.tensorrt.ICudaEngine, name: str) -> tensorrt.tensorrt.DataType\n")
    assert [s["args"] for s in tool.parse_signatures("get_binding_dtype", overloaded)] == [["index"], ["name"]]
    assert tool.parse_signatures("other", single) == []  # a docstring of another name yields nothing
    assert tool.split_arguments("a: Dict[str, int], b: Tuple[int, int] = (1, 2), c") == [
        "a: Dict[str, int]", "b: Tuple[int, int] = (1, 2)", "c"]


def test_tool_describes_classes_enums_functions_and_writes_one_line_per_name(tmp_path):
    import enum
    import types

    class Flag(enum.IntEnum):
        A = 0
        B = 3

    class Base:
        def get(self, index):
            return index

    class Thing(Base):
        LEVEL = Flag.A

        def __init__(self, logger):
            self._logger = logger

        @property
        def size(self):
            return 1

        @property
        def core(self):
            return 0

        @core.setter
        def core(self, value):
            pass

    module = types.ModuleType("tensorrt")
    module.__version__ = "9.9.9"
    module.Flag, module.Thing, module.float32 = Flag, Thing, Flag.B
    module.nptype = lambda trt_type: trt_type
    surface = tool.describe_module(module, "9.9.9")
    assert surface["enums"] == {"Flag": {"A": 0, "B": 3}}
    thing = surface["classes"]["Thing"]
    assert thing["methods"]["get"][0]["args"] == ["index"] and thing["methods"]["__init__"][0]["args"] == ["logger"]
    assert thing["properties"] == {"core": {"readonly": False}, "size": {"readonly": True}}
    assert thing["attributes"] == {"LEVEL": "Flag"} and thing["bases"] == ["Base"]
    assert surface["functions"]["nptype"][0]["args"] == ["trt_type"]
    assert surface["constants"] == {"__version__": "str", "float32": "Flag.B"}
    path = tool.write_surface(surface, tmp_path)
    assert path.name == "tensorrt-9.9.9.json" and json.loads(path.read_text()) == surface
    assert '  "Thing": {' in path.read_text()  # one line per class


@pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("nm") and shutil.which("readelf")),
                    reason="needs gcc and binutils")
def test_tool_stub_lets_an_extension_with_a_missing_library_load(tmp_path):
    """The mechanism the tool uses on tensorrt.so, on a tiny library that needs an absent libfakeinfer.so.7."""
    (tmp_path / "dep.c").write_text("void *createFake_INTERNAL(void) { return 0; }\n")
    (tmp_path / "ext.c").write_text("void *createFake_INTERNAL(void);\nvoid *entry(void) { return createFake_INTERNAL(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libfakeinfer.so.7", "-o", tmp_path / "libfakeinfer.so.7",
                    tmp_path / "dep.c"], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", tmp_path / "ext.so", tmp_path / "ext.c",
                    tmp_path / "libfakeinfer.so.7"], check=True)
    (tmp_path / "libfakeinfer.so.7").unlink()
    assert tool.stub_sources(tmp_path / "ext.so") == (["libfakeinfer.so.7"], ["createFake_INTERNAL"])
    stub = tmp_path / "stub"
    stub.mkdir()
    tool.build_stub(tmp_path / "ext.so", stub)
    load = f"import ctypes; ctypes.CDLL({str(tmp_path / 'ext.so')!r}); print('loaded')"
    assert subprocess.run([sys.executable, "-c", load], capture_output=True).returncode != 0
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True,
                            env={"LD_LIBRARY_PATH": str(stub), "PATH": "/usr/bin:/bin"})
    assert loaded.stdout.strip() == "loaded", loaded.stderr


def test_recorded_surfaces_hold_the_version_facts_fgcli_relies_on():
    assert SURFACE_VERSIONS == ("8.6.1", "10.3.0", "10.16.1.11", "11.4.0.106")
    for version in SURFACE_VERSIONS:
        surface = load_surface(version)
        assert surface["version"] == version
        creation = surface["enums"]["NetworkDefinitionCreationFlag"]
        assert ("EXPLICIT_BATCH" in creation) == (major(version) < 11)
        assert ("STRONGLY_TYPED" in creation) == (major(version) >= 10)
        assert ("IInt8EntropyCalibrator2" in surface["classes"]) == (major(version) < 11)
        assert ("FP16" in surface["enums"]["BuilderFlag"]) == (major(version) < 11)
        assert ("num_bindings" in surface["classes"]["ICudaEngine"]["properties"]) == (major(version) < 10)
        assert real_kind(surface, "IExecutionContext", "execute_async_v3") == "method"


# ----------------------------------------------------------------------------- the fakes

@pytest.mark.parametrize("version", SURFACE_VERSIONS)
def test_fake_tensorrt_offers_only_real_names_with_real_signatures(version):
    fake = make_fake_tensorrt(version, FakeCuda())
    assert fake_mismatches(fake, version) == []


def test_fake_mismatches_are_reported():
    """The check itself can fail: a fake with a removed method, a wrong argument and a wrong enum value."""
    fake = make_fake_tensorrt("10.3.0", FakeCuda())
    fake.Builder.build_engine = lambda self, network, config: None  # removed in 10.0
    fake.Runtime.deserialize_cuda_engine = lambda self, data: None  # real argument: serialized_engine
    fake.helper = lambda: None
    problems = fake_mismatches(fake, "10.3.0")
    assert "10.3.0: fake Builder.build_engine() is a method; real: absent" in problems
    assert any("Runtime.deserialize_cuda_engine('data',)" in p and "('serialized_engine',)" in p for p in problems)
    assert "10.3.0: fake tensorrt.helper does not exist in the real module" in problems
    assert any("BuilderFlag.REFIT = 4; real: 5" in p for p in fake_mismatches(make_fake_tensorrt("10.3.0", FakeCuda()),
                                                                         "8.6.1"))


# ----------------------------------------------------------------------------- fgcli's calls

def write_calib(path: Path, count: int = 8) -> Path:
    images = np.random.default_rng(0).normal(size=(count, 3, 8, 8)).astype(np.float32)
    preprocess = PreprocessConfig(img_size=8, resize_size=10)
    return CalibrationSet(images, np.arange(count) % 3, [f"i{i}.jpg" for i in range(count)], preprocess).save(path)


def run_every_tensorrt_path(monkeypatch, tmp_path: Path, version: str) -> set:
    """Build every path fgcli has on ``version`` (and run the engines), recording each TensorRT name used."""
    recorded: set = set()
    install_fakes(monkeypatch, version, num_dla_cores=2, recorder=recorded)
    fp32 = write_classifier_onnx(tmp_path / "model.onnx")
    fp16 = write_classifier_onnx(tmp_path / "model.fp16.onnx", fp16=True)
    qdq = write_classifier_onnx(tmp_path / "model.int8.onnx", qdq=True)
    engines = [build_engine(fp32, timing_cache=tmp_path / "timing.cache", verbose=True).engine_path,
               build_engine(fp16, batch=(1, 2, 4)).engine_path,
               build_engine(qdq, timing_cache=tmp_path / "timing.cache").engine_path,
               build_engine(fp16, out_path=tmp_path / "dla.engine", dla_core=1, batch=(1, 1, 1)).engine_path]
    if major(version) < 11:
        engines.append(build_engine(fp32, out_path=tmp_path / "flag16.engine", precision="fp16").engine_path)
        calib = write_calib(tmp_path / "calib.npz")
        engines.append(build_engine(fp32, out_path=tmp_path / "calib.engine", precision="int8", calib_data=calib,
                                    calib_batch=4).engine_path)
        build_engine(fp32, out_path=tmp_path / "cached.engine", precision="int8",
                     calib_cache=tmp_path / "model.calib.cache")
    else:
        with pytest.raises(FgcliError, match="strongly typed networks only"):
            build_engine(fp32, precision="fp16")
        with pytest.raises(FgcliError, match="no INT8 calibrator"):
            create_entropy_calibrator(sys.modules["tensorrt"], None, None, (3, 8, 8))
    with pytest.raises(FgcliError, match="could not parse"):
        build_engine(write_classifier_onnx(tmp_path / "custom.onnx", custom_op=True))
    images = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    for engine in engines:
        with TensorRTRunner(engine) as runner:
            assert runner.run(images).shape == (3, 3)
    return recorded


@pytest.mark.parametrize("version", SURFACE_VERSIONS)
def test_every_tensorrt_name_fgcli_uses_exists_in_that_real_version(monkeypatch, tmp_path, version):
    recorded = run_every_tensorrt_path(monkeypatch, tmp_path, version)
    assert recorded_mismatches(recorded, version) == []
    used = {(owner, name) for owner, name, found in recorded if found}
    # the walk covered builder, config, network, parser, profile, runtime, engine, context and enums
    assert {("Builder", "build_serialized_network"), ("IBuilderConfig", "set_memory_pool_limit"),
            ("INetworkDefinition", "get_input"), ("OnnxParser", "parse_from_file"), ("ParserError", "desc"),
            ("IOptimizationProfile", "set_shape"), ("Runtime", "deserialize_cuda_engine"),
            ("ICudaEngine", "create_execution_context"), ("IBuilderConfig", "DLA_core="), ("Runtime", "DLA_core="),
            ("BuilderFlag", "GPU_FALLBACK"), ("MemoryPoolType", "WORKSPACE"), ("Logger", "VERBOSE"),
            ("IBuilderConfig", "create_timing_cache"), ("tensorrt", "__version__")} <= used
    if major(version) < 10:
        assert {("IExecutionContext", "execute_async_v2"), ("ICudaEngine", "get_profile_shape")} <= used
    else:
        assert {("IExecutionContext", "execute_async_v3"), ("ICudaEngine", "get_tensor_profile_shape")} <= used
        assert ("ICudaEngine", "num_bindings", False) in recorded  # probed, absent in both
    if major(version) < 11:
        assert {("IBuilderConfig", "int8_calibrator="), ("IInt8EntropyCalibrator2", "__init__"),
                ("IBuilderConfig", "set_calibration_profile"), ("BuilderFlag", "INT8")} <= used


def test_recorded_mismatches_name_the_wrong_name():
    recorded = {("ICudaEngine", "num_bindings", True), ("BuilderFlag", "FP16", False), ("Builder", "x", False),
                ("Builder", "num_DLA_cores=", True), ("Runtime", "DLA_core=", True)}
    assert recorded_mismatches(recorded, "10.3.0") == [
        "10.3.0: fgcli assigns Builder.num_DLA_cores, which the real TensorRT 10.3.0 has read-only",
        "10.3.0: fgcli probes BuilderFlag.FP16: the fake lacks it, the real member exists",
        "10.3.0: fgcli uses ICudaEngine.num_bindings, which the real TensorRT 10.3.0 lacks"]


@pytest.mark.parametrize("version", [v for v in SURFACE_VERSIONS if major(v) < 11])
def test_calibrator_overrides_the_real_virtuals_with_their_arguments(version):
    real = load_surface(version)["classes"]["IInt8EntropyCalibrator2"]["methods"]
    calibrator = create_entropy_calibrator(make_fake_tensorrt(version, FakeCuda()), None, None, (3, 8, 8))
    for name in CALIBRATOR_VIRTUALS:
        override = type(calibrator).__dict__[name]  # defined by fgcli, so TensorRT's trampoline calls it
        arguments = [p for p in inspect.signature(override).parameters if p != "self"]
        assert len(arguments) in {len(overload["args"]) for overload in real[name]}, name


def test_fgcli_trt_attribute_chains_exist_in_some_real_version():
    """Static pass: every ``trt.X`` / ``trt.X.Y`` written in fgcli's TensorRT modules is a real name of at
    least one supported version (the recorded walk above pins each to its version)."""
    surfaces = [load_surface(v) for v in SURFACE_VERSIONS]
    chains = set()
    for relative in TRT_MODULES:
        for node in ast.walk(ast.parse((REPO / relative).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
                if node.attr in ("__name__", "__file__"):  # every Python module's own
                    continue
                chains.add(("tensorrt", node.attr))
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                  and isinstance(node.value.value, ast.Name) and node.value.value.id == "trt"):
                chains.add((node.value.attr, node.attr))
    assert {("tensorrt", "Builder"), ("MemoryPoolType", "WORKSPACE"), ("DeviceType", "DLA")} <= chains
    missing = sorted(c for c in chains if not any(real_kind(s, *c) for s in surfaces))
    assert missing == []
