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


class MissingDependencyError(FgcliError):
    """An optional package is needed for this command."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed.",
            hint=f"pip install 'fgcli[{extra}]'  (or: pip install {package})",
        )
        self.package = package


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
