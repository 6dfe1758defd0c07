"""Run an fgcli checkpoint with PyTorch: the FP32 reference, and the FP16 / BF16 model a user would deploy.

A half-precision runner converts the model itself (weights and activations, ``model.to(dtype)``), not autocast:
autocast casts every weight on every call, which at batch 1 costs more than the arithmetic it saves (measured
on an H200, ResNet-50 at 448: autocast FP16 4.68 ms against FP32 4.08 ms, see ``shared/gpu/README.md``). On CUDA
the model and its inputs are channels_last (what cuDNN's tensor-core kernels read without a transpose).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError
from fgcli.devices import resolve_torch_device
from fgcli.runtime.base import Runner
from fgcli.utils import optional_import


#: precision -> torch dtype name
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: how the forward pass is executed: eager PyTorch, ``torch.compile`` (Inductor), or the eager / compiled model
#: captured once per batch size as a CUDA graph and replayed (no Python or launch cost per kernel)
TORCH_MODES = ("eager", "compiled", "graph", "compiled-graph")
#: what ``run_staged`` times, for the report
TIMED_REGION = "forward pass on an input already on the device in the model's dtype, until the device is done"


class TorchRunner(Runner):
    """Eval-mode model rebuilt from a checkpoint (a path or an already-loaded checkpoint dict).

    ``precision``: "fp32", "fp16" or "bf16", the dtype of the weights and of every activation.
    ``mode``: see ``TORCH_MODES``; the graph modes need CUDA. ``run`` takes and returns float32 NumPy arrays;
    ``stage_input`` / ``run_staged`` split it so the timing leaves the host-to-device copy out.
    """

    def __init__(self, checkpoint: str | Path | dict[str, Any], device: str = "auto", precision: str = "fp32",
                 mode: str = "eager"):
        torch = optional_import("torch", "torch", "Running a PyTorch checkpoint")
        from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint  # imports torch

        if precision not in TORCH_DTYPES:
            raise FgcliError(f"unknown PyTorch precision '{precision}'", hint=f"use one of: {', '.join(TORCH_DTYPES)}")
        if mode not in TORCH_MODES:
            raise FgcliError(f"unknown PyTorch mode '{mode}'", hint=f"use one of: {', '.join(TORCH_MODES)}")
        self._torch = torch
        self.device = resolve_torch_device(torch, device)
        if mode.endswith("graph") and self.device.type != "cuda":
            raise FgcliError(f"a CUDA graph runs on a CUDA GPU only, and this runner is on {self.device}",
                             hint="use --device cuda on a machine with an NVIDIA GPU, or the eager variant")
        self.dtype = getattr(torch, TORCH_DTYPES[precision])
        self.mode = mode
        self._memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        source = "the checkpoint" if isinstance(checkpoint, dict) else checkpoint
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.model = model_from_checkpoint(ckpt, source).to(self.device, self.dtype)
        self.model = self.model.to(memory_format=self._memory_format)
        # Inductor's default mode: mode="reduce-overhead" (its own CUDA graphs) regressed on PyTorch 2.10 with CUDA
        # 13 (pytorch/pytorch#174575); batch-1 latency is the "graph" mode's job
        self._forward = torch.compile(self.model) if mode.startswith("compiled") else self.model
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}  # input shape -> (graph, input, output)
        super().__init__(name=f"torch:{self.device}" + ("" if mode == "eager" else f":{mode}"),
                         class_names=ckpt["class_names"],
                         preprocess=PreprocessConfig.from_dict(ckpt["preprocess"], source),
                         precision=precision)
        if mode != "eager" or precision != "fp32":
            self._first_call()

    def _first_call(self) -> None:
        """Run (compile, capture) batch 1 now, so a model that cannot run this way is refused when the runner
        opens, with PyTorch's reason, not halfway through a report (e.g. an op without a half-precision kernel)."""
        size = self.preprocess.img_size
        try:
            self.run(np.zeros((1, 3, size, size), np.float32))
        except Exception as exc:  # noqa: BLE001 - Dynamo, Inductor, CUDA graph capture and kernels raise many types
            what = {"eager": "run", "compiled": "compile", "graph": "capture as a CUDA graph",
                    "compiled-graph": "compile and capture as a CUDA graph"}[self.mode]
            raise FgcliError(f"PyTorch could not {what} the {self.precision.upper()} model: "
                             f"{type(exc).__name__}: {str(exc)[:500]}",
                             hint="report it with the model's method; the FP32 variant still runs") from exc

    timed_region = TIMED_REGION

    @property
    def placement(self) -> tuple[str, str]:
        return str(self.device), f"PyTorch {self.mode}"

    def stage_input(self, images: np.ndarray):
        """The host batch on the device, in the model's dtype and memory format (the host-to-device copy)."""
        batch = self._torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        return batch.to(self.dtype).contiguous(memory_format=self._memory_format)

    def run_staged(self, batch) -> None:
        """One forward pass on a staged batch, waiting until the device has finished it."""
        self._logits(batch)
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def run(self, images: np.ndarray) -> np.ndarray:
        return self._logits(self.stage_input(images)).float().cpu().numpy()

    def _logits(self, batch):
        with self._torch.inference_mode():
            if not self.mode.endswith("graph"):
                return self._forward(batch)
            graph, static_input, static_output = self._graph_for(batch)
            static_input.copy_(batch)
            graph.replay()
            return static_output

    def _graph_for(self, batch):
        """The CUDA graph of the (eager or compiled) model at ``batch``'s shape, captured on first use after warm-up
        calls on a side stream, as PyTorch requires: they compile that shape and settle cuDNN's choices first."""
        torch = self._torch
        key = tuple(batch.shape)
        if key not in self._graphs:
            with torch.cuda.device(self.device):  # torch.cuda.graph captures on the current device
                static_input = batch.clone()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self._forward(static_input)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_output = self._forward(static_input)
            self._graphs[key] = (graph, static_input, static_output)
        return self._graphs[key]

    def close(self) -> None:
        self.model = self._forward = None
        self._graphs.clear()
