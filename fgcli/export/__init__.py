"""Deployment artifacts from a checkpoint: ``pipeline.export_all`` runs every step; ``onnx`` (export, FP16,
parity check), ``int8`` (calibration, INT8 models, mixed precision), ``tensorrt`` (engine builder), ``deepstream`` and
``triton`` (serving configs); ``options`` holds what an export is asked to do.

Importing this package imports nothing: ``fgcli.export.options`` stays light for the CLI, and each step imports
what it needs (torch, onnx, tensorrt) when it runs.
"""
