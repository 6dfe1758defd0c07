"""A fake ``tensorrt`` module per major version (8.6, 10.x, 11.x) that records every call.

Held to the real API: ``tests/test_trt_surface.py`` fails when a name, enum value or method signature
here is not the one in ``surfaces/tensorrt-<version>.json`` (recorded from NVIDIA's bindings wheels by
``tools/trt_api_surface.py``), or when fgcli's code touches a name its version lacks (``recorder``).

Members present or absent per version follow NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``,
``pyInt8.cpp`` and ``python/src/parsers/pyOnnx.cpp`` at tags v8.6.1, v10.16 and v11.1:
- 8.6: NetworkDefinitionCreationFlag {EXPLICIT_BATCH, EXPLICIT_PRECISION}; BuilderFlag FP16/INT8;
  IInt8EntropyCalibrator2, ``int8_calibrator``, ``set_calibration_profile``; the binding API
  (``num_bindings``, ``get_binding_*``, ``get_profile_shape``, ``set_binding_shape``, ``execute_async_v2``)
  *and* the named-tensor API (added in 8.5); ParserError without ``node_name``.
- 10.x: adds STRONGLY_TYPED (EXPLICIT_BATCH kept but ignored); binding API and ``execute_async_v2`` removed.
- 11.x: no EXPLICIT_BATCH (STRONGLY_TYPED = 0, accepted and ignored: always strongly typed), BuilderFlag
  without FP16/INT8, no calibrators, no ``int8_calibrator``/``set_calibration_profile``,
  no ``platform_has_fast_fp16``.

Builder rules the fake enforces (each one a documented TensorRT behaviour, see fgcli/export/tensorrt.py):
the ONNX parser needs an explicit-batch network on 8.6; dynamic inputs need an optimization profile;
precision flags conflict with strongly typed networks; a weakly typed Q/DQ network needs BuilderFlag.INT8;
implicit INT8 needs a calibrator, and with dynamic shapes a calibration profile; DLA needs a DLA core and
FP16/INT8. A broken rule is logged as ``("logger.error", message)`` and the build returns None.

The "engine" is a JSON plan. Running it computes ``fake_logits`` from the input in fake device memory.
"""

from __future__ import annotations

import hashlib
import json
import sys
from enum import EnumType, IntEnum
from types import ModuleType

import numpy as np

from .cuda import FakeCuda
from .log import CallLog

PLAN_MAGIC = b"FAKE-TRT-PLAN\n"


def fake_logits(images: np.ndarray, num_classes: int) -> np.ndarray:
    """What every fake engine computes: the image mean times 1..K, so outputs depend on every input byte."""
    means = images.astype(np.float32).reshape(len(images), -1).mean(axis=1)
    return means[:, None] * np.arange(1, num_classes + 1, dtype=np.float32)


def _record(ctx, owner: str, name: str, found: bool, depth: int = 3) -> None:
    """Note ``owner.name`` when fgcli's code touched it and a recorder is on. The frames above are
    ``_recorded_lookup``, a ``__getattribute__`` and then the code that looked the name up (``depth``)."""
    if ctx is None or ctx.recorder is None or (name.startswith("_") and name not in ("__init__", "__version__")):
        return
    if sys._getframe(depth).f_globals.get("__name__", "").split(".")[0] == "fgcli":
        ctx.recorder.add((owner, name, found))


def _recorded_lookup(lookup, obj, owner: str, ctx, name: str):
    try:
        value = lookup(obj, name)
    except AttributeError:
        _record(ctx, owner, name, False)
        raise
    _record(ctx, owner, name, True)
    return value


class _RecordingEnumType(EnumType):
    """Enum classes that note fgcli's member look-ups (``trt.BuilderFlag.FP16``, ``hasattr(...)``)."""

    def __getattribute__(cls, name):
        ctx = type.__getattribute__(cls, "__dict__").get("_fake_ctx")
        return _recorded_lookup(type.__getattribute__, cls, type.__getattribute__(cls, "__name__"), ctx, name)


class _Enum(IntEnum, metaclass=_RecordingEnumType):
    pass


class _StrEnum(_Enum):
    """pybind11 enums print ``Class.MEMBER`` (``str(trt.ErrorCode.INVALID_NODE)`` is "ErrorCode.INVALID_NODE" in the
    real 10.3 bindings and in TensorRT-RTX 1.7); ``.name`` is the bare member name."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _enums(major: int) -> dict[str, type]:
    if major == 8:
        creation = {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}
    elif major == 10:
        creation = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    else:
        creation = {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
    flags = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6}
    if major == 8:  # 8.6 has STRICT_TYPES at 4 (surfaces/tensorrt-8.6.1.json)
        flags.update(REFIT=5, DISABLE_TIMING_CACHE=6, TF32=7)
    if major < 11:
        flags.update(FP16=0, INT8=1)
    if major == 10:
        flags.update(FP8=15, BF16=17, INT4=22)
    return {
        "NetworkDefinitionCreationFlag": _Enum("NetworkDefinitionCreationFlag", creation),
        "BuilderFlag": _Enum("BuilderFlag", flags),
        "DataType": _Enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4}),
        "TensorIOMode": _Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2}),
        "MemoryPoolType": _Enum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1,
                                                   "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3}),
        "DeviceType": _Enum("DeviceType", {"GPU": 0, "DLA": 1}),
        "ErrorCode": _StrEnum("ErrorCode", {"SUCCESS": 0, "INTERNAL_ERROR": 1, "INVALID_NODE": 6,
                                            "UNSUPPORTED_GRAPH": 7, "UNSUPPORTED_NODE": 8}),
    }


class _Context:
    """What one fake module instance shares between its classes."""

    def __init__(self, version: str, cuda: FakeCuda, num_dla_cores: int, log: CallLog, recorder: set | None):
        self.version, self.cuda, self.num_dla_cores, self.log = version, cuda, num_dla_cores, log
        self.recorder = recorder
        self.major = int(version.split(".")[0])
        self.enums = _enums(self.major)
        for enum in self.enums.values():
            type.__setattr__(enum, "_fake_ctx", self)

    def error(self, message: str) -> None:
        self.log.add("logger.error", message)


class _RecordingMeta(type):
    """Class-level look-ups (``trt.Logger.WARNING``, ``base.__init__``) noted like instance ones."""

    def __getattribute__(cls, name):
        ctx = type.__getattribute__(cls, "__dict__").get("_ctx")
        return _recorded_lookup(type.__getattribute__, cls, type.__getattribute__(cls, "__name__"), ctx, name)


class _Bound(metaclass=_RecordingMeta):
    """Base of every fake class: each module binds its classes to its own _Context.

    With a recorder, every attribute fgcli's code reads from an instance is noted as
    ``(real class name, attribute, found)``; for an fgcli subclass (the calibrator) only the names it
    inherits from the fake base count, under that base's name."""

    _ctx: _Context
    _classes: dict[str, type]

    def __getattribute__(self, name):
        cls = type(self)
        ctx = type.__getattribute__(cls, "_ctx")
        if ctx.recorder is None:
            return object.__getattribute__(self, name)
        fake = next(k for k in cls.__mro__ if type.__getattribute__(k, "__dict__").get("_ctx") is ctx)
        if fake is not cls and (name in object.__getattribute__(self, "__dict__")
                                or any(name in vars(k) for k in cls.__mro__[:cls.__mro__.index(fake)])):
            return object.__getattribute__(self, name)  # defined by the subclass: not TensorRT's
        return _recorded_lookup(object.__getattribute__, self, type.__getattribute__(fake, "__name__"), ctx, name)

    def __setattr__(self, name, value):
        """Assignments by fgcli (``config.DLA_core = 1``) are noted as ``"DLA_core="``."""
        cls = type(self)
        ctx = type.__getattribute__(cls, "_ctx")
        fake = next(k for k in cls.__mro__ if type.__getattribute__(k, "__dict__").get("_ctx") is ctx)
        defined_by_fake = any(name in vars(k) for k in cls.__mro__[cls.__mro__.index(fake):])
        if fake is cls or defined_by_fake:
            _record(ctx, type.__getattribute__(fake, "__name__"), name + "=", defined_by_fake, depth=2)
        object.__setattr__(self, name, value)


class Logger(_Bound):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2):
        self.min_severity = min_severity
        self._ctx.log.add("Logger", min_severity)


class FakeHostMemory(bytes):
    """IHostMemory: a buffer (``bytes(memory)`` works) with ``nbytes``."""

    @property
    def nbytes(self) -> int:
        return len(self)


class ITensor(_Bound):
    def __init__(self, name: str, shape: tuple[int, ...], dtype):
        self.name, self.shape, self.dtype = name, shape, dtype


class INetworkDefinition(_Bound):
    def __init__(self, explicit_batch: bool, strongly_typed: bool):
        self.explicit_batch, self.strongly_typed = explicit_batch, strongly_typed
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.has_qdq = self.has_fp16 = False

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


class ParserError(_Bound):
    def __init__(self, node: int, code, desc: str, node_name: str = "", node_operator: str = ""):
        self._node, self._code, self._desc = node, code, desc
        self._node_name, self._node_operator = node_name, node_operator

    def code(self):
        return self._code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def file(self) -> str:
        return "ModelImporter.cpp"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return "parseGraph"


class _NamedParserError:
    """``node_name()`` / ``node_operator()``: TensorRT >= 10.0 only."""

    def node_name(self) -> str:
        return self._node_name

    def node_operator(self) -> str:
        return self._node_operator


class OnnxParser(_Bound):
    """Reads the ONNX with the onnx package; nodes outside the default ONNX domain are unsupported."""

    def __init__(self, network: INetworkDefinition, logger: Logger):
        self._network, self._errors = network, []

    @property
    def _error_class(self) -> type:
        return self._classes["ParserError"]

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int):
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        ctx, network = self._ctx, self._network
        ctx.log.add("parser.parse_from_file", model)
        codes = ctx.enums["ErrorCode"]
        if not network.explicit_batch:
            self._errors.append(self._error_class(-1, codes.UNSUPPORTED_GRAPH,
                                                  "The ONNX parser only supports networks with an explicit batch "
                                                  "dimension"))
            return False
        graph = onnx.load(model).graph
        for index, node in enumerate(graph.node):
            if node.domain not in ("", "ai.onnx"):
                self._errors.append(self._error_class(index, codes.UNSUPPORTED_NODE,
                                                      f"No importer registered for op: {node.op_type}",
                                                      node.name, node.op_type))
        if self._errors:
            return False
        data_type = ctx.enums["DataType"]

        def tensor(value):
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
            half = value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
            return self._classes["ITensor"](value.name, dims, data_type.HALF if half else data_type.FLOAT)

        network.inputs = [tensor(v) for v in graph.input]
        network.outputs = [tensor(v) for v in graph.output]
        network.has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
        network.has_fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
        return True


class IOptimizationProfile(_Bound):
    def __init__(self):
        self.shapes: dict[str, list[tuple[int, ...]]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - binding argument names
        self._ctx.log.add("profile.set_shape", input, tuple(min), tuple(opt), tuple(max))
        if not all(a <= b <= c for a, b, c in zip(min, opt, max)):
            raise ValueError("fake TensorRT: profile needs min <= opt <= max")
        self.shapes[input] = [tuple(min), tuple(opt), tuple(max)]

    def get_shape(self, input: str):  # noqa: A002
        return self.shapes[input]


class ITimingCache(_Bound):
    """Serialized as JSON: the device it was measured on and one entry per timed layer."""

    def __init__(self, data: bytes):
        state = json.loads(data) if data else {"device": self._device(), "entries": []}
        self.device, self.entries = state["device"], list(state["entries"])

    def _device(self) -> str:
        return "{}.{}".format(*self._ctx.cuda.capability)

    def serialize(self) -> FakeHostMemory:
        self._ctx.log.add("timing_cache.serialize")
        return FakeHostMemory(json.dumps({"device": self.device, "entries": self.entries}).encode())


class IInt8Calibrator(_Bound):
    """pybind11 trampoline base: subclasses must call ``__init__`` (checked when the builder uses them)."""

    def __init__(self):
        self._trampoline_ready = True


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class IBuilderConfig(_Bound):
    def __init__(self):
        self.flags: set = set()
        self.profiles: list[IOptimizationProfile] = []
        self.pool_limits: dict = {}
        self._device_type = self._ctx.enums["DeviceType"].GPU
        self._dla_core = -1
        self.timing_cache: ITimingCache | None = None
        self.calibrator = None
        self.calibration_profile: IOptimizationProfile | None = None

    @property
    def default_device_type(self):
        return self._device_type

    @default_device_type.setter
    def default_device_type(self, device_type) -> None:
        self._ctx.log.add("config.default_device_type", device_type)
        self._device_type = device_type

    @property
    def DLA_core(self) -> int:  # noqa: N802
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, core: int) -> None:  # noqa: N802
        self._ctx.log.add("config.DLA_core", core)
        self._dla_core = core

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self._ctx.log.add("config.set_memory_pool_limit", pool, pool_size)
        self.pool_limits[pool] = pool_size

    def set_flag(self, flag) -> None:
        self._ctx.log.add("config.set_flag", flag)
        self.flags.add(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._ctx.log.add("config.add_optimization_profile")
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        self._ctx.log.add("config.create_timing_cache", bytes(serialized_timing_cache))
        return self._classes["ITimingCache"](bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._ctx.log.add("config.set_timing_cache", len(cache.entries), ignore_mismatch)
        if cache.device != cache._device() and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self.timing_cache


class _CalibratingConfig:
    """``int8_calibrator`` and the calibration profile: TensorRT < 11 only."""

    @property
    def int8_calibrator(self):
        return self.calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator) -> None:
        if not isinstance(calibrator, self._classes["IInt8Calibrator"]):
            raise TypeError("int8_calibrator must be an IInt8Calibrator")
        self._ctx.log.add("config.int8_calibrator", type(calibrator).__mro__[1].__name__)
        self.calibrator = calibrator

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self._ctx.log.add("config.set_calibration_profile", *next(iter(profile.shapes.values())))
        self.calibration_profile = profile
        return True

    def get_calibration_profile(self):
        return self.calibration_profile


class _PrecisionQueries:
    """``platform_has_fast_fp16/int8``: removed in TensorRT 11."""

    @property
    def platform_has_fast_fp16(self) -> bool:
        return True

    @property
    def platform_has_fast_int8(self) -> bool:
        return True


class Builder(_Bound):
    def __init__(self, logger: Logger):
        self._ctx.log.add("Builder")

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802
        return self._ctx.num_dla_cores

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        ctx = self._ctx
        creation = ctx.enums["NetworkDefinitionCreationFlag"]
        names = [member.name for member in creation if flags & (1 << member.value)]
        ctx.log.add("builder.create_network", *names)
        explicit_batch = ctx.major >= 10 or "EXPLICIT_BATCH" in names
        strongly_typed = ctx.major >= 11 or "STRONGLY_TYPED" in names
        return self._classes["INetworkDefinition"](explicit_batch, strongly_typed)

    def create_builder_config(self) -> IBuilderConfig:
        self._ctx.log.add("builder.create_builder_config")
        return self._classes["IBuilderConfig"]()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return self._classes["IOptimizationProfile"]()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        ctx = self._ctx
        ctx.log.add("builder.build_serialized_network")
        flags = {flag.name for flag in config.flags}
        problem = self._check(network, config, flags)
        if problem:
            ctx.error(problem)
            return None
        calibration = None
        if "INT8" in flags and not network.has_qdq:
            calibration = self._calibrate(network, config)
            if calibration is None:
                return None
        self._time_layers(network, config, flags)
        inp, out = network.inputs[0], network.outputs[0]
        if network.strongly_typed:
            precision = "int8" if network.has_qdq else "fp16" if network.has_fp16 else "fp32"
        else:
            precision = "int8" if "INT8" in flags else "fp16" if "FP16" in flags else "fp32"
        plan = {
            "version": ctx.version, "precision": precision, "strongly_typed": network.strongly_typed,
            "flags": sorted(flags), "calibration": calibration,
            "device_type": config.default_device_type.name, "dla_core": config.DLA_core,
            "input": {"name": inp.name, "shape": inp.shape, "dtype": inp.dtype.name,
                      "profile": config.profiles[0].get_shape(inp.name) if config.profiles else [inp.shape] * 3},
            "output": {"name": out.name, "shape": out.shape, "dtype": out.dtype.name},
        }
        return FakeHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

    def _check(self, network, config, flags: set[str]) -> str | None:
        inp = network.inputs[0]
        if -1 in inp.shape and not config.profiles:
            return f"Network has dynamic or shape inputs, but no optimization profile has been defined ({inp.name})"
        for profile in config.profiles:
            shapes = profile.shapes.get(inp.name)
            if shapes is None or any(len(s) != len(inp.shape) or any(d != -1 and d != v for d, v in
                                                                    zip(inp.shape, s)) for s in shapes):
                return f"optimization profile {shapes} does not match input {inp.name} {inp.shape}"
        if network.strongly_typed and flags & {"FP16", "INT8", "BF16", "FP8", "INT4"}:
            return f"precision flags {sorted(flags)} are incompatible with a strongly typed network"
        if network.has_qdq and not network.strongly_typed and "INT8" not in flags:
            return "network has Q/DQ layers: the INT8 builder flag must be set"
        if config.default_device_type.name == "DLA":
            if not 0 <= config.DLA_core < self._ctx.num_dla_cores:
                return f"DLA core {config.DLA_core} is not available ({self._ctx.num_dla_cores} cores)"
            typed_low = network.strongly_typed and (network.has_qdq or network.has_fp16)
            if not (flags & {"FP16", "INT8"} or typed_low):
                return "DLA supports only FP16 and INT8 precision"
        return None

    def _calibrate(self, network, config) -> dict | None:
        """Implicit INT8: the cache if the calibrator has one, else batches from device memory."""
        ctx, calibrator, inp = self._ctx, config.calibrator, network.inputs[0]
        if calibrator is None:
            ctx.error("Calibrator is not being used. Users must provide dynamic range for all tensors")
            return None
        if not getattr(calibrator, "_trampoline_ready", False):
            raise TypeError("IInt8EntropyCalibrator2.__init__() must be called when overriding __init__")
        cache = calibrator.read_calibration_cache()
        ctx.log.add("calibrator.read_calibration_cache", None if cache is None else len(cache))
        if cache:
            return {"source": "cache", "cache": bytes(cache).decode()}
        if -1 in inp.shape and config.calibration_profile is None:
            ctx.error("Calibration profile must be set for a network with dynamic shapes")
            return None
        shape = config.calibration_profile.get_shape(inp.name)[1] if -1 in inp.shape else inp.shape
        batch_size = calibrator.get_batch_size()
        if shape[0] != batch_size:
            ctx.error(f"calibrator batch size {batch_size} differs from the calibration profile {shape}")
            return None
        nbytes, amax, batches = int(np.prod(shape)) * 4, 0.0, 0
        while (pointers := calibrator.get_batch([inp.name])) is not None:
            ctx.log.add("calibrator.get_batch", len(pointers))
            batch = np.frombuffer(ctx.cuda.read(int(pointers[0]), nbytes), dtype=np.float32)
            amax, batches = max(amax, float(np.abs(batch).max())), batches + 1
        if batches == 0:
            ctx.error("Calibration failed: the calibrator returned no batches")
            return None
        major, minor, patch = (ctx.version.split(".") + ["0", "0"])[:3]
        cache = f"TRT-{major}{int(minor):02d}{int(patch):02d}-EntropyCalibration2\n{inp.name}: {amax:.6f}\n"
        calibrator.write_calibration_cache(FakeHostMemory(cache.encode()))
        return {"source": "data", "batches": batches, "cache": cache}

    def _time_layers(self, network, config, flags: set[str]) -> None:
        """A timing cache entry per network signature; a second build of the same network hits it."""
        cache = config.timing_cache
        if cache is None:
            return
        key = hashlib.sha256(repr((network.inputs[0].shape, network.outputs[0].shape, sorted(flags),
                                   network.strongly_typed, network.has_qdq)).encode()).hexdigest()[:16]
        if key in cache.entries:
            self._ctx.log.add("builder.timing_cache_hit", key)
        else:
            self._ctx.log.add("builder.timing_cache_miss", key)
            cache.entries.append(key)


class ICudaEngine(_Bound):
    def __init__(self, plan: dict):
        self.plan = plan
        self._io = [plan["input"], plan["output"]]

    def _tensor(self, name: str) -> dict:
        return next(t for t in self._io if t["name"] == name)

    @property
    def num_io_tensors(self) -> int:
        return 2

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> str:
        return self._io[index]["name"]

    def get_tensor_mode(self, name: str):
        modes = self._ctx.enums["TensorIOMode"]
        return modes.INPUT if name == self.plan["input"]["name"] else modes.OUTPUT

    def get_tensor_dtype(self, name: str):
        return self._ctx.enums["DataType"][self._tensor(name)["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name)["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        self._ctx.log.add("engine.get_tensor_profile_shape", name, profile_index)
        return [tuple(s) for s in self.plan["input"]["profile"]]

    def create_execution_context(self):
        """8.6's signature; ``_AllocationStrategyEngine`` gives 10+ theirs."""
        self._ctx.log.add("engine.create_execution_context")
        return self._classes["IExecutionContext"](self)


class _AllocationStrategyEngine:
    """TensorRT >= 10: ``create_execution_context(strategy=ExecutionContextAllocationStrategy.STATIC)``."""

    def create_execution_context(self, strategy=None):
        return ICudaEngine.create_execution_context(self)


class _BindingEngine:
    """The binding API of ICudaEngine: TensorRT < 10 only."""

    @property
    def num_bindings(self) -> int:
        return 2

    def get_binding_name(self, index: int) -> str:
        return self._io[index]["name"]

    def binding_is_input(self, index: int) -> bool:
        return index == 0

    def get_binding_dtype(self, index: int):
        return self._ctx.enums["DataType"][self._io[index]["dtype"]]

    def get_binding_shape(self, index: int) -> tuple[int, ...]:
        return tuple(self._io[index]["shape"])

    def get_profile_shape(self, profile_index: int, binding: int) -> list[tuple[int, ...]]:
        self._ctx.log.add("engine.get_profile_shape", profile_index, binding)
        return [tuple(s) for s in self.plan["input"]["profile"]]


class IExecutionContext(_Bound):
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}

    def _accept_shape(self, shape) -> bool:
        low, _, high = self.engine.plan["input"]["profile"]
        ok = len(shape) == len(low) and all(a <= s <= b for a, s, b in zip(low, shape, high))
        if ok:
            self.input_shape = tuple(shape)
        else:
            self._ctx.error(f"input shape {tuple(shape)} is outside the profile [{low}, {high}]")
        return ok

    def _output_shape(self) -> tuple[int, ...]:
        shape = tuple(self.engine.plan["output"]["shape"])
        return shape if self.input_shape is None else (self.input_shape[0], *shape[1:])

    def set_input_shape(self, name: str, shape) -> bool:
        self._ctx.log.add("context.set_input_shape", name, tuple(shape))
        return self._accept_shape(shape)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.input_shape if name == self.engine.plan["input"]["name"] else self._output_shape()

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._ctx.log.add("context.set_tensor_address", name)
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._ctx.log.add("context.execute_async_v3")
        plan = self.engine.plan
        return self._execute(self.addresses[plan["input"]["name"]], self.addresses[plan["output"]["name"]],
                             stream_handle)

    def _execute(self, input_ptr: int, output_ptr: int, stream_handle) -> bool:
        if not isinstance(stream_handle, int) or stream_handle not in self._ctx.cuda.streams:
            self._ctx.error(f"invalid stream handle {stream_handle!r}")
            return False
        if self.input_shape is None:
            self._ctx.error("input shape not set")
            return False
        plan = self.engine.plan
        dtypes = {"FLOAT": np.float32, "HALF": np.float16}
        in_dtype, out_dtype = np.dtype(dtypes[plan["input"]["dtype"]]), np.dtype(dtypes[plan["output"]["dtype"]])
        raw = self._ctx.cuda.read(input_ptr, int(np.prod(self.input_shape)) * in_dtype.itemsize)
        images = np.frombuffer(raw, dtype=in_dtype).reshape(self.input_shape)
        logits = fake_logits(images, self._output_shape()[1]).astype(out_dtype)
        self._ctx.cuda.write(output_ptr, logits.tobytes())
        return True


class _BindingContext:
    """The binding API of IExecutionContext: TensorRT < 10 only."""

    def set_binding_shape(self, binding: int, shape) -> bool:
        self._ctx.log.add("context.set_binding_shape", binding, tuple(shape))
        return binding == 0 and self._accept_shape(shape)

    def get_binding_shape(self, binding: int) -> tuple[int, ...]:
        return self.input_shape if binding == 0 else self._output_shape()

    def execute_async_v2(self, bindings, stream_handle: int, input_consumed=None) -> bool:
        self._ctx.log.add("context.execute_async_v2", len(bindings))
        return self._execute(int(bindings[0]), int(bindings[1]), stream_handle)


class Runtime(_Bound):
    def __init__(self, logger: Logger):
        self._ctx.log.add("Runtime")
        self._dla_core = -1

    @property
    def DLA_core(self) -> int:  # noqa: N802
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, core: int) -> None:  # noqa: N802
        self._ctx.log.add("runtime.DLA_core", core)
        self._dla_core = core

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802
        return self._ctx.num_dla_cores

    def deserialize_cuda_engine(self, serialized_engine: bytes):
        ctx = self._ctx
        ctx.log.add("runtime.deserialize_cuda_engine")
        data = bytes(serialized_engine)
        if not data.startswith(PLAN_MAGIC):
            ctx.error("Serialization assertion failed: magic tag mismatch")
            return None
        plan = json.loads(data[len(PLAN_MAGIC):])
        if plan["version"] != ctx.version:
            ctx.error(f"engine plan built with TensorRT {plan['version']}, this is {ctx.version}")
            return None
        return self._classes["ICudaEngine"](plan)


class _RecordingModule(ModuleType):
    """The fake ``tensorrt`` module: notes fgcli's ``trt.X`` look-ups as ``("tensorrt", X, found)``."""

    def __getattribute__(self, name):
        ctx = ModuleType.__getattribute__(self, "__dict__").get("_fake_ctx")
        return _recorded_lookup(ModuleType.__getattribute__, self, "tensorrt", ctx, name)


def make_fake_tensorrt(version: str, cuda: FakeCuda, *, num_dla_cores: int = 0,
                       log: CallLog | None = None, recorder: set | None = None) -> ModuleType:
    """A ``tensorrt`` module for ``version`` ("8.6.1", "10.3.0", "11.4.0") over the fake GPU ``cuda``.

    ``recorder``: a set that collects ``(class, attribute, found)`` for every TensorRT name fgcli's code
    looks up (``"tensorrt"`` for the module), to hold against the real surface of ``version``."""
    ctx = _Context(version, cuda, num_dla_cores, log if log is not None else cuda.log, recorder)
    legacy = ctx.major < 10
    weakly_typed = ctx.major < 11
    shapes = {
        "Logger": (Logger,), "INetworkDefinition": (INetworkDefinition,), "ITensor": (ITensor,),
        "ParserError": (ParserError,) if legacy else (ParserError, _NamedParserError),
        "OnnxParser": (OnnxParser,), "IOptimizationProfile": (IOptimizationProfile,),
        "ITimingCache": (ITimingCache,),
        "IBuilderConfig": (IBuilderConfig, _CalibratingConfig) if weakly_typed else (IBuilderConfig,),
        "Builder": (Builder, _PrecisionQueries) if weakly_typed else (Builder,), "Runtime": (Runtime,),
        "ICudaEngine": (ICudaEngine, _BindingEngine) if legacy else (_AllocationStrategyEngine, ICudaEngine),
        "IExecutionContext": (IExecutionContext, _BindingContext) if legacy else (IExecutionContext,),
    }
    if weakly_typed:
        shapes["IInt8Calibrator"] = (IInt8Calibrator,)
    classes: dict[str, type] = {}
    for name, bases in shapes.items():
        classes[name] = type(name, bases, {"_ctx": ctx, "_classes": classes})
    if weakly_typed:
        classes["IInt8EntropyCalibrator2"] = type("IInt8EntropyCalibrator2", (classes["IInt8Calibrator"],),
                                                  {"_ctx": ctx, "_classes": classes})
    module = _RecordingModule("tensorrt")
    module._fake_ctx = ctx
    module.__version__ = version
    module.IHostMemory = FakeHostMemory
    for name, value in {**ctx.enums, **classes}.items():
        setattr(module, name, value)
    data_type = ctx.enums["DataType"]
    module.float32, module.float16, module.int8, module.int32 = (data_type.FLOAT, data_type.HALF,
                                                                 data_type.INT8, data_type.INT32)
    numpy_types = {data_type.FLOAT: np.float32, data_type.HALF: np.float16, data_type.INT8: np.int8,
                   data_type.INT32: np.int32}
    module.nptype = lambda trt_type: numpy_types[trt_type]
    return module
