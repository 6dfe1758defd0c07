"""`fgcli doctor`: every key present, missing or broken packages reported (never raised), Jetson probes."""

from __future__ import annotations

import importlib.metadata
import io
import platform
import sys
import types

import pytest
from rich.console import Console

from fgcli.runtime import doctor
from fgcli.runtime.doctor import LABELS, NOT_INSTALLED, NOT_JETSON, collect_environment, environment_table

HIDDEN_DISTRIBUTIONS = {"torch", "onnxruntime", "nvidia-modelopt", "tensorrt", "tensorrt-cu12", "cuda-python",
                        "cuda-bindings"}


@pytest.fixture
def not_a_jetson(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "DEVICE_TREE_MODEL", tmp_path / "no-model")
    monkeypatch.setattr(doctor, "NV_TEGRA_RELEASE", tmp_path / "no-release")


@pytest.fixture
def jetson(monkeypatch, tmp_path):
    """A fake Jetson: device-tree model, nv_tegra_release and meminfo under tmp_path, no dpkg, no TensorRT."""
    def make(model: str, release: str = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic",
             mem_kb: int = 64_000_000):
        (tmp_path / "model").write_bytes(model.encode() + b"\x00")
        (tmp_path / "nv_tegra_release").write_text(release + "\n")
        (tmp_path / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree: 1 kB\n")
        monkeypatch.setattr(doctor, "DEVICE_TREE_MODEL", tmp_path / "model")
        monkeypatch.setattr(doctor, "NV_TEGRA_RELEASE", tmp_path / "nv_tegra_release")
        monkeypatch.setattr(doctor, "MEMINFO", tmp_path / "meminfo")
        monkeypatch.setattr(doctor, "_run", lambda command: None)
        monkeypatch.setitem(sys.modules, "tensorrt", None)
        return collect_environment()

    return make


def test_every_key_is_reported_as_a_string(not_a_jetson):
    env = collect_environment()
    assert list(env) == list(LABELS)
    assert all(isinstance(value, str) and value for value in env.values())
    assert env["python"] == platform.python_version()
    assert env["numpy"] == importlib.metadata.version("numpy")
    assert env["torch"] == importlib.metadata.version("torch")
    assert env["torch_cuda_available"] in ("yes", "no")
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["jetson_model"] == env["l4t_release"] == env["jetpack"] == env["dla_cores"] == NOT_JETSON


def test_missing_packages_read_not_installed(monkeypatch, not_a_jetson):
    real_version = importlib.metadata.version

    def version(dist):
        if dist in HIDDEN_DISTRIBUTIONS:
            raise importlib.metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    for module in ("torch", "onnxruntime", "tensorrt", "modelopt", "cuda", "cuda.bindings", "cuda.bindings.runtime",
                   "cuda.cudart"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(doctor, "_run", lambda command: None)  # no nvidia-smi either
    env = collect_environment()
    for key in ("torch", "torch_cuda_available", "torch_cuda_version", "cudnn", "onnxruntime",
                "onnxruntime_providers", "nvidia_modelopt", "tensorrt", "cuda_python"):
        assert env[key] == NOT_INSTALLED, key
    assert (env["gpu_name"], env["gpu_compute_capability"]) == ("none found", "n/a")


def test_a_broken_package_is_reported_not_raised(monkeypatch, not_a_jetson):
    def broken():
        raise RuntimeError("CUDA driver exploded")

    namespace = types.SimpleNamespace
    fake_torch = namespace(cuda=namespace(is_available=broken), version=namespace(cuda="12.6"),
                           backends=namespace(cudnn=namespace(version=lambda: 90100)))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    env = collect_environment()
    assert env["torch_cuda_available"] == "error: RuntimeError: CUDA driver exploded"
    assert env["gpu_name"].startswith("error: RuntimeError")


def test_gpu_from_nvidia_smi_when_torch_and_cuda_python_are_absent(monkeypatch, not_a_jetson):
    for module in ("torch", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, module, None)
    smi_line = "NVIDIA H100 80GB HBM3, 9.0"
    monkeypatch.setattr(doctor, "_run", lambda command: smi_line if command[0] == "nvidia-smi" else None)
    env = collect_environment()
    assert (env["gpu_name"], env["gpu_compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")


def test_jetson_agx_orin(jetson):
    env = jetson("NVIDIA Jetson AGX Orin Developer Kit")
    assert env["jetson_model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert env["l4t_release"] == "R36.4.3"
    assert env["jetpack"].startswith("6.x (from L4T")
    assert env["dla_cores"] == "2 (from the module table)"


@pytest.mark.parametrize("model, mem_kb, cores", [
    ("NVIDIA Orin NX Developer Kit", 15_600_000, "2"),
    ("NVIDIA Orin NX Developer Kit", 7_600_000, "1"),
    ("NVIDIA Jetson Orin Nano Developer Kit", 7_600_000, "0"),
    ("Jetson-AGX", 32_000_000, "2"),
    ("NVIDIA Jetson Nano Developer Kit", 4_000_000, "0"),
])
def test_dla_cores_from_the_module_table(jetson, model, mem_kb, cores):
    assert jetson(model, mem_kb=mem_kb)["dla_cores"] == f"{cores} (from the module table)"


def test_jetpack_from_dpkg_wins_over_the_l4t_table(jetson, monkeypatch):
    env = jetson("NVIDIA Jetson AGX Orin Developer Kit", release="# R35 (release), REVISION: 4.1, GCID: 1")
    assert (env["l4t_release"], env["jetpack"][:3]) == ("R35.4.1", "5.x")
    monkeypatch.setattr(doctor, "_run", lambda command: "6.2+b77" if command[0] == "dpkg-query" else None)
    assert collect_environment()["jetpack"] == "6.2+b77"


def test_table_renders_every_row(not_a_jetson):
    env = collect_environment()
    console = Console(file=io.StringIO(), width=200)
    console.print(environment_table(env))
    text = console.file.getvalue()
    assert all(label in text for label in LABELS.values())
    assert env["numpy"] in text
