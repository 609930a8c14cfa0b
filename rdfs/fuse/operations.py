"""The pyfuse3 adapter: kernel requests in, namespace / reader / control calls out.

This module holds no policy of its own. Names and inodes come from :mod:`rdfs.tree.specs`,
bytes from :mod:`rdfs.data.reader`, the ``.rdfs/`` files from :mod:`rdfs.control.files`. Media
files are read-only and open with direct I/O: each application read reaches the reader as made,
which does all read-ahead and caching (``page_cache = true`` opens them with ``keep_cache``
instead: RD content never changes). Entries and attributes are cached by the kernel for
:data:`ENTRY_TIMEOUT` / :data:`ATTR_TIMEOUT`; sync changes reach it through invalidation.

Per inode the kernel holds, the adapter keeps only its lookup count and the stat last answered
(:mod:`rdfs.fuse.held`, flat arrays); everything else is read from the store when asked, so a
scan of the whole library costs no memory in proportion to the library.

Every handler passes through one boundary (:func:`_boundary`) that maps outcomes to errnos, so no
request can end the FUSE loop (pyfuse3 ends ``main()`` on any exception but ``FUSEError``, and an
ended loop unmounts: the media server then sees an empty library):

* ``pyfuse3.FUSEError`` passes; :class:`rdfs.outcome.FsError` becomes ``FUSEError(its errno)``;
* :class:`rdfs.api.errors.RDError` (network, API, a gone link) is EIO, logged at WARNING;
* anything else is logged once at ERROR with the handler and its arguments (a traceback the
  first time each kind of failure is seen), and answered EIO.

``BaseException`` that is not an ``Exception`` (trio's ``Cancelled``, ``KeyboardInterrupt``)
propagates.

Names from the kernel are decoded strictly as UTF-8: a name that is not UTF-8 (or is longer than
255 bytes) cannot exist here and is answered ENOENT (ENAMETOOLONG) before it reaches SQLite.
The errno table is in the README's "Errors and permissions".
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import math
import os
import stat
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pyfuse3
import trio

from rdfs.api.errors import RDError
from rdfs.data.links import LinkGone
from rdfs.data.reader import FileSource
from rdfs.fuse.held import HeldInodes, Stat
from rdfs.outcome import FsError
from rdfs.store.metadata import CONTROL_INODE, DOWNLOADS_INODE, TORRENTS_INODE, ChildStat
from rdfs.tree.specs import Node

if TYPE_CHECKING:
    from rdfs.control.files import Control, Handle
    from rdfs.data.reader import FileHandle, ReaderPool
    from rdfs.data.streaming import StreamingExtras
    from rdfs.events import TreeChange
    from rdfs.tree.specs import Namespace

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
# Directory listings are read from the store in pages of this many entries (one statement each);
# what a readdir answer cannot take waits in the open handle for the next one. A readdirplus
# answer holds up to 128 KiB: ~600 entries of ~200 bytes.
READDIR_PAGE = 1024
# A pyfuse3 built with patches/pyfuse3-no-opendir.patch (scripts/bootstrap builds it) lets opendir
# answer ENOSYS: the kernel then sends no more opendir or releasedir, keeps each listing in its
# page cache until a sync invalidates it, and readdir gets the directory's inode in place of a
# handle. A walk of the tree then costs two requests per directory instead of four, and a second
# walk one (a getattr: the kernel marks the access time stale after each listing it asks for).
# Stock pyfuse3 passes readdir no inode in that mode, so it keeps handles.
KERNEL_DIR_CACHE = bool(getattr(pyfuse3, "NO_OPENDIR_SUPPORT", False))
# Listings read ahead without a handle: no releasedir ends them, so the oldest are dropped.
LISTINGS_KEPT = 64
# Readdir cookies (the offset a listing resumes from): 1 after ".", 2 after "..", a child's inode
# + 2 after it. Every listing has "." and "..", so none is empty: the kernel drops a kept listing
# by dropping its pages (invalidate_inode), and an empty one has none to drop.
AFTER_DOT, AFTER_DOTDOT = 1, 2
NAME_MAX = 255  # bytes of one name (the kernel's limit too; statfs reports it)
# What the kernel's stat can carry: st_size is an off_t, times are int64 nanoseconds.
MAX_SIZE = 2**63 - 1
MAX_MTIME = 2**62 // 10**9  # seconds; far beyond any real date, far inside int64 nanoseconds
MAX_NLINK = 2**32 - 1
MAX_WARNED = 10_000  # inodes whose odd attributes were logged (once each); starts over beyond
MAX_FAILURES = 1_000  # kinds of unexpected failure whose traceback was logged; starts over beyond
# Handlers whose first argument is a file handle (the rest take an inode, a dir handle or a list).
_FH_HANDLERS = frozenset({"read", "write", "flush", "release", "fsync"})
# Handlers whose first argument is a directory handle.
_DIR_HANDLERS = frozenset({"readdir", "releasedir", "fsyncdir"})
# Handlers whose bytes arguments are data, never logged (only their length).
_DATA_HANDLERS = frozenset({"write", "setxattr"})


def _plain(row: ChildStat) -> bool:
    """Whether a store row is answered as it is (readdir, getattr): values to clamp and log, and
    the top directories' and ``.rdfs/``'s own modes, take the full node's path."""
    inode, _name, _kind, size, mtime, nlink, _in_torrent = row
    return (
        type(size) is int
        and 0 <= size <= MAX_SIZE
        and type(nlink) is int
        and 0 < nlink <= MAX_NLINK
        and isinstance(mtime, (int, float))
        and 0 <= mtime <= MAX_MTIME
        and inode not in (CONTROL_INODE, TORRENTS_INODE, DOWNLOADS_INODE)
    )


def _stat(attrs: pyfuse3.EntryAttributes) -> Stat:
    return Stat(attrs.st_mode, attrs.st_nlink, attrs.st_size, attrs.st_mtime_ns)


class BadName(Exception):
    """A name from the kernel that no entry here can have (not UTF-8)."""


def decode_name(raw: bytes) -> str:
    """The kernel's name as text: strict UTF-8 (``os.fsdecode`` would yield surrogates that
    SQLite cannot encode), at most :data:`NAME_MAX` bytes (ENAMETOOLONG)."""
    if len(raw) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName(raw) from None


def _describe(ops: Operations, handler: str, args: tuple[Any, ...]) -> str:
    """The arguments of a request, for a log line: inodes, handles (with the file's name), names
    (shortened, repr: they may be any bytes) and the length of data (never its content)."""
    parts: list[str] = []
    for index, arg in enumerate(args):
        if isinstance(arg, bool) or arg is None:
            continue
        if isinstance(arg, int):
            if index == 0 and handler in _FH_HANDLERS:
                opened = ops._open.get(arg)
                parts.append(
                    f"fh {arg}" + (f" ({opened.node.name!r})" if opened is not None else "")
                )
            elif index == 0 and handler in _DIR_HANDLERS and ops.kernel_dir_cache:
                parts.append(f"dir inode {arg}")
            elif index == 0 and handler in _DIR_HANDLERS:
                listed = ops._dirs.get(arg)
                parts.append(f"dir fh {arg}" + (f" (inode {listed.inode})" if listed else ""))
            elif index == 0:
                parts.append(f"inode {arg}")
            else:
                parts.append(str(arg))
        elif isinstance(arg, bytes):
            if handler in _DATA_HANDLERS and not (handler == "setxattr" and index == 1):
                parts.append(f"<{len(arg)} bytes>")
            else:
                parts.append(repr(arg[:80]) + ("..." if len(arg) > 80 else ""))
        elif isinstance(arg, list):
            parts.append(f"<{len(arg)} items>")
    return ", ".join(parts)


def _target(ops: Operations, handler: str, args: tuple[Any, ...]) -> str:
    """What a request is about, for a warning: the open file's name, else its arguments."""
    if handler in _FH_HANDLERS and args and isinstance(args[0], int):
        opened = ops._open.get(args[0])
        if opened is not None:
            return opened.node.name
    return _describe(ops, handler, args)


def _log_unexpected(ops: Operations, handler: str, args: tuple[Any, ...], exc: Exception) -> None:
    """One ERROR line per failed request, with its context; the traceback only the first time this
    kind of failure (handler, exception type, where it was raised) is seen: a broken cache under a
    media scan fails thousands of requests alike, and one traceback tells all of them."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    kind = (
        handler,
        type(exc).__qualname__,
        frame.filename if frame else "",
        frame.lineno if frame else 0,
    )
    first = kind not in ops._failures
    if first:
        if len(ops._failures) >= MAX_FAILURES:
            ops._failures.clear()
        ops._failures.add(kind)
    message = "%s(%s) failed unexpectedly; answered EIO"
    if first:
        log.error(message, handler, _describe(ops, handler, args), exc_info=exc)
    else:
        log.error(
            message + ": %s: %s (traceback logged before)",
            handler,
            _describe(ops, handler, args),
            type(exc).__name__,
            exc,
        )


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def _boundary(handler: _Handler) -> _Handler:
    """The one place every request passes: outcomes become errnos, nothing else leaves."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: Operations, *args: Any) -> Any:
        self.requests[name] += 1
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            if exc.reason:
                log.debug("%s(%s): %s", name, _describe(self, name, args), exc.reason)
            raise pyfuse3.FUSEError(exc.errno) from None
        except BadName:
            # Only names that must match an entry get here (lookup, unlink, rmdir, getxattr).
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR if "xattr" in name else errno.ENOENT) from None
        except RDError as exc:
            reason = f"link gone ({exc})" if isinstance(exc, LinkGone) else str(exc)
            log.warning("%s of %s failed: %s", name, _target(self, name, args), reason)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:
            _log_unexpected(self, name, args, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class Files(Protocol):
    """What the fs needs from the sync task: file lists of torrents fetched on demand."""

    async def ensure_files(self, torrent_id: str) -> None: ...


@dataclass
class OpenDir:
    """An open directory: its inode, and the entries read from the store but not yet answered
    (those after ``cursor``, the inode of the last entry answered), so one statement serves
    the ~4 KiB-128 KiB readdir answers a listing is made of. ``complete``: the last page read
    was the directory's last, so the kernel's closing readdir (the one answered empty) costs
    no statement."""

    inode: int
    parent: int  # for ".."
    cursor: int = 0
    pending: list[ChildStat] = field(default_factory=list)
    complete: bool = False

    def reread(self, cursor: int) -> None:
        """Forget what was read ahead: the next answer reads the store after ``cursor``."""
        self.cursor, self.pending, self.complete = cursor, [], False


@dataclass
class OpenFile:
    node: Node
    handle: FileHandle | None = None  # media file reader
    control: Handle | None = None  # control-file handle (rdfs.control.files)


class Operations(pyfuse3.Operations):
    """The kernel's requests. Every handler passes through :func:`_boundary` (applied below the
    class to each handler pyfuse3 knows), so each may raise ``FUSEError``, ``FsError``,
    ``RDError`` or fail unexpectedly without ending the FUSE loop."""

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
        kernel_dir_cache: bool = KERNEL_DIR_CACHE,
    ) -> None:
        super().__init__()
        self.extras = extras
        self.namespace = namespace
        self.files = files
        self.readers = readers
        self.control = control
        # The mount owner: every entry is theirs, and only they (and root) may change anything.
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.allow_delete = allow_delete
        # Direct I/O (the default): the kernel hands rdfs each read as the application made it,
        # with no readahead of its own and no copy into the page cache; rdfs's read-ahead and block
        # cache do that job. With the page cache, the kernel caches and reads ahead (mmap
        # MAP_SHARED works).
        self.page_cache = page_cache
        # See KERNEL_DIR_CACHE. Listings are then kept by inode in _listings, else by handle.
        self.kernel_dir_cache = kernel_dir_cache
        self._open: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._listings: dict[int, OpenDir] = {}
        # Requests answered, by handler, since the mount (``.rdfs/status``: ``fuse``).
        self.requests: Counter[str] = Counter()
        self._next_fh = 1
        # Inodes the kernel holds: lookup counts and the stat last answered, so an inode removed
        # upstream stays stat-able until the kernel forgets it (open files keep their node in
        # _open: they stay readable). Only what the kernel holds is invalidated.
        self._held = HeldInodes()
        # Inodes whose odd stored attributes were logged already (once each).
        self._warned: set[int] = set()
        # Requests of other users refused and logged already (see _refuse_other).
        self._refused: set[tuple[int | None, str]] = set()
        # Kinds of unexpected failure whose traceback was logged already (see _log_unexpected).
        self._failures: set[tuple[str, str, str, int | None]] = set()
        # Invalidations before the kernel's INIT fail (ENOSYS) and have nothing to drop anyway.
        self._kernel_ready = False
        # Set when the kernel's INIT is answered: the mount serves from then on.
        self.serving = trio.Event()

    def init(self) -> None:
        self._kernel_ready = True
        self.serving.set()

    def status(self) -> dict[str, Any]:
        """``.rdfs/status``'s ``fuse`` section: whether the kernel caches listings, and the
        requests answered by handler."""
        return {"kernel_dir_cache": self.kernel_dir_cache, "requests": dict(self.requests)}

    @property
    def open_files(self) -> int:
        """Handles the kernel holds open (media and control files)."""
        return len(self._open)

    @property
    def held(self) -> HeldInodes:
        """The inodes the kernel holds (lookup counts), for status and tests."""
        return self._held

    # --- helpers -----------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        if not 0 < inode <= MAX_SIZE:  # no SQLite integer: no such inode
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self._known(inode) or self._gone_node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _known(self, inode: int) -> Node | None:
        """The node of an inode in the store or the control layer, or of an open file (removed
        upstream, it stays readable through the handles already open)."""
        node = self.namespace.node(inode) or self._control_node(inode)
        if node is None:
            node = next((f.node for f in self._open.values() if f.node.inode == inode), None)
        return node

    def _gone_node(self, inode: int) -> Node | None:
        """An inode removed upstream that the kernel still holds, as its last stat said (so it
        stays stat-able, and empty if a directory, until the kernel forgets it)."""
        held = self._held.stat(inode)
        if held is None:
            return None
        return Node(
            inode=inode,
            parent=pyfuse3.ROOT_INODE,
            name="",
            kind="dir" if held.is_dir else "file",
            size=held.size,
            mtime=held.mtime_ns / 1e9,
            nlink=held.nlink,
        )

    def _control(self) -> Control:
        """The control layer of a control-file handle (one exists whenever such a handle does)."""
        if self.control is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return self.control

    def _control_node(self, inode: int) -> Node | None:
        """Files being copied into ``.rdfs/`` exist only in the control layer until closed."""
        return self.control.node(inode) if self.control is not None else None

    def _is_other(self, ctx: pyfuse3.RequestContext) -> bool:
        """A request of a user who is neither the mount owner nor root (only with --allow-other):
        they read media and listings, and nothing that changes the account or costs an API call
        beyond reading. Checked in the handlers besides the modes (``default_permissions``)."""
        uid = getattr(ctx, "uid", None)
        return uid not in (self.uid, 0)

    def _refuse_other(self, ctx: pyfuse3.RequestContext, what: str) -> None:
        """EACCES for another user; logged once per user and kind of request (no log flood)."""
        if not self._is_other(ctx):
            return
        uid = getattr(ctx, "uid", None)
        if (uid, what) not in self._refused:
            if len(self._refused) >= MAX_WARNED:
                self._refused.clear()
            self._refused.add((uid, what))
            log.info("%s refused for uid %s: only the mount owner may do that", what, uid)
        raise pyfuse3.FUSEError(errno.EACCES)

    def _dir_mode(self, node: Node) -> int:
        """Directories the owner changes are owner-writable, so the kernel's permission check
        (``default_permissions``) lets a non-root owner do it: ``.rdfs/`` (``cp x.torrent``), and
        with ``--allow-delete`` the torrents/downloads trees (``rm -r``)."""
        if node.inode == CONTROL_INODE:
            return 0o755
        if self.allow_delete and (
            node.inode in (TORRENTS_INODE, DOWNLOADS_INODE) or node.torrent_id
        ):
            return 0o755
        return 0o555

    def _warn_once(self, node: Node, what: str) -> None:
        if node.inode in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned.add(node.inode)
        log.warning(
            "entry %r (inode %d) has %s in the cache: shown clamped", node.name, node.inode, what
        )

    def _size(self, node: Node) -> int:
        size = node.size
        if isinstance(size, int) and 0 <= size <= MAX_SIZE:
            return size
        self._warn_once(node, f"size {size!r}")
        return min(max(size, 0), MAX_SIZE) if isinstance(size, int) else 0

    def _mtime_ns(self, node: Node) -> int:
        mtime = node.mtime
        if isinstance(mtime, (int, float)) and math.isfinite(mtime) and 0 <= mtime <= MAX_MTIME:
            return int(mtime * 1e9)
        self._warn_once(node, f"mtime {mtime!r}")
        if isinstance(mtime, (int, float)) and not math.isnan(mtime):
            return int(min(max(mtime, 0), MAX_MTIME) * 1e9)
        return 0

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """The stat of an entry. Whatever the store holds (a negative or absurd size or time),
        stat succeeds: odd values are clamped and logged once per inode."""
        if node.kind == "dir":
            mode = stat.S_IFDIR | self._dir_mode(node)
        elif self.control is not None and self.control.owns(node.inode):
            mode = stat.S_IFREG | self.control.mode(node.inode)
        else:
            mode = stat.S_IFREG | 0o444
        nlink = node.nlink
        nlink = nlink if isinstance(nlink, int) and 0 < nlink <= MAX_NLINK else 1
        return self._make_attrs(node.inode, mode, nlink, self._size(node), self._mtime_ns(node))

    def _row_attrs(self, row: ChildStat) -> pyfuse3.EntryAttributes:
        """The stat of a store row :func:`_plain` accepts (readdir's entries, getattr); what
        :meth:`_attrs` answers for its node, without building one."""
        inode, _name, kind, size, mtime, nlink, in_torrent = row
        if kind != "dir":
            mode = stat.S_IFREG | 0o444
        else:  # see _dir_mode: top directories and .rdfs/ never pass _plain
            mode = stat.S_IFDIR | (0o755 if self.allow_delete and in_torrent else 0o555)
        return self._make_attrs(inode, mode, nlink, size, int(mtime * 1e9))

    def _held_attrs(self, inode: int, held: Stat) -> pyfuse3.EntryAttributes:
        return self._make_attrs(inode, held.mode, held.nlink, held.size, held.mtime_ns)

    def _make_attrs(
        self, inode: int, mode: int, nlink: int, size: int, mtime_ns: int
    ) -> pyfuse3.EntryAttributes:
        """An answer from values already checked (see :meth:`_attrs`)."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.entry_timeout = ENTRY_TIMEOUT
        attr.attr_timeout = ATTR_TIMEOUT
        attr.st_mode = mode
        attr.st_nlink = nlink
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_size = size
        attr.st_blksize = IO_SIZE
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        return attr

    async def _ensure_files(self, torrent_id: str) -> None:
        """A torrent dir whose file list is not cached yet: fetch it now, first in line."""
        with trio.move_on_after(FILES_WAIT) as scope:
            try:
                await self.files.ensure_files(torrent_id)
            except RDError as exc:
                log.warning("file list of torrent %s unavailable: %s", torrent_id, exc)
        if scope.cancelled_caught:
            log.warning("file list of torrent %s still loading after %ss", torrent_id, FILES_WAIT)

    def _remember(self, attrs: pyfuse3.EntryAttributes) -> None:
        """The kernel took one lookup of the entry answered with ``attrs`` (lookup, create,
        each readdirplus entry): counted until it forgets, with the stat it was given."""
        self._held.looked_up(attrs.st_ino, _stat(attrs))

    def _holds(self, inode: int) -> bool:
        return inode == pyfuse3.ROOT_INODE or inode in self._held

    # --- namespace -----------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = decode_name(name)
        node: Node | None
        if text == ".":
            node = self._node(parent_inode)
        elif text == "..":
            parent = self._node(parent_inode)
            node = self._node(parent.parent or pyfuse3.ROOT_INODE)
        else:
            node = self._lookup_child(parent_inode, text)
            if node is None:
                parent = self._node(parent_inode)
                if parent.kind == "dir" and parent.files_pending and parent.torrent_id:
                    await self._ensure_files(parent.torrent_id)
                    node = self._lookup_child(parent_inode, text)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
        attrs = self._attrs(node)
        self._remember(attrs)
        return attrs

    def _lookup_child(self, parent_inode: int, name: str) -> Node | None:
        if not 0 < parent_inode <= MAX_SIZE:
            return None
        node = self.namespace.lookup(parent_inode, name)
        if node is None and self.control is not None:
            node = self.control.lookup(parent_inode, name)
        return node

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self._held.forget(inode, count)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if not 0 < inode <= MAX_SIZE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        row = self.namespace.stat_row(inode)  # readdir's slim row: the common case, one lookup
        owned = self.control is not None and self.control.owns(inode)  # control files' modes
        if row is not None and not owned and _plain(row):
            attrs = self._row_attrs(row)
            self._held.answered(inode, _stat(attrs))
            return attrs
        node = self._known(inode)
        if node is None:  # removed upstream: the kernel still holds it, answer as last time
            held = self._held.stat(inode)
            if held is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._held_attrs(inode, held)
        attrs = self._attrs(node)
        self._held.answered(inode, _stat(attrs))
        return attrs

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self.kernel_dir_cache:  # asked once: readdir checks the directory (see readdir)
            raise pyfuse3.FUSEError(errno.ENOSYS)
        torrent_id, parent = self._directory(inode)
        if torrent_id:  # a torrent's files are fetched before it is listed
            await self._ensure_files(torrent_id)
        fh = self._new_fh()
        self._dirs[fh] = OpenDir(inode, parent)
        return fh

    def _directory(self, inode: int) -> tuple[str | None, int]:
        """Check that ``inode`` is a directory (ENOENT, ENOTDIR). Returns the torrent whose file
        list must be fetched before it is listed (None if none), and the parent's inode."""
        head = self.namespace.head(inode) if 0 < inode <= MAX_SIZE else None
        if head is None:  # not in the store: the root, an upload, or removed upstream while held
            node = self._node(inode)
            kind, pending, torrent_id, parent = node.kind, False, None, node.parent
        else:
            kind, pending, torrent_id, parent = head
        if kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return (torrent_id if pending else None), parent or inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Entries come in inode order and the cursor is the last inode sent, so entries added or
        # removed by a sync between two readdir calls never make others repeat or vanish.
        if self.kernel_dir_cache:  # fh is the inode; a listing's start does what opendir would
            listed = self._listings.get(fh)
            if listed is None or 0 <= start_id <= AFTER_DOT:
                torrent_id, parent = self._directory(fh)
                if torrent_id and not start_id:
                    await self._ensure_files(torrent_id)
                listed = self._listings.pop(fh, None) or OpenDir(fh, parent)
                self._listings[fh] = listed  # (the newest last: the oldest are dropped)
                if len(self._listings) > LISTINGS_KEPT:
                    del self._listings[next(iter(self._listings))]
            opened = listed
        else:
            found = self._dirs.get(fh)
            if found is None:
                raise pyfuse3.FUSEError(errno.EBADF)
            opened = found
        after = start_id - AFTER_DOTDOT if start_id > AFTER_DOTDOT else 0  # the last child taken
        if after != opened.cursor or not start_id:  # a listing (re)started, or a seek
            opened.reread(after)
        # Checked once per answer: a store row whose values the fast path cannot answer as they
        # are (odd values to clamp, control files' own modes) is answered from its full node.
        fast = opened.inode != CONTROL_INODE
        dir_mode = stat.S_IFDIR | 0o555
        took = self._held.took
        reply = pyfuse3.readdir_reply
        answered = False
        if 0 <= start_id < AFTER_DOTDOT:  # the kernel takes no lookup of these two
            dots = ((b".", opened.inode, AFTER_DOT), (b"..", opened.parent, AFTER_DOTDOT))
            for name, inode, cookie in dots[start_id:]:
                if not reply(token, name, self._make_attrs(inode, dir_mode, 2, 0, 0), cookie):
                    return
                answered = True
        while True:
            if not opened.pending:
                if opened.complete:
                    if not answered:  # the kernel's closing readdir: this listing is done
                        self._listings.pop(opened.inode, None)
                    return
                page = self.namespace.child_stats(opened.inode, opened.cursor, READDIR_PAGE)
                opened.complete = len(page) < READDIR_PAGE
                page.reverse()  # answered from the end: pop() is O(1)
                opened.pending = page
            pending = opened.pending
            while pending:
                row = pending[-1]
                inode, text = row[0], row[1]
                try:
                    name = text.encode("utf-8")
                except UnicodeEncodeError:  # the tree never stores such a name; skip it
                    gone = self.namespace.node(inode)
                    if gone is not None:
                        self._warn_once(gone, "a name that is not UTF-8")
                    pending.pop()
                    opened.cursor = inode
                    continue
                if fast and _plain(row):
                    attrs = self._row_attrs(row)
                    if not reply(token, name, attrs, inode + AFTER_DOTDOT):
                        return
                    answered = True
                    took(inode, attrs.st_mode, attrs.st_nlink, attrs.st_size, attrs.st_mtime_ns)
                else:
                    node = self.namespace.node(inode)
                    if node is not None:
                        attrs = self._attrs(node)
                        if not reply(token, name, attrs, inode + AFTER_DOTDOT):
                            return
                        answered = True
                        self._remember(attrs)
                pending.pop()
                opened.cursor = inode

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        totals = self.namespace.totals()
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        data.f_blocks = (min(max(totals.bytes or 0, 0), MAX_SIZE) + BLOCK_SIZE - 1) // BLOCK_SIZE
        data.f_bfree = data.f_bavail = 0
        data.f_files = min(max(totals.entries or 0, 0), MAX_SIZE)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    # --- extended attributes ------------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        key = decode_name(name)
        value = node.xattrs.get(key)
        extras = self.extras
        if (
            value is None
            and extras is not None
            and key in extras.names
            and node.hoster_link
            and not node.link_offset
        ):
            # Secrets (transcode links) and API calls: the owner's only.
            self._refuse_other(ctx, f"getxattr {key}")
            try:
                value = await extras.get(key, node.hoster_link)  # RD's streaming data, on demand
            except RDError as exc:
                log.info("%s of %s unavailable: %s", key, node.name, exc)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode()

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [name.encode() for name in self._node(inode).xattrs]

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    # --- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        if self.control is not None and self.control.owns(inode):
            # Control files add, delete and cost API calls (status too): the owner's only.
            # pyfuse3's write() has no ctx, so this is where other users are turned away.
            self._refuse_other(ctx, f"open of .rdfs/{node.name}")
            control = self.control.open(inode, flags)
            fh = self._new_fh()
            self._open[fh] = OpenFile(node, control=control)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not node.hoster_link:
            log.warning("no link for %s (inode %d): file is not readable", node.name, inode)
            raise pyfuse3.FUSEError(errno.EIO)
        source = FileSource(
            key=str(node.inode),
            hoster_link=node.hoster_link,
            size=self._size(node),
            offset=node.link_offset,
            name=node.name,
        )
        handle = self.readers.open(source)
        fh = self._new_fh()
        self._open[fh] = OpenFile(node, handle=handle)
        return pyfuse3.FileInfo(fh=fh, direct_io=not self.page_cache, keep_cache=self.page_cache)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def read(self, fh: int, off: int, size: int) -> bytes:
        opened = self._open.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if size <= 0:
            return b""
        if opened.control is not None:
            return await self._control().read(opened.control, off, size)
        assert opened.handle is not None
        if off >= self._size(opened.node):
            return b""
        # RDError (a gone link too) is EIO at the boundary; pyfuse3 takes any buffer.
        return await opened.handle.read(off, size)  # type: ignore[return-value]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        opened = self._open.get(fh)
        if opened is None or opened.control is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return await self._control().write(opened.control, off, buf)

    async def flush(self, fh: int) -> None:
        opened = self._open.get(fh)
        if opened is not None and opened.control is not None:
            await self._control().flush(opened.control)

    async def release(self, fh: int) -> None:
        opened = self._open.pop(fh, None)
        if opened is None:
            return
        if opened.control is not None:
            await self._control().release(opened.control)
        elif opened.handle is not None:
            await opened.handle.close()

    # --- everything that would change the tree ---------------------------------------------------

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        try:
            text: str | None = decode_name(name)  # ENAMETOOLONG wherever it is
        except BadName:
            text = None
        if self.control is None or parent_inode != CONTROL_INODE:
            raise pyfuse3.FUSEError(errno.EROFS)
        self._refuse_other(ctx, "upload into .rdfs/")
        if text is None:  # no .torrent upload can be named so: the name is refused, not the fs
            raise pyfuse3.FUSEError(errno.EINVAL)
        if not self.control.accepts_create(parent_inode, text):
            raise pyfuse3.FUSEError(errno.EROFS)
        node, handle = self.control.create(parent_inode, text)
        fh = self._new_fh()
        self._open[fh] = OpenFile(node, control=handle)
        attrs = self._attrs(node)
        self._remember(attrs)
        return pyfuse3.FileInfo(fh=fh, direct_io=True), attrs

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        # The control layer decides what truncating its files means (an upload's O_TRUNC, truncate).
        if self.control is not None and self.control.owns(inode) and fields.update_size:
            self._refuse_other(ctx, f"truncate of .rdfs/{node.name}")
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
        await self._remove(parent_inode, decode_name(name), ctx)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, decode_name(name), ctx)

    async def _remove(self, parent_inode: int, name: str, ctx: pyfuse3.RequestContext) -> None:
        node = self.namespace.lookup(parent_inode, name) if 0 < parent_inode <= MAX_SIZE else None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._refuse_other(ctx, "removal")
        if not self.allow_delete or self.control is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        await self.control.remove_node(node)

    # --- invalidation from the sync task ------------------------------------------------------

    def invalidate(self, change: TreeChange) -> None:
        """Tell the kernel what a sync changed (called from the trio loop, never blocks).

        Only what the kernel holds is invalidated (entries and inodes it looked up and has not
        forgotten): pyfuse3 logs a failed invalidation at ERROR, and a sync removing thousands of
        torrents nobody listed would flood the log with them."""
        for opened in self._dirs.values():  # entries read ahead of a listing may have changed
            opened.reread(opened.cursor)
        self._listings.clear()  # (their next readdir goes on from its own cursor)
        if not self._kernel_ready:
            return
        # An entry the store says named only inodes the kernel does not hold (a new name, most
        # often) cannot be in the kernel's cache: skip it, so a sync adding thousands of entries
        # queues no notification at all.
        named = {(parent, name) for parent, name, _ in change.named}
        held = {(parent, name) for parent, name, inode in change.named if self._holds(inode)}
        for parent, name in change.entries:
            if not self._holds(parent):  # no entry of it can be in the kernel's cache
                continue
            if (parent, name) in named and (parent, name) not in held:
                continue
            try:
                pyfuse3.invalidate_entry_async(parent, name.encode("utf-8"), ignore_enoent=True)
            except (OSError, UnicodeEncodeError) as exc:
                log.debug("invalidate %d/%r: %s", parent, name, exc)
        listed = set(change.dirs)
        for inode in change.inodes:
            if not self._holds(inode):
                continue
            try:
                # A directory's listing, cached by the kernel (see KERNEL_DIR_CACHE), goes too.
                pyfuse3.invalidate_inode(inode, attr_only=inode not in listed)
            except OSError as exc:  # ENOENT: the kernel forgot it meanwhile, nothing to drop
                log.debug("invalidate inode %d: %s", inode, exc)


# The boundary, on every handler pyfuse3 may call (also those only the base class answers).
HANDLERS = tuple(
    name for name, value in vars(pyfuse3.Operations).items() if inspect.iscoroutinefunction(value)
)
for _name in HANDLERS:
    setattr(Operations, _name, _boundary(getattr(Operations, _name)))
del _name
