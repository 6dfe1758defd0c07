"""Atomic writes: all or nothing, with the permissions a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from fgcli.utils import atomic_path, write_text_atomic


def test_atomic_write_gets_umask_permissions_not_mkstemps_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.md", "hello\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == "hello\n"


def test_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_sigint_deferred_raises_only_at_check_and_at_once_on_a_second_ctrl_c():
    import os
    import signal

    import pytest

    from fgcli.utils import sigint_deferred

    with sigint_deferred() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: only noted
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handler is back
