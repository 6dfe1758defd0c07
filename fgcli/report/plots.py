"""report.png and compare.png with matplotlib's Agg canvas (``Figure`` only, never pyplot, so a notebook's
backend is left alone). matplotlib is the ``report`` extra: it is imported when a plot is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgcli.report.render import reduced_precision
from fgcli.utils import atomic_path, optional_import

DPI = 120
#: tab10 colours: one per variant in report.png, one per report in compare.png
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan")
#: one marker per variant in the comparison plot
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h")
#: the bar chart `fgcli sensitivity` draws beside sensitivity.json
SENSITIVITY_PNG = "sensitivity.png"

def plot_report(report: dict[str, Any], out_path: str | Path) -> Path:
    """Left: top-1 against p50 latency at batch 1, one point per variant. Right: the top-1 drop of the classes
    that lost most in each FP16 / BF16 / INT8 variant."""
    figure = _figure(figsize=(13, 5))
    left, right = figure.subplots(1, 2, width_ratios=(1.1, 1))
    colors = _variant_colors(report)
    for v in report["variants"]:
        if v["available"]:
            left.scatter(v["latency_ms"]["p50"], 100 * v["top1"], color=colors[v["name"]], s=45, label=v["name"],
                         zorder=3)
            left.annotate(v["name"], (v["latency_ms"]["p50"], 100 * v["top1"]), textcoords="offset points",
                          xytext=(6, 4), fontsize=8)
    _accuracy_latency_axes(left)
    left.legend(fontsize=8, loc="best")
    left.set_title(f"top-1 against latency ({report['dataset']['split']} split, {report['dataset']['images']} images)")
    _class_drops(right, report)
    return _save(figure, out_path)


def plot_comparison(comparison: dict[str, Any], out_path: str | Path) -> Path:
    """Top-1 against p50 latency for every variant of every report: colour = report, marker = variant."""
    figure = _figure(figsize=(10, 6))
    ax = figure.subplots()
    variants = list(dict.fromkeys(r["variant"] for r in comparison["rows"]))
    report_colors = {e["label"]: COLORS[i % len(COLORS)] for i, e in enumerate(comparison["reports"])}
    variant_markers = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(variants)}
    for row in comparison["rows"]:
        ax.scatter(row["latency_ms"]["p50"], 100 * row["top1"], color=report_colors[row["report"]],
                   marker=variant_markers[row["variant"]], s=50, zorder=3)
    _accuracy_latency_axes(ax)
    # beside the axes, not on them: inside, the legends covered the fastest (INT8) points in the top-left corner
    figure.legend(handles=[ax.scatter([], [], color=c, label=label) for label, c in report_colors.items()],
                  title="report", fontsize=8, loc="outside right upper")
    figure.legend(handles=[ax.scatter([], [], color="gray", marker=m, label=name) for name, m in variant_markers.items()],
                  title="variant", fontsize=8, loc="outside right lower")
    ax.set_title("top-1 against latency, every report")
    return _save(figure, out_path)


def plot_sensitivity(sensitivity: dict[str, Any], out_path: str | Path, top: int = 20) -> Path:
    """The ``top`` most INT8-sensitive nodes of a ``sensitivity.json``: the top-1 agreement with FP32 lost by
    quantizing each alone, and the agreement gained over full INT8 by keeping each alone in float."""
    nodes = sensitivity["nodes"][:top]
    figure = _figure(figsize=(10, 1.5 + 0.32 * max(len(nodes), 1)))
    ax = figure.subplots()
    rows = range(len(nodes))[::-1]  # most sensitive on top
    ax.barh([r + 0.2 for r in rows], [100 * (1 - n["alone"]["agreement"]) if n["alone"] else 0.0 for n in nodes], height=0.4,
            color=COLORS[3], label="agreement lost, quantized alone")
    ax.barh([r - 0.2 for r in rows], [100 * n["recovered_agreement"] for n in nodes], height=0.4, color=COLORS[2],
            label="agreement recovered, kept alone in float")
    ax.set_yticks(list(rows), [f"{n['name']} ({n['op_type']})" for n in nodes], fontsize=8)
    ax.set_xlabel("top-1 agreement with FP32, percentage points")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    full = sensitivity["full_int8"]
    ax.set_title(f"INT8 sensitivity ({sensitivity['backend']}, {sensitivity['validation_images']} validation images;"
                 f" full INT8 agreement {100 * full['agreement']:.1f} %)", fontsize=10)
    return _save(figure, out_path)


def require_matplotlib():
    """matplotlib's Figure module; the CLI calls this before a long report so a missing extra fails first."""
    return optional_import("matplotlib.figure", "report", "Drawing the report plots")


def _figure(figsize: tuple[float, float]):
    return require_matplotlib().Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _accuracy_latency_axes(ax) -> None:
    """Axis labels and grid; a log latency axis when the points span 10x or more."""
    latencies = [x for collection in ax.collections for x, _ in collection.get_offsets()]
    if latencies and max(latencies) >= 10 * min(latencies):
        ax.set_xscale("log")
        ticker = optional_import("matplotlib.ticker", "report", "Drawing the report plots")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 1, 2, 5, 10 ms, not 10^0
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # minor labels collide on a log axis
    ax.set_xlabel("p50 latency at batch 1, ms (lower is better)")
    ax.set_ylabel("top-1 %")
    ax.grid(True, alpha=0.3)


def _variant_colors(report: dict[str, Any]) -> dict[str, str]:
    """One colour per variant that ran, shared by both panels."""
    ran = [v["name"] for v in report["variants"] if v["available"]]
    return {name: COLORS[i % len(COLORS)] for i, name in enumerate(ran)}


def _class_drops(ax, report: dict[str, Any]) -> None:
    colors = _variant_colors(report)
    bars = [(f"{c['class']}  [{v['name']}]", 100 * c["drop"], colors[v["name"]])
            for v in reduced_precision(report) for c in v["worst_classes"]]
    ax.set_title(f"worst top-1 drops per class vs {report['reference']}")
    if not bars:
        ax.text(0.5, 0.5, "no class lost top-1 accuracy", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels, drops, colors = zip(*reversed(bars))
    ax.barh(range(len(bars)), drops, color=colors)
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.set_xlabel("top-1 drop, percentage points")
    ax.grid(True, axis="x", alpha=0.3)


def _save(figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return out_path
