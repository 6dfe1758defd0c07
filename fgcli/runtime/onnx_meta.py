"""Reading and writing fgcli ONNX files and their ``fgcli.*`` metadata: the one codec every layer uses.

An fgcli ONNX model describes itself in ``metadata_props`` (class names, preprocessing, precision, the INT8 node
choices; docs/architecture.md lists the keys), so a deployment needs no checkpoint. The exporter writes these
props, the quantizers carry them over, TensorRT copies them into its sidecar, and the ONNX Runtime runner reads
them from its session. No torch here; the ``onnx`` package is imported only when a file is read or written
(the ONNX Runtime runner decodes the session's props and needs no ``onnx``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fgcli.errors import FgcliError
from fgcli.utils import atomic_path, optional_import

METADATA_PREFIX = "fgcli."
PRECISION_KEY = METADATA_PREFIX + "precision"
#: the exporting model's regex of the nodes modelopt may quantize (``FGVCModel.symmetric_int8_nodes``)
SYMMETRIC_INT8_NODES_KEY = METADATA_PREFIX + "symmetric_int8_nodes"
#: the exporting model's regex of the nodes every quantizer leaves float (``FGVCModel.float_nodes``)
FLOAT_NODES_KEY = METADATA_PREFIX + "float_nodes"
#: the nodes ``--target-agreement`` measured and kept in float (a JSON list), honoured by later quantizations
AUTO_FLOAT_NODES_KEY = METADATA_PREFIX + "auto_float_nodes"
#: decoded key -> is the prop value JSON (lists) rather than a plain string
_JSON_KEYS = {"class_names", "mean", "std", "auto_float_nodes"}
_INT_KEYS = {"img_size", "resize_size"}
_FLOAT_KEYS = {"target_agreement", "max_drop", "auto_agreement"}  # a measured mixed precision (fgcli export)
_PREPROCESS_KEYS = ("img_size", "resize_size", "mean", "std")
_REQUIRED_KEYS = ("class_names", *_PREPROCESS_KEYS)
EXPORT_HINT = "export the model with `fgcli export CHECKPOINT`, which writes the fgcli metadata"


def encode_fgcli_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """``{"class_names": [...], "preprocess": {...}, "method": ...}`` -> flat ``fgcli.*`` string props."""
    flat = {key: value for key, value in meta.items() if key != "preprocess"}
    flat.update(meta.get("preprocess", {}))
    props = {}
    for key, value in flat.items():
        if value is None:
            continue
        text = json.dumps(list(value)) if key in _JSON_KEYS else str(value)
        props[METADATA_PREFIX + key] = text
    return props


def decode_fgcli_metadata(props: dict[str, str], source: str | Path) -> dict[str, Any]:
    """The inverse of :func:`encode_fgcli_metadata`; ``source`` names the file in errors.

    Returns ``class_names`` (list), ``preprocess`` (PreprocessConfig dict), ``precision`` ("fp32" when
    absent) and every other ``fgcli.*`` prop as a string (method, backbone, version...).
    """
    values = {key[len(METADATA_PREFIX):]: value for key, value in props.items() if key.startswith(METADATA_PREFIX)}
    missing = [key for key in _REQUIRED_KEYS if key not in values]
    if missing:
        raise FgcliError(
            f"{source} lacks the fgcli metadata {', '.join(METADATA_PREFIX + k for k in missing)}, so its class "
            "names or preprocessing are unknown", hint=EXPORT_HINT)
    try:
        decoded: dict[str, Any] = {
            key: json.loads(value) if key in _JSON_KEYS else int(value) if key in _INT_KEYS
            else float(value) if key in _FLOAT_KEYS else value
            for key, value in values.items()
        }
    except ValueError as exc:
        raise FgcliError(f"{source} has malformed fgcli metadata: {exc}", hint=EXPORT_HINT) from None
    decoded["preprocess"] = {key: decoded.pop(key) for key in _PREPROCESS_KEYS}
    decoded.setdefault("precision", "fp32")
    return decoded


def metadata_props(proto, fgcli_only: bool = False) -> dict[str, str]:
    """The raw ``metadata_props`` of an ONNX ``ModelProto`` (only the ``fgcli.*`` ones with ``fgcli_only``)."""
    return {p.key: p.value for p in proto.metadata_props if not fgcli_only or p.key.startswith(METADATA_PREFIX)}


def metadata_value(proto, key: str) -> str | None:
    """One raw prop (e.g. ``FLOAT_NODES_KEY``), None when absent."""
    return metadata_props(proto).get(key)


def replace_metadata_props(proto, props: dict[str, str]) -> None:
    """Make ``props`` the model's whole ``metadata_props``."""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def set_onnx_metadata(proto, meta: dict[str, Any]) -> None:
    """Replace the model's ``fgcli.*`` metadata_props with ``meta`` (decoded form); other props are kept."""
    kept = {key: value for key, value in metadata_props(proto).items() if not key.startswith(METADATA_PREFIX)}
    replace_metadata_props(proto, {**kept, **encode_fgcli_metadata(meta)})


def onnx_metadata(proto, source: str | Path) -> dict[str, Any]:
    """The decoded fgcli metadata of a loaded model; ``source`` names it in errors."""
    return decode_fgcli_metadata(metadata_props(proto), source)


def load_onnx(path: str | os.PathLike, load_external_data: bool = True):
    """onnx.load with errors that name the file."""
    onnx = optional_import("onnx", "onnx", "Reading ONNX models")
    path = Path(path)
    if not path.is_file():
        raise FgcliError(f"ONNX model not found: {path}", hint="`fgcli export CHECKPOINT` writes DIR/model.onnx")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise FgcliError(f"cannot read {path} as ONNX: {exc}", hint="re-export it with `fgcli export`") from exc


def save_onnx(proto, path: str | os.PathLike) -> Path:
    """Write ``proto`` (weights inline) to ``path`` atomically."""
    onnx = optional_import("onnx", "onnx", "Writing ONNX models")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return Path(path)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Decoded fgcli metadata of an ONNX file: class_names, preprocess, method, backbone, precision, version."""
    return onnx_metadata(load_onnx(path, load_external_data=False), path)


def update_onnx_metadata(path: str | os.PathLike, **values: Any) -> None:
    """Set fgcli metadata ``values`` of the ONNX at ``path`` in place (atomically), e.g. the measured float nodes
    of a mixed-precision model, where ``float_nodes`` and ``fgcli build`` find them."""
    proto = load_onnx(path)
    set_onnx_metadata(proto, {**onnx_metadata(proto, path), **values})
    save_onnx(proto, path)
