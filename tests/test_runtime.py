"""Runners: torch and ONNX Runtime agree, open_runner dispatches and refuses clearly, no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from test_export_onnx import CLASS_NAMES, PREPROCESS, baseline_checkpoint, exported_model, images  # noqa: F401
from conftest import BLOCK_TORCH

from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.devices import parse_device
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.runtime import open_runner
from fgcli.runtime.base import Runner
from fgcli.runtime.onnx_meta import decode_fgcli_metadata, encode_fgcli_metadata
from fgcli.runtime.onnx_runner import CPU, CUDA, TENSORRT, OnnxRunner, select_providers
from fgcli.runtime.torch_runner import TorchRunner


def test_onnx_and_torch_runners_give_the_same_logits(exported_model, baseline_checkpoint):
    batch = images(5)
    with OnnxRunner(exported_model.path, "cpu") as onnx_runner, TorchRunner(baseline_checkpoint, "cpu") as torch_runner:
        onnx_logits, torch_logits = onnx_runner.run(batch), torch_runner.run(batch)
        for runner in (onnx_runner, torch_runner):
            assert runner.class_names == CLASS_NAMES
            assert runner.preprocess == PreprocessConfig.from_dict(PREPROCESS)
            assert runner.precision == "fp32"
        assert (onnx_runner.name, torch_runner.name) == ("onnxruntime:CPUExecutionProvider", "torch:cpu")
    assert onnx_logits.dtype == torch_logits.dtype == np.float32 and onnx_logits.shape == (5, 3)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_open_runner_dispatches_on_suffix_and_closes(exported_model, baseline_checkpoint):
    with open_runner(baseline_checkpoint, device="cpu") as runner:
        assert isinstance(runner, TorchRunner)
    assert runner.model is None
    with open_runner(str(exported_model.path)) as runner:  # "auto" on a CPU-only onnxruntime
        assert isinstance(runner, OnnxRunner) and runner.name == "onnxruntime:CPUExecutionProvider"
        assert runner.metadata["method"] == "baseline"
    assert runner._session is None


@pytest.mark.parametrize("name, device, providers, message", [
    ("model.h5", "cpu", None, r"unknown model file type '\.h5'.*\n.*\.pt \(PyTorch checkpoint\), \.onnx .*\.engine"),
    ("missing.onnx", "cpu", None, "model file not found: .*missing.onnx"),
    ("model.engine", "cpu", None, "runs on an NVIDIA GPU only"),
    ("model.pt", "cpu", [CPU], "execution providers apply to .onnx models only"),
    ("model.onnx", "gpu", None, "unknown device 'gpu'"),
])
def test_open_runner_errors(tmp_path, name, device, providers, message):
    if name != "missing.onnx":
        (tmp_path / name).write_bytes(b"\0")
    with pytest.raises(FgcliError, match=message):
        open_runner(tmp_path / name, device=device, providers=providers)


def test_unreadable_onnx_names_the_file(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(FgcliError, match=r"ONNX Runtime cannot load .*broken\.onnx"):
        open_runner(tmp_path / "broken.onnx", device="cpu")


def test_provider_selection():
    available = [TENSORRT, CUDA, CPU]
    assert select_providers(available, "auto") == [CUDA, CPU]
    assert select_providers(available, "cuda:1") == [CUDA, CPU]
    assert select_providers(available, "tensorrt:0") == [TENSORRT, CUDA, CPU]
    assert select_providers(available, "cpu") == [CPU]
    assert select_providers([CPU], "auto") == [CPU]
    assert select_providers(available, "cpu", providers=[TENSORRT]) == [TENSORRT, CPU]
    with pytest.raises(FgcliError, match="needs ONNX Runtime's CUDAExecutionProvider.*\n.*onnxruntime-gpu"):
        select_providers([CPU], "cuda")
    with pytest.raises(FgcliError, match="has no NoSuchProvider here\n.*available providers: CPUExecutionProvider"):
        select_providers([CPU], "auto", providers=["NoSuchProvider"])


def test_onnx_runner_refuses_cuda_without_the_cuda_provider_and_wrong_shapes(exported_model):
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        for device in ("cuda", "tensorrt"):
            with pytest.raises(FgcliError, match="onnxruntime-gpu"):
                OnnxRunner(exported_model.path, device=device)
    with OnnxRunner(exported_model.path, device="cpu") as runner:
        with pytest.raises(FgcliError, match=r"expects images of shape \(B, 3, 64, 64\), got \(2, 3, 32, 32\)"):
            runner.run(images(2, size=32))


def test_torch_runner_refuses_cuda_without_a_gpu(baseline_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(FgcliError, match="PyTorch sees no CUDA GPU"):
        TorchRunner(baseline_checkpoint, device="cuda")


def test_missing_onnxruntime_is_a_dependency_error(exported_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match="'onnxruntime'") as info:
        open_runner(exported_model.path)
    assert "fgcli[onnx]" in info.value.hint


def test_metadata_codec_round_trip_and_errors():
    meta = {"method": "tasn", "backbone": "resnet50", "class_names": ["a", "b \"quoted\""],
            "preprocess": PREPROCESS, "precision": "int8", "version": "0.1.0"}
    props = encode_fgcli_metadata(meta)
    assert props["fgcli.class_names"] == json.dumps(meta["class_names"]) and props["fgcli.img_size"] == "64"
    assert decode_fgcli_metadata(props, "m.onnx") == meta
    del props["fgcli.std"]
    with pytest.raises(FgcliError, match=r"m\.onnx lacks the fgcli metadata fgcli\.std"):
        decode_fgcli_metadata(props, "m.onnx")
    with pytest.raises(FgcliError, match=r"m\.onnx has malformed fgcli metadata"):
        decode_fgcli_metadata({**encode_fgcli_metadata(meta), "fgcli.mean": "[0.4,"}, "m.onnx")


def test_runner_interface():
    with pytest.raises(TypeError):
        Runner(name="x", class_names=[], preprocess=PreprocessConfig(), precision="fp32")
    assert parse_device("cuda:2") == ("cuda", 2) and parse_device("AUTO") == ("auto", 0)
    with pytest.raises(FgcliError, match="unknown device 'cpu:1'"):
        parse_device("cpu:1")


def test_onnx_deployment_path_works_without_torch(exported_model, baseline_checkpoint, tmp_path):
    """Import the runtime and preprocessing with torch unimportable, then classify an image file."""
    pixels = np.random.default_rng(3).integers(0, 255, size=(90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "bird.png")
    script = BLOCK_TORCH + textwrap.dedent(f"""
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the torch blocker does not work")
        import numpy as np
        import fgcli.runtime, fgcli.runtime.onnx_runner, fgcli.data.preprocess
        from fgcli.data.images import load_rgb
        from fgcli.runtime import open_runner
        with open_runner({str(exported_model.path)!r}, device="cpu") as runner:
            batch = fgcli.data.preprocess.preprocess_eval(load_rgb({str(tmp_path / "bird.png")!r}), runner.preprocess)
            np.save({str(tmp_path / "logits.npy")!r}, runner.run(batch[None]))
        assert "torch" not in sys.modules
        print(runner.name)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "onnxruntime:CPUExecutionProvider"
    batch = preprocess_eval(Image.open(tmp_path / "bird.png").convert("RGB"), PreprocessConfig.from_dict(PREPROCESS))
    with TorchRunner(baseline_checkpoint, device="cpu") as reference:
        np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), reference.run(batch[None]), atol=1e-4)


def test_onnx_runner_can_stop_its_threads_busy_waiting(tiny_onnx):
    """The report turns spinning off: busy-waiting ORT threads slow whichever variant is timed next."""
    from fgcli.runtime import open_runner

    key = "session.intra_op.allow_spinning"
    with open_runner(tiny_onnx, device="cpu", spin_wait=False) as quiet, open_runner(tiny_onnx, device="cpu") as busy:
        assert quiet._session.get_session_options().get_session_config_entry(key) == "0"
        with pytest.raises(Exception, match=key):  # not set: ORT's default, spinning
            busy._session.get_session_options().get_session_config_entry(key)
        images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        assert np.array_equal(quiet.run(images), busy.run(images))
