"""The consoles fgcli prints with, made in one place so terminals and log files get the same rules.

rich hard-wraps at 80 columns when its output is not a terminal, which cut paths, commands and hints in
logs (CI, nohup, batch schedulers) so that neither grep nor copy-paste found them. Here text is never
hard-wrapped (``soft_wrap``: the terminal folds long lines, a log keeps them whole), and tables written to
a file or a pipe are laid out at ``LOG_WIDTH`` columns unless ``COLUMNS`` says otherwise. Progress
displays go to stderr, so stdout carries only data (``--json``) and results.
"""

from __future__ import annotations

import os

from rich.console import Console

#: columns for tables when the output is not a terminal (rich's default there, 80, folds report tables)
LOG_WIDTH = 200


def make_console(stderr: bool = False) -> Console:
    """A rich Console on stdout (or stderr) that never hard-wraps text."""
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console
