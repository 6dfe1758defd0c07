"""Accuracy and latency of every variant of a model (PyTorch, ONNX Runtime, TensorRT; FP32 to INT8) in one report.

Light to import (no torch, no matplotlib at module level): ``fgcli report EXPORT_DIR`` runs where only
onnxruntime is installed. ``build_report`` measures, ``write_report`` writes report.md / .json / .png,
``compare_reports`` + ``write_comparison`` put several reports in one table and plot.
"""

from fgcli.report.compare import COMPARE_SCHEMA, compare_reports, load_report, write_comparison
from fgcli.report.core import SCHEMA, ReportHooks, build_report, parse_batch_sizes, write_report
from fgcli.report.variants import VARIANT_NAMES, Variant, parse_formats

__all__ = ["SCHEMA", "COMPARE_SCHEMA", "VARIANT_NAMES", "ReportHooks", "Variant", "build_report", "write_report",
           "parse_batch_sizes", "parse_formats", "compare_reports", "load_report", "write_comparison"]
