"""The consoles fgcli prints with, made in one place so terminals and log files get the same rules.

rich hard-wraps at 80 columns when its output is not a terminal, which cut paths, commands and hints in
logs (CI, nohup, batch schedulers) so that neither grep nor copy-paste found them. Here text is never
hard-wrapped (``soft_wrap``: the terminal folds long lines, a log keeps them whole), and tables written to
a file or a pipe are laid out at ``LOG_WIDTH`` columns unless ``COLUMNS`` says otherwise. Progress
displays go to stderr, so stdout carries only data (``--json``) and results.

User text (class names such as ``[juvenile]``, paths, file contents) is printed as text, never read as rich
markup: a string given to these consoles, a table cell or a title is plain text (``markup=False``), and the
styling fgcli adds goes through :func:`styled`, which fills user text into it as text. Before, a class named
``[/]`` crashed a whole evaluation with rich's MarkupError and ``[bold]`` vanished from the output.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.text import Text

#: columns for tables when the output is not a terminal (rich's default there, 80, folds report tables)
LOG_WIDTH = 200


#: what a ``{}`` field of a template holds while the template's markup is parsed (a private-use character)
_FIELD = "\ue000"


def styled(template: str, *values: Any) -> Text:
    """``template`` is fgcli's own rich markup with ``{}`` fields; each value (user text) fills one as text,
    in the style around its field. The values are never parsed (escaping them would not do: rich's escape of a
    trailing backslash doubles it when no tag follows).

    >>> styled("[yellow]note:[/] {}", "[juvenile] has no images").plain
    'note: [juvenile] has no images'
    """
    parsed = Text.from_markup(template.format(*[_FIELD] * len(values)))
    fields = [i for i, char in enumerate(parsed.plain) if char == _FIELD]
    if not fields:
        return parsed
    result, remaining = Text(), iter(values)
    for piece in parsed.divide(sorted({cut for i in fields for cut in (i, i + 1)})):
        if piece.plain != _FIELD:
            result.append(piece)
            continue
        value = Text(str(next(remaining)), style=piece.style)
        for span in piece.spans:
            value.stylize(span.style)
        result.append(value)
    return result


class _SoftWrapConsole(Console):
    """Prints text soft-wrapped (never cut into lines by rich); tables and other renderables as rich lays
    them out (``soft_wrap`` would also stop it centring their titles)."""

    def print(self, *objects: Any, soft_wrap: bool | None = None, **options: Any) -> None:
        if soft_wrap is None:
            soft_wrap = all(isinstance(obj, (str, Text)) for obj in objects)
        super().print(*objects, soft_wrap=soft_wrap, **options)


def make_console(stderr: bool = False) -> Console:
    """A rich Console on stdout (or stderr) that never hard-wraps text and never reads strings as markup."""
    console = _SoftWrapConsole(stderr=stderr, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console
