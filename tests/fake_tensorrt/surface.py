"""The real TensorRT API per version (``surfaces/*.json``, from ``tools/trt_api_surface.py``) and the checks
that hold the fake module and fgcli's recorded TensorRT look-ups to it."""

from __future__ import annotations

import inspect
import json
from enum import Enum
from functools import lru_cache
from pathlib import Path

SURFACE_DIR = Path(__file__).parent / "surfaces"
SURFACE_VERSIONS = tuple(sorted((p.stem.removeprefix("tensorrt-") for p in SURFACE_DIR.glob("tensorrt-*.json")),
                                key=lambda v: tuple(int(x) for x in v.split("."))))
_NOT_API = {"object", "bytes", "int", "Enum", "IntEnum", "ReprEnum", "_Bound", "_Enum", "_StrEnum"}


@lru_cache(maxsize=None)
def load_surface(version: str) -> dict:
    return json.loads((SURFACE_DIR / f"tensorrt-{version}.json").read_text(encoding="utf-8"))


def real_kind(surface: dict, owner: str, name: str) -> str | None:
    """"method", "property", "attribute", "member", "class", "enum", "function", "constant" or None (absent)."""
    if owner == "tensorrt":
        for section, kind in (("classes", "class"), ("enums", "enum"), ("functions", "function"),
                              ("constants", "constant")):
            if name in surface[section]:
                return kind
        return None
    if owner in surface["enums"]:
        return "member" if name in surface["enums"][owner] else None
    cls = surface["classes"].get(owner)
    return None if cls is None else _member_kind(cls, name)


def _member_kind(real_class: dict, name: str) -> str | None:
    for section, kind in (("methods", "method"), ("properties", "property"), ("attributes", "attribute")):
        if name in real_class[section]:
            return kind
    return None


def _fake_members(cls: type) -> dict[str, object]:
    """Public names (and ``__init__``) the fake class itself defines, through its fake bases only."""
    members = {}
    for klass in reversed(cls.__mro__):
        if klass.__name__ in _NOT_API or klass.__module__ == "builtins":
            continue
        for name, value in vars(klass).items():
            if (not name.startswith("_") or name == "__init__") and name not in ("_ctx", "_classes"):
                members[name] = value
    return members


def _arguments(function) -> list[str]:
    return [n for n in inspect.signature(function).parameters if n != "self"]


def _overloads(signatures: list[dict]) -> list[list[str]]:
    return [s["args"] for s in signatures]


def _class_mismatches(version: str, name: str, cls: type, real: dict) -> list[str]:
    problems = []
    for member, value in _fake_members(cls).items():
        where = f"{version}: fake {name}.{member}"
        if member == "__init__" and "__init__" not in real["methods"]:
            continue  # Python cannot construct the real class; the fake's constructor is its own business
        if isinstance(value, property):
            if member not in real["properties"]:
                problems.append(f"{where} is a property; real: {_member_kind(real, member) or 'absent'}")
            elif value.fset is not None and real["properties"][member]["readonly"]:
                problems.append(f"{where} is settable; the real property is read-only")
        elif inspect.isfunction(value):
            if member not in real["methods"]:
                problems.append(f"{where}() is a method; real: {_member_kind(real, member) or 'absent'}")
            elif _arguments(value) not in _overloads(real["methods"][member]):
                problems.append(f"{where}{tuple(_arguments(value))}: real arguments "
                                f"{' or '.join(str(tuple(a)) for a in _overloads(real['methods'][member]))}")
        elif member not in real["attributes"] and member not in real["properties"]:
            problems.append(f"{where} is a class attribute the real class lacks")
    return problems


def fake_mismatches(module, version: str) -> list[str]:
    """Every name, enum member and method signature of the fake ``module`` that the real ``version`` lacks."""
    surface, problems = load_surface(version), []
    for name in sorted(vars(module)):
        if name.startswith("_") and name != "__version__":
            continue
        value, kind = getattr(module, name), real_kind(surface, "tensorrt", name)
        if kind is None:
            problems.append(f"{version}: fake tensorrt.{name} does not exist in the real module")
        elif isinstance(value, type) and issubclass(value, Enum):
            if kind != "enum":
                problems.append(f"{version}: fake tensorrt.{name} is an enum; real: {kind}")
                continue
            real = surface["enums"][name]
            problems += [f"{version}: fake {name}.{m.name} = {int(m)}; real: {real.get(m.name, 'absent')}"
                         for m in value if real.get(m.name) != int(m)]
        elif isinstance(value, type):
            if kind != "class":
                problems.append(f"{version}: fake tensorrt.{name} is a class; real: {kind}")
                continue
            problems += _class_mismatches(version, name, value, surface["classes"][name])
        elif callable(value):
            if kind != "function":
                problems.append(f"{version}: fake tensorrt.{name}() is a function; real: {kind}")
            elif _arguments(value) not in _overloads(surface["functions"][name]):
                problems.append(f"{version}: fake tensorrt.{name}{tuple(_arguments(value))}: real arguments "
                                f"{_overloads(surface['functions'][name])}")
        elif kind != "constant":
            problems.append(f"{version}: fake tensorrt.{name} is a constant; real: {kind}")
    return problems


def recorded_mismatches(recorded: set, version: str) -> list[str]:
    """fgcli's recorded look-ups ``(owner, name, found)`` that disagree with the real ``version``: a name it
    used that the real API lacks, a name it probed that the fake lacks and the real API has, or an
    assignment (``name=``) to something that is not a settable real property."""
    surface, problems = load_surface(version), []
    for owner, name, found in sorted(recorded):
        if name.endswith("="):  # an assignment: the real attribute must be a settable property
            name = name[:-1]
            real = surface["classes"].get(owner, {}).get("properties", {}).get(name)
            if real is None or real["readonly"]:
                problems.append(f"{version}: fgcli assigns {owner}.{name}, which the real TensorRT {version} "
                                + ("has read-only" if real else "lacks"))
            continue
        kind = real_kind(surface, owner, name)
        if found and kind is None:
            problems.append(f"{version}: fgcli uses {owner}.{name}, which the real TensorRT {version} lacks")
        elif not found and kind is not None:
            problems.append(f"{version}: fgcli probes {owner}.{name}: the fake lacks it, the real {kind} exists")
    return problems
