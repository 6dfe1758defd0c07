"""INT8 calibration: the calibration set, ONNX Runtime static INT8 and modelopt Q/DQ PTQ on a tiny ResNet-18."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CLASSES, write_tiny_folder_dataset
from fgcli.calibration.dataset import (CalibrationWarning, balanced_order, build_calibration_set,
                                       load_calibration_set)
from fgcli.data.images import load_rgb
from fgcli.data.index import Sample
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.errors import DataError, FgcliError

PREPROCESS = PreprocessConfig(img_size=64, resize_size=73)


def build_quietly(*args, **kwargs):
    """build_calibration_set without the expected small-set warning (tests use a few dozen images)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return build_calibration_set(*args, **kwargs)


@pytest.fixture(scope="module")
def calib_data(tmp_path_factory) -> Path:
    """3 classes with 10, 4 and 7 training images."""
    root = write_tiny_folder_dataset(tmp_path_factory.mktemp("calib_data"), {"train": 10})
    for name, keep in zip(TINY_CLASSES, (10, 4, 7)):
        for extra in sorted((root / "train" / name).iterdir())[keep:]:
            extra.unlink()
    return root


@pytest.fixture(scope="module")
def calib(calib_data):
    return build_quietly(calib_data, PREPROCESS, size=21)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> Path:
    """A randomly initialised baseline ResNet-18 exported at 64 px with the fgcli metadata."""
    import torch

    import fgcli
    from fgcli.export.onnx import trace_to_onnx
    from fgcli.runtime.onnx_meta import set_onnx_metadata
    from fgcli.models import create_model

    torch.manual_seed(0)
    model = create_model("baseline", len(TINY_CLASSES), backbone="resnet18").eval()
    proto = trace_to_onnx(model, PREPROCESS.img_size, opset=17)
    set_onnx_metadata(proto, {"method": "baseline", "backbone": "resnet18", "class_names": list(TINY_CLASSES),
                              "preprocess": PREPROCESS.to_dict(), "version": fgcli.__version__,
                              "precision": "fp32"})
    import onnx

    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    onnx.save(proto, str(path))
    return path


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def assert_int8_model(result, fp32_path: Path, out_path: Path, images: np.ndarray) -> None:
    """Shared checks of a quantizer's output: Q/DQ graph, metadata, clean folder, logits near FP32."""
    import onnx

    from fgcli.runtime.onnx_meta import read_onnx_metadata

    model = onnx.load(str(out_path))
    op_counts = Counter(node.op_type for node in model.graph.node)
    assert op_counts["QuantizeLinear"] > 0 and op_counts["DequantizeLinear"] > 0
    assert result.quantized_counts.get("Conv", 0) >= 20  # every conv of ResNet-18 (downsample ones included)
    assert result.num_quantized == sum(result.quantized_counts.values()) == len(set(result.quantized_nodes))
    assert result.calibration_images == len(images) and result.calibration_seconds > 0

    before, after = read_onnx_metadata(fp32_path), read_onnx_metadata(out_path)
    assert after.pop("precision") == "int8" and before.pop("precision") == "fp32"
    assert after == before

    assert sorted(p.name for p in out_path.parent.iterdir()) == [out_path.name]

    reference, quantized = logits(fp32_path, images), logits(out_path, images)
    assert quantized.shape == reference.shape and quantized.dtype == np.float32
    spread = np.abs(reference).max()
    assert np.abs(quantized - reference).max() < 0.1 * spread
    assert (quantized.argmax(1) == reference.argmax(1)).mean() >= 0.9


# --------------------------------------------------------------------------- calibration set
def test_balanced_order_visits_classes_round_robin():
    samples = [Sample(f"{label}_{i}", label) for label, count in enumerate((5, 2, 3)) for i in range(count)]
    order = balanced_order(samples, seed=0)
    assert sorted(s.path for s in order) == sorted(s.path for s in samples)
    assert sorted(s.label for s in order[:3]) == [0, 1, 2]
    assert sorted(s.label for s in order[3:6]) == [0, 1, 2]
    assert sorted(s.label for s in order[6:8]) == [0, 2]
    assert [s.label for s in order[8:]] == [0, 0]


def test_calibration_set_is_class_balanced(calib_data):
    counts = Counter(build_quietly(calib_data, PREPROCESS, size=15).labels.tolist())
    assert counts[1] == 4  # the small class gives all it has
    assert sum(counts.values()) == 15 and abs(counts[0] - counts[2]) <= 1
    assert Counter(build_quietly(calib_data, PREPROCESS, size=9).labels.tolist()) == {0: 3, 1: 3, 2: 3}


def test_calibration_set_is_deterministic_for_the_seed(calib_data, calib):
    again = build_quietly(calib_data, PREPROCESS, size=21)
    assert again.paths == calib.paths and np.array_equal(again.images, calib.images)
    other = build_quietly(calib_data, PREPROCESS, size=21, seed=1)
    assert other.paths != calib.paths and sorted(other.paths) == sorted(calib.paths)


def test_calibration_images_are_preprocessed_like_evaluation(calib):
    assert calib.images.shape == (21, 3, 64, 64) and calib.images.dtype == np.float32
    for image, label, path in zip(calib.images, calib.labels, calib.paths):
        assert np.array_equal(image, preprocess_eval(load_rgb(path), PREPROCESS))
        assert Path(path).parent.name == TINY_CLASSES[label]


def test_calibration_set_npz_round_trip(calib, tmp_path):
    path = calib.save(tmp_path / "calib.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["calib.npz"]
    loaded = load_calibration_set(path)
    assert np.array_equal(loaded.images, calib.images) and loaded.images.dtype == np.float32
    assert np.array_equal(loaded.labels, calib.labels) and loaded.labels.dtype == np.int64
    assert loaded.paths == calib.paths and loaded.preprocess == PREPROCESS


def test_small_or_short_split_warns_and_takes_everything(calib_data):
    with pytest.warns(CalibrationWarning) as caught:
        calib = build_calibration_set(calib_data, PREPROCESS, size=100)
    messages = [str(w.message) for w in caught]
    assert len(calib) == 21 and len(calib.warnings) == 2 and messages == calib.warnings
    assert "only 21 images" in messages[0] and "at least 300" in messages[1]


def test_bad_images_are_skipped_replaced_and_reported(tmp_path):
    from fgcli.data import load_split

    root = write_tiny_folder_dataset(tmp_path / "data", {"train": 4})
    broken = balanced_order(load_split(root).samples, seed=0)[0]
    Path(broken.path).write_bytes(b"not a png")
    calib = build_quietly(root, PREPROCESS, size=6)
    assert len(calib) == 6 and broken.path not in calib.paths
    assert Counter(calib.labels.tolist()) == {0: 2, 1: 2, 2: 2}  # replaced from the same class
    assert calib.skipped == [(broken.path, "not an image file PIL can identify")]
    assert any(Path(broken.path).name in note for note in calib.warnings)


def test_load_calibration_set_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="not found") as missing:
        load_calibration_set(tmp_path / "calib.npz")
    assert "fgcli calib" in missing.value.hint
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"other\.npz .*missing labels, paths, preprocess"):
        load_calibration_set(tmp_path / "other.npz")


# --------------------------------------------------------------------------- ONNX Runtime static INT8
def test_ort_int8_quantizes_and_stays_close_to_fp32(fp32_onnx, calib, tmp_path):
    from fgcli.calibration.ort_int8 import quantize_ort

    out = tmp_path / "ort" / "model.int8.onnx"
    result = quantize_ort(fp32_onnx, calib, out)
    assert result.output_path == out and result.quantizer == "onnxruntime"
    assert_int8_model(result, fp32_onnx, out, calib.images)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_ort_histogram_calibration_takes_a_count_that_batches_do_not_divide(fp32_onnx, calib, method, tmp_path):
    """21 images in batches of 16 left a last batch of 5, and ORT's histogram collector failed to stack them."""
    from fgcli.calibration.ort_int8 import equal_batch_size, quantize_ort

    assert len(calib) == 21 and equal_batch_size(21, 16) == 7 and equal_batch_size(13, 16) == 13
    out = tmp_path / f"model.{method}.onnx"
    result = quantize_ort(fp32_onnx, calib, out, calib_method=method, batch_size=16)
    assert result.calib_method == method
    assert_int8_model(result, fp32_onnx, out, calib.images)


def test_ort_int8_reads_calib_npz_and_rejects_a_size_mismatch(fp32_onnx, calib_data, tmp_path):
    from fgcli.calibration.ort_int8 import quantize_ort

    small = build_quietly(calib_data, PreprocessConfig(img_size=32, resize_size=36), size=6)
    npz = small.save(tmp_path / "calib32.npz")
    with pytest.raises(FgcliError, match=r"calibration images are \(N, 3, 32, 32\)"):
        quantize_ort(fp32_onnx, npz, tmp_path / "out" / "model.int8.onnx")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- modelopt Q/DQ PTQ
def test_modelopt_ptq_writes_qdq_that_runs_on_ort_cpu(fp32_onnx, calib, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization")
    from fgcli.calibration.modelopt_ptq import quantize_modelopt

    source_digest = hashlib.sha256(fp32_onnx.read_bytes()).hexdigest()
    out = tmp_path / "modelopt" / "model.int8.onnx"
    result = quantize_modelopt(fp32_onnx, calib, out, calib_method="max")
    assert result.quantizer == "modelopt" and result.extra["high_precision_dtype"] == "fp32"
    assert hashlib.sha256(fp32_onnx.read_bytes()).hexdigest() == source_digest  # modelopt edits its input
    assert_int8_model(result, fp32_onnx, out, calib.images)


def test_ort_int8_still_works_after_modelopt_in_a_script_without_main_guard(fp32_onnx, calib, tmp_path):
    """modelopt patches ORT's quantizer when it runs, so fgcli runs it in a child interpreter: ORT INT8 still
    works afterwards in the same process, and a plain script (no ``if __name__ == "__main__"``) is not re-run."""
    pytest.importorskip("modelopt.onnx.quantization")
    calib_file = calib.save(tmp_path / "calib.npz")
    script = tmp_path / "quantize_both.py"
    script.write_text(
        "from fgcli.calibration.modelopt_ptq import quantize_modelopt\n"
        "from fgcli.calibration.ort_int8 import quantize_ort\n"
        f"quantize_modelopt({str(fp32_onnx)!r}, {str(calib_file)!r}, {str(tmp_path / 'model.int8.onnx')!r})\n"
        f"result = quantize_ort({str(fp32_onnx)!r}, {str(calib_file)!r}, {str(tmp_path / 'model.ort-int8.onnx')!r})\n"
        "print('ort quantized', result.num_quantized)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("ort quantized") == 1 and int(run.stdout.split()[-1]) > 0


def test_modelopt_failure_shows_the_child_log(calib, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization")
    from fgcli.calibration.modelopt_ptq import _run_in_child

    options = tmp_path / "options.json"
    options.write_text(json.dumps({"model": str(tmp_path / "missing.onnx"), "output": str(tmp_path / "out.onnx"),
                                   "calibration_file": str(tmp_path / "missing.npy"), "input_name": "images"}))
    with pytest.raises(RuntimeError, match=r"(?s)exit code 1: .*FileNotFoundError.*missing\.npy"):
        _run_in_child(options)


def test_modelopt_ptq_fp16_keeps_float32_inputs_and_outputs(fp32_onnx, calib, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization")
    import onnx

    from fgcli.calibration.modelopt_ptq import quantize_modelopt

    out = tmp_path / "model.int8.onnx"
    result = quantize_modelopt(fp32_onnx, calib, out, calib_method="entropy", fp16=True)
    model = onnx.load(str(out))
    assert {init.data_type for init in model.graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == \
        [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert result.calib_method == "entropy" and result.quantized_counts["Conv"] >= 20
    assert np.isfinite(logits(out, calib.images[:4])).all()


def test_modelopt_rejects_unknown_method_and_device(fp32_onnx, calib, tmp_path):
    from fgcli.calibration.modelopt_ptq import quantize_modelopt

    with pytest.raises(FgcliError, match="calibration method 'minmax'") as method:
        quantize_modelopt(fp32_onnx, calib, tmp_path / "m.onnx", calib_method="minmax")
    assert "max, entropy" in method.value.hint
    with pytest.raises(FgcliError, match="calibration device 'tpu'"):
        quantize_modelopt(fp32_onnx, calib, tmp_path / "m.onnx", device="tpu")


def test_modelopt_missing_names_the_quant_extra(fp32_onnx, calib, tmp_path):
    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("nvidia-modelopt is installed")
    from fgcli.calibration.modelopt_ptq import quantize_modelopt
    from fgcli.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError) as missing:
        quantize_modelopt(fp32_onnx, calib, tmp_path / "model.int8.onnx")
    assert "fgcli[quant]" in missing.value.hint and not (tmp_path / "model.int8.onnx").exists()


def test_softmax_weighted_nodes_follow_layout_ops_to_the_weighting_node():
    import onnx
    from onnx import TensorProto, helper

    from fgcli.calibration import softmax_weighted_nodes

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["scores"], ["weights"], name="softmax", axis=-1),
         helper.make_node("Transpose", ["weights"], ["weights_t"], name="transpose", perm=[1, 0]),
         helper.make_node("MatMul", ["values", "weights_t"], ["attended"], name="attend"),
         helper.make_node("MatMul", ["attended", "projection"], ["out"], name="project")],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("scores", "values", "projection")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 4])])
    assert softmax_weighted_nodes(helper.make_model(graph)) == ["attend"]


def test_gcam_csa_softmax_weighted_channel_sum_stays_float_under_modelopt(calib_data, tmp_path):
    """Its softmax over 512 channels feeds a Mul: INT8 there cut agreement with FP32 to 71 % (measured)."""
    pytest.importorskip("modelopt.onnx.quantization")
    import torch

    from fgcli.calibration.modelopt_ptq import quantize_modelopt
    from fgcli.export.onnx import export_onnx
    from fgcli.models import create_model

    torch.manual_seed(0)
    model = create_model("gcam-csa", len(TINY_CLASSES), backbone="resnet18")
    checkpoint = {"method": "gcam-csa", "backbone": "resnet18", "num_classes": len(TINY_CLASSES),
                  "class_names": list(TINY_CLASSES), "model_kwargs": {}, "preprocess": PREPROCESS.to_dict(),
                  "model": model.state_dict()}
    fp32 = export_onnx(checkpoint, tmp_path).path
    result = quantize_modelopt(fp32, build_quietly(calib_data, PREPROCESS, size=16), tmp_path / "model.int8.onnx")
    assert result.extra["float_nodes"] == ["/attention/Mul"]
    assert "/attention/Mul" not in result.quantized_nodes and result.quantized_counts["Conv"] >= 20
