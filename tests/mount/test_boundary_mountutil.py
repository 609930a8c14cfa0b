"""The harness's own guard: a mount's log with a traceback fails the mount test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import mountutil

LOG = """2026-12-02 18:40:00,123 INFO rdfs.fuse.mount: mounted /mnt (api http://127.0.0.1:1/rest/1.0)
2026-12-02 18:40:01,123 ERROR rdfs.fuse.operations: getattr(inode 1005) failed unexpectedly; answered EIO
Traceback (most recent call last):
  File "/work/rdfs/fuse/operations.py", line 139, in wrapper
    return await handler(self, *args)
sqlite3.OperationalError: database or disk is full
2026-12-02 18:40:02,123 INFO rdfs.fuse.mount: unmounted /mnt
"""


def test_tracebacks_are_found_with_their_message() -> None:
    (found,) = mountutil.unexpected_tracebacks(LOG)
    assert "getattr(inode 1005) failed unexpectedly" in found and "disk is full" in found
    assert "unmounted" not in found
    assert mountutil.unexpected_tracebacks(LOG, (r"database or disk is full",)) == []
    assert mountutil.unexpected_tracebacks(LOG, (r"something else",)) == [found]
    assert mountutil.unexpected_tracebacks(LOG.replace("Traceback (most recent call last):\n", "")) == []
    # A crash of the process itself (no log record around it) counts too.
    crash = "Traceback (most recent call last):\n  File \"x\", line 1\nKeyError: 'x'\n"
    assert mountutil.unexpected_tracebacks(crash) == [crash.rstrip("\n")]


def test_check_log_fails_a_mount_with_a_traceback(tmp_path: Path) -> None:
    log = tmp_path / "mnt.log"
    log.write_text(LOG)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    mounted = mountutil.Mounted(tmp_path / "mnt", tmp_path / "cache", log, process)
    with pytest.raises(AssertionError, match="1 unexpected traceback"):
        mountutil.check_log(mounted)
    mountutil.check_log(mounted, allowed=(r"OperationalError",))
