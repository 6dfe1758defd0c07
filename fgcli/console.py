"""The consoles fgcli prints with, made in one place so terminals and log files get the same rules.

rich hard-wraps at 80 columns when its output is not a terminal, which cut paths, commands and hints in
logs (CI, nohup, batch schedulers) so that neither grep nor copy-paste found them. Here text is never
hard-wrapped (``soft_wrap``: the terminal folds long lines, a log keeps them whole), and tables written to
a file or a pipe are laid out at ``LOG_WIDTH`` columns unless ``COLUMNS`` says otherwise. Progress
displays go to stderr, so stdout carries only data (``--json``) and results.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

#: columns for tables when the output is not a terminal (rich's default there, 80, folds report tables)
LOG_WIDTH = 200


class _SoftWrapConsole(Console):
    """Prints text soft-wrapped (never cut into lines by rich); tables and other renderables as rich lays
    them out (``soft_wrap`` would also stop it centring their titles)."""

    def print(self, *objects: Any, soft_wrap: bool | None = None, **options: Any) -> None:
        if soft_wrap is None:
            soft_wrap = all(isinstance(obj, str) for obj in objects)
        super().print(*objects, soft_wrap=soft_wrap, **options)


def make_console(stderr: bool = False) -> Console:
    """A rich Console on stdout (or stderr) that never hard-wraps text."""
    console = _SoftWrapConsole(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console
