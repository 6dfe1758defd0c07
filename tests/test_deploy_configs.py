"""Serving configs: embedded preprocessing, DeepStream's nvinfer config and label file, a Triton model repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.data.images import load_rgb
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.training.checkpoint import load_checkpoint
from fgcli.errors import FgcliError
from fgcli.export.deepstream import read_nvinfer_config, write_deepstream_config
from fgcli.export.onnx import export_onnx
from fgcli.runtime.comparator import logit_tolerance
from fgcli.runtime.onnx_meta import read_onnx_metadata
from fgcli.export.triton import write_triton_repository
from fgcli.runtime.onnx_runner import OnnxRunner

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    """The tiny baseline exported twice: the normal graph and the one with the normalisation inside."""
    root = tmp_path_factory.mktemp("exports")
    plain = export_onnx(tiny_checkpoint, root / "plain").path
    embedded = export_onnx(tiny_checkpoint, root / "embedded", embed_preprocess=True).path
    return plain, embedded


def _logits(onnx_path: Path, images: list[Path]) -> np.ndarray:
    """What fgcli's runtime computes: each image preprocessed as the model's own metadata says."""
    preprocess = PreprocessConfig.from_dict(read_onnx_metadata(onnx_path)["preprocess"])
    batch = np.stack([preprocess_eval(load_rgb(p), preprocess) for p in images])
    with OnnxRunner(onnx_path, device="cpu") as runner:
        return runner.run(batch)


def test_embedded_preprocess_gives_the_same_logits_on_the_same_images(exports, tiny_dataset):
    plain, embedded = exports
    images = sorted((tiny_dataset / "test").rglob("*.png"))
    meta = read_onnx_metadata(embedded)["preprocess"]
    assert meta["mean"] == [0.0, 0.0, 0.0] and np.allclose(meta["std"], 1 / 255)
    expected, got = _logits(plain, images), _logits(embedded, images)
    assert np.abs(expected - got).max() <= logit_tolerance(expected, 1e-4, 1e-6)  # float32 rounding only
    assert (expected.argmax(1) == got.argmax(1)).all()
    # the graph really takes 0..255 pixels: fed normalised images it answers differently
    normalised = np.stack([preprocess_eval(load_rgb(p), PreprocessConfig(32, 36)) for p in images])
    with OnnxRunner(embedded, device="cpu") as runner:
        assert np.abs(runner.run(normalised) - expected).max() > 1e-2


def test_deepstream_config_for_the_embedded_model(exports):
    _, embedded = exports
    files = write_deepstream_config(embedded, precision="fp16", batch_size=8, process_mode="primary",
                                    classifier_threshold=0.5, maintain_aspect_ratio=True)
    assert files.config.name == "config_infer_baseline_resnet18.txt" and files.config.parent == embedded.parent
    props = read_nvinfer_config(files.config)
    assert props == {
        "gpu-id": "0", "net-scale-factor": "1", "offsets": "0;0;0", "model-color-format": "0",
        "onnx-file": "model.onnx", "model-engine-file": "model.fp16.engine",
        "labelfile-path": "labels_baseline_resnet18.txt", "batch-size": "8", "network-mode": "2",
        "network-type": "1", "process-mode": "1", "gie-unique-id": "2", "infer-dims": "3;32;32",
        "maintain-aspect-ratio": "1", "classifier-threshold": "0.5", "output-blob-names": "logits",
    }
    # nvinfer's classifier label file: one line per output layer, that layer's labels separated by ';'
    assert files.labels.read_text() == "alpha;beta;gamma\n"


def test_per_channel_std_needs_the_embedded_preprocess(exports):
    plain, _ = exports
    with pytest.raises(FgcliError) as info:
        write_deepstream_config(plain)
    assert "per-channel std" in info.value.message and "--embed-preprocess" in info.value.hint


def test_nvinfer_scale_and_offsets_reproduce_fgcli_preprocessing(tiny_checkpoint, tiny_dataset, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["preprocess"] = {**ckpt["preprocess"], "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25]}
    onnx_path = export_onnx(ckpt, tmp_path).path
    props = read_nvinfer_config(write_deepstream_config(
        onnx_path, precision="int8", int8_calib_file=tmp_path / "model.calib.cache").config)
    assert props["network-mode"] == "1" and props["int8-calib-file"] == "model.calib.cache"
    assert props["process-mode"] == "2"  # secondary: behind a detector, the default
    scale, offsets = float(props["net-scale-factor"]), np.array(props["offsets"].split(";"), float)
    image = load_rgb(next((tiny_dataset / "test").rglob("*.png")))
    fgcli_input = preprocess_eval(image, PreprocessConfig.from_dict(ckpt["preprocess"]))
    pixels = preprocess_eval(image, PreprocessConfig(32, 36, (0, 0, 0), (1 / 255,) * 3))  # 0..255
    nvinfer_input = scale * (pixels - offsets.reshape(3, 1, 1))  # y = net-scale-factor * (x - offsets[c])
    assert np.abs(nvinfer_input - fgcli_input).max() < 1e-4
    with pytest.raises(FgcliError, match="calibration cache only applies to INT8"):
        write_deepstream_config(onnx_path, precision="fp16", int8_calib_file="model.calib.cache")


# --------------------------------------------------------------------------- Triton
def _parse_model_config(path: Path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repository_parses_as_tritons_model_config(exports, tmp_path):
    import onnx

    plain, _ = exports
    config_path = write_triton_repository(tmp_path / "repo", plain, max_batch_size=16, name="birds")
    config = _parse_model_config(config_path)
    assert config_path == tmp_path / "repo" / "birds" / "config.pbtxt"
    assert config.name == "birds" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.HasField("dynamic_batching")
    graph = onnx.load(str(plain)).graph
    for triton_tensors, onnx_tensors in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in triton_tensors] == [t.name for t in onnx_tensors]
        for ours, theirs in zip(triton_tensors, onnx_tensors):
            assert list(ours.dims) == [d.dim_value for d in theirs.type.tensor_type.shape.dim][1:]
            assert ours.data_type == config.DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_name[
                "TYPE_FP32"].number
    assert list(config.input[0].dims) == [3, 32, 32] and list(config.output[0].dims) == [3]
    assert config.output[0].label_filename == "labels.txt"
    assert (config_path.parent / "labels.txt").read_text().splitlines() == ["alpha", "beta", "gamma"]
    assert (config_path.parent / "1" / "model.onnx").read_bytes() == plain.read_bytes()


def test_triton_serves_an_engine_as_tensorrt_plan(exports, tmp_path):
    plain, _ = exports
    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(b"serialized engine")
    config = _parse_model_config(write_triton_repository(tmp_path / "repo", plain, engine_path=engine))
    assert config.platform == "tensorrt_plan" and config.name == "baseline_resnet18"
    assert (tmp_path / "repo" / "baseline_resnet18" / "1" / "model.plan").read_bytes() == b"serialized engine"
    with pytest.raises(FgcliError, match="engine not found"):
        write_triton_repository(tmp_path / "repo", plain, engine_path=tmp_path / "absent.engine")


def test_cli_export_writes_deepstream_and_triton_files(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(app, [
        "export", str(tiny_checkpoint), "--out", str(tmp_path / "export"), "--embed-preprocess", "--deepstream",
        "--deepstream-mode", "primary", "--triton", str(tmp_path / "repo"), "--batch", "1,4,8",
    ])
    assert result.exit_code == 0, result.output
    props = read_nvinfer_config(tmp_path / "export" / "config_infer_baseline_resnet18.txt")
    assert props["process-mode"] == "1" and props["batch-size"] == "4" and props["net-scale-factor"] == "1"
    config = _parse_model_config(tmp_path / "repo" / "baseline_resnet18" / "config.pbtxt")
    assert config.max_batch_size == 8 and config.platform == "onnxruntime_onnx"
    bad = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "x"), "--deepstream",
                                   "--deepstream-mode", "tertiary"])
    assert isinstance(bad.exception, FgcliError) and "unknown --deepstream-mode 'tertiary'" in str(bad.exception)
    assert not (tmp_path / "x" / "model.onnx").exists()  # refused before the export
