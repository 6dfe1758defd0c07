"""ONNX export of a tiny baseline: valid graph, metadata, dynamic batch, parity check that can fail, FP16."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fgcli.errors import FgcliError, MissingDependencyError
from fgcli.export import onnx as export_module
from fgcli.export.onnx import FP16_RTOL, Parity, export_fp16, export_onnx, require_parity
from fgcli.runtime.comparator import compare_logits
from fgcli.runtime.onnx_meta import read_onnx_metadata
from fgcli.models import create_model

CLASS_NAMES = ["alpha", "beta", "gamma"]
PREPROCESS = {"img_size": 64, "resize_size": 73, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def images(count: int, size: int = 64, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def baseline_checkpoint(tmp_path_factory):
    """An untrained baseline (resnet18, 3 classes, 64 px) saved as an fgcli checkpoint."""
    torch.manual_seed(0)
    model = create_model("baseline", 3, backbone="resnet18")
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {
        "method": "baseline", "backbone": "resnet18", "num_classes": 3, "class_names": CLASS_NAMES,
        "model_kwargs": {}, "preprocess": PREPROCESS, "model": model.state_dict(),
    })
    return path


@pytest.fixture(scope="module")
def exported_model(baseline_checkpoint, tmp_path_factory):
    return export_onnx(baseline_checkpoint, tmp_path_factory.mktemp("export"))


def eager_logits(checkpoint, batch: np.ndarray) -> np.ndarray:
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def test_export_writes_a_valid_opset17_model_with_images_in_logits_out(exported_model):
    path = exported_model.path
    assert path.name == "model.onnx" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temp files left behind
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, graph_output.name) == ("images", "logits")
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_export_reports_parity_figures_within_tolerance(exported_model):
    parity = exported_model.parity
    assert parity.n_images == 8 and parity.top1_agreement == 1.0
    assert 0.0 <= parity.max_abs_diff <= 1e-3 == parity.tolerance
    assert exported_model.to_dict()["max_abs_diff"] == parity.max_abs_diff


def test_metadata_round_trips(exported_model):
    meta = read_onnx_metadata(exported_model.path)
    assert meta["class_names"] == CLASS_NAMES
    assert meta["preprocess"] == PREPROCESS
    assert (meta["method"], meta["backbone"], meta["precision"]) == ("baseline", "resnet18", "fp32")
    assert meta["version"] == __import__("fgcli").__version__


@pytest.mark.parametrize("batch_size", [1, 5])
def test_batch_axis_is_dynamic(exported_model, baseline_checkpoint, batch_size):
    session = ort.InferenceSession(str(exported_model.path), providers=["CPUExecutionProvider"])
    batch = images(batch_size)
    (logits,) = session.run(None, {"images": batch})
    assert logits.shape == (batch_size, 3)
    np.testing.assert_allclose(logits, eager_logits(baseline_checkpoint, batch), atol=1e-3)


def test_given_check_images_and_img_size_override(baseline_checkpoint, tmp_path):
    result = export_onnx(load_checkpoint(baseline_checkpoint), tmp_path, img_size=48, check_images=images(3, 48))
    assert (result.img_size, result.parity.n_images) == (48, 3)
    assert read_onnx_metadata(result.path)["preprocess"]["resize_size"] == 55  # 48 * 73 / 64 = 54.75
    with pytest.raises(FgcliError, match=r"expected \(N, 3, 64, 64\)"):
        export_onnx(baseline_checkpoint, tmp_path / "bad", check_images=images(2, 48))


def test_parity_failure_raises_and_writes_nothing(baseline_checkpoint, tmp_path, monkeypatch):
    real = export_module.onnxruntime_logits
    monkeypatch.setattr(export_module, "onnxruntime_logits", lambda path, batch: real(path, batch) + 0.01)
    with pytest.raises(FgcliError, match=r"does not match PyTorch: max \|logit diff\| 0\.01"):
        export_onnx(baseline_checkpoint, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_top1_flip_within_the_logit_tolerance_still_fails():
    parity = Parity(compare_logits(np.array([[1.0, 0.9996]]), np.array([[0.9996, 1.0]])), tolerance=1e-3)
    assert parity.max_abs_diff < 1e-3 and parity.top1_agreement == 0.0
    with pytest.raises(FgcliError, match="top-1 agreement 0.0%"):
        require_parity(parity, export_module.Path("model.onnx"), "PyTorch", strict_top1=True)


def test_fp32_parity_tolerance_is_1e_3_and_grows_with_logits_above_10():
    from fgcli.export.onnx import PARITY_ATOL, PARITY_RTOL
    from fgcli.runtime.comparator import logit_tolerance

    assert logit_tolerance(np.array([[-3.0, 9.5]]), PARITY_ATOL, PARITY_RTOL) == 1e-3
    assert logit_tolerance(np.array([[-37.8, 2.0]]), PARITY_ATOL, PARITY_RTOL) == pytest.approx(3.78e-3)


def test_old_opset_is_refused(baseline_checkpoint, tmp_path):
    with pytest.raises(FgcliError, match="opset 13 is too old"):
        export_onnx(baseline_checkpoint, tmp_path, opset=13)


def test_read_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(FgcliError, match="ONNX model not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")
    bare = tmp_path / "bare.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("x", 1, [1])], [value("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), str(bare))
    with pytest.raises(FgcliError, match=r"bare\.onnx lacks the fgcli metadata fgcli\.class_names"):
        read_onnx_metadata(bare)


# --------------------------------------------------------------------------- FP16
def test_fp16_model_is_float16_inside_fp32_at_the_edges_and_close_to_fp32(exported_model, tmp_path):
    result = export_fp16(exported_model.path, tmp_path / "model.fp16.onnx")
    proto = onnx.load(str(result.path))
    weight_types = {init.data_type for init in proto.graph.initializer if len(init.dims) == 4}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert read_onnx_metadata(result.path)["precision"] == "fp16"

    batch = images(4)
    fp32 = ort.InferenceSession(str(exported_model.path)).run(None, {"images": batch})[0]
    fp16 = ort.InferenceSession(str(result.path)).run(None, {"images": batch})[0]
    assert fp16.dtype == np.float32
    assert np.abs(fp16 - fp32).max() <= FP16_RTOL * max(1.0, np.abs(fp32).max())
    assert 0 < result.parity.max_abs_diff <= result.parity.tolerance  # really rounded, yet within tolerance


def test_fp16_with_float16_io_and_refusals(exported_model, tmp_path):
    result = export_fp16(exported_model.path, tmp_path / "io16.onnx", keep_io_fp32=False)
    assert onnx.load(str(result.path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    with pytest.raises(FgcliError, match="is already fp16"):
        export_fp16(result.path, tmp_path / "again.onnx")


def test_fp16_rewrites_the_graphs_own_casts_to_float(tmp_path):
    """Cast(to=float) inside the graph (e.g. a mask ``(x > 0).float()``) must become float16 as well, or the
    Mul after it mixes float and float16 (what onnxconverter-common 1.16 produced for TASN)."""
    helper, rng = onnx.helper, np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w"),
        onnx.numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc_w"),
        onnx.numpy_helper.from_array(np.zeros((), np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "conv_w"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("Greater", ["features", "zero"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["mask"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["features", "mask"], ["rectified"]),
        helper.make_node("GlobalAveragePool", ["rectified"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "masked", [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 2])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    export_module.set_onnx_metadata(proto, {"class_names": ["a", "b"], "precision": "fp32",
                                            "preprocess": {**PREPROCESS, "img_size": 8, "resize_size": 9}})
    onnx.save(proto, str(tmp_path / "model.onnx"))

    result = export_fp16(tmp_path / "model.onnx")
    assert result.path == tmp_path / "model.fp16.onnx"
    converted = onnx.load(str(result.path))
    onnx.checker.check_model(converted, full_check=True)
    casts = [n for n in converted.graph.node if n.input[0] == "positive"]
    assert [a.i for n in casts for a in n.attribute if a.name == "to"] == [onnx.TensorProto.FLOAT16]
    assert result.parity.n_images == 8 and result.parity.max_abs_diff <= result.parity.tolerance


def test_fp16_without_the_converter_names_the_package(exported_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.onnx_model", None)
    with pytest.raises(MissingDependencyError, match="'onnxruntime'") as info:
        export_fp16(exported_model.path, tmp_path / "model.fp16.onnx")
    assert "fgcli[onnx]" in str(info.value)
