"""User-facing errors: each says what went wrong, where, and what to do about it."""

from __future__ import annotations


class FgcliError(Exception):
    """An error the CLI prints without a traceback.

    ``hint`` tells the user how to fix it; the CLI prints it on its own line.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class DataError(FgcliError):
    """A dataset file is missing, malformed or unreadable."""


#: pip's name for an import name, where the two differ
DISTRIBUTION_OF_MODULE = {
    "modelopt": "nvidia-modelopt", "tensorrt_rtx": "tensorrt-rtx", "cuda": "cuda-python",
    "onnx_graphsurgeon": "onnx-graphsurgeon", "onnx_ir": "onnx-ir", "PIL": "pillow", "yaml": "PyYAML",
    "google": "protobuf", "sklearn": "scikit-learn",
}
#: the fgcli extra that installs an import name (a module imported outside ``optional_import``; cli.main)
EXTRA_OF_MODULE = {
    "torch": "torch", "torchvision": "torch", "scipy": "torch", "onnx": "onnx", "onnxruntime": "onnx",
    "onnxslim": "onnx", "modelopt": "quant", "onnx_graphsurgeon": "quant", "onnxscript": "quant", "lief": "quant",
    "ml_dtypes": "quant", "huggingface_hub": "quant", "requests": "quant", "matplotlib": "report", "timm": "timm",
    "tensorboard": "tensorboard", "tensorrt": "trt", "cuda": "trt", "tensorrt_rtx": "rtx",
}


def distribution_of(module: str) -> str:
    """``modelopt.torch`` -> ``nvidia-modelopt``: what ``pip install`` needs for an import name."""
    top = module.split(".")[0]
    return DISTRIBUTION_OF_MODULE.get(top, top)


def missing_module_of(exc: BaseException) -> str | None:
    """The module an import failed to find: the ``.name`` of the ModuleNotFoundError in ``exc``'s chain.

    Libraries re-raise it without the name (modelopt.onnx raises a plain ImportError "... Please install optional
    [onnx] dependencies"), so the causes are searched too. None when the import broke for another reason.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


class MissingDependencyError(FgcliError):
    """An optional package is needed for this command.

    ``package`` is what is missing; ``importing``, when given, the module the command imported, which is installed
    but imports ``package`` itself (``modelopt.torch`` needs ``huggingface_hub``).
    """

    def __init__(self, package: str, extra: str, purpose: str, importing: str | None = None):
        install = distribution_of(package)
        if importing is None:
            message = f"{purpose} needs the Python package '{package}', which is not installed."
            hint = f"pip install 'fgcli[{extra}]'  (or: pip install {install})"
        else:
            message = (f"{purpose} needs {importing}: {importing.split('.')[0]} is installed, but {importing} needs "
                       f"the Python package '{package}', which is not installed.")
            hint = f"pip install {install}  (or: pip install 'fgcli[{extra}]', which brings it)"
        super().__init__(message, hint=hint)
        self.package = package
        self.extra = extra

    @classmethod
    def from_import_error(cls, module: str, extra: str, purpose: str, exc: ImportError) -> FgcliError:
        """The error for ``import module`` failing with ``exc``: the package that is missing, named as itself.

        An import that fails for another reason (a broken shared library, a version mismatch) is an FgcliError
        quoting the failure: the package is there, reinstalling it is the fix.
        """
        missing = missing_module_of(exc)
        if missing is None:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return FgcliError(f"{purpose} needs {module}, which is installed but fails to import: {first_line}",
                              hint=f"reinstall it: pip install --force-reinstall {distribution_of(module)}  "
                                   f"(or: pip install --force-reinstall 'fgcli[{extra}]')")
        missing_top = missing.split(".")[0]
        importing = None if missing_top == module.split(".")[0] else module
        return cls(missing_top, extra, purpose, importing=importing)


#: the exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED_EXIT_CODE = 130
#: the exit status of a training stopped by SIGTERM (128 + SIGTERM: docker stop, Slurm preemption, timeout)
TERMINATED_EXIT_CODE = 143


class Interrupted(FgcliError):
    """Ctrl-C (or SIGTERM, ``exit_code`` 143) stopped a command; the message says what was kept (a partial CSV,
    interrupted.pt)."""

    exit_code = INTERRUPTED_EXIT_CODE

    def __init__(self, message: str, hint: str | None = None, exit_code: int = INTERRUPTED_EXIT_CODE):
        super().__init__(message, hint)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, Slurm preemption, timeout), raised where Ctrl-C's KeyboardInterrupt would be: a
    command keeps what it has, as for Ctrl-C, and exits with TERMINATED_EXIT_CODE. Schedulers send it and wait
    before they kill."""
