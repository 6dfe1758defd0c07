"""Accuracy and latency of every variant of a model (PyTorch, ONNX Runtime, TensorRT; FP32 to INT8) in one report.

Light to import (no torch, no matplotlib at module level): ``fgcli report EXPORT_DIR`` runs where only
onnxruntime is installed. ``build_report`` measures, ``write_report`` writes report.md / .json / .png,
``compare_reports`` + ``write_comparison`` put several reports in one table and plot.

The names below are loaded when first used (PEP 562), so ``fgcli.report.options`` (the CLI's defaults) imports
without the measuring modules.
"""

from importlib import import_module

#: public name -> the module of this package that defines it
_PUBLIC = {
    "COMPARE_SCHEMA": "compare", "compare_reports": "compare", "load_report": "compare", "write_comparison": "compare",
    "SCHEMA": "core", "ReportHooks": "core", "build_report": "core", "write_report": "core",
    "ReportOptions": "options", "parse_batch_sizes": "options",
    "VARIANT_NAMES": "variants", "Variant": "variants", "parse_formats": "variants",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fgcli.report' has no attribute '{name}'")
    return getattr(import_module(f"fgcli.report.{_PUBLIC[name]}"), name)
