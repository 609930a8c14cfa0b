"""The control files in ``MOUNTPOINT/.rdfs/``: add, delete, refresh, status, and ``.torrent`` drops.

They behave like files, and nothing a writer does makes it wait for RD:

* ``add``: each line a magnet URI or info hash. ``delete``: each line a torrent id or a path
  relative to the mount (``torrents/<name>``, ``downloads/<name>``). A *batch* is everything one
  open file receives until its last close (``release``), over any number of ``write()`` calls.
  Each complete line is checked when the write carrying it arrives: a bad line fails that write
  with EINVAL, the whole batch is dropped, and every later write (and ``close()``) of that open
  file fails with EINVAL too. A last line without a newline is checked at close: ``close()``
  reports EINVAL for it (the line is not cut: a duplicate's close leaves the batch going on), and
  the last close drops the batch. At the last close a good batch is queued and the call returns;
  the Control's worker (``run``) sends it to RD, one batch at a time, rolling back an add batch
  that fails half-way. Queue, progress, results and errors are in ``status``.
* ``refresh``: any write syncs now. ``status``: JSON, built when it is read from offset 0.
* ``cp x.torrent .rdfs/``: the file lives here in memory while it is open (``O_TRUNC`` and
  ``truncate`` work); at its last close it is checked (a broken file fails ``close()`` with
  EINVAL) and queued for ``addTorrent``, and it disappears. One upload may hold at most
  ``MAX_UPLOAD_BYTES`` (EFBIG), all uploads together (open or queued) ``upload_memory`` (ENOSPC):
  in memory rather than spooled to the cache's disk, which a writer could otherwise fill.

Added torrents are watched until RD finished them, then a sync shows them at once. Deletions are
removed from the tree as soon as RD confirmed them. Errors are raised as ``FsError``; only the
FUSE layer turns them into the kernel's answers.
"""

from __future__ import annotations

import codecs
import collections
import errno
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import trio

from rdfs.api.client import RDClient
from rdfs.api.errors import RDError, UnknownResource
from rdfs.api.models import FAILED_STATUSES
from rdfs.control.actions import (
    ActionError,
    ActionFailed,
    InvalidInput,
    Target,
    TruncatedTorrent,
    add_items,
    check_policy,
    choose_files,
    delete_targets,
    looks_like_id,
    parse_lines,
    parse_magnet,
    parse_torrent_file,
)
from rdfs.events import UPLOAD_GONE, ChangeBus, StatusBoard
from rdfs.outcome import FsError
from rdfs.store import keys
from rdfs.store.metadata import (
    CONTROL_INODE,
    DOWNLOADS_DIR,
    DOWNLOADS_INODE,
    FIRST_DYNAMIC_INODE,
    TORRENTS_DIR,
    TORRENTS_INODE,
    Cache,
    Changes,
    EntrySpec,
    Scope,
)
from rdfs.sync.selection import select_when_ready
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace, Node, download_specs

log = logging.getLogger(__name__)

# name -> permission bits
CONTROL_FILES = {"add": 0o644, "delete": 0o644, "refresh": 0o644, "status": 0o444}
UPLOAD_SUFFIX = ".torrent"
MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # one upload; far above any real .torrent (EFBIG beyond)
UPLOAD_MEMORY = 64 * 1024 * 1024  # all uploads open or queued, together (ENOSPC beyond)
MAX_LINE_BYTES = 1024 * 1024  # an unterminated line longer than this is refused
MAX_BATCH_BYTES = 8 * 1024 * 1024  # what one open add/delete file may receive (EFBIG beyond)
MAX_QUEUED_ITEMS = 10_000  # lines and uploads waiting for the worker (ENOSPC beyond)
MAX_RECENT = 20
REMOVE_TIMEOUT = 30.0  # an rm with --allow-delete that RD has not answered by then fails with EIO
MAX_LISTED_JOBS = 20  # queued batches listed one by one in status
WATCH_INTERVAL = 2.0  # seconds between checks of torrents added here until RD finished them
TRAFFIC_TTL = 300.0  # status re-reads /traffic at most this often
TRAFFIC_TIMEOUT = 3.0  # and never waits longer than this for it
PROBE_TTL = 5.0  # status checks that the API answers at most this often
PROBE_TIMEOUT = 2.0  # an API that has not answered /time by then counts as unreachable

# What an unterminated line may still grow into (see Control._hopeless).
_HEX_PREFIX = re.compile(r"[0-9a-fA-F]{1,40}")
_BASE32_PREFIX = re.compile(r"[A-Za-z2-7]{1,32}")
_ID_PREFIX = re.compile(r"[A-Z2-7]{1,26}")
_DELETE_PREFIXES = (f"{TORRENTS_DIR}/", f"{DOWNLOADS_DIR}/", ".")


@dataclass
class Upload:
    """A ``.torrent`` being copied into ``.rdfs/``: it exists while any handle has it open."""

    node: Node
    data: bytearray = field(default_factory=bytearray)
    opens: int = 1
    over_bound: bool = False  # a write hit the total bound already (noted once, not per write)


@dataclass
class Handle:
    """One open control file (or in-flight ``.torrent`` upload): the unit of a batch."""

    kind: str  # a CONTROL_FILES name, or "upload"
    inode: int
    pending: bytearray = field(default_factory=bytearray)  # add/delete: the unterminated last line
    items: list[Any] = field(default_factory=list)  # add: Magnets; delete: Targets checked so far
    unverified: list[str] = field(default_factory=list)  # delete: ids to confirm upstream first
    lines: int = 0  # add/delete: lines received so far (for messages)
    received: int = 0  # add/delete: bytes received so far
    refused: tuple[int, str] | None = (
        None  # add/delete: (errno, reason) of a refused batch, repeated
    )
    snapshot: bytes = b""  # status: the JSON being read
    upload: Upload | None = None


@dataclass
class Job:
    """A batch waiting for (or being run by) the worker."""

    action: Literal["add", "delete"]
    source: str  # the control file it came from, for status
    items: list[Any]  # add: Magnets / TorrentFiles; delete: Targets
    queued_at: float
    unverified: list[str] = field(default_factory=list)  # delete: ids the cache did not know
    memory: int = 0  # upload bytes it holds (counted against upload_memory)
    done: int = 0
    started_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "source": self.source,
            "items": len(self.items),
            "done": self.done,
            "queued_at": self.queued_at,
            "started_at": self.started_at,
        }


@dataclass
class _Checked:
    """What a dry run over some lines of a batch found."""

    items: list[Any] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    lines: int = 0


class Control:
    """The ``.rdfs/`` directory: the handlers fs.py calls for it, and the worker behind them."""

    def __init__(
        self,
        namespace: Namespace,
        syncer: Syncer,
        client: RDClient,
        cache: Cache,
        *,
        bus: ChangeBus | None = None,
        board: StatusBoard | None = None,
        allow_delete: bool = False,
        selection: str = "all",
        watch_interval: float = WATCH_INTERVAL,
        upload_memory: int = UPLOAD_MEMORY,
    ) -> None:
        """What the control files change in the tree goes on ``bus`` (deletes, an upload's name
        gone); the queue is the ``queue`` section of ``board``, and ``status()`` shows the whole
        board. ``run`` is the worker that sends queued batches to RD and watches added torrents
        (without it, batches wait)."""
        self.namespace = namespace
        self.syncer = syncer
        self.client = client
        self.cache = cache
        self.bus = bus if bus is not None else ChangeBus(namespace.path)
        self.board = board if board is not None else StatusBoard()
        self.allow_delete = allow_delete
        self.selection = check_policy(selection)
        self.watch_interval = watch_interval
        self.upload_memory = upload_memory
        self._files = self._ensure_entries()  # inode -> control file name
        self._uploads: dict[int, Upload] = {}
        self._upload_bytes = 0  # held by open uploads and queued upload jobs
        self._next_upload = 5  # inodes 5 .. FIRST_DYNAMIC_INODE-1 belong to the control layer
        self._lock = trio.Lock()  # one batch at a time: duplicate checks see the previous batch
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_items = 0
        self._current: Job | None = None
        self._finished = 0  # batches the worker has run, whatever their outcome
        self._work = trio.Event()  # set when a job is queued
        self._added_hashes: dict[str, str] = {}  # added by this process, maybe not synced yet
        self._watch: dict[str, None] = {}
        self._watch_more = trio.Event()  # set when a torrent is to be watched
        self._errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECENT)
        self._actions: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECENT)
        self._traffic: dict[str, Any] | None = None
        self._traffic_at = -TRAFFIC_TTL
        self._reachable: bool | None = None
        self._probe_at = -PROBE_TTL
        self.board.register("queue", self.queue_status)

    def _ensure_entries(self) -> dict[int, str]:
        """Put the control files into ``.rdfs/`` of the tree (idempotent)."""
        now = time.time()
        specs = [
            EntrySpec(keys.control(name), keys.CONTROL, name, kind="file", mtime=now)
            for name in CONTROL_FILES
        ]
        diff = self.cache.diff_entries(Scope.control_files(), specs)
        # Only additions and removals matter; an mtime change alone is not worth a write.
        diff.upsert = [s for s in diff.upsert if s.key not in diff.existing]
        if diff:
            self.cache.apply_diff(diff)
        return {self.cache.inode_for(keys.control(name)): name for name in CONTROL_FILES}

    # --- what fs.py asks --------------------------------------------------------------------

    def owns(self, inode: int) -> bool:
        return inode in self._files or inode in self._uploads

    def mode(self, inode: int) -> int:
        name = self._files.get(inode)
        return CONTROL_FILES[name] if name is not None else 0o644

    def node(self, inode: int) -> Node | None:
        upload = self._uploads.get(inode)
        return upload.node if upload is not None else None

    def lookup(self, parent_inode: int, name: str) -> Node | None:
        if parent_inode != CONTROL_INODE:
            return None
        for upload in self._uploads.values():
            if upload.node.name == name:
                return upload.node
        return None

    def open(self, inode: int, flags: int) -> Handle:
        upload = self._uploads.get(inode)
        if upload is not None:
            if flags & os.O_TRUNC:
                self._resize(upload, 0)
            upload.opens += 1
            return Handle("upload", inode, upload=upload)
        kind = self._files.get(inode)
        if kind is None:
            raise FsError(errno.ENOENT, f"inode {inode} is no control file")
        if kind == "status" and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise FsError(errno.EACCES, ".rdfs/status is read-only")
        return Handle(kind, inode)

    def truncate(self, inode: int, size: int) -> None:
        """``truncate``/``ftruncate`` (and ``O_TRUNC`` without atomic open): uploads take any size
        within the caps; the other control files are always empty, so only size 0 is accepted."""
        upload = self._uploads.get(inode)
        if upload is not None:
            self._resize(upload, size)
        elif self._files.get(inode) == "status":
            raise FsError(errno.EACCES, ".rdfs/status is read-only")
        elif size != 0:
            raise FsError(errno.EINVAL, "control files cannot be extended")

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        if handle.upload is not None:
            return bytes(handle.upload.data[off : off + size])
        if handle.kind != "status":
            return b""
        if off == 0 or not handle.snapshot:
            handle.snapshot = (
                json.dumps(await self.status(), indent=2, sort_keys=True) + "\n"
            ).encode()
        return handle.snapshot[off : off + size]

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        if handle.kind == "status":
            raise FsError(errno.EACCES, ".rdfs/status is read-only")
        if handle.kind == "refresh":
            log.info("refresh requested through .rdfs/refresh")
            self.syncer.trigger()
            return len(buf)
        if handle.upload is not None:
            return self._write_upload(handle.upload, off, buf)
        self._take(handle, buf)
        return len(buf)

    async def flush(self, handle: Handle) -> None:
        """Every ``close()`` of a descriptor of the handle: reports, changes nothing.

        A refused batch fails again. An unterminated last line, or an upload, fails with EINVAL
        when nothing written after it could make it valid; one that is merely incomplete (a
        duplicate closed while the line or file is half-written) passes, and nothing is cut:
        the last close judges it.
        """
        if handle.refused is not None:
            raise FsError(*handle.refused)
        if handle.upload is not None:
            if handle.upload.data:
                try:
                    parse_torrent_file(bytes(handle.upload.data))
                except TruncatedTorrent:
                    pass
                except InvalidInput as exc:
                    raise FsError(errno.EINVAL, f"{handle.upload.node.name}: {exc}") from None
        elif handle.kind in ("add", "delete") and handle.pending:
            problem = self._hopeless(handle.kind, bytes(handle.pending), handle.lines)
            if problem:
                raise FsError(errno.EINVAL, problem)

    async def release(self, handle: Handle) -> None:
        """The last close: a good batch (or upload) is queued for the worker (no wait for RD)."""
        if handle.upload is not None:
            self._release_upload(handle.upload)
            return
        if handle.kind not in ("add", "delete") or handle.refused is not None:
            return
        try:
            if handle.pending:
                last = bytes(handle.pending)
                handle.pending.clear()
                self._accept(handle, last)
            if handle.items:
                action: Literal["add", "delete"] = "add" if handle.kind == "add" else "delete"
                source = f".rdfs/{handle.kind}"
                self._enqueue(
                    Job(action, source, handle.items, time.time(), unverified=handle.unverified)
                )
        except FsError:
            pass  # recorded for status by _refuse; release cannot report errors

    def accepts_create(self, parent_inode: int, name: str) -> bool:
        return (
            parent_inode == CONTROL_INODE
            and name.lower().endswith(UPLOAD_SUFFIX)
            and name not in CONTROL_FILES
            and self.lookup(parent_inode, name) is None
        )

    def create(self, parent_inode: int, name: str) -> tuple[Node, Handle]:
        inode = self._upload_inode()
        node = Node(
            inode=inode,
            parent=parent_inode,
            name=name,
            kind="file",
            size=0,
            mtime=time.time(),
            nlink=1,
        )
        upload = Upload(node)
        self._uploads[inode] = upload
        return node, Handle("upload", inode, upload=upload)

    async def remove_node(self, node: Node) -> None:
        """``rm``/``rmdir`` with ``--allow-delete``: a torrent directory or a ``downloads/`` file.

        Files and folders inside a torrent cannot be deleted one by one on RD; removing them is
        accepted without effect so that ``rm -r torrents/<name>`` reaches the directory itself.
        This one is not queued: ``rm`` must learn whether it worked, and it is one API call,
        bounded by ``REMOVE_TIMEOUT`` (EIO beyond).
        """
        if node.parent == TORRENTS_INODE and node.torrent_id:
            target = Target("torrent", node.torrent_id, f"{TORRENTS_DIR}/{node.name}")
        elif node.parent == DOWNLOADS_INODE and node.download_id:
            target = Target("download", node.download_id, f"{DOWNLOADS_DIR}/{node.name}")
        elif node.torrent_id:
            log.debug("rm of %s inside torrent %s: no upstream effect", node.name, node.torrent_id)
            return
        else:
            raise FsError(errno.EPERM, f"{node.name} cannot be removed")
        done: list[Target] = []
        # Not behind the worker's lock: an add batch may run for minutes. Deleting what a
        # batch deletes too is harmless (already gone counts as deleted).
        with trio.move_on_after(REMOVE_TIMEOUT):
            try:
                done = await delete_targets(self.client, [target])
            except ActionFailed as exc:
                self._note_error("delete", str(exc))
                raise FsError(errno.EIO, str(exc)) from None
            self._forget(done)
        if not done:
            reason = (
                f"rm {target.label}: no answer within {REMOVE_TIMEOUT:.0f}s "
                "(the next sync shows whether RD deleted it)"
            )
            self._note_error("delete", reason)
            raise FsError(errno.EIO, reason)
        self._note_action("delete", f"rm {target.label}", "done", [t.to_json() for t in done])
        self._tell_syncer(done)

    # --- batches: checked as they are written, queued at the last close -----------------------

    def _take(self, handle: Handle, buf: bytes) -> None:
        """One ``write()`` to ``add``/``delete``: check its complete lines now, keep the rest."""
        if handle.refused is not None:
            raise FsError(*handle.refused)
        handle.received += len(buf)
        if handle.received > MAX_BATCH_BYTES:
            self._refuse(handle, f"more than {MAX_BATCH_BYTES} bytes in one batch", errno.EFBIG)
        end = buf.rfind(b"\n")  # only the new bytes are searched: byte-sized writes stay linear
        if end < 0:
            handle.pending += buf
            if len(handle.pending) > MAX_LINE_BYTES:
                self._refuse(handle, f"a line longer than {MAX_LINE_BYTES} bytes")
            return
        complete = bytes(handle.pending) + buf[: end + 1]
        handle.pending = bytearray(buf[end + 1 :])
        self._accept(handle, complete)

    def _accept(self, handle: Handle, data: bytes) -> None:
        """Add the lines in ``data`` to the batch, or refuse the whole batch."""
        checked = self._check(handle.kind, data, handle.lines)
        if checked.bad:
            self._refuse(handle, "; ".join(checked.bad))
        handle.lines += checked.lines
        handle.items += checked.items
        handle.unverified += checked.unverified
        if len(handle.items) + self._queued_items > MAX_QUEUED_ITEMS:
            self._refuse(handle, f"more than {MAX_QUEUED_ITEMS} items waiting for RD", errno.ENOSPC)

    def _check(self, kind: str, data: bytes, first_line: int) -> _Checked:
        """A dry run over the lines in ``data`` (numbered after ``first_line``): changes nothing."""
        checked = _Checked()
        for raw in data.removesuffix(b"\n").split(b"\n"):
            checked.lines += 1
            number = first_line + checked.lines
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                checked.bad.append(f"line {number}: not UTF-8 text")
                continue
            for line in parse_lines(text):
                if kind == "add":
                    try:
                        checked.items.append(parse_magnet(line))
                    except InvalidInput as exc:
                        checked.bad.append(f"line {number}: {exc}")
                    continue
                target, problem, known = self._resolve(line)
                if target is None:
                    checked.bad.append(f"line {number}: {problem}")
                    continue
                checked.items.append(target)
                if not known:
                    checked.unverified.append(target.id)
        return checked

    def _hopeless(self, kind: str, data: bytes, first_line: int) -> str:
        """Why no continuation can make the unterminated line ``data`` valid; "" while one can."""
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
        except UnicodeDecodeError:
            return f"line {first_line + 1}: not UTF-8 text"
        if text[-1:].isspace():  # only an end of line can follow: it must be valid as it is
            return "; ".join(self._check(kind, data, first_line).bad)
        line = text.strip()
        if not line or line.startswith("#"):
            return ""
        if kind == "add":
            low = line.lower()
            if (
                low.startswith("magnet:?")
                or "magnet:?".startswith(low)
                or _HEX_PREFIX.fullmatch(line)
                or _BASE32_PREFIX.fullmatch(line)
            ):
                return ""
            try:
                parse_magnet(line)
            except InvalidInput as exc:
                return f"line {first_line + 1}: {exc}"
            return ""
        path = line.removeprefix("./").lstrip("/")
        if _ID_PREFIX.fullmatch(path) or any(
            p.startswith(path) or path.startswith(p) for p in _DELETE_PREFIXES
        ):
            return ""
        return f"line {first_line + 1}: no torrent or download named {line!r}"

    def _resolve(self, line: str) -> tuple[Target | None, str, bool]:
        """A delete line as a target, from the local tree only, whether the cache knows it; or
        the reason it is none.

        An id-shaped line the cache does not know (added moments ago elsewhere) is accepted
        here and confirmed upstream by the worker before anything of its batch is deleted.
        """
        path = line.removeprefix("./").strip("/")
        top, _, name = path.partition("/")
        if looks_like_id(path):
            return Target("torrent", path, path), "", self.cache.torrent(path) is not None
        if top in (TORRENTS_DIR, DOWNLOADS_DIR) and name:
            if "/" in name:
                return (
                    None,
                    f"{line!r} is inside an entry: "
                    "name the torrent directory or the download itself",
                    False,
                )
            parent = TORRENTS_INODE if top == TORRENTS_DIR else DOWNLOADS_INODE
            node = self.namespace.lookup(parent, name)
            if node is not None and top == TORRENTS_DIR and node.torrent_id:
                return Target("torrent", node.torrent_id, path), "", True
            if node is not None and top == DOWNLOADS_DIR and node.download_id:
                return Target("download", node.download_id, path), "", True
        return None, f"no torrent or download named {line!r}", False

    def _enqueue(self, job: Job) -> None:
        if self._queued_items + len(job.items) > MAX_QUEUED_ITEMS:
            self._note_error(
                job.action,
                f"refused: {job.source}: more than {MAX_QUEUED_ITEMS} items waiting for RD",
            )
            raise FsError(errno.ENOSPC, "queue full")
        self._queue.append(job)
        self._queued_items += len(job.items)
        self._upload_bytes += job.memory
        self._work.set()
        log.info("%s: queued %s of %d item(s)", job.source, job.action, len(job.items))

    def _refuse(self, handle: Handle, reason: str, code: int = errno.EINVAL) -> NoReturn:
        """Bad input: the batch is dropped, recorded for status, the writer gets ``code`` now and
        on every later write or close of this open file. Never returns."""
        handle.refused = (code, reason)
        handle.items.clear()
        handle.unverified.clear()
        handle.pending.clear()
        self._note_error(handle.kind, f"refused: {reason}")
        raise FsError(code, reason)

    # --- the worker -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued batches to RD one at a time, and watch what was added. Runs until cancelled.

        The queue lives in memory: what is still queued when the mount stops is not sent, and
        the log says so; a batch cut short is rolled back like a failed one.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_loop)
                task_status.started()
                while True:
                    if not self._queue:
                        self._work = trio.Event()
                        await self._work.wait()
                        continue
                    job = self._queue.popleft()
                    self._current = job
                    try:
                        await self._run_job(job)
                    finally:
                        self._current = None
                        self._finished += 1
                        self._queued_items -= len(job.items)
                        self._upload_bytes -= job.memory
        finally:
            if self._queued_items:
                log.warning(
                    "stopping with %d queued item(s) of .rdfs/ not sent to RD", self._queued_items
                )

    async def _run_job(self, job: Job) -> None:
        """One batch; whatever happens is recorded for status, and the worker goes on."""
        job.started_at = time.time()
        try:
            if job.action == "add":
                await self._add(job)
            else:
                await self._delete(job)
        except InvalidInput as exc:
            self._note_error(job.action, f"refused: {job.source}: {exc}")
            self._note_action(job.action, job.source, "refused", error=str(exc))
        except ActionError as exc:
            self._note_error(job.action, f"{job.source}: {exc}")
            self._note_action(job.action, job.source, "failed", error=str(exc))
        except Exception as exc:  # a bug must not end the worker, and with it the mount
            log.exception("%s of %s failed unexpectedly", job.action, job.source)
            self._note_error(job.action, f"{job.source}: internal error ({type(exc).__name__})")
            self._note_action(
                job.action, job.source, "failed", error=f"internal error ({type(exc).__name__})"
            )

    def _progress(self, job: Job) -> Callable[[int], None]:
        def note(done: int) -> None:
            job.done = done

        return note

    async def _add(self, job: Job) -> None:
        async with self._lock:
            known = {t.hash.lower(): t.id for t in self.cache.torrents()} | self._added_hashes
            results = await add_items(
                self.client,
                job.items,
                policy=self.selection,
                known_hashes=known,
                on_progress=self._progress(job),
            )
        for added in results:
            if added.duplicate:
                log.info(
                    "%s is already in the account as torrent %s: not added again",
                    added.info_hash,
                    added.id,
                )
                continue
            self._added_hashes[added.info_hash] = added.id
            self._watch_torrent(added.id)
        self._note_action("add", job.source, "done", [a.to_json() for a in results])
        self.syncer.check_soon()  # new torrents show on top of page 1: no complete listing

    async def _delete(self, job: Job) -> None:
        async with self._lock:
            missing = [
                torrent_id
                for torrent_id in job.unverified
                if not await self._exists_upstream(torrent_id)
            ]
            if missing:
                raise InvalidInput(
                    "; ".join(f"no torrent with id {torrent_id}" for torrent_id in missing)
                )
            try:
                done = await delete_targets(self.client, job.items, on_progress=self._progress(job))
            except ActionFailed as exc:
                self._forget([t for t in job.items if t.id in exc.done])
                raise
            self._forget(done)
        self._note_action("delete", job.source, "done", [t.to_json() for t in done])
        self._tell_syncer(done)

    async def _exists_upstream(self, torrent_id: str) -> bool:
        """An id the cache does not know (added moments ago elsewhere): ask RD."""
        if self.cache.torrent(torrent_id) is not None:
            return True
        try:
            await self.client.torrent_info(torrent_id)
        except UnknownResource:
            return False
        except RDError as exc:
            raise ActionFailed(f"cannot check torrent {torrent_id}: {exc}", cause=exc) from None
        return True

    def _tell_syncer(self, done: list[Target]) -> None:
        """Deleted torrents leave the syncer's listing state without a complete listing; a
        deleted download still asks for one."""
        torrents = [t.id for t in done if t.kind == "torrent"]
        if len(torrents) == len(done):
            self.syncer.removed(torrents)
        else:
            self.syncer.trigger()

    def _forget(self, targets: list[Target]) -> None:
        """Remove what RD deleted from the tree now, without waiting for a sync."""
        changes = Changes()
        torrents = [t.id for t in targets if t.kind == "torrent"]
        downloads = [t.id for t in targets if t.kind == "download"]
        if torrents:
            with self.cache.transaction():
                self.cache.record_removals(torrents, by="user", reason="deleted through rdfs")
                changes.merge(self.cache.delete_torrents(torrents))
            self.cache.touch_dir(TORRENTS_INODE, time.time())  # (its nlink: delete_torrents)
            changes.inodes.add(TORRENTS_INODE)
            for torrent_id in torrents:
                self._watch.pop(torrent_id, None)
            self._added_hashes = {h: i for h, i in self._added_hashes.items() if i not in torrents}
        if downloads:
            self.cache.delete_downloads(downloads)
            diff = self.cache.diff_entries(
                Scope.downloads(), download_specs(self.cache.downloads())
            )
            changes.merge(self.cache.apply_diff(diff))
            self.cache.refresh_dir(DOWNLOADS_INODE, time.time())
            changes.inodes.add(DOWNLOADS_INODE)
        # Views and the update hook hear of it now, as they would from the sync.
        self.bus.publish(changes, "control")

    # --- errors ---------------------------------------------------------------------------------

    def _note_error(self, where: str, error: str) -> None:
        log.warning(".rdfs/%s: %s", where, error)
        self._errors.append({"time": time.time(), "where": f".rdfs/{where}", "error": error})

    def _note_action(
        self,
        kind: str,
        source: str,
        outcome: str,
        items: list[dict[str, Any]] | None = None,
        error: str = "",
    ) -> None:
        entry: dict[str, Any] = {
            "time": time.time(),
            "action": kind,
            "source": source,
            "outcome": outcome,
        }
        entry["items"] = items or []
        if error:
            entry["error"] = error
        self._actions.append(entry)

    # --- watching added torrents ---------------------------------------------------------------

    def _watch_torrent(self, torrent_id: str) -> None:
        self._watch[torrent_id] = None
        self._watch_more.set()

    async def _watch_loop(self) -> None:
        """Follow torrents added here: select files once converted, sync once downloaded."""
        while True:
            if not self._watch:
                self._watch_more = trio.Event()
                await self._watch_more.wait()
            await trio.sleep(self.watch_interval)
            for torrent_id in list(self._watch):
                try:
                    await self._check_added(torrent_id)
                except Exception:  # keep watching the others; a bug here must not end the mount
                    log.exception("watching torrent %s failed", torrent_id)
                    self._watch.pop(torrent_id, None)

    async def _check_added(self, torrent_id: str) -> None:
        try:
            info = await select_when_ready(
                self.client, torrent_id, lambda info: choose_files(info, self.selection)
            )
        except UnknownResource:
            self._watch.pop(torrent_id, None)
            return
        except RDError as exc:
            log.debug("watching torrent %s: %s (will retry)", torrent_id, exc)
            return
        if info.status == "downloaded" or info.status in FAILED_STATUSES:
            self._watch.pop(torrent_id, None)
            if info.status in FAILED_STATUSES:
                self._note_error(
                    "add", f"torrent {torrent_id} ({info.filename}) failed on RD: {info.status}"
                )
            log.info("torrent %s is %s: syncing", torrent_id, info.status)
            self.syncer.check_soon()

    # --- status ---------------------------------------------------------------------------------

    def queue_status(self) -> dict[str, Any]:
        """What waits for the worker, and what it is doing."""
        return {
            "batches": len(self._queue) + (self._current is not None),
            "items": self._queued_items,
            "current": self._current.to_json() if self._current is not None else None,
            "pending": [job.to_json() for job in list(self._queue)[:MAX_LISTED_JOBS]],
            "finished": self._finished,
            "uploads_open": len(self._uploads),
            "upload_bytes": self._upload_bytes,
        }

    async def status(self) -> dict[str, Any]:
        """The board (the sync's status and every section) plus API health, traffic left and
        what the control files did."""
        status = self.board.snapshot()
        await self._probe()
        await self._refresh_traffic()
        errors = sorted(
            list(status.get("recent_errors", [])) + list(self._errors), key=lambda e: e["time"]
        )
        status.update(
            time=time.time(),
            api={
                "reachable": self._reachable,
                "rate_limit_budget": self.client.limiter.budget_left(),
            },
            traffic=self._traffic,
            recent_errors=errors[-MAX_RECENT:],
            recent_actions=list(self._actions),
            watching=list(self._watch),
            selection=self.selection,
            allow_delete=self.allow_delete,
        )
        return status

    async def _probe(self) -> None:
        """Whether RD answers now (the sync's health only changes once its retries ran out)."""
        if trio.current_time() - self._probe_at < PROBE_TTL:
            return
        self._probe_at = trio.current_time()
        self._reachable = False
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await self.client.time()
            except RDError as exc:
                log.debug("API probe failed: %s", exc)
            else:
                self._reachable = True

    async def _refresh_traffic(self) -> None:
        if trio.current_time() - self._traffic_at < TRAFFIC_TTL:
            return
        if not self._reachable:
            return
        # A failed refresh is remembered too, so status reads during an outage stay fast.
        self._traffic_at = trio.current_time()
        with trio.move_on_after(TRAFFIC_TIMEOUT):
            try:
                hosts = await self.client.traffic()
            except RDError as exc:
                log.debug("traffic unavailable: %s", exc)
            else:
                self._traffic = {
                    host: {
                        "left": t.left,
                        "bytes": t.bytes,
                        "limit": t.limit,
                        "type": t.type,
                        "reset": t.reset,
                    }
                    for host, t in hosts.items()
                }
                self._traffic_at = trio.current_time()

    # --- uploads --------------------------------------------------------------------------------

    def _upload_inode(self) -> int:
        for _ in range(FIRST_DYNAMIC_INODE):
            inode = self._next_upload
            self._next_upload = inode + 1 if inode + 1 < FIRST_DYNAMIC_INODE else 5
            if inode not in self._uploads:
                return inode
        raise FsError(errno.ENFILE, "too many uploads in flight")

    def _resize(self, upload: Upload, size: int) -> None:
        """Grow (with zeros) or cut an upload, within the per-file and the total bound."""
        if size > MAX_UPLOAD_BYTES:
            raise FsError(errno.EFBIG, f"{upload.node.name}: larger than {MAX_UPLOAD_BYTES} bytes")
        growth = size - len(upload.data)
        if growth > 0 and self._upload_bytes + growth > self.upload_memory:
            if not upload.over_bound:
                upload.over_bound = True
                self._note_error(
                    "add",
                    f"refused: {upload.node.name}: "
                    f"uploads in flight hold {self._upload_bytes} bytes already",
                )
            raise FsError(errno.ENOSPC, "upload memory exhausted")
        if growth > 0:
            upload.data.extend(bytes(growth))
        else:
            del upload.data[size:]
        self._upload_bytes += growth
        upload.node.size = size
        upload.node.mtime = time.time()

    def _write_upload(self, upload: Upload, off: int, buf: bytes) -> int:
        end = off + len(buf)
        if end > len(upload.data):
            self._resize(upload, end)
        upload.data[off:end] = buf
        return len(buf)

    def _release_upload(self, upload: Upload) -> None:
        """Once its last handle is closed an upload disappears; good bytes are queued for RD."""
        upload.opens -= 1
        if upload.opens > 0:
            return
        inode, name = upload.node.inode, upload.node.name
        self._uploads.pop(inode, None)
        data = bytes(upload.data)
        self._upload_bytes -= len(upload.data)
        upload.data = bytearray()
        self.bus.publish(
            Changes(entries={(CONTROL_INODE, name)}, dirs={CONTROL_INODE}), UPLOAD_GONE
        )
        if not data:
            log.info(".rdfs/%s closed empty: nothing to add", name)
            return
        try:
            torrent = parse_torrent_file(data)
        except InvalidInput as exc:
            self._note_error("add", f"refused: {name}: {exc}")
            return
        try:
            self._enqueue(Job("add", f".rdfs/{name}", [torrent], time.time(), memory=len(data)))
        except FsError:
            pass  # recorded for status; release cannot report errors
