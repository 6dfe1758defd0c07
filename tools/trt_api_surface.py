"""Record the real TensorRT Python API of each version we support, as small JSON "surfaces".

    python tools/trt_api_surface.py                      # download the default wheels, rewrite all surfaces
    python tools/trt_api_surface.py --wheel W.whl ...    # use these bindings wheels instead

Writes ``tests/fake_tensorrt/surfaces/tensorrt-<version>.json``: every class with its methods (argument
names and pybind11 signature per overload), properties (read-only or not) and class attributes; every enum
with its members and values; module-level functions and constants. No docstring text. The tests in
``tests/test_trt_surface.py`` hold the fake tensorrt and fgcli's TensorRT code to these files.

Why the extension is imported (with stub libraries) instead of parsed: ``tensorrt.so`` keeps old names in
docstrings and the signature strings are not stored next to the class they belong to, so ``strings``-style
parsing reads removed members as present. The pybind11 module itself is the only reliable inventory, and it
imports as soon as the dynamic loader finds *some* library under each soname it needs (libnvinfer.so.N,
libnvonnxparser.so.N, ...) exporting the dozen factory symbols it links (``createInferBuilder_INTERNAL``,
...). So, per wheel, in a child process: list the undefined symbols (``nm -D``), compile a C stub defining
them (``gcc -shared``, one copy per soname), import the wheel's package with that stub on
``LD_LIBRARY_PATH``, and walk ``dir()`` and each ``__doc__``'s signature lines. Nothing is ever called, so
the stub's functions never run. Needs gcc and binutils (nm, readelf); no GPU, no TensorRT libraries. Run it
with Python 3.11: the wheels are per Python version and 8.6.1's newest is cp311.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SURFACES = REPO / "tests" / "fake_tensorrt" / "surfaces"
# JetPack 6.0 (8.6; only `tensorrt-bindings` carries 8.6 as a binary wheel), JetPack 6.1/6.2 (10.3),
# the newest 10.x and the newest 11.x at the time of writing.
DEFAULT_WHEELS = ("tensorrt-bindings==8.6.1", "tensorrt-cu12-bindings==10.3.0",
                  "tensorrt-cu12-bindings==10.16.1.11", "tensorrt-cu12-bindings==11.4.0.106")
_PREFIX = re.compile(r"\btensorrt(?:_rtx)?(?:\.tensorrt(?:_rtx)?)?\.")


# ----------------------------------------------------------------------------- signature parsing

def split_arguments(text: str) -> list[str]:
    """Split a pybind11 argument list at top-level commas (types may hold ``[a, b]`` or ``(x, y)``)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[(<{":
            depth += 1
        elif char in "])>}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_signatures(name: str, doc: str | None) -> list[dict]:
    """The overloads ``name(args) -> ret`` that pybind11 writes at the top of ``doc``.

    One overload: the first line. Several: ``name(*args, **kwargs)`` then ``Overloaded function.`` and
    numbered lines ``1. name(...) -> ...``. Each becomes ``{"args": [names], "signature": text}`` with
    ``tensorrt.tensorrt.`` prefixes dropped; argument names exclude ``self``.
    """
    pattern = re.compile(rf"^(?:\d+\.\s+)?{re.escape(name)}\((.*)\)(?:\s*->\s*(.+))?$")
    lines = (doc or "").splitlines()
    overloaded = len(lines) > 1 and lines[1].strip() == "Overloaded function."
    candidates = [line.strip() for line in (lines[2:] if overloaded else lines[:1])]
    signatures = []
    for line in candidates:
        match = pattern.match(line)
        if match is None or (overloaded and not re.match(r"^\d+\.", line)):
            continue
        arguments = split_arguments(match.group(1))
        names = [a.split(":")[0].split("=")[0].strip() for a in arguments]
        signatures.append({"args": [n for n in names if n != "self"],
                           "signature": _PREFIX.sub("", f"{name}({match.group(1)})"
                                                          + (f" -> {match.group(2)}" if match.group(2) else ""))})
    return signatures


def python_signature(function) -> list[dict]:
    """The same shape for a plain Python function (``nptype``, ``volume`` in the wheel's __init__.py)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return []
    names = [n for n in parameters if n != "self"]
    return [{"args": names, "signature": f"{function.__name__}({', '.join(parameters)})"}]


# ----------------------------------------------------------------------------- walking the module

def _is_enum(cls: type) -> bool:
    """pybind11 enums (and Python ones) carry a ``__members__`` mapping."""
    return isinstance(getattr(cls, "__members__", None), Mapping)


def _static(cls: type, name: str):
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return getattr(cls, name)


def _callable_signatures(name: str, raw) -> list[dict] | None:
    """Signatures when ``raw`` is a pybind11 or Python function/method, else None."""
    target = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
    if inspect.isfunction(target):
        return python_signature(target)
    if callable(target) and not isinstance(target, type):
        return parse_signatures(name, getattr(target, "__doc__", None))
    return None


def describe_class(cls: type) -> dict:
    """Methods, properties and class attributes of one class, inherited ones included (``__init__`` kept)."""
    methods, properties, attributes = {}, {}, {}
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":  # dunders, pybind11's _pybind11_conduit_v1_
            continue
        raw = _static(cls, name)
        if isinstance(raw, property):
            properties[name] = {"readonly": raw.fset is None}
            continue
        signatures = _callable_signatures(name, raw)
        if signatures is not None:
            if name == "__init__" and not signatures:
                continue  # object.__init__ / a wrapper slot: no pybind11 constructor
            methods[name] = signatures
        elif isinstance(raw, type):
            attributes[name] = raw.__name__
        else:
            attributes[name] = type(raw).__name__
    bases = [b.__name__ for b in cls.__mro__[1:] if b.__name__ not in ("object", "pybind11_object")]
    return {"bases": bases, "methods": methods, "properties": properties, "attributes": attributes}


def describe_module(module, version: str) -> dict:
    """The whole surface of an imported tensorrt package: classes, enums, functions, constants."""
    classes, enums, functions, constants = {}, {}, {}, {}
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, type) and _is_enum(value):
            enums[name] = {member: int(item) for member, item in value.__members__.items()}
        elif isinstance(value, type):
            classes[name] = describe_class(value)
        elif inspect.ismodule(value):
            continue
        elif callable(value):
            functions[name] = _callable_signatures(name, value) or []
        else:
            constants[name] = f"{type(value).__name__}.{value.name}" if hasattr(value, "name") and _is_enum(
                type(value)) else type(value).__name__
    if hasattr(module, "__version__"):  # set by the wheel's __init__.py; fgcli reads it
        constants["__version__"] = "str"
    return {"version": version, "classes": classes, "enums": enums, "functions": functions,
            "constants": constants}


# ----------------------------------------------------------------------------- wheels and the stub

def wheel_version(wheel: Path) -> str:
    """``tensorrt_cu12_bindings-10.3.0-cp311-...whl`` -> ``10.3.0``."""
    return wheel.name.split("-")[1]


def _run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def stub_sources(extension: Path) -> tuple[list[str], list[str]]:
    """(sonames to fake, symbols to define): NEEDED libraries the system lacks, and the undefined symbols
    of ``extension`` that nothing already loaded (libc, libstdc++, python) provides."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _run(["readelf", "-d", str(extension)]))
    missing = []
    for soname in needed:
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append(soname)
    loaded = ctypes.CDLL(None)
    symbols = []
    for line in _run(["nm", "-D", "--undefined-only", str(extension)]).splitlines():
        kind, _, symbol = line.strip().partition(" ")
        if kind != "U" or "@" in symbol:
            continue
        if not hasattr(loaded, symbol):
            symbols.append(symbol.strip())
    return missing, symbols


def build_stub(extension: Path, stub_dir: Path) -> None:
    """One C file defining every missing symbol as a function returning 0, built under each missing soname."""
    sonames, symbols = stub_sources(extension)
    source = stub_dir / "stub.c"
    source.write_text("".join(f"void *{symbol}(void) {{ return 0; }}\n" for symbol in symbols))
    for soname in sonames:
        _run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(stub_dir / soname), str(source)])


def extract_wheel(wheel: Path, work: Path) -> Path:
    """Unpack the wheel's ``tensorrt*`` package as ``work/tensorrt`` (its own import name) and return it."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(work / "unpacked")
    inits = sorted((work / "unpacked").glob("*/__init__.py"))
    package = next(p.parent for p in inits if list(p.parent.glob("tensorrt*.so")))
    target = work / "tensorrt"
    shutil.copytree(package, target)
    return target


_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import tensorrt
from trt_api_surface import describe_module
print(json.dumps(describe_module(tensorrt, sys.argv[3])))
"""


def surface_of_wheel(wheel: Path) -> dict:
    """Import the wheel's bindings over stub libraries in a child process and describe them."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        package = extract_wheel(wheel, work)
        stub_dir = work / "stub"
        stub_dir.mkdir()
        build_stub(next(package.glob("tensorrt*.so")), stub_dir)
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
            filter(None, [str(stub_dir), os.environ.get("LD_LIBRARY_PATH")]))}
        result = subprocess.run([sys.executable, "-c", _CHILD, str(work), str(Path(__file__).parent),
                                 wheel_version(wheel)], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"importing {wheel.name} over the stub failed (a wheel for another Python than "
                             f"{sys.version_info.major}.{sys.version_info.minor}?):\n{result.stderr}")
        return json.loads(result.stdout)


def download_default_wheels(directory: Path) -> list[Path]:
    for requirement in DEFAULT_WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "--platform", "manylinux_2_28_x86_64", "--platform",
                        "manylinux_2_17_x86_64", "-d", str(directory), requirement], check=True)
    return sorted(directory.glob("*.whl"))


def format_surface(surface: dict) -> str:
    """JSON with one line per class, enum and function, so a diff between versions reads per name."""
    lines = ["{", f' "version": {json.dumps(surface["version"])},']
    sections = [key for key in ("classes", "enums", "functions", "constants") if key in surface]
    for number, section in enumerate(sections):
        items = sorted(surface[section].items())
        lines.append(f' "{section}": {{')
        lines += [f"  {json.dumps(name)}: {json.dumps(value, sort_keys=True)}" + ("," if i < len(items) - 1 else "")
                  for i, (name, value) in enumerate(items)]
        lines.append(" }" + ("," if number < len(sections) - 1 else ""))
    return "\n".join([*lines, "}"]) + "\n"


def write_surface(surface: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"tensorrt-{surface['version']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(format_surface(surface), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", action="append", type=Path, default=[],
                        help="a TensorRT bindings wheel (repeatable); default: pip download "
                             + ", ".join(DEFAULT_WHEELS))
    parser.add_argument("--out", type=Path, default=SURFACES, help=f"output folder (default {SURFACES})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheel or download_default_wheels(Path(tmp))
        for wheel in wheels:
            surface = surface_of_wheel(wheel)
            path = write_surface(surface, args.out)
            print(f"{wheel.name}: {len(surface['classes'])} classes, {len(surface['enums'])} enums -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
