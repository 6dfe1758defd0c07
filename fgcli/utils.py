"""Small helpers shared across subpackages (no torch import here)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


#: a temporary file whose writer is gone, or older than this, is left over from a killed write
STALE_TMP_SECONDS = 6 * 3600
#: ``.<target name>.<writer pid>.<mkstemp's 8 random characters>.tmp``; earlier fgcli versions wrote no pid
_TMP_NAME = re.compile(r"^\.(?P<target>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")
#: the temporaries this process is writing now: any other one named after its pid is a dead writer's
_WRITING: set[str] = set()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A reader never sees a half-written file, even if the writer is killed. The temporary file is named after
    the writer's pid, so the next write into the folder removes what a killed writer left behind
    (:func:`remove_stale_temporaries`). A full disk or a read-only folder is an FgcliError naming the folder;
    the old file is left as it was.
    """
    path = check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    _WRITING.add(os.path.realpath(tmp))
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise output_error(path, exc) from None
    finally:
        _WRITING.discard(os.path.realpath(tmp))
        if tmp_path.exists():
            tmp_path.unlink()


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_WRITE_ERRNOS = (*_FULL_ERRNOS, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR)


def check_output_file(path: str | os.PathLike) -> Path:
    """Refuse an output file that is a folder or would lie under a file, before the work that fills it (else
    ``os.replace`` failed at the end with IsADirectoryError on the hidden temporary's name)."""
    path = Path(path)
    if path.is_dir():
        raise output_error(path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise output_error(path, NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    if not os.access(_existing_folder(path), os.W_OK):  # a read-only mount (EROFS even for root) or permissions
        raise output_error(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    return path


def _existing_folder(path: Path) -> Path:
    """The folder an output is created in: the nearest one of ``path``'s parents that exists."""
    return next((parent for parent in path.parents if parent.is_dir()), Path("."))


def make_output_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` an output folder; a file in the way or a folder that cannot be written is an FgcliError
    naming it (before, ``train --out FILE`` ended in a FileExistsError traceback)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(folder, exc) from None
    return folder


def output_error(path: Path, exc: OSError):
    """The FgcliError for an output ``path`` that could not be written (or created, for a folder)."""
    from fgcli.errors import FgcliError

    if exc.errno in _FULL_ERRNOS:
        return FgcliError(f"cannot write {path}: no space left in {path.parent} ({exc.strerror}); "
                          "the previous file, if any, is unchanged", hint="free some space there, or pass another --out")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FgcliError(f"cannot write {path}: the folder {_existing_folder(path)} is not writable ({exc.strerror})",
                          hint="pass an --out folder you can write to, or fix its permissions")
    if exc.errno == errno.EISDIR:
        return FgcliError(f"cannot write {path}: it is a folder, and a file of that name was asked for",
                          hint=f"pass --out a file name, e.g. {path / 'NAME'} (the command's help names the file type)")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        return FgcliError(f"cannot write {path}: {blocker} is a file, not a folder",
                          hint=f"pass another --out, or move {blocker} out of the way")
    return FgcliError(f"cannot write {path}: {exc}", hint="check the folder and the disk")


def remove_stale_temporaries(folder: str | os.PathLike, now: float | None = None,
                             locked_targets: Iterable[str] = ()) -> list[Path]:
    """Delete the temporary files of atomic writes that never finished (their writer was killed) in ``folder``.

    Stale: the pid in the name no longer runs, or is this process's while it writes no such file (a killed
    process whose pid came back, as a restarted container's does), or the file is older than
    ``STALE_TMP_SECONDS`` (a reused pid). A name without a pid (earlier fgcli versions) is removed only when
    old and its target file exists beside it, so a stranger's hidden ``.tmp`` file is never touched.
    ``locked_targets``: file names only the caller writes in ``folder`` (it holds the folder's lock), whose
    temporaries are stale whatever their pid (another process may have taken the dead writer's).
    Returns what was removed.
    """
    locked_targets = set(locked_targets)
    now = time.time() if now is None else now
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _TMP_NAME.match(entry.name)
            if not match or not entry.is_file(follow_symlinks=False) or os.path.realpath(entry.path) in _WRITING:
                continue
            pid = match.group("pid")
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
                if pid is not None and match.group("target") in locked_targets:
                    stale = True
                elif pid is None:
                    stale = old and os.path.exists(os.path.join(folder, match.group("target")))
                else:
                    stale = old or int(pid) == os.getpid() or not process_runs(int(pid))
                if stale:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:  # gone already, or not ours to remove
                continue
    return removed


def process_runs(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 tests without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (checkpoints and engines can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: str | os.PathLike, hint: str) -> dict[str, Any]:
    """A JSON file that must hold an object (fgcli's sidecars, config.json, source.json): unreadable, not JSON
    or another JSON value (a list) is an FgcliError naming the file, never an AttributeError further on.
    A missing file raises FileNotFoundError, for the caller to say what it was for."""
    from fgcli.errors import FgcliError

    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FgcliError(f"cannot read {path}: {exc}", hint=hint) from None
    if not isinstance(value, dict):
        raise FgcliError(f"cannot read {path}: it holds a JSON {type(value).__name__}, where fgcli writes an object",
                         hint=hint)
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def optional_import(module: str, extra: str, purpose: str):
    """Import an optional dependency, or raise a MissingDependencyError naming the module that is actually missing
    (``huggingface_hub`` for ``modelopt.torch``, not ``modelopt``) and the extra that brings it."""
    import importlib

    from fgcli.errors import MissingDependencyError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError.from_import_error(module, extra, purpose, exc) from exc


class DeferredInterrupt:
    """Ctrl-C or SIGTERM noted, to be raised where the caller is ready for it (``check()``); see
    ``sigint_deferred``."""

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal received

    def check(self) -> None:
        if self.requested is not None:
            raise _interrupt(self.requested)


def _interrupt(signum: int) -> KeyboardInterrupt:
    from fgcli.errors import Terminated

    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def sigint_deferred() -> Iterator[DeferredInterrupt]:
    """Within the block, a first Ctrl-C (or SIGTERM) only sets a flag that ``check()`` turns into
    KeyboardInterrupt (Terminated); a second one interrupts at once. A KeyboardInterrupt raised anywhere can land
    inside a library's ``with lock:`` (a thread pool's result wait) and come out as "RuntimeError: cannot release
    un-acquired lock" (seen in CI), which no ``except KeyboardInterrupt`` catches. Outside the main thread, where
    Python does not handle signals, it changes nothing."""
    state = DeferredInterrupt()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def note(signum, frame) -> None:
        if state.requested is not None:
            raise _interrupt(signum)
        state.requested = signum

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
