"""A training run's folder: never trained into by accident, never by two runs at once.

An out folder that already holds a run (``RUN_FILES``) is refused unless the new run continues it
(``resume``) or replaces it (``overwrite``). With ``overwrite`` nothing is deleted up front: metrics.jsonl,
last.pt, best.pt and config.json are each replaced atomically when the new run finishes its first epoch
(and the old run's interrupted.pt is removed then), so a run stopped before that leaves the old one whole.

While a run trains, ``OUT/.fgcli.lock`` (created with O_EXCL, holding the pid) keeps a second run out. A lock
left by a process that no longer runs (kill -9) is taken over with a note. (Two runs that find the same stale
lock within the same instant may both take it over: the lock guards against a second run started by hand or
by a scheduler, not against a race of microseconds.)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from fgcli.errors import FgcliError
from fgcli.utils import make_output_folder, output_error, process_runs, remove_stale_temporaries

#: the files that make a folder a run (written by the training loop)
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "interrupted.pt")
#: the files of a finished epoch: only a run with one of them has something to continue (or to lose)
EPOCH_FILES = ("metrics.jsonl", "last.pt", "best.pt")
LOCK_NAME = ".fgcli.lock"


def check_run_folder(out: str | Path, resume: bool, overwrite: bool,
                     note: Callable[[str], None] = lambda message: None) -> None:
    """Refuse to start a new run in a folder holding one, unless it is continued or replaced on purpose.

    A run stopped in its first epoch (config.json, perhaps interrupted.pt, no finished epoch) holds nothing
    ``--resume`` could continue, so a new run just starts there, with a note: refusing it sent the user in a
    circle (``--resume`` then said there is no last.pt)."""
    out = Path(out)
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found or resume or overwrite:
        return
    if not any(name in EPOCH_FILES for name in found):
        note(f"{out} holds a run stopped in its first epoch ({', '.join(found)}), with no epoch to continue: "
             "starting a new run there")
        return
    raise FgcliError(f"{out} already holds a training run ({', '.join(found)}); a new run would replace it",
                     hint="--resume continues that run; --overwrite starts a new one there (the old files are "
                          "replaced when its first epoch ends); or choose another --out")


@contextmanager
def run_lock(folder: str | Path, note: Callable[[str], None] = lambda message: None) -> Iterator[Path]:
    """Hold ``folder/.fgcli.lock`` for the block; ``note(message)`` hears of a stale lock taken over."""
    lock = make_output_folder(folder) / LOCK_NAME
    _acquire(lock, note)
    try:
        # a run killed while writing left a temporary that its pid, now perhaps another process's, would keep
        for path in remove_stale_temporaries(folder, locked_targets=RUN_FILES):
            note(f"removed {path.name}, left by a write that was killed")
        yield lock
    finally:
        if _lock_pid(lock) == os.getpid():  # never remove a lock another process took over
            lock.unlink(missing_ok=True)


def _acquire(lock: Path, note: Callable[[str], None]) -> None:
    for _ in range(3):  # a stale lock is removed, then created again; another process may win that race
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock.is_dir():  # not a lock fgcli wrote
                raise FgcliError(f"{lock} is a folder, where fgcli keeps the run's lock file",
                                 hint=f"remove or rename {lock}") from None
            pid = _lock_pid(lock)
            if pid is not None and process_runs(pid):
                raise FgcliError(
                    f"another fgcli run (pid {pid}) is training into {lock.parent} (its lock: {lock})",
                    hint=f"wait for it to end or choose another --out; if pid {pid} is no fgcli run, delete {lock}",
                ) from None
            holder = f"pid {pid}, which no longer runs" if pid is not None else "a process that wrote no pid"
            note(f"took over the lock {lock} left by {holder}")
            lock.unlink(missing_ok=True)
            continue
        except OSError as exc:  # a read-only or full folder
            raise output_error(lock, exc) from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise FgcliError(f"cannot take the lock {lock}: other runs keep creating it",
                     hint="start one run per --out folder")


def _lock_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None

