"""`fgcli doctor`: which features this machine can run (each checked by importing what it imports), and what it
has (versions, GPU, Jetson, DLA), without ever failing.

Every probe is defensive: a missing package reads "not installed", a probe that breaks reads "error: ...".
Versions come from package metadata, so nothing heavy is imported just to print a version; torch,
onnxruntime and tensorrt are imported only inside the probes that need them (CUDA state, providers, DLA).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.text import Text

from fgcli.console import styled
from fgcli.errors import FgcliError, MissingDependencyError

NOT_INSTALLED = "not installed"
NOT_JETSON = "n/a (not a Jetson)"
UNKNOWN = "unknown"

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
MEMINFO = Path("/proc/meminfo")

#: distribution names a package is published under, first match wins
DISTRIBUTIONS = {
    "fgcli": ("fgcli",),
    "numpy": ("numpy",),
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "onnxslim": ("onnxslim",),
    "nvidia_modelopt": ("nvidia-modelopt",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
    "cuda_python": ("cuda-python", "cuda-bindings"),
}

#: DLA cores per Jetson module (NVIDIA Jetson module data sheets), checked in order: "Orin Nano" before
#: "Nano". Thor has no DLA; Orin NX has 2 on the 16 GB module and 1 on the 8 GB one (see _dla_from_model).
JETSON_DLA_CORES = (
    ("agx orin", 2), ("thor", 0), ("orin nano", 0), ("xavier nx", 2), ("agx xavier", 2),
    ("jetson agx", 2),  # the AGX Xavier dev kit reports just "Jetson-AGX"
    ("nano", 0), ("tx2", 0), ("tx1", 0),
)
#: L4T major release -> JetPack major, used only when the nvidia-jetpack package is not installed
L4T_TO_JETPACK = {"32": "4.x", "34": "5.x", "35": "5.x", "36": "6.x", "38": "7.x"}

LABELS = {
    "python": "Python", "platform": "Platform", "fgcli": "fgcli", "numpy": "NumPy", "torch": "PyTorch",
    "torch_cuda_available": "PyTorch CUDA available", "torch_cuda_version": "PyTorch CUDA version",
    "cudnn": "cuDNN (PyTorch)", "onnx": "onnx", "onnxruntime": "ONNX Runtime",
    "onnxruntime_providers": "ONNX Runtime providers", "onnxslim": "onnxslim",
    "nvidia_modelopt": "nvidia-modelopt (INT8)",
    "tensorrt": "TensorRT", "cuda_python": "cuda-python", "gpu_name": "GPU",
    "gpu_compute_capability": "GPU compute capability", "jetson_model": "Jetson model",
    "l4t_release": "L4T release", "jetpack": "JetPack", "dla_cores": "DLA cores",
}


def collect_environment() -> dict[str, str]:
    """Every key of LABELS, each a string; never raises."""
    env = {"python": sys.version.split()[0], "platform": _safe(_platform)}
    env.update({name: _safe(lambda dists=dists: distribution_version(*dists)) for name, dists in DISTRIBUTIONS.items()})
    if env["tensorrt"] == NOT_INSTALLED:  # JetPack's apt package ships no pip metadata
        env["tensorrt"] = _safe(lambda: _module_version("tensorrt"))
    env.update(_safe_dict(_torch_cuda, ("torch_cuda_available", "torch_cuda_version", "cudnn")))
    env["onnxruntime_providers"] = _safe(_onnxruntime_providers)
    env.update(_safe_dict(_gpu, ("gpu_name", "gpu_compute_capability")))
    env["jetson_model"] = _safe(_jetson_model)
    env["l4t_release"] = _safe(_l4t_release)
    env["jetpack"] = _safe(lambda: _jetpack(env["l4t_release"]))
    env["dla_cores"] = _safe(lambda: _dla_cores(env["jetson_model"]))
    return {key: env[key] for key in LABELS}


def environment_rows(env: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) rows in a stable order, for a two-column rich table."""
    return [(LABELS.get(key, key), value) for key, value in env.items()]


def environment_table(env: dict[str, str]):
    from rich.table import Table

    table = Table(title="fgcli doctor")
    table.add_column("component")
    table.add_column("value")
    for label, value in environment_rows(env):
        table.add_row(label, value)
    return table


# --------------------------------------------------------------------------- helpers
def _safe(probe: Callable[[], str]) -> str:
    try:
        return str(probe())
    except Exception as exc:  # a doctor reports broken installs; it must not become one
        return f"error: {type(exc).__name__}: {exc}"


def _safe_dict(probe: Callable[[], dict[str, str]], keys: tuple[str, ...]) -> dict[str, str]:
    try:
        values = probe()
        return {key: str(values[key]) for key in keys}
    except Exception as exc:
        return dict.fromkeys(keys, f"error: {type(exc).__name__}: {exc}")


def distribution_version(*dists: str) -> str:
    """Version of the first installed distribution among ``dists`` (named when it is not the first)."""
    for index, dist in enumerate(dists):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return version if index == 0 else f"{version} ({dist})"
    return NOT_INSTALLED


def _module_version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return NOT_INSTALLED
    return str(getattr(importlib.import_module(module), "__version__", UNKNOWN))


def _import_or_none(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _run(command: list[str]) -> str | None:
    """stdout of a short command, or None when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


# --------------------------------------------------------------------------- probes
def _platform() -> str:
    return f"{platform.system()} {platform.release()} {platform.machine()}"


def _torch_cuda() -> dict[str, str]:
    torch = _import_or_none("torch")
    if torch is None:
        return dict.fromkeys(("torch_cuda_available", "torch_cuda_version", "cudnn"), NOT_INSTALLED)
    cudnn = torch.backends.cudnn.version()  # the library PyTorch ships or links, GPU or not
    return {
        "torch_cuda_available": "yes" if torch.cuda.is_available() else "no",
        "torch_cuda_version": torch.version.cuda or "none (CPU build)",
        "cudnn": str(cudnn) if cudnn else "n/a",
    }


def _onnxruntime_providers() -> str:
    ort = _import_or_none("onnxruntime")
    return NOT_INSTALLED if ort is None else ", ".join(ort.get_available_providers())


def _gpu() -> dict[str, str]:
    """First GPU's name and compute capability: torch.cuda, else cuda-python, else nvidia-smi."""
    torch = _import_or_none("torch")
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return {"gpu_name": torch.cuda.get_device_name(0), "gpu_compute_capability": f"{major}.{minor}"}
    cudart = _import_or_none("cuda.bindings.runtime") or _import_or_none("cuda.cudart")
    if cudart is not None:
        error, prop = cudart.cudaGetDeviceProperties(0)
        if error == cudart.cudaError_t.cudaSuccess:
            name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            return {"gpu_name": name.rstrip("\x00"), "gpu_compute_capability": f"{prop.major}.{prop.minor}"}
    smi = _run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    if smi:
        name, _, capability = smi.splitlines()[0].rpartition(",")
        return {"gpu_name": name.strip(), "gpu_compute_capability": capability.strip()}
    return {"gpu_name": "none found", "gpu_compute_capability": "n/a"}


def _jetson_model() -> str:
    model = _read_text(DEVICE_TREE_MODEL)
    return model if model and ("jetson" in model.lower() or NV_TEGRA_RELEASE.exists()) else NOT_JETSON


def _l4t_release() -> str:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``R36.4.3``."""
    text = _read_text(NV_TEGRA_RELEASE)
    if text is None:
        return NOT_JETSON
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else text.splitlines()[0]


def _jetpack(l4t_release: str) -> str:
    match = re.match(r"R(\d+)", l4t_release)
    if not match:
        return NOT_JETSON
    version = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    if version:
        return version
    return f"{L4T_TO_JETPACK.get(match.group(1), UNKNOWN)} (from L4T; nvidia-jetpack package not installed)"


def _dla_cores(jetson_model: str) -> str:
    """TensorRT's own count when a builder can be created, else the module table."""
    trt = _import_or_none("tensorrt")
    if trt is not None:
        try:
            return str(trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
        except Exception:  # no GPU / driver: the table below still answers on a Jetson
            pass
    if jetson_model == NOT_JETSON:
        return NOT_JETSON
    return _dla_from_model(jetson_model)


def _dla_from_model(model: str) -> str:
    name = model.lower().replace("-", " ")
    if "orin nx" in name:
        return str(2 if _memory_gib() > 10 else 1) + " (from the module table)"
    for pattern, cores in JETSON_DLA_CORES:
        if pattern in name:
            return f"{cores} (from the module table)"
    return UNKNOWN


def _memory_gib() -> float:
    match = re.search(r"MemTotal:\s+(\d+) kB", _read_text(MEMINFO) or "")
    return int(match.group(1)) / 2**20 if match else 0.0


# --------------------------------------------------------------------------- features
@dataclass(frozen=True)
class Feature:
    """Something fgcli can do, ready when every module it imports imports here (``fgcli doctor --need NAME``);
    ``extra`` is what ``pip install 'fgcli[EXTRA]'`` needs for it (one extra, or several comma-separated)."""

    name: str
    label: str
    extra: str
    modules: tuple[str, ...]
    needs_gpu: bool = False


@dataclass
class FeatureCheck:
    """One feature's verdict: ready, or the problem (naming the missing module) and the command that fixes it."""

    name: str
    label: str
    extra: str
    ready: bool
    missing: str | None = None
    problem: str | None = None
    fix: str | None = None


#: each feature imports what its commands import; the README's "Install" table lists the same features
FEATURES = (
    Feature("train", "training, evaluation, PyTorch checkpoints (fgcli train / eval)", "torch",
            ("torch", "torchvision", "scipy.io")),
    Feature("export", "ONNX export and ONNX Runtime (fgcli export, predict model.onnx)", "torch,onnx",
            ("torch", "onnx", "onnxslim", "onnxruntime")),
    Feature("qat", "quantization-aware training (fgcli train --qat)", "quant",
            ("torch", "modelopt.torch.quantization", "modelopt.torch.opt")),
    Feature("modelopt", "modelopt INT8 post-training quantization (fgcli export --int8)", "quant",
            ("onnx", "modelopt.onnx.quantization")),
    Feature("ort-int8", "ONNX Runtime INT8 (fgcli export --int8 --int8-backend ort)", "onnx",
            ("onnx", "onnxruntime.quantization")),
    Feature("trt", "TensorRT engines, build and run (fgcli build, export --trt)", "trt", ("tensorrt",),
            needs_gpu=True),
    Feature("rtx", "TensorRT for RTX engines, built without a GPU (fgcli build --backend tensorrt-rtx)", "rtx",
            ("tensorrt_rtx",)),
    Feature("timm", "timm backbones (--backbone efficientnet_b0, ...)", "timm", ("torch", "timm")),
    Feature("tensorboard", "TensorBoard event files (fgcli train --tensorboard)", "tensorboard",
            ("torch.utils.tensorboard",)),
    Feature("plots", "report plots and attention maps (fgcli report, cam)", "report",
            ("matplotlib.figure", "matplotlib.ticker")),
    Feature("configs", "DeepStream and Triton configs (fgcli export --deepstream / --triton)", "onnx", ("onnx",)),
)
FEATURE_NAMES = tuple(feature.name for feature in FEATURES)


def check_features(names: tuple[str, ...] | list[str] = FEATURE_NAMES) -> list[FeatureCheck]:
    """Import what each named feature imports; one feature's failure (even a crash inside an import) never
    stops the check of the next."""
    return [_check_feature(feature) for feature in FEATURES if feature.name in names]


def _check_feature(feature: Feature) -> FeatureCheck:
    verdict = FeatureCheck(feature.name, feature.label, feature.extra, ready=False)
    for module in feature.modules:
        try:
            with warnings.catch_warnings():  # the libraries' deprecation notes would bury the verdicts
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except ImportError as exc:
            error = MissingDependencyError.from_import_error(module, feature.extra, feature.label, exc)
            verdict.missing = getattr(error, "package", None)
            verdict.problem, verdict.fix = error.message, error.hint
            return verdict
        except Exception as exc:  # an import that crashes is a broken install, reported like any other
            verdict.problem = f"importing {module} failed: {type(exc).__name__}: {exc}"
            verdict.fix = f"pip install --force-reinstall 'fgcli[{feature.extra}]'"
            return verdict
    if feature.needs_gpu:
        verdict.missing, verdict.problem, verdict.fix = _gpu_problem(feature)
        if verdict.problem:
            return verdict
    verdict.ready = True
    return verdict


def _gpu_problem(feature: Feature) -> tuple[str | None, str | None, str | None]:
    """``(missing package, problem, fix)`` keeping a GPU feature from running: the runtime's way to the GPU
    (cuda-python, else PyTorch with CUDA, as ``open_device_memory`` tries them), then a GPU; all None when ready."""
    from fgcli.runtime.tensorrt_runner import _import_cuda_torch, _import_cudart  # a per-backend runner: lazy

    try:
        reachable = _import_cudart() is not None or _import_cuda_torch() is not None
    except Exception:  # a CUDA runtime that breaks on import cannot move data either
        reachable = False
    if not reachable:
        return ("cuda-python",
                f"{feature.label} needs the Python package 'cuda-python' (or PyTorch with CUDA) to move data to and "
                "from the GPU, which is not installed",
                f"pip install 'fgcli[{feature.extra}]'  (or: pip install cuda-python)")
    gpu = _safe_dict(_gpu, ("gpu_name",))["gpu_name"]
    if gpu == "none found" or gpu.startswith("error:"):
        return (None, f"{feature.label} needs an NVIDIA GPU; none was found ({gpu})",
                "run it on the GPU machine (copy the .onnx there), or build with --backend tensorrt-rtx")
    return None, None, None


def parse_needed(need: str) -> list[str]:
    """``"qat,trt"`` -> ``["qat", "trt"]``; an unknown name is an FgcliError listing the known ones."""
    names = [name.strip() for name in need.split(",") if name.strip()]
    unknown = [name for name in names if name not in FEATURE_NAMES]
    if unknown or not names:
        raise FgcliError(f"--need {need!r}: unknown feature {', '.join(unknown) or '(none given)'}",
                         hint=f"name one or more of: {','.join(FEATURE_NAMES)}")
    return names


def feature_lines(checks: list[FeatureCheck]) -> list[Text]:
    """One line per feature (and a fix line under one that is not ready); the checks' texts print as text."""
    lines = []
    for check in checks:
        if check.ready:
            lines.append(styled(f"[green]ready[/]      {check.name:<12} {{}}", check.label))
        else:
            lines.append(styled(f"[red]not ready[/]  {check.name:<12} {{}}", check.problem or ""))
            lines.append(styled(f"{'':<24} fix: {{}}", check.fix or ""))
    return lines
