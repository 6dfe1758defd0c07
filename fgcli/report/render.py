"""The report as text: report.md (read in a terminal or on GitHub) and the rich table the CLI prints.

Both are built from the same rows, so the terminal and the file never disagree. A dash marks a value that
does not apply or was not recorded (JSON null).
"""

from __future__ import annotations

from typing import Any

from fgcli.runtime.doctor import NOT_JETSON

DASH = "—"
GPU_NOT_FOUND = "none found"  # what fgcli doctor reports without a GPU
TEXT_COLUMNS = ("report", "variant", "runner", "device", "provider")


def pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def points(value: float | None) -> str:
    """A top-1 change in percentage points, signed."""
    return DASH if value is None else f"{100 * value:+.1f}"


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def ratio(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}x"


def number(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def throughput_cell(variant: dict[str, Any], batch: int, with_ratio: bool = True) -> str:
    """Images per second at ``batch``, with the ratio to the reference: ``812 (1.93x)``."""
    if variant["throughput_ips"] is None:
        return DASH
    key = str(batch)
    value = f"{variant['throughput_ips'][key]:.0f}"
    return f"{value} ({ratio(variant['throughput_speedup'][key])})" if with_ratio else value


def reduced_precision(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The variants that ran in FP16, BF16 or INT8: those whose per-class drops the report shows."""
    return [v for v in report["variants"] if v["available"] and v["precision"] != "fp32"]


def main_table(report: dict[str, Any], terminal: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and one row per variant that ran. ``terminal`` leaves out what a console is too narrow for:
    the runner, p90, build / calibration time and the throughput ratios (the speed-up column has the ratio)."""
    reference = report["reference"]
    columns = [
        ("variant", lambda v: v["name"] + ("" if terminal or v["name"] != reference else " (reference)")),
        ("runner", lambda v: v["runner"]),
        ("device", lambda v: v.get("device") or DASH),
        ("provider", lambda v: v.get("provider") or DASH),
        ("file MB", lambda v: number(v["file_mb"])),
        ("top-1 %", lambda v: pct(v["top1"])),
        ("top-5 %", lambda v: pct(v["top5"])),
        ("Δ top-1 pp", lambda v: points(v["delta_top1"])),
        ("agreement %", lambda v: pct(v["agreement"])),
        ("p50 ms", lambda v: ms(v["latency_ms"]["p50"])),
        ("p90 ms", lambda v: ms(v["latency_ms"]["p90"])),
        ("p99 ms", lambda v: ms(v["latency_ms"]["p99"])),
        ("speed-up p50", lambda v: ratio(v["speedup_p50"])),
        *[(f"img/s b{b}", lambda v, b=b: throughput_cell(v, b, with_ratio=not terminal))
          for b in report["batch_sizes"]],
        *([(f"of limit % b{report['batch_sizes'][-1]}", lambda v: pct(v.get("limit_fraction")))]
          if report.get("limit") and report["limit"]["peak_tflops"] else []),
        ("build s", lambda v: number(v["build_seconds"])),
        ("calib s", lambda v: number(v["calib_seconds"])),
        ("float nodes", lambda v: DASH if v.get("float_nodes") is None else str(v["float_nodes"])),
    ]
    if terminal:
        columns = [c for c in columns if c[0] not in ("runner", "p90 ms", "build s", "calib s")]
    ran = [v for v in report["variants"] if v["available"]]
    return [header for header, _ in columns], [[cell(v) for _, cell in columns] for v in ran]


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def accelerator(env: dict[str, str]) -> str | None:
    """The Jetson module, else the GPU that fgcli doctor found; None on a machine with neither."""
    jetson, gpu = env.get("jetson_model", NOT_JETSON), env.get("gpu_name", GPU_NOT_FOUND)
    if jetson != NOT_JETSON and not jetson.startswith("error"):
        return jetson
    return None if gpu == GPU_NOT_FOUND or gpu.startswith("error") else gpu


def machine_summary(report: dict[str, Any]) -> str:
    """CPU, GPU and the versions that decide which variants can run."""
    env, machine = report["environment"], report["machine"]
    return (f"{machine['cpu']} ({machine['cores']} cores), GPU: {accelerator(env) or 'none'}; "
            f"PyTorch {env.get('torch')}, ONNX Runtime {env.get('onnxruntime')} ({env.get('onnxruntime_providers')}), "
            f"modelopt {env.get('nvidia_modelopt')}, TensorRT {env.get('tensorrt')}")


def render_markdown(report: dict[str, Any], png_name: str = "report.png") -> str:
    """report.md: summary, the main table, what did not run and why, the classes that lost most, the plot."""
    model, dataset, timing = report["model"], report["dataset"], report["timing"]
    title = " / ".join(str(x) for x in (model["method"], model["backbone"]) if x) or "model"
    throughput_at = ", ".join(str(b) for b in report["batch_sizes"])
    lines = [
        f"# fgcli report: {title}", "",
        f"- model: {model['classes']} classes, {model['img_size']} px input; source `{report['source']['path']}` "
        f"({report['source']['kind']})",
        f"- data: {dataset['split']} split of `{dataset['root']}`, {dataset['images']} images"
        + (f" ({len(dataset['unreadable'])} unreadable, skipped)" if dataset["unreadable"] else ""),
        f"- reference: **{report['reference']}** (Δ top-1, agreement and speed-ups are against it)",
        f"- machine: {machine_summary(report)}; device `{report['device']}`",
        f"- timing: interleaved round robin, {timing['warmup']} warm-up and {timing['iterations']} timed calls per "
        f"variant at batch 1 (p50 / p90 / p99); throughput = batch / median seconds per call at batch "
        f"{throughput_at}. Absolute times on a shared machine are noisy: read the ratios.",
        "",
        markdown_table(*main_table(report)),
        "",
        f"{DASH}: does not apply (torch has no build step; an INT8 ONNX records its calibration, which includes "
        "quantizing) or was not recorded (an export folder without export.json). build s: ONNX export with its parity "
        "check, or TensorRT engine build. Torch file MB is the weights alone; best.pt also holds the optimizer state.",
        *timed_regions(report), *limit_lines(report),
    ]
    skipped = [v for v in report["variants"] if not v["available"]]
    if skipped:
        lines += ["", "## Not run on this machine", "",
                  markdown_table(["variant", "reason"], [[v["name"], v["reason"]] for v in skipped])]
    lowered = reduced_precision(report)
    if lowered:
        lines += ["", f"## Classes that lost most against {report['reference']}"]
        for v in lowered:
            lines += ["", f"### {v['name']}", ""]
            if v["worst_classes"]:
                lines.append(markdown_table(
                    ["class", f"{report['reference']} top-1 %", f"{v['name']} top-1 %", "drop pp"],
                    [[c["class"], pct(c["reference"]), pct(c["variant"]), pct(c["drop"])] for c in v["worst_classes"]]))
            else:
                lines.append("No class lost top-1 accuracy.")
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in report["notes"]]]
    lines += ["", f"![top-1 against latency, and the per-class drops]({png_name})", ""]
    if report.get("attention"):
        attention = report["attention"]
        lines += ["## Where the variants look", "",
                  f"{attention['method']}, for {', '.join(attention['variants'])}: one row per test image, one colour "
                  "scale per row, so an INT8 model that looks elsewhere than FP32 shows it.", "",
                  f"![occlusion maps of the reference and the quantized variants]({attention['png']})", ""]
    return "\n".join(lines)


def timed_regions(report: dict[str, Any]) -> list[str]:
    """What one timed call covers, per group of variants (a GPU runner's input copy is or is not in it)."""
    regions: dict[str, list[str]] = {}
    for v in report["variants"]:
        if v["available"] and v.get("timed"):
            regions.setdefault(v["timed"], []).append(v["name"])
    if not regions:
        return []
    return ["", "Inside each timed call: " + "; ".join(f"{', '.join(names)}: {region}"
                                                      for region, names in regions.items()) + "."]


def limit_lines(report: dict[str, Any]) -> list[str]:
    """How the "of limit" column is made, or why it is missing."""
    limit = report.get("limit")
    if not limit:
        return []
    if not limit["flops_per_image"] or not limit["peak_tflops"]:
        return ["", f"Fraction of the limit: not computed ({limit['note']})."]
    return ["", f"of limit %: images/s at batch {limit['batch']} x {limit['flops_per_image'] / 1e9:.2f} GFLOP per "
                f"image (Conv / Gemm / MatMul of {limit['counted_from']}, 2 FLOPs per multiply-add) against "
                f"{limit['peak_tflops']:.1f} TFLOP/s ({limit['peak_source']}): at most "
                f"{limit['images_per_s_bound']:.0f} images/s. GPU variants only."]


def rich_table(title: str, headers: list[str], rows: list[list[str]]):
    """A rich Table: names left-aligned, numbers right-aligned. rich is imported here so the report modules
    stay light to import."""
    from rich.table import Table

    table = Table(title=title)
    for index, header in enumerate(headers):
        if header in TEXT_COLUMNS:  # names are never cut; the number columns wrap their headers instead
            table.add_column(header, min_width=max(len(row[index]) for row in [headers, *rows]))
        else:
            table.add_column(header, justify="right", overflow="fold")  # fold, never hide digits behind "…"
    for row in rows:
        table.add_row(*row)
    return table


def rich_report_table(report: dict[str, Any]):
    """The main table of ``report`` for the terminal."""
    dataset = report["dataset"]
    return rich_table(f"{dataset['split']} split, {dataset['images']} images; ratios against {report['reference']}",
                      *main_table(report, terminal=True))
