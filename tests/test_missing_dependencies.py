"""A missing optional package is named as itself, with the extra or package that brings it: in the error of each
command that needs it (a subprocess with the package blocked, as on a machine without it) and in `fgcli doctor`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import fgcli_env, fgcli_script, import_blocker
from fake_tensorrt import install_fakes
from fgcli.cli import app
from fgcli.errors import FgcliError, MissingDependencyError, missing_module_of
from fgcli.runtime import doctor
from fgcli.runtime.doctor import Feature, check_features, parse_needed
from fgcli.utils import optional_import


# --------------------------------------------------------------------------- optional_import, in process
@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Packages under tmp_path: ``parent`` imports ``absent_child``; ``reraiser`` re-raises that as a bare ImportError
    (as modelopt.onnx does); ``broken`` fails like a missing shared library."""
    def package(name: str, source: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(source)

    package("parent", "import absent_child\n")
    package("reraiser", "try:\n    import absent_child\nexcept ImportError as e:\n"
                        "    raise ImportError(f'{e}\\nPlease install optional dependencies.')\n")
    package("broken", "raise ImportError('libfoo.so.1: cannot open shared object file')\n")
    package("crashing", "raise RuntimeError('CUDA driver exploded')\n")
    package("fine", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("parent", "reraiser", "broken", "crashing", "fine"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_missing_package_is_named_with_its_extra():
    with pytest.raises(MissingDependencyError) as info:
        optional_import("absent_package.sub", "report", "Drawing")
    assert info.value.package == "absent_package"
    assert info.value.message == "Drawing needs the Python package 'absent_package', which is not installed."
    assert info.value.hint == "pip install 'fgcli[report]'  (or: pip install absent_package)"


def test_an_installed_package_missing_one_of_its_imports_says_so(fake_packages):
    with pytest.raises(MissingDependencyError) as info:
        optional_import("parent", "quant", "QAT")
    assert info.value.package == "absent_child"
    assert info.value.message == ("QAT needs parent: parent is installed, but parent needs the Python package "
                                  "'absent_child', which is not installed.")
    assert info.value.hint == "pip install absent_child  (or: pip install 'fgcli[quant]', which brings it)"


def test_a_reraised_import_error_without_a_name_still_names_the_missing_module(fake_packages):
    with pytest.raises(MissingDependencyError) as info:
        optional_import("reraiser", "quant", "INT8")
    assert info.value.package == "absent_child" and "reraiser is installed" in info.value.message


def test_an_import_that_breaks_is_not_called_missing(fake_packages):
    with pytest.raises(FgcliError) as info:
        optional_import("broken", "trt", "Building")
    assert not isinstance(info.value, MissingDependencyError)
    assert info.value.message == ("Building needs broken, which is installed but fails to import: "
                                  "libfoo.so.1: cannot open shared object file")
    assert "pip install --force-reinstall broken" in info.value.hint


def test_missing_module_of_follows_the_cause_chain():
    try:
        try:
            raise ModuleNotFoundError("No module named 'lief'", name="lief")
        except ImportError as inner:
            raise ImportError("please install [onnx]") from inner
    except ImportError as outer:
        assert missing_module_of(outer) == "lief"
    assert missing_module_of(ImportError("cannot import name 'x'")) is None


def test_distribution_names_differ_from_import_names():
    error = MissingDependencyError("modelopt", "quant", "INT8")
    assert error.hint == "pip install 'fgcli[quant]'  (or: pip install nvidia-modelopt)"


# --------------------------------------------------------------------------- doctor, in process
@pytest.fixture
def fake_features(fake_packages, monkeypatch):
    features = (Feature("good", "a feature that works", "onnx", ("fine",)),
                Feature("crash", "a feature whose import crashes", "trt", ("crashing",)),
                Feature("child", "a feature missing a dependency of its package", "quant", ("fine", "parent")),
                Feature("after", "a feature checked after the failures", "report", ("fine",)))
    monkeypatch.setattr(doctor, "FEATURES", features)
    monkeypatch.setattr(doctor, "FEATURE_NAMES", tuple(feature.name for feature in features))


def test_one_failing_feature_does_not_stop_the_others(fake_features):
    checks = {check.name: check for check in check_features(doctor.FEATURE_NAMES)}
    assert [checks[name].ready for name in ("good", "crash", "child", "after")] == [True, False, False, True]
    assert checks["crash"].problem == "importing crashing failed: RuntimeError: CUDA driver exploded"
    assert checks["child"].missing == "absent_child"
    assert "parent is installed, but parent needs the Python package 'absent_child'" in checks["child"].problem
    assert checks["child"].fix.startswith("pip install absent_child")


def test_doctor_need_exits_1_only_when_a_named_feature_is_not_ready(fake_features):
    runner = CliRunner()
    ready = runner.invoke(app, ["doctor", "--need", "good,after", "--json"])
    assert ready.exit_code == 0, ready.output
    assert [check["name"] for check in json.loads(ready.stdout)["features"]] == ["good", "after"]
    not_ready = runner.invoke(app, ["doctor", "--need", "good,child"])
    assert not_ready.exit_code == 1
    assert "not ready" in not_ready.stdout and "fix: pip install absent_child" in not_ready.stdout


@pytest.mark.parametrize("cuda_python, gpu, problem", [
    (True, "NVIDIA H200", None),
    (True, "none found", "needs an NVIDIA GPU; none was found (none found)"),
    (False, "NVIDIA H200", "needs the Python package 'cuda-python' (or PyTorch with CUDA)"),
])
def test_tensorrt_is_ready_with_its_bindings_a_way_to_the_gpu_and_a_gpu(monkeypatch, cuda_python, gpu, problem):
    install_fakes(monkeypatch, "10.3.0")
    if not cuda_python:
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "torch"):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(doctor, "_gpu", lambda: {"gpu_name": gpu, "gpu_compute_capability": "9.0"})
    [check] = check_features(["trt"])
    assert check.ready == (problem is None)
    assert problem is None or problem in check.problem
    assert check.missing == (None if cuda_python else "cuda-python")


def test_an_unknown_feature_lists_the_known_ones():
    with pytest.raises(FgcliError) as info:
        parse_needed("qat,warp-drive")
    assert "warp-drive" in info.value.message and "qat" in info.value.hint and "tensorboard" in info.value.hint


# --------------------------------------------------------------------------- commands, each with a package blocked
def _fgcli(tmp_path, blocked: str, *args) -> subprocess.CompletedProcess:
    env = fgcli_env(import_blocker(tmp_path, blocked))
    return subprocess.run([fgcli_script(), *map(str, args)], capture_output=True, text=True, timeout=600, env=env,
                          stdin=subprocess.DEVNULL)


def _assert_missing(proc: subprocess.CompletedProcess, *parts: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())  # rich may fold a line on a narrow terminal
    for part in parts:
        assert " ".join(part.split()) in text, proc.stderr


def test_doctor_reports_qat_not_ready_naming_a_blocked_huggingface_hub(tmp_path):
    proc = _fgcli(tmp_path, "huggingface_hub", "doctor", "--need", "train,qat", "--json")
    assert proc.returncode == 1, proc.stderr
    checks = {check["name"]: check for check in json.loads(proc.stdout)["features"]}
    assert checks["train"]["ready"] and not checks["qat"]["ready"]
    assert checks["qat"]["missing"] == "huggingface_hub"
    assert "modelopt is installed, but modelopt.torch.quantization needs the Python package 'huggingface_hub'" \
        in checks["qat"]["problem"]
    assert checks["qat"]["fix"].startswith("pip install huggingface_hub")


@pytest.mark.slow
def test_train_qat_names_huggingface_hub(tiny_checkpoint, tiny_dataset, tmp_path):
    proc = _fgcli(tmp_path, "huggingface_hub", "train", "--qat", "--weights", tiny_checkpoint, "--data",
                  tiny_dataset, "--out", tmp_path / "qat", "--epochs", "1", "--device", "cpu", "--workers", "0")
    _assert_missing(proc, "modelopt is installed, but modelopt.torch.quantization needs the Python package "
                          "'huggingface_hub'", "hint: pip install huggingface_hub")


@pytest.mark.slow
def test_train_tensorboard_names_tensorboard_not_torch(tiny_dataset, tmp_path):
    proc = _fgcli(tmp_path, "tensorboard", "train", "--data", tiny_dataset, "--out", tmp_path / "run", "--tensorboard",
                  "--backbone", "resnet18", "--img-size", "32", "--resize-size", "36", "--epochs", "1",
                  "--device", "cpu", "--workers", "0")
    _assert_missing(proc, "torch is installed, but torch.utils.tensorboard needs the Python package 'tensorboard'",
                    "hint: pip install tensorboard  (or: pip install 'fgcli[tensorboard]'")
    assert "pip install torch" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("blocked", ["lief", "onnx_graphsurgeon"])
def test_export_int8_names_what_modelopt_onnx_lacks(blocked, tiny_checkpoint, tiny_dataset, tmp_path):
    proc = _fgcli(tmp_path, blocked, "export", tiny_checkpoint, "--out", tmp_path / "export", "--int8",
                  "--calib-data", tiny_dataset, "--calib-size", "8")
    _assert_missing(proc, f"modelopt is installed, but modelopt.onnx.quantization needs the Python package "
                          f"'{blocked}'", "or: pip install 'fgcli[quant]'")


def test_report_names_matplotlib(tiny_onnx, tiny_dataset, tmp_path):
    proc = _fgcli(tmp_path, "matplotlib", "report", tiny_onnx.parent, "--data", tiny_dataset, "--out",
                  tmp_path / "report")
    _assert_missing(proc, "needs the Python package 'matplotlib'", "hint: pip install 'fgcli[report]'")


def test_a_timm_backbone_names_timm(tiny_dataset, tmp_path):
    proc = _fgcli(tmp_path, "timm", "train", "--data", tiny_dataset, "--out", tmp_path / "run", "--backbone",
                  "efficientnet_b0", "--img-size", "32", "--resize-size", "36", "--epochs", "1", "--device", "cpu")
    _assert_missing(proc, "needs the Python package 'timm'", "hint: pip install 'fgcli[timm]'")


@pytest.mark.parametrize("blocked, backend, extra", [("tensorrt", "tensorrt", "trt"),
                                                     ("tensorrt_rtx", "tensorrt-rtx", "rtx")])
def test_build_names_tensorrt(blocked, backend, extra, tiny_onnx, tmp_path):
    proc = _fgcli(tmp_path, blocked, "build", tiny_onnx, "--backend", backend, "--out", tmp_path / "m.engine")
    _assert_missing(proc, f"needs the Python package '{blocked}'")
    assert f"fgcli[{extra}]" in proc.stderr or "pip install tensorrt" in proc.stderr


# --------------------------------------------------------------------------- pyproject's extras match the features
def _extras() -> dict[str, set[str]]:
    """Each extra of pyproject.toml -> the distributions it installs, with the fgcli[...] extras it names expanded."""
    import re
    import tomllib

    from conftest import REPO_ROOT

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        names = set()
        for requirement in declared[extra]:
            nested = re.match(r"fgcli\[(.+)\]", requirement)
            if nested:
                names |= set().union(*(expand(name) for name in nested.group(1).split(",")))
            else:
                names.add(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-"))
        return names

    return {extra: expand(extra) for extra in declared}


def test_every_feature_module_is_declared_in_its_extra():
    from fgcli.errors import distribution_of

    extras = _extras()
    for feature in doctor.FEATURES:
        installs = set().union(*(extras[extra] for extra in feature.extra.split(",")))
        for module in feature.modules:
            distribution = distribution_of(module).lower().replace("_", "-")
            assert distribution in installs, f"{feature.name}: {module} is not in fgcli[{feature.extra}]"


def test_all_holds_every_feature_but_tensorrt_and_the_undeclared_imports_of_modelopt():
    extras = _extras()
    needed = {extra for feature in doctor.FEATURES for extra in feature.extra.split(",")} - {"trt"}
    assert all(extras[extra] <= extras["all"] for extra in needed), needed
    assert {"huggingface-hub", "requests", "lief", "onnx-graphsurgeon"} <= extras["quant"]
    assert "tensorrt" not in extras["all"] and "onnxruntime-gpu" not in extras["all"]
