"""The pyfuse3 adapter: kernel requests in, namespace / reader / control calls out.

This module holds no policy of its own. Names and inodes come from :mod:`rdfs.tree`, bytes from
:mod:`rdfs.reader`, the ``.rdfs/`` files from :mod:`rdfs.control`; errors become
``pyfuse3.FUSEError(errno)``. Media files are read-only; the kernel page cache is kept across
opens (RD content never changes) and sync changes reach the kernel through invalidation.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pyfuse3
import trio

from rdfs.api.errors import RDError
from rdfs.links import LinkGone
from rdfs.outcome import FsError
from rdfs.reader import FileSource
from rdfs.tree import Node

if TYPE_CHECKING:
    from rdfs.control import Control
    from rdfs.reader import FileHandle, ReaderPool
    from rdfs.streaming import StreamingExtras
    from rdfs.sync import TreeChange
    from rdfs.tree import Namespace

log = logging.getLogger(__name__)

# Kernel cache lifetimes. Sync pushes invalidations for what it changes, so these only bound how
# long a missed invalidation could show stale data.
ENTRY_TIMEOUT = 60.0
ATTR_TIMEOUT = 60.0
# How long a lookup/readdir of a torrent whose file list is not cached waits for it.
FILES_WAIT = 30.0
BLOCK_SIZE = 4096  # statfs units
# st_blksize: the buffer stdio, Python and other buffered readers use. Under direct I/O each of
# their reads is a FUSE round trip, so it should be large (coreutils already reads 128 KiB), but
# below the reader's STREAM_ON_SEEK, so one buffered read of a file's head starts no read-ahead.
IO_SIZE = 128 * 1024
# Directory listings are answered in pages of this many entries.
READDIR_PAGE = 512


class Files(Protocol):
    """What the fs needs from the sync task: file lists of torrents fetched on demand."""

    async def ensure_files(self, torrent_id: str) -> None: ...


@dataclass
class OpenFile:
    node: Node
    handle: FileHandle | None = None  # media file reader
    control: object | None = None  # control-file handle (rdfs.control)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        namespace: Namespace,
        files: Files,
        readers: ReaderPool,
        control: Control | None = None,
        *,
        uid: int | None = None,
        gid: int | None = None,
        allow_delete: bool = False,
        extras: StreamingExtras | None = None,
        page_cache: bool = False,
    ) -> None:
        super().__init__()
        self.extras = extras
        self.namespace = namespace
        self.files = files
        self.readers = readers
        self.control = control
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.allow_delete = allow_delete
        # Direct I/O (the default): the kernel hands rdfs each read as the application made it, with
        # no readahead of its own and no copy into the page cache; rdfs's read-ahead and block cache
        # do that job. With the page cache, the kernel caches and reads ahead (mmap MAP_SHARED works).
        self.page_cache = page_cache
        self._open: dict[int, OpenFile] = {}
        self._next_fh = 1
        # Nodes kept alive for the kernel: a file removed upstream stays stat-able and readable
        # through handles that are already open until the kernel forgets the inode.
        self._lookups: dict[int, int] = {}
        self._retained: dict[int, Node] = {}
        # Invalidations before the kernel's INIT fail (ENOSYS) and have nothing to drop anyway.
        self._kernel_ready = False

    def init(self) -> None:
        self._kernel_ready = True

    @property
    def open_files(self) -> int:
        """Handles the kernel holds open (media and control files)."""
        return len(self._open)

    # --- helpers -----------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.namespace.node(inode) or self._control_node(inode) or self._retained.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _control_node(self, inode: int) -> Node | None:
        """Files being copied into ``.rdfs/`` exist only in the control layer until closed."""
        return self.control.node(inode) if self.control is not None else None

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.generation = 0
        attr.entry_timeout = ENTRY_TIMEOUT
        attr.attr_timeout = ATTR_TIMEOUT
        if node.kind == "dir":
            attr.st_mode = stat.S_IFDIR | 0o555
        elif self.control is not None and self.control.owns(node.inode):
            attr.st_mode = stat.S_IFREG | self.control.mode(node.inode)
        else:
            attr.st_mode = stat.S_IFREG | 0o444
        attr.st_nlink = node.nlink
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_size = node.size
        attr.st_blksize = IO_SIZE
        attr.st_blocks = (node.size + 511) // 512
        mtime_ns = int(node.mtime * 1e9)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        return attr

    async def _ensure_files(self, node: Node) -> None:
        """A torrent dir whose file list is not cached yet: fetch it now, first in line."""
        if node.kind != "dir" or not node.files_pending or not node.torrent_id:
            return
        with trio.move_on_after(FILES_WAIT) as scope:
            try:
                await self.files.ensure_files(node.torrent_id)
            except RDError as exc:
                log.warning("file list of torrent %s unavailable: %s", node.torrent_id, exc)
        if scope.cancelled_caught:
            log.warning("file list of torrent %s still loading after %ss", node.torrent_id, FILES_WAIT)

    def _remember(self, node: Node) -> None:
        self._lookups[node.inode] = self._lookups.get(node.inode, 0) + 1
        self._retained[node.inode] = node

    # --- namespace -----------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        if text == ".":
            node = self._node(parent_inode)
        elif text == "..":
            parent = self._node(parent_inode)
            node = self._node(parent.parent or pyfuse3.ROOT_INODE)
        else:
            node = self._lookup_child(parent_inode, text)
            if node is None:
                parent = self._node(parent_inode)
                if parent.files_pending:
                    await self._ensure_files(parent)
                    node = self._lookup_child(parent_inode, text)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
        self._remember(node)
        return self._attrs(node)

    def _lookup_child(self, parent_inode: int, name: str) -> Node | None:
        node = self.namespace.lookup(parent_inode, name)
        if node is None and self.control is not None:
            node = self.control.lookup(parent_inode, name)
        return node

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            left = self._lookups.get(inode, 0) - count
            if left > 0:
                self._lookups[inode] = left
            else:
                self._lookups.pop(inode, None)
                if not any(f.node.inode == inode for f in self._open.values()):
                    self._retained.pop(inode, None)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if node.kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._ensure_files(node)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Entries come in inode order and the cursor is the last inode sent, so entries added or
        # removed by a sync between two readdir calls never make others repeat or vanish.
        cursor = start_id
        while True:
            batch = self.namespace.children(fh, after=cursor, limit=READDIR_PAGE)
            if not batch:
                return
            for node in batch:
                if not pyfuse3.readdir_reply(token, os.fsencode(node.name), self._attrs(node), node.inode):
                    return
                self._remember(node)
                cursor = node.inode

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        totals = self.namespace.totals()
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        data.f_blocks = (totals.bytes + BLOCK_SIZE - 1) // BLOCK_SIZE
        data.f_bfree = data.f_bavail = 0
        data.f_files = totals.entries
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # --- extended attributes ------------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        key = os.fsdecode(name)
        value = node.xattrs.get(key)
        extras = self.extras
        if value is None and extras is not None and key in extras.names and node.hoster_link and not node.link_offset:
            try:
                value = await extras.get(key, node.hoster_link)  # RD's streaming data, on demand
            except RDError as exc:
                log.info("%s of %s unavailable: %s", key, node.name, exc)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode()

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [name.encode() for name in self._node(inode).xattrs]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    # --- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = self._next_fh
        self._next_fh += 1
        if self.control is not None and self.control.owns(inode):
            self._open[fh] = OpenFile(node, control=self.control.open(inode, flags))
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not node.hoster_link:
            log.warning("no link for %s (inode %d): file is not readable", node.name, inode)
            raise pyfuse3.FUSEError(errno.EIO)
        source = FileSource(
            key=str(node.inode), hoster_link=node.hoster_link, size=node.size, offset=node.link_offset, name=node.name
        )
        self._open[fh] = OpenFile(node, handle=self.readers.open(source))
        self._retained[inode] = node
        return pyfuse3.FileInfo(fh=fh, direct_io=not self.page_cache, keep_cache=self.page_cache)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        opened = self._open.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if opened.control is not None:
            return await self.control.read(opened.control, off, size)
        assert opened.handle is not None
        try:
            return await opened.handle.read(off, size)
        except LinkGone as exc:
            log.error("read of %s failed: link gone (%s)", opened.node.name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except RDError as exc:
            log.error("read of %s failed: %s", opened.node.name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        opened = self._open.get(fh)
        if opened is None or opened.control is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return await self.control.write(opened.control, off, buf)

    async def flush(self, fh: int) -> None:
        opened = self._open.get(fh)
        if opened is not None and opened.control is not None:
            await self.control.flush(opened.control)

    async def release(self, fh: int) -> None:
        opened = self._open.pop(fh, None)
        if opened is None:
            return
        if opened.control is not None:
            await self.control.release(opened.control)
        elif opened.handle is not None:
            await opened.handle.close()
        inode = opened.node.inode
        if inode not in self._lookups and not any(f.node.inode == inode for f in self._open.values()):
            self._retained.pop(inode, None)

    # --- everything that would change the tree ---------------------------------------------------

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.control is None or not self.control.accepts_create(parent_inode, os.fsdecode(name)):
            raise pyfuse3.FUSEError(errno.EROFS)
        node, handle = self.control.create(parent_inode, os.fsdecode(name))
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = OpenFile(node, control=handle)
        self._remember(node)
        return pyfuse3.FileInfo(fh=fh, direct_io=True), self._attrs(node)

    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        # The control layer decides what truncating its files means (an upload's O_TRUNC, truncate).
        if self.control is not None and self.control.owns(inode) and fields.update_size:
            self.control.truncate(inode, attr.st_size)
            return self._attrs(node)
        if fields.update_size or fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self._attrs(node)  # atime/mtime updates are ignored

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, os.fsdecode(name))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, os.fsdecode(name))

    async def _remove(self, parent_inode: int, name: str) -> None:
        node = self.namespace.lookup(parent_inode, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not self.allow_delete or self.control is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        await self.control.remove_node(node)

    # --- invalidation from the sync task ------------------------------------------------------

    def invalidate(self, change: TreeChange) -> None:
        """Tell the kernel what a sync changed (called from the trio loop, never blocks)."""
        if not self._kernel_ready:
            return
        for parent, name in change.entries:
            try:
                pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
            except OSError as exc:
                log.debug("invalidate %d/%s: %s", parent, name, exc)
        for inode in change.inodes:
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError as exc:  # ENOENT: the kernel does not know it, nothing to drop
                log.debug("invalidate inode %d: %s", inode, exc)


# Stopgap until the FUSE boundary's single wrapper lands: the control layer's FsError as the
# kernel's errno (the boundary's wrapper supersedes this; drop it when merging that).
def _answer_fs_errors(handler):  # type: ignore[no-untyped-def]
    @functools.wraps(handler)
    async def answer(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await handler(*args, **kwargs)
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    return answer


for _name in ("open", "read", "write", "flush", "release", "create", "setattr", "unlink", "rmdir"):
    setattr(Operations, _name, _answer_fs_errors(getattr(Operations, _name)))
