"""The formats table (fgcli/formats.py) against the files the builders name, the report's variants and the docs."""

from __future__ import annotations

import re
from pathlib import Path

from fgcli.export.tensorrt import default_engine_path
from fgcli.formats import (BY_NAME, ENGINE_SOURCE_PREFERENCE, FORMATS, ONNXRUNTIME, TENSORRT, TORCH, file_of,
                           int8_format)
from fgcli.report.variants import AUTO_VARIANTS, ON_REQUEST, QAT_VARIANT, VARIANT_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_each_engine_file_is_the_one_build_engine_names_from_its_source():
    engines = [fmt for fmt in FORMATS if fmt.runtime == TENSORRT]
    assert [fmt.precision for fmt in engines] == ["fp32", "fp16", "int8"]
    for fmt in engines:
        assert default_engine_path(Path(file_of(fmt.built_from)), fmt.precision).name == fmt.file


def test_every_format_is_built_from_an_onnx_of_the_table_or_the_checkpoint():
    for fmt in FORMATS:
        assert fmt.built_from is None or BY_NAME[fmt.built_from].runtime == ONNXRUNTIME, fmt.name
    assert set(ENGINE_SOURCE_PREFERENCE) <= {fmt.name for fmt in FORMATS if fmt.runtime == ONNXRUNTIME}
    assert [int8_format(b).file for b in ("modelopt", "ort")] == ["model.int8.onnx", "model.ort-int8.onnx"]
    assert [int8_format(b, auto=True).file for b in ("modelopt", "ort")] == ["model.int8-auto.onnx",
                                                                            "model.ort-int8-auto.onnx"]


def test_the_report_variants_are_the_reported_formats_in_table_order():
    assert VARIANT_NAMES == ("torch-fp32", "torch-fp16", "torch-bf16", "torch-fp16-compiled", "torch-bf16-compiled",
                             "torch-fp16-graph", "torch-bf16-graph", "torch-fp16-compiled-graph",
                             "torch-bf16-compiled-graph", "onnx-fp32", "onnx-int8-modelopt",
                             "onnx-int8-modelopt-auto", "onnx-int8-ort", "onnx-int8-ort-auto", "onnx-int8-qat",
                             "trt-fp32", "trt-fp16", "trt-int8")
    assert AUTO_VARIANTS == ("onnx-int8-modelopt-auto", "onnx-int8-ort-auto") and QAT_VARIANT == "onnx-int8-qat"
    assert ON_REQUEST == ("torch-fp16-compiled", "torch-bf16-compiled", "torch-fp16-graph", "torch-bf16-graph",
                          "torch-fp16-compiled-graph", "torch-bf16-compiled-graph")


def test_a_torch_format_names_its_precision_and_mode_and_only_torch_formats_have_a_mode():
    for fmt in FORMATS:
        if fmt.runtime == TORCH:
            mode = [] if fmt.torch_mode == "eager" else [fmt.torch_mode]
            assert fmt.name == "-".join(["torch", fmt.precision, *mode])
            assert fmt.on_request == (fmt.torch_mode != "eager"), fmt.name
        else:
            assert fmt.torch_mode == "eager" and not fmt.on_request, fmt.name


def test_the_architecture_document_lists_the_table():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([a-z0-9-]+) \| (\S+) \| (\w+) \| (\w+) \| ([^|]+) \|", text, re.M)
    documented = [(name, None if file == "best.pt" else file, runtime, precision,
                   None if built_from.strip().startswith("-") else built_from.strip())
                  for name, file, runtime, precision, built_from in rows if name in BY_NAME]
    assert documented == [(f.name, f.file, f.runtime, f.precision, f.built_from) for f in FORMATS]
