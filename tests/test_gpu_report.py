"""Issue 23 on CPU: the torch variants a user would deploy, where each variant ran, FLOPs and the fraction of the
GPU's limit, and `fgcli bench`. The GPU paths themselves run in benchmarks/gpu_check.py's report step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError
from fgcli.export.flops import count_flops
from fgcli.report.bench import (
    BENCH_SCHEMA, Sweep, bench_limit, bench_record, bench_table, counted_model, knee, render_bench_markdown, run_sweep,
    sweep_batches, write_bench,
)
from fgcli.report.limit import device_limit
from fgcli.report.render import limit_lines, main_table
from fgcli.report.variants import ON_REQUEST, onnxruntime_device, parse_formats, plan_variants
from fgcli.runtime.base import Runner
from fgcli.runtime.peak import limit_fraction, measure_matmul_tflops
from fgcli.runtime.timing import Timing, time_interleaved


# --------------------------------------------------------------------------- torch variants
def test_half_precision_runner_converts_the_model_and_agrees_with_fp32(tiny_checkpoint):
    import torch

    from fgcli.runtime.torch_runner import TorchRunner

    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with TorchRunner(tiny_checkpoint, "cpu") as fp32, TorchRunner(tiny_checkpoint, "cpu", precision="bf16") as bf16:
        assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}  # converted, not autocast
        staged = bf16.stage_input(images)
        assert staged.dtype == torch.bfloat16 and staged.device.type == "cpu"
        bf16.run_staged(staged)
        reference, lowered = fp32.run(images), bf16.run(images)
    assert lowered.dtype == np.float32 and lowered.shape == reference.shape == (4, 3)
    assert np.abs(lowered - reference).max() <= 0.05 * max(1.0, np.abs(reference).max())
    assert bf16.placement == ("cpu", "PyTorch eager") and "already on the device" in bf16.timed_region


def test_cuda_graph_and_unknown_settings_are_refused_with_the_fix(tiny_checkpoint):
    from fgcli.runtime.torch_runner import TorchRunner

    with pytest.raises(FgcliError, match="a CUDA graph runs on a CUDA GPU only") as error:
        TorchRunner(tiny_checkpoint, "cpu", precision="bf16", mode="graph")
    assert "--device cuda" in error.value.hint
    with pytest.raises(FgcliError, match="unknown PyTorch precision 'int4'"):
        TorchRunner(tiny_checkpoint, "cpu", precision="int4")


def test_a_half_precision_model_that_cannot_run_is_refused_when_it_opens(tiny_checkpoint, monkeypatch):
    from fgcli.runtime.torch_runner import TorchRunner

    def no_kernel(self, batch):
        raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'')

    monkeypatch.setattr(TorchRunner, "_logits", no_kernel)
    with pytest.raises(FgcliError, match="PyTorch could not run the FP16 model: RuntimeError: \"slow_conv2d_cpu\""):
        TorchRunner(tiny_checkpoint, "cpu", precision="fp16")
    TorchRunner(tiny_checkpoint, "cpu").close()  # FP32 eager opens without a trial call


def fake_cuda(monkeypatch, available: bool, bf16: bool = True) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")


TORCH_VARIANTS = ["torch-fp32", "torch-fp16", "torch-bf16", "torch-bf16-compiled", "torch-bf16-graph",
                  "torch-bf16-compiled-graph"]


def test_planning_with_a_gpu_runs_every_torch_variant(monkeypatch, tmp_path):
    fake_cuda(monkeypatch, available=True)
    planned = plan_variants(TORCH_VARIANTS, checkpoint=True, export_dir=tmp_path, device="cuda")
    assert [(v.name, v.reason) for v in planned] == [(name, None) for name in TORCH_VARIANTS]
    assert [v.torch_mode for v in planned] == ["eager", "eager", "eager", "compiled", "graph", "compiled-graph"]
    from fgcli.formats import FORMATS, TORCH
    from fgcli.report.variants import Variant
    from fgcli.runtime.torch_runner import TORCH_MODES

    assert {Variant(fmt.name).torch_mode for fmt in FORMATS if fmt.runtime == TORCH} == set(TORCH_MODES)


def test_planning_without_a_gpu_keeps_fp32_and_says_why_the_rest_cannot_run(monkeypatch, tmp_path):
    fake_cuda(monkeypatch, available=False)
    planned = {v.name: v.reason for v in plan_variants(TORCH_VARIANTS, checkpoint=True, export_dir=tmp_path,
                                                        device="cuda")}
    assert planned.pop("torch-fp32") is None
    assert set(planned.values()) == {"needs a CUDA GPU, and PyTorch sees none (--device cuda)"}
    on_cpu = plan_variants(TORCH_VARIANTS, checkpoint=True, export_dir=tmp_path, device="cpu")
    assert [v.reason for v in on_cpu][1:] == ["needs a CUDA GPU, and this report runs on cpu"] * 5
    fake_cuda(monkeypatch, available=True, bf16=False)
    no_bf16 = plan_variants(["torch-bf16-graph"], checkpoint=True, export_dir=tmp_path, device="cuda")
    assert no_bf16[0].reason == "Fake GPU has no BF16 support"


def test_compiled_and_graph_variants_are_reported_only_by_name():
    assert not set(ON_REQUEST) & set(parse_formats("all")) and not set(ON_REQUEST) & set(parse_formats("torch"))
    chosen = parse_formats("all,torch-bf16-graph")
    assert "torch-bf16-graph" in chosen and "onnx-int8-ort" in chosen and "torch-fp16-graph" not in chosen
    assert parse_formats("torch-bf16", require_reference=False) == ["torch-bf16"]
    with pytest.raises(FgcliError, match="no FP32 reference"):
        parse_formats("torch-bf16")


# --------------------------------------------------------------------------- where each variant runs
def test_onnxruntime_without_a_cuda_provider_runs_on_the_cpu_under_device_cuda(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnxruntime_device("cuda") == onnxruntime_device("cuda:1") == "cpu"
    assert onnxruntime_device("auto") == "auto" and onnxruntime_device("cpu") == "cpu"
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnxruntime_device("cuda:1") == "cuda:1"


def test_report_with_device_cuda_runs_onnx_on_the_cpu_and_says_so(tiny_onnx, tiny_dataset, tmp_path, monkeypatch):
    """The old report refused every ONNX Runtime variant under --device cuda on a CPU-only onnxruntime."""
    import onnxruntime

    from fgcli.report import build_report, write_report

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    report = build_report(tiny_onnx.parent, tiny_dataset, tmp_path, formats="onnx-fp32", device="cuda",
                          batch_sizes=(1, 2), iterations=2, warmup=0, cam_images=0)
    row = report["variants"][0]
    assert row["available"] and row["device"] == "cpu" and row["provider"] == "CPUExecutionProvider"
    assert any("no CUDAExecutionProvider" in note and "ran on the CPU" in note for note in report["notes"])
    assert report["limit"] is None
    markdown = write_report(report, tmp_path)["md"].read_text()
    assert "| onnx-fp32 (reference) | onnxruntime:CPUExecutionProvider | cpu | CPUExecutionProvider |" in markdown
    assert "Inside each timed call: onnx-fp32: host input to host logits" in markdown


# --------------------------------------------------------------------------- FLOPs and the limit
def export_torchvision(name: str, path: Path, size: int = 224) -> Path:
    import torch
    import torchvision

    model = getattr(torchvision.models, name)().eval()
    torch.onnx.export(model, torch.zeros(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    return path


def test_flops_of_torchvision_resnet50_match_its_published_4_09_gmac(tmp_path):
    count = count_flops(export_torchvision("resnet50", tmp_path / "r50.onnx"))
    assert count.macs == pytest.approx(4.089e9, rel=1e-3)  # torchvision's model card: 4.09 GFLOPS (MACs)
    assert set(count.by_op) == {"Conv", "Gemm"} and count.by_op["Gemm"] == 2 * 2048 * 1000
    assert count.flops == 2 * count.macs


def test_flops_of_grouped_conv_transposed_gemm_and_batched_matmul_are_exact(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def weight(name, *shape):
        return numpy_helper.from_array(np.zeros(shape, np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 1, 1, 1]),  # 8 -> 6 channels, 3x3, 10x10
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2]),  # 6 -> 4 channels, 2x2 kernel
        helper.make_node("Reshape", ["t", "shape"], ["r"]),  # (B, 4, 400)
        helper.make_node("MatMul", ["r", "m"], ["mm"]),  # (B, 4, 400) x (400, 5)
        helper.make_node("Flatten", ["mm"], ["f"]),  # (B, 20)
        helper.make_node("Gemm", ["g", "f"], ["y"], transA=1, transB=1),  # g: (20, 7) transposed -> (7, 20) x f^T
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("w", 6, 4, 3, 3), weight("wt", 6, 4, 2, 2), numpy_helper.from_array(np.array([0, 4, 400]), "shape"),
         weight("m", 400, 5), weight("g", 20, 7)])
    path = tmp_path / "hand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    count = count_flops(path)
    assert count.by_op == {"Conv": 2 * (6 * 10 * 10) * (4 * 3 * 3), "ConvTranspose": 2 * (6 * 10 * 10) * (4 * 2 * 2),
                           "MatMul": 2 * (4 * 5) * 400, "Gemm": 2 * (7 * 1) * 20}


def test_flops_of_a_graph_whose_shapes_are_unknown_are_refused_with_the_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"], name="mystery")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "n"]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "unknown.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(FgcliError, match="MatMul node 'mystery'"):
        count_flops(path)


def test_fraction_of_the_limit_is_images_times_flops_over_the_rate(tmp_path):
    # the H200 figures of shared/gpu/README.md: 6,327 img/s x 32.7 GFLOP against 787.8 TFLOP/s
    assert limit_fraction(6327, 32.7e9, 787.8) == pytest.approx(0.2626, abs=1e-4)
    with pytest.raises(FgcliError, match="--peak-tflops"):
        limit_fraction(100, 1e9, 0)
    export_torchvision("resnet18", tmp_path / "model.onnx")
    flops = count_flops(tmp_path / "model.onnx").flops
    placements = {"torch-bf16": ("cuda:0", "PyTorch eager", "t"), "onnx-int8-ort": ("cpu", "CPUExecutionProvider", "t")}
    timings = {name: Timing({"p50": 1.0}, {"1": 10.0, "32": ips}) for name, ips in (("torch-bf16", 5000.0),
                                                                                   ("onnx-int8-ort", 300.0))}
    steps = []
    limit = device_limit(placements, timings, tmp_path, 32, peak_tflops=100.0, step=steps.append)
    assert limit.fractions == {"torch-bf16": pytest.approx(5000 * flops / 100e12)}  # the CPU variant has none
    assert limit.summary["images_per_s_bound"] == pytest.approx(100e12 / flops) and not steps
    report = {"batch_sizes": [1, 32], "reference": "torch-bf16", "limit": limit.summary, "variants": []}
    assert f"{flops / 1e9:.2f} GFLOP per image" in limit_lines(report)[1]
    assert "of limit % b32" in main_table(report)[0]
    without_onnx = device_limit(placements, timings, tmp_path / "nothing", 32, peak_tflops=None, step=steps.append)
    assert without_onnx.fractions == {} and "add onnx-fp32 to --formats" in without_onnx.summary["note"]
    assert "of limit" not in " ".join(main_table({**report, "limit": without_onnx.summary})[0])
    assert device_limit({"onnx-int8-ort": placements["onnx-int8-ort"]}, timings, tmp_path, 32, 100.0,
                        steps.append).summary is None


def test_the_matrix_rate_is_measured_on_the_device():
    assert 0 < measure_matmul_tflops("cpu", size=64, calls=2) < 1000


def test_a_device_without_bf16_matrix_products_is_a_message_naming_the_way_out(monkeypatch):
    """A GPU without BF16 GEMMs (or out of memory) raised PyTorch's RuntimeError after the whole report."""
    import torch

    def no_bf16_gemm(*args):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(torch, "matmul", no_bf16_gemm)
    with pytest.raises(FgcliError, match="CUBLAS_STATUS_NOT_SUPPORTED") as raised:
        measure_matmul_tflops("cpu", size=8, calls=1)
    assert "--peak-tflops" in raised.value.hint


# --------------------------------------------------------------------------- bench
def test_sweep_doubles_up_to_max_batch_and_the_knee_is_the_first_batch_near_the_best():
    assert sweep_batches(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert sweep_batches(100) == [1, 2, 4, 8, 16, 32, 64, 100] and sweep_batches(1) == [1]
    assert knee({1: 100.0, 2: 190.0, 4: 280.0, 8: 300.0, 16: 305.0}) == 4  # 280 >= 0.9 x 305
    assert knee({1: 100.0, 2: 90.0}) == 1 and knee({}) is None


class FakeRunner(Runner):
    """Counts calls; raises ``error`` from batch ``fails_at`` on."""

    def __init__(self, name: str, fails_at: int | None = None, error: str = "CUDA out of memory"):
        super().__init__(name=name, class_names=["a", "b"], preprocess=PreprocessConfig(8, 8), precision="fp32")
        self.fails_at, self.error, self.calls = fails_at, error, []

    def run(self, images):
        if self.fails_at is not None and len(images) >= self.fails_at:
            raise RuntimeError(self.error)
        self.calls.append(len(images))
        return np.zeros((len(images), 2), np.float32)


def test_a_sweep_goes_on_past_a_variant_that_runs_out_of_memory():
    fits, small = FakeRunner("fits"), FakeRunner("small", fails_at=4)
    sweeps = {s.name: s for s in run_sweep({"fits": fits, "small": small}, [1, 2, 4, 8], iterations=4, warmup=1)}
    assert list(sweeps["fits"].throughput_ips) == [1, 2, 4, 8] and list(sweeps["small"].throughput_ips) == [1, 2]
    assert sweeps["small"].stopped == "batch 4 does not fit in cpu memory" and sweeps["fits"].stopped is None
    assert fits.calls.count(1) == 1 + 4 and fits.calls.count(8) == 1 + 3  # warm-up, then throughput_rounds
    with pytest.raises(RuntimeError, match="bad kernel"):
        run_sweep({"broken": FakeRunner("broken", fails_at=2, error="bad kernel")}, [1, 2], iterations=2)


def test_bench_writes_a_table_a_plot_and_json_with_the_knee(tmp_path):
    sweeps = run_sweep({"a": FakeRunner("a"), "b": FakeRunner("b", fails_at=4)}, [1, 2, 4], iterations=2, warmup=0)
    sweeps[0].throughput_ips = {1: 100.0, 2: 195.0, 4: 200.0}  # a known curve: the knee is batch 2
    record = bench_record(Path("m.pt"), "cpu", sweeps, [("torch-bf16", "needs a CUDA GPU")], [1, 2, 4], 8, 2)
    headers, rows = bench_table(record)
    assert headers == ["batch", "a img/s", "b img/s"]
    assert rows[1][1] == "195 *" and rows[2][1] == "200" and rows[2][2] == "—"
    paths = write_bench(record, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["schema"] == BENCH_SCHEMA and saved["variants"][0]["knee_batch"] == 2
    assert saved["variants"][0]["best_batch"] == 4 and saved["variants"][1]["stopped"].startswith("batch 4")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = render_bench_markdown(record)
    assert "| torch-bf16 | needs a CUDA GPU |" in markdown and "stopped: batch 4 does not fit" in markdown


def test_bench_gives_each_gpu_variant_its_fraction_of_the_limit_at_its_best_batch(tmp_path):
    export_torchvision("resnet18", tmp_path / "model.onnx")
    flops = count_flops(tmp_path / "model.onnx").flops
    gpu = Sweep("torch-bf16", "cuda:0", "PyTorch eager", "t", throughput_ips={1: 500.0, 64: 9000.0, 128: 8800.0})
    cpu = Sweep("model.onnx", "cpu", "CPUExecutionProvider", "t", throughput_ips={1: 50.0})
    summary, fractions = bench_limit([gpu, cpu], tmp_path / "model.onnx", 100.0, print)
    assert fractions == {"torch-bf16": pytest.approx(9000 * flops / 100e12)} and summary["note"] is None
    record = bench_record(Path("m.pt"), "cuda", [gpu, cpu], [], [1, 64, 128], 224, 64, (summary, fractions))
    assert f"best 9000 images/s at batch 64 ({100 * fractions['torch-bf16']:.1f} % of the limit)" in \
        render_bench_markdown(record)
    assert bench_limit([cpu], tmp_path / "model.onnx", 100.0, print) == (None, {})
    run = tmp_path / "run"
    (run / "report" / "export").mkdir(parents=True)
    (run / "report" / "export" / "model.onnx").write_bytes(b"")
    assert counted_model(run / "best.pt", None) == run / "report" / "export" / "model.onnx"
    assert counted_model(tmp_path / "model.onnx", None) == tmp_path / "model.onnx"


def test_fgcli_bench_on_a_checkpoint_sweeps_fp32_and_lists_what_needs_a_gpu(tiny_checkpoint, tmp_path, monkeypatch,
                                                                         capsys):
    from fgcli.cli import main

    monkeypatch.setattr(sys, "argv", ["fgcli", "bench", str(tiny_checkpoint), "--device", "cpu", "--max-batch", "4",
                                      "--iterations", "4", "--warmup", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert (exit_info.value.code or 0) == 0, out
    record = json.loads((tmp_path / "bench.json").read_text())
    assert [v["name"] for v in record["variants"]] == ["torch-fp32"] and record["batch_sizes"] == [1, 2, 4]
    assert set(record["variants"][0]["throughput_ips"]) == {"1", "2", "4"}
    assert [n["name"] for n in record["not_run"]] == ["torch-fp16", "torch-bf16"]
    assert (tmp_path / "bench.png").is_file() and "torch-fp32 img/s" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["notes.txt"], "cannot bench notes.txt: not a .pt, .onnx or .engine file"),
    (["missing.pt"], "model file not found: missing.pt"),
    (["{onnx}", "--formats", "torch-bf16"], "--formats picks the torch variants of a .pt checkpoint"),
    (["{checkpoint}", "--formats", "onnx-fp32"], "runs a checkpoint's torch variants, not onnx-fp32"),
    (["{checkpoint}", "--max-batch", "0"], "--max-batch"),
])
def test_bench_usage_errors_exit_2_with_the_fix(args, message, tiny_checkpoint, tiny_onnx, tmp_path, monkeypatch,
                                                capsys):
    from fgcli.cli import main

    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("not a model")
    args = [a.format(onnx=tiny_onnx, checkpoint=tiny_checkpoint) for a in args]
    monkeypatch.setattr(sys, "argv", ["fgcli", "bench", *args, "--out", str(tmp_path / "bench")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "bench").exists()


def test_half_precision_torch_variants_weigh_their_converted_weights():
    import torch

    from fgcli.report.core import _size_mb
    from fgcli.report.variants import Variant

    checkpoint = {"model": {"conv.weight": torch.zeros(1000), "bn.num_batches_tracked": torch.tensor(3)}}
    assert _size_mb(Variant("torch-fp32"), checkpoint) == pytest.approx((1000 * 4 + 8) / 1e6)
    assert _size_mb(Variant("torch-bf16-graph"), checkpoint) == pytest.approx((1000 * 2 + 8) / 1e6)


def test_timing_leaves_the_staging_outside_the_timed_call():
    """A GPU runner's host-to-device copy happens in stage_input, before the clock starts."""
    import time as clock

    class SlowCopy(FakeRunner):  # shaped like TorchRunner: run = copy to the device + forward
        def stage_input(self, images):
            clock.sleep(0.05)  # the copy
            return images

        def run_staged(self, staged):
            self.calls.append(len(staged))

        def run(self, images):
            self.run_staged(self.stage_input(images))
            return np.zeros((len(images), 2), np.float32)

    timings = time_interleaved({"gpu": SlowCopy("gpu")}, np.zeros((2, 3, 8, 8), np.float32), [1, 2], iterations=3,
                               warmup=1)
    assert timings["gpu"].latency_ms["p99"] < 25  # 50 ms of staging per batch size, none of it timed


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision, mode", [("bf16", "eager"), ("fp16", "graph"), ("bf16", "compiled-graph")])
def test_on_a_gpu_the_deployed_torch_variants_agree_with_fp32(tiny_checkpoint, precision, mode):
    import torch

    from fgcli.runtime.torch_runner import TorchRunner

    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with TorchRunner(tiny_checkpoint, "cuda") as fp32, TorchRunner(tiny_checkpoint, "cuda", precision, mode) as half:
        staged = half.stage_input(images)
        assert staged.is_cuda and staged.is_contiguous(memory_format=torch.channels_last)
        half.run_staged(staged)
        reference, lowered = fp32.run(images), half.run(images)
        reversed_order = half.run(np.ascontiguousarray(images[::-1]))  # a replayed graph reads each call's input
        np.testing.assert_allclose(reversed_order, lowered[::-1], rtol=1e-2, atol=1e-2)
    assert np.abs(lowered - reference).max() <= 0.05 * max(1.0, np.abs(reference).max())
    assert half.placement == ("cuda:0", f"PyTorch {mode}")
