"""Deployment artifacts from a checkpoint: ONNX (FP32 / FP16) here, TensorRT engines in export.tensorrt.

Importing this package imports neither torch nor onnx; each export step imports what it needs.
"""

from fgcli.export.onnx import ExportResult, Parity, export_fp16, export_onnx

__all__ = ["ExportResult", "Parity", "export_fp16", "export_onnx"]
