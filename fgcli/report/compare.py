"""``fgcli report --compare``: reports from several machines (a workstation, an Orin, a Thor) or several methods
in one table (compare.md / compare.json) and one plot (compare.png).

Each report keeps its own reference: speed-ups and accuracy changes are within a report, where the timings
were interleaved; milliseconds and top-1 are compared across reports as measured.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fgcli.errors import FgcliError
from fgcli.report.core import SCHEMA
from fgcli.report.plots import plot_comparison
from fgcli.report.render import DASH, accelerator, markdown_table, ms, pct, points, ratio, rich_table
from fgcli.utils import write_json_atomic, write_text_atomic

COMPARE_SCHEMA = "fgcli.compare/1"


def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json, refused with a clear error when unreadable or of another schema version."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FgcliError(f"cannot read the report {path}: {exc}",
                         hint="pass report.json files written by fgcli report") from exc
    schema = report.get("schema") if isinstance(report, dict) else None
    if schema != SCHEMA:
        raise FgcliError(f"{path} has schema {schema!r}, and this fgcli reads {SCHEMA!r}",
                         hint="regenerate it with this fgcli version: fgcli report CHECKPOINT --data DATASET")
    return report


def machine_label(report: dict[str, Any]) -> str:
    """The Jetson module, else the GPU, else the CPU: what tells machines apart in one table."""
    return accelerator(report["environment"]) or report["machine"]["cpu"]


def compare_reports(paths: list[str | Path]) -> dict[str, Any]:
    """One comparison of the reports at ``paths``: a row per variant that ran, labelled "machine / method"."""
    if len(paths) < 2:
        raise FgcliError("--compare needs two or more report.json files",
                         hint="fgcli report --compare ws/report.json orin/report.json")
    reports = [load_report(path) for path in paths]
    labels = [f"{machine_label(r)} / {r['model']['method'] or 'model'}" for r in reports]
    labels = [label if labels.count(label) == 1 else f"{label} #{labels[:i + 1].count(label)}"
              for i, label in enumerate(labels)]
    entries, rows, not_run = [], [], []
    for label, path, report in zip(labels, paths, reports):
        entries.append({"label": label, "path": str(path), "machine": machine_label(report),
                        "method": report["model"]["method"], "backbone": report["model"]["backbone"],
                        "reference": report["reference"], "dataset": report["dataset"]})
        for v in report["variants"]:
            if not v["available"]:
                not_run.append({"report": label, "variant": v["name"], "reason": v["reason"]})
                continue
            rows.append({"report": label, "variant": v["name"], "precision": v["precision"], "top1": v["top1"],
                         "delta_top1": v["delta_top1"], "agreement": v["agreement"], "latency_ms": v["latency_ms"],
                         "speedup_p50": v["speedup_p50"], "throughput_ips": v["throughput_ips"]})
    datasets = {(r["dataset"]["root"], r["dataset"]["split"], r["dataset"]["images"]) for r in reports}
    notes = []
    if len(datasets) > 1:
        notes.append("the reports evaluate different data, so top-1 compares across reports only loosely; "
                     "Δ top-1 and agreement are within each report")
    return {"schema": COMPARE_SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reports": entries, "batch_sizes": sorted({b for r in reports for b in r["batch_sizes"]}),
            "rows": rows, "not_run": not_run, "notes": notes}


def comparison_table(comparison: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the one table: each variant of each report, ratios against its own reference."""
    batch_sizes = comparison["batch_sizes"]
    headers = ["report", "variant", "top-1 %", "Δ top-1 pp", "agreement %", "p50 ms", "p99 ms", "speed-up p50",
               *[f"img/s b{b}" for b in batch_sizes]]
    rows = []
    for r in comparison["rows"]:
        throughput = [DASH if str(b) not in r["throughput_ips"] else f"{r['throughput_ips'][str(b)]:.0f}"
                      for b in batch_sizes]
        rows.append([r["report"], r["variant"], pct(r["top1"]), points(r["delta_top1"]), pct(r["agreement"]),
                     ms(r["latency_ms"]["p50"]), ms(r["latency_ms"]["p99"]), ratio(r["speedup_p50"]), *throughput])
    return headers, rows


def render_comparison_markdown(comparison: dict[str, Any], png_name: str = "compare.png") -> str:
    reports = [[e["label"], f"`{e['path']}`", e["backbone"] or DASH, e["reference"],
                f"{e['dataset']['split']} of `{e['dataset']['root']}`, {e['dataset']['images']} images"]
               for e in comparison["reports"]]
    lines = ["# fgcli report comparison", "",
             markdown_table(["report", "file", "backbone", "reference", "data"], reports), "",
             "Speed-ups, Δ top-1 and agreement are against each report's own reference (timed in the same run); "
             "milliseconds compare across machines as measured.", "",
             markdown_table(*comparison_table(comparison))]
    if comparison["not_run"]:
        lines += ["", "## Not run", "", markdown_table(["report", "variant", "reason"],
                                                       [[n["report"], n["variant"], n["reason"]]
                                                        for n in comparison["not_run"]])]
    if comparison["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in comparison["notes"]]]
    lines += ["", f"![top-1 against latency for every report]({png_name})", ""]
    return "\n".join(lines)


def write_comparison(comparison: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """compare.json, compare.md and compare.png in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    return {"json": write_json_atomic(out_dir / "compare.json", comparison),
            "md": write_text_atomic(out_dir / "compare.md", render_comparison_markdown(comparison)),
            "png": plot_comparison(comparison, out_dir / "compare.png")}


def rich_comparison_table(comparison: dict[str, Any]):
    return rich_table("reports compared (ratios against each report's reference)", *comparison_table(comparison))
