"""INT8 sensitivity and automatic mixed precision on a tiny ONNX model with one deliberately fragile conv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CLASSES
from fgcli.calibration.dataset import CalibrationSet
from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError

pytestmark = pytest.mark.filterwarnings("ignore::fgcli.calibration.dataset.CalibrationWarning")  # tiny sets
PREPROCESS = PreprocessConfig(img_size=16, resize_size=18)
FRAGILE = "/fragile/Conv"


def _tiny_model(fragile: bool = True, quantizable: bool = True, channels: int = 8):
    """images -> conv a -> relu -> conv b -> relu -> conv c -> relu -> pool -> gemm -> logits.

    Conv a's channel 0 is always 0 after its ReLU (in INT8 too). In conv b (``FRAGILE``) every output channel's weight on that
    input channel is 1000: it multiplies zeros, so FP32 ignores it, but per-channel INT8 scales the channel's
    weights to it and rounds all the real ones (~0.3) to 0, so the conv outputs its bias whatever the image.
    ``channels``: modelopt leaves convs as narrow as 8 channels in float by its own rule; 32 it quantizes.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import fgcli
    from fgcli.runtime.onnx_meta import set_onnx_metadata

    rng = np.random.default_rng(0)
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 16, 16])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(TINY_CLASSES)])
    if not quantizable:  # Abs and a mean: nothing an INT8 quantizer takes
        nodes = [helper.make_node("Abs", ["images"], ["abs"], name="/abs/Abs"),
                 helper.make_node("ReduceMean", ["abs"], ["logits"], name="/mean/ReduceMean", axes=[2, 3],
                                  keepdims=0)]
        graph = helper.make_graph(nodes, "nothing", [images], [logits])
    else:
        weights = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in
                   (("wa", (channels, 3, 3, 3)), ("wb", (channels, channels, 3, 3)),
                    ("wc", (channels, channels, 3, 3)), ("wg", (len(TINY_CLASSES), channels)))}
        biases = {name: rng.normal(0, 0.1, size).astype(np.float32) for name, size in
                  (("ba", channels), ("bb", channels), ("bc", channels), ("bg", len(TINY_CLASSES)))}
        weights["wa"][0], biases["ba"][0] = 0.01, -50.0  # channel 0: about -50 before the ReLU, 0 after it
        if fragile:
            weights["wb"][:, 0, 1, 1] = 1000.0
        convs = [("/a/Conv", "images", "wa", "ba", "a"), (FRAGILE, "a_relu", "wb", "bb", "b"),
                 ("/c/Conv", "b_relu", "wc", "bc", "c")]
        nodes = []
        for name, source, weight, bias, out in convs:
            nodes.append(helper.make_node("Conv", [source, weight, bias], [out], name=name, pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [out], [out + "_relu"], name=f"/{out}/Relu"))
        nodes += [helper.make_node("GlobalAveragePool", ["c_relu"], ["pooled"], name="/pool/GlobalAveragePool"),
                  helper.make_node("Flatten", ["pooled"], ["features"], name="/head/Flatten"),
                  helper.make_node("Gemm", ["features", "wg", "bg"], ["logits"], name="/head/Gemm", transB=1)]
        initializers = [numpy_helper.from_array(value, name) for name, value in {**weights, **biases}.items()]
        graph = helper.make_graph(nodes, "fragile", [images], [logits], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    set_onnx_metadata(model, {"method": "baseline", "backbone": "tiny", "class_names": list(TINY_CLASSES),
                              "preprocess": PREPROCESS.to_dict(), "version": fgcli.__version__, "precision": "fp32"})
    onnx.checker.check_model(model)
    return model


def _save(model, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _images(count: int, seed: int) -> np.ndarray:
    """Noise images with a random colour each, so the tiny model's predictions differ between images."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(-2, 2, (count, 3, 1, 1))
    return (colours + 0.5 * rng.standard_normal((count, 3, 16, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def fragile_onnx(tmp_path_factory) -> Path:
    return _save(_tiny_model(), tmp_path_factory.mktemp("fragile") / "model.onnx")


@pytest.fixture(scope="module")
def calib() -> CalibrationSet:
    images = _images(32, seed=1)
    return CalibrationSet(images, np.zeros(len(images), dtype=np.int64), [f"calib{i}" for i in range(32)], PREPROCESS)


@pytest.fixture(scope="module")
def sensitivity(fragile_onnx, calib):
    from fgcli.calibration.sensitivity import measure_sensitivity

    return measure_sensitivity(fragile_onnx, calib, _images(64, seed=2), backend="ort")


def test_the_planted_fragile_conv_ranks_first_and_float_recovers_it(sensitivity):
    assert sensitivity.full_int8.agreement < 0.6  # the fragile conv breaks full INT8
    first = sensitivity.nodes[0]
    assert first.name == FRAGILE and first.op_type == "Conv"
    assert first.alone.agreement < 0.6 and first.kept_float.agreement >= 0.9
    others = sensitivity.nodes[1:]
    assert {"/a/Conv", "/c/Conv", "/head/Gemm"} <= {node.name for node in others}
    assert all(node.alone.agreement >= 0.9 and node.recovered_agreement < 0.2 for node in others)
    assert sensitivity.ranked_names == sorted(sensitivity.ranked_names, key=lambda n: -next(
        node.score for node in sensitivity.nodes if node.name == n))
    record = sensitivity.to_dict()
    assert record["nodes"][0]["name"] == FRAGILE and json.loads(json.dumps(record)) == record


@pytest.mark.slow
def test_modelopt_ranks_the_fragile_conv_first_and_its_loop_keeps_it_float(calib, tmp_path):
    """The same measurement through modelopt's Q/DQ (each build calibrates in a child interpreter), on 32-channel
    convs: modelopt keeps 8-channel ones float by itself, fragile or not."""
    pytest.importorskip("modelopt")
    from fgcli.calibration.int8_builder import Int8Builder
    from fgcli.calibration.mixed_precision import choose_float_nodes
    from fgcli.calibration.sensitivity import measure_sensitivity

    fragile_onnx = _save(_tiny_model(channels=32), tmp_path / "wide" / "model.onnx")
    images = _images(64, seed=2)
    builder = Int8Builder(fragile_onnx, "modelopt", calib, tmp_path)
    result = measure_sensitivity(fragile_onnx, calib, images, backend="modelopt", builder=builder, alone=False)
    assert result.full_int8.agreement < 0.6 and result.nodes[0].name == FRAGILE
    assert result.nodes[0].kept_float.agreement >= 0.9
    choice, model = choose_float_nodes(builder, result.ranked_names, tmp_path / "auto.onnx", images,
                                       target_agreement=0.9, timing_iterations=1)
    assert choice.met and choice.chosen.float_nodes == [FRAGILE] and model.quantizer == "modelopt"
    assert FRAGILE not in model.quantized_nodes and "/c/Conv" in model.quantized_nodes


def test_empty_validation_subset_is_a_clear_error(fragile_onnx, calib):
    from fgcli.calibration.sensitivity import measure_sensitivity

    with pytest.raises(FgcliError, match="validation subset is empty"):
        measure_sensitivity(fragile_onnx, calib, np.empty((0, 3, 16, 16), np.float32))


def test_a_model_with_nothing_quantizable_is_a_clear_error(tmp_path, calib):
    from fgcli.calibration.sensitivity import measure_sensitivity

    path = _save(_tiny_model(quantizable=False), tmp_path / "model.onnx")
    with pytest.raises(FgcliError, match="quantized no node"):
        measure_sensitivity(path, calib, _images(8, seed=2))


def test_greedy_keeps_the_fragile_conv_float_and_stops_as_soon_as_the_target_is_met(fragile_onnx, calib, tmp_path,
                                                                                    sensitivity):
    from fgcli.calibration.int8_builder import Int8Builder
    from fgcli.calibration.mixed_precision import choose_float_nodes

    builder = Int8Builder(fragile_onnx, "ort", calib, tmp_path)
    seen = []
    choice, result = choose_float_nodes(builder, sensitivity.ranked_names, tmp_path / "auto.onnx", _images(64, 2),
                                        target_agreement=0.9, timing_iterations=3, step_done=seen.append)
    assert choice.met and [len(step.float_nodes) for step in choice.steps] == [0, 1]  # stopped after one node
    assert seen == choice.steps and choice.chosen.float_nodes == [FRAGILE]
    assert choice.chosen.error.agreement >= 0.9 and choice.steps[0].error.agreement < 0.6
    assert FRAGILE not in result.quantized_nodes and "/c/Conv" in result.quantized_nodes
    assert all(step.latency_ms > 0 and step.speedup > 0 for step in choice.steps)
    assert choice.to_dict()["float_nodes"] == [FRAGILE]

    def never() -> list[str]:
        raise AssertionError("full INT8 meets the target: nothing needs measuring")

    easy, _ = choose_float_nodes(builder, never, tmp_path / "easy.onnx", _images(64, 2), target_agreement=0.01,
                                 timing_iterations=1)
    assert easy.met and len(easy.steps) == 1 and easy.chosen.float_nodes == []


def test_an_unreachable_target_keeps_the_step_closest_to_fp32_and_never_floats_everything(fragile_onnx, calib,
                                                                                          tmp_path, sensitivity):
    """Without the fragile conv among the candidates no step meets 100 %: the best step is kept, not the last; with
    every measured node a candidate (fragile last), the loop stops before a model with nothing quantized."""
    from fgcli.calibration.int8_builder import Int8Builder
    from fgcli.calibration.mixed_precision import choose_float_nodes
    from fgcli.calibration import quantized_nodes
    import onnx

    builder = Int8Builder(fragile_onnx, "ort", calib, tmp_path)
    images = _images(64, 2)
    without_fragile = [name for name in sensitivity.ranked_names if name != FRAGILE]
    choice, result = choose_float_nodes(builder, without_fragile, tmp_path / "auto.onnx", images,
                                        target_agreement=1.0, timing_iterations=1)
    agreements = [step.error.agreement for step in choice.steps]
    assert not choice.met and len(choice.steps) == len(without_fragile) + 1
    assert choice.chosen.error.agreement == max(agreements)
    assert choice.to_dict()["chosen_step"] == agreements.index(max(agreements))
    _, written = quantized_nodes(onnx.load(str(result.output_path)))
    assert set(written).isdisjoint(choice.chosen.float_nodes) and FRAGILE in written

    everything, _ = choose_float_nodes(builder, without_fragile + [FRAGILE], tmp_path / "all.onnx", images,
                                       target_agreement=1.0, timing_iterations=1)
    # the step with all of them float would quantize nothing: it is never built
    assert [len(step.float_nodes) for step in everything.steps] == list(range(len(without_fragile) + 1))


def test_a_node_too_slow_to_keep_float_goes_back_to_int8_and_the_next_is_tried(fragile_onnx, calib, tmp_path,
                                                                                sensitivity, monkeypatch):
    """A speed floor the fragile conv's float step falls below (timed by a stand-in: float there costs 5x) keeps
    it INT8: the loop moves on to the other nodes, and the chosen model never holds it float."""
    import fgcli.calibration.mixed_precision as sensitivity_module
    from fgcli.calibration import quantized_nodes
    from fgcli.calibration.int8_builder import Int8Builder
    from fgcli.calibration.mixed_precision import choose_float_nodes
    import onnx

    def float_fragile_is_slow(fp32_runner, int8_path, images, iterations):
        _, quantized = quantized_nodes(onnx.load(str(int8_path)))
        return (2.0 if FRAGILE in quantized else 10.0), 5.0  # INT8 ms, FP32 ms: 2.5x, or 0.5x with it float

    monkeypatch.setattr(sensitivity_module, "cpu_latencies", float_fragile_is_slow)
    builder = Int8Builder(fragile_onnx, "ort", calib, tmp_path)
    images = _images(64, 2)
    choice, result = choose_float_nodes(builder, sensitivity.ranked_names, tmp_path / "auto.onnx", images,
                                        target_agreement=0.9, min_speedup=1.8)
    assert not choice.met and choice.steps[1].float_nodes == [FRAGILE] and choice.steps[1].too_slow
    assert [step.too_slow for step in choice.steps] == [False, True] + [False] * (len(choice.steps) - 2)
    assert all(FRAGILE not in step.float_nodes for step in choice.steps[2:])
    assert len(choice.steps) == len(sensitivity.ranked_names) + 1  # every other node was still tried, one by one
    assert FRAGILE not in choice.chosen.float_nodes and choice.chosen.speedup >= 1.8
    assert FRAGILE in quantized_nodes(onnx.load(str(result.output_path)))[1]
    record = choice.to_dict()
    assert record["min_speedup"] == 1.8 and record["steps"][1]["too_slow"] and not record["steps"][0]["too_slow"]

    fast, _ = choose_float_nodes(builder, sensitivity.ranked_names, tmp_path / "fast.onnx", images,
                                 target_agreement=0.9, min_speedup=0.4)  # a floor the fragile step clears
    assert fast.met and fast.chosen.float_nodes == [FRAGILE] and not any(step.too_slow for step in fast.steps)


def test_a_target_above_one_or_no_target_is_a_clear_error(fragile_onnx, calib, tmp_path):
    from fgcli.calibration.int8_builder import Int8Builder
    from fgcli.calibration.mixed_precision import choose_float_nodes

    builder = Int8Builder(fragile_onnx, "ort", calib, tmp_path)
    with pytest.raises(FgcliError, match="not a fraction"):
        choose_float_nodes(builder, [], tmp_path / "auto.onnx", _images(4, 2), target_agreement=1.5)
    with pytest.raises(FgcliError, match="needs a target"):
        choose_float_nodes(builder, [], tmp_path / "auto.onnx", _images(4, 2))
    with pytest.raises(FgcliError, match="min-speedup 0.0 is not a positive ratio"):
        choose_float_nodes(builder, [], tmp_path / "auto.onnx", _images(4, 2), target_agreement=0.9, min_speedup=0.0)
    assert builder.builds == 0


def test_cli_ranks_an_export_folder_and_writes_json_and_plot(tmp_path):
    from typer.testing import CliRunner

    from conftest import write_tiny_folder_dataset
    from fgcli.cli import app

    data = write_tiny_folder_dataset(tmp_path / "data", {"train": 8, "test": 8})
    export = tmp_path / "export"
    _save(_tiny_model(), export / "model.onnx")
    result = CliRunner().invoke(app, ["sensitivity", str(export), "--data", str(data), "--top", "3"])
    assert result.exit_code == 0, result.output
    record = json.loads((export / "sensitivity" / "sensitivity.json").read_text())
    assert record["nodes"][0]["name"] == FRAGILE and record["validation_images"] == 24
    assert record["calibration_images"] == 24 and (export / "sensitivity" / "sensitivity.png").stat().st_size > 0
    assert "INT8 sensitivity" in result.output and "fragile" in result.output  # the table (wrapped at 80 columns)


def test_cli_refuses_a_dataset_without_a_validation_split(tmp_path):
    from typer.testing import CliRunner

    from conftest import write_tiny_folder_dataset
    from fgcli.cli import app

    data = write_tiny_folder_dataset(tmp_path / "data", {"train": 4})
    _save(_tiny_model(), tmp_path / "export" / "model.onnx")
    result = CliRunner().invoke(app, ["sensitivity", str(tmp_path / "export"), "--data", str(data)])
    assert result.exit_code != 0 and isinstance(result.exception, FgcliError)
    assert "no val or test split" in result.exception.message


def test_export_auto_precision_writes_the_choice_into_export_record_and_metadata(fragile_onnx, calib, tmp_path):
    from conftest import write_tiny_folder_dataset
    from fgcli.calibration import AUTO_FLOAT_NODES_KEY, float_nodes
    from fgcli.calibration.ort_int8 import quantize_ort
    from fgcli.runtime.onnx_meta import load_onnx, read_onnx_metadata
    from fgcli.export.int8 import auto_precision
    from fgcli.export.options import ExportOptions, ExportSummary

    data = write_tiny_folder_dataset(tmp_path / "data", {"train": 4, "test": 8})
    fp32 = _save(_tiny_model(), tmp_path / "export" / "model.onnx")
    opts = ExportOptions(out_dir=fp32.parent, int8=True, int8_backend="both", auto_backend="ort",
                         calib_data=str(data), target_agreement=0.9)
    summary, steps = ExportSummary(fp32.parent), []
    auto_precision(fp32, calib, opts, summary, steps.append)
    assert list(summary.artifacts) == ["onnx-int8-ort-auto"]  # the report asks modelopt's plain INT8 only
    info = summary.artifacts["onnx-int8-ort-auto"]
    assert info["auto_precision"]["float_nodes"] == [FRAGILE] and info["auto_precision"]["met"]
    assert info["sensitivity"]["nodes"][0]["name"] == FRAGILE and any("mixed precision" in s for s in steps)

    auto = fp32.with_name("model.ort-int8-auto.onnx")
    meta = read_onnx_metadata(auto)
    assert meta["auto_float_nodes"] == [FRAGILE] and meta["target_agreement"] == 0.9
    assert meta["auto_agreement"] == info["auto_precision"]["agreement"] >= 0.9 and meta["precision"] == "int8"

    # the FP32 model carries the choice too: quantizing it again keeps those nodes float
    assert read_onnx_metadata(fp32)["auto_float_nodes"] == [FRAGILE] and read_onnx_metadata(fp32)["precision"] == "fp32"
    source = load_onnx(fp32)
    assert FRAGILE in float_nodes(source, source)
    assert FRAGILE not in quantize_ort(fp32, calib, tmp_path / "requantized.onnx").quantized_nodes
    props = {p.key: p.value for p in source.metadata_props}
    assert json.loads(props[AUTO_FLOAT_NODES_KEY]) == [FRAGILE]


def test_auto_calib_starts_the_loop_from_the_calibration_closest_to_fp32(fragile_onnx, calib, tmp_path):
    """Every ONNX Runtime method is tried on full INT8; the closest to FP32 (agreement, then KL) calibrates the
    mixed-precision model, and export.json keeps what each one reached."""
    from conftest import write_tiny_folder_dataset
    from fgcli.calibration.ort_int8 import CALIB_METHODS
    from fgcli.calibration.int8_builder import best_calibration
    from fgcli.runtime.comparator import compare_logits as output_error
    from fgcli.runtime.onnx_runner import onnxruntime_logits as validation_logits
    from fgcli.export.int8 import auto_precision
    from fgcli.export.options import ExportOptions, ExportSummary

    images = _images(64, 2)
    builder, errors = best_calibration(fragile_onnx, "ort", calib, tmp_path / "work", images)
    assert tuple(errors) == CALIB_METHODS and builder.builds == 1
    assert builder.calib_method == max(errors, key=lambda m: (errors[m].agreement, -errors[m].kl))
    rebuilt = builder.build(tmp_path / "again.onnx")
    assert rebuilt.calib_method == builder.calib_method
    assert output_error(validation_logits(fragile_onnx, images), validation_logits(rebuilt.output_path, images)
                        ).agreement == errors[builder.calib_method].agreement

    data = write_tiny_folder_dataset(tmp_path / "data", {"train": 4, "test": 8})
    fp32 = _save(_tiny_model(), tmp_path / "export" / "model.onnx")
    opts = ExportOptions(out_dir=fp32.parent, int8=True, int8_backend="ort", calib_data=str(data),
                         target_agreement=0.9, auto_calib=True)
    summary, steps = ExportSummary(fp32.parent), []
    auto_precision(fp32, calib, opts, summary, steps.append)
    info = summary.artifacts["onnx-int8-ort-auto"]
    tried = info["calibration_methods"]
    assert tuple(tried) == CALIB_METHODS and info["calib_method"] == max(
        tried, key=lambda m: (tried[m]["agreement"], -tried[m]["kl"]))
    assert info["auto_precision"]["steps"][0]["agreement"] == tried[info["calib_method"]]["agreement"]
    assert any(f"calibration: {info['calib_method']} is closest to FP32" in s for s in steps)


def test_export_refuses_a_target_above_one_or_without_int8(tmp_path):
    from fgcli.export.pipeline import ExportOptions, export_all

    with pytest.raises(FgcliError, match="not a fraction"):
        export_all(tmp_path / "missing.pt", ExportOptions(out_dir=tmp_path, int8=True, calib_data=str(tmp_path),
                                                          target_agreement=1.5))
    with pytest.raises(FgcliError, match="add --int8"):
        export_all(tmp_path / "missing.pt", ExportOptions(out_dir=tmp_path, max_drop=0.5))
    with pytest.raises(FgcliError, match="--min-speedup bounds automatic mixed precision") as error:
        export_all(tmp_path / "missing.pt", ExportOptions(out_dir=tmp_path, int8=True, calib_data=str(tmp_path),
                                                          min_speedup=1.8))
    assert "--target-agreement" in error.value.hint
    with pytest.raises(FgcliError, match="--auto-calib chooses the calibration of the mixed-precision model"):
        export_all(tmp_path / "missing.pt", ExportOptions(out_dir=tmp_path, int8=True, calib_data=str(tmp_path),
                                                          auto_calib=True))


def test_cli_export_rejects_a_target_agreement_above_one(tmp_path):
    from typer.testing import CliRunner

    from fgcli.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path / "best.pt"), "--int8", "--target-agreement", "1.5"])
    assert result.exit_code == 2 and "target-agreement" in result.output  # a usage error naming the option


def test_report_shows_the_auto_variant_and_its_float_nodes_beside_plain_int8(calib, tiny_dataset, tmp_path):
    from fgcli.calibration.ort_int8 import quantize_ort
    from fgcli.export.int8 import auto_precision
    from fgcli.export.options import ExportOptions, ExportSummary
    from fgcli.report import build_report
    from fgcli.report.render import main_table
    from fgcli.utils import write_json_atomic

    fp32 = _save(_tiny_model(), tmp_path / "export" / "model.onnx")
    summary = ExportSummary(fp32.parent)
    summary.artifacts["onnx-int8-ort"] = quantize_ort(fp32, calib, fp32.with_name("model.ort-int8.onnx")).to_dict()
    auto_precision(fp32, calib, ExportOptions(out_dir=fp32.parent, int8=True, int8_backend="ort",
                                               calib_data=str(tiny_dataset), target_agreement=0.9),
                    summary, lambda message: None)
    write_json_atomic(fp32.parent / "export.json", summary.to_dict())

    report = build_report(fp32.parent, tiny_dataset, tmp_path / "report", batch_sizes=(1,), iterations=2, warmup=0,
                          cam_images=0, formats="onnx-fp32,onnx-int8-ort,onnx-int8-ort-auto")
    rows = {row["name"]: row for row in report["variants"]}
    assert rows["onnx-int8-ort"]["float_nodes"] == 0 and rows["onnx-int8-ort-auto"]["float_nodes"] == 1
    assert rows["onnx-int8-ort-auto"]["agreement"] > rows["onnx-int8-ort"]["agreement"]
    headers, cells = main_table(report)
    assert headers[-1] == "float nodes" and [row[-1] for row in cells] == ["—", "0", "1"]


def test_report_auto_calib_calibrates_the_auto_variant_and_is_part_of_the_reuse_key(tiny_checkpoint, tiny_dataset,
                                                                                    tmp_path):
    from fgcli.calibration.ort_int8 import CALIB_METHODS
    from fgcli.report import build_report

    with pytest.raises(FgcliError, match="--auto-calib calibrates the mixed-precision variants"):
        build_report(tiny_checkpoint, tiny_dataset, tmp_path / "refused", auto_calib=True)
    options = dict(batch_sizes=(1,), iterations=2, warmup=0, cam_images=0, calib_size=24, target_agreement=0.99,
                   formats="onnx-fp32,onnx-int8-ort-auto")
    build_report(tiny_checkpoint, tiny_dataset, tmp_path / "report", auto_calib=True, **options)
    export = tmp_path / "report" / "export"
    info = json.loads((export / "export.json").read_text())["artifacts"]["onnx-int8-ort-auto"]
    assert tuple(info["calibration_methods"]) == CALIB_METHODS and info["calib_method"] in CALIB_METHODS
    assert json.loads((export / "source.json").read_text())["auto_calib"] is True

    again = build_report(tiny_checkpoint, tiny_dataset, tmp_path / "report", **options)  # other settings: re-export
    assert any("other calibration settings" in note for note in again["notes"])
    info = json.loads((export / "export.json").read_text())["artifacts"]["onnx-int8-ort-auto"]
    assert info["calibration_methods"] == {} and info["calib_method"] == "minmax"


@pytest.mark.slow
def test_cli_export_with_a_target_on_a_trained_checkpoint_prints_the_trade_off(tiny_checkpoint, tiny_dataset,
                                                                              tmp_path):
    """The whole path on a real (tiny) ResNet-18: export, plain and measured ORT INT8, export.json, metadata."""
    from typer.testing import CliRunner

    from fgcli.cli import app
    from fgcli.runtime.onnx_meta import read_onnx_metadata

    result = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "--out", str(tmp_path), "--int8",
                                      "--int8-backend", "ort", "--calib-data", str(tiny_dataset), "--calib-size", "24",
                                      "--target-agreement", "0.99", "--min-speedup", "0.01"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "export.json").read_text())["artifacts"]["onnx-int8-ort-auto"]
    choice = info["auto_precision"]
    assert choice["target_agreement"] == 0.99 and [s["float_nodes"] for s in choice["steps"]] == list(
        range(len(choice["steps"])))
    assert choice["min_speedup"] == 0.01 and "CPU speed-up >= 0.01x" in result.output  # a floor every step clears
    assert not any(step["too_slow"] for step in choice["steps"])
    assert choice["met"] == (choice["agreement"] >= 0.99) and "nodes kept in float" in result.output
    assert read_onnx_metadata(tmp_path / "model.ort-int8-auto.onnx")["auto_float_nodes"] == choice["float_nodes"]
