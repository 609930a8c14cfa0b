"""Outcomes the filesystem answers with an errno, raised below the FUSE layer.

Only the FUSE layer (:mod:`rdfs.fuse`) talks to the kernel and turns outcomes into its answers;
the layers under it (control files, namespace) raise :class:`FsError` with the errno they mean,
and ``rdfs.fuse.operations`` maps it.
"""

from __future__ import annotations

import os


class FsError(Exception):
    """The request is answered with ``errno``; ``reason`` is for the log, never for the kernel."""

    def __init__(self, errno: int, reason: str = "") -> None:
        super().__init__(reason or os.strerror(errno))
        self.errno = errno
        self.reason = reason
