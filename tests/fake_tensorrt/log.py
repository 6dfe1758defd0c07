"""The call log shared by the fake tensorrt and CUDA modules."""

from __future__ import annotations

from enum import Enum


class CallLog(list):
    """``(call, *args)`` tuples in call order; enum arguments are recorded by member name."""

    def add(self, call: str, *args) -> None:
        self.append((call, *(a.name if isinstance(a, Enum) else a for a in args)))

    def calls(self, prefix: str = "") -> list[str]:
        return [entry[0] for entry in self if entry[0].startswith(prefix)]

    def args(self, call: str) -> list[tuple]:
        return [entry[1:] for entry in self if entry[0] == call]
