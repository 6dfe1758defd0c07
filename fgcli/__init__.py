"""fgcli: fine-grained visual classification, from dataset to quantized TensorRT engine."""

__version__ = "0.1.0"
