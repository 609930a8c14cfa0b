"""The control files in ``MOUNTPOINT/.rdfs/``: add, delete, refresh, status, and ``.torrent`` drops.

* ``add``: each line a magnet URI or info hash. ``delete``: each line a torrent id or a path
  relative to the mount (``torrents/<name>``, ``downloads/<name>``). Each ``write()`` is one
  batch (its complete lines; a last line without a newline is taken at ``close()``): every line
  is checked first, a bad one fails the call with EINVAL and nothing is sent to RD; an API
  failure fails it with EIO after rolling back what the batch added. Reasons go to ``status``.
* ``refresh``: any write syncs now. ``status``: JSON, built when it is read from offset 0.
* ``cp x.torrent .rdfs/``: the file lives here in memory while it is written; on ``close()`` it
  is sent to ``addTorrent`` (a broken file fails the close with EINVAL) and disappears.

Added torrents are watched until RD finished them, then a sync shows them at once. Deletions are
removed from the tree as soon as RD confirmed them.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pyfuse3
import trio

from rdfs.actions import (
    FAILED_STATUSES,
    ActionFailed,
    Added,
    InvalidInput,
    Magnet,
    Target,
    TorrentFile,
    add_items,
    check_policy,
    delete_targets,
    looks_like_id,
    parse_lines,
    parse_magnets,
    parse_torrent_file,
    select_when_ready,
)
from rdfs.api.client import RDClient
from rdfs.api.errors import RDError, UnknownResource
from rdfs.cache import (
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
from rdfs.sync import Syncer, TreeChange
from rdfs.tree import Namespace, Node, download_specs

log = logging.getLogger(__name__)

# name -> permission bits
CONTROL_FILES = {"add": 0o644, "delete": 0o644, "refresh": 0o644, "status": 0o444}
CONTROL_KEY = "top:.rdfs"
UPLOAD_SUFFIX = ".torrent"
MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # far above any real .torrent
MAX_BATCH_BYTES = 1024 * 1024  # an unterminated line longer than this is refused
MAX_RECENT = 20
WATCH_INTERVAL = 2.0  # seconds between checks of torrents added here until RD finished them
TRAFFIC_TTL = 300.0  # status re-reads /traffic at most this often
TRAFFIC_TIMEOUT = 3.0  # and never waits longer than this for it
PROBE_TTL = 5.0  # status checks that the API answers at most this often
PROBE_TIMEOUT = 2.0  # an API that has not answered /time by then counts as unreachable


@dataclass
class Handle:
    """One open control file (or in-flight ``.torrent`` upload)."""

    kind: str  # a CONTROL_FILES name, or "upload"
    inode: int
    buffer: bytearray = field(default_factory=bytearray)
    snapshot: bytes = b""  # status: the JSON being read
    node: Node | None = None  # upload: its (in-memory) node
    done: bool = False  # upload: sent (or refused) already


class Control:
    def __init__(
        self,
        namespace: Namespace,
        syncer: Syncer,
        client: RDClient,
        cache: Cache,
        *,
        allow_delete: bool = False,
        selection: str = "all",
        nursery: trio.Nursery | None = None,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        """``nursery`` runs the watcher of added torrents (without one, they show at the next sync)."""
        self.namespace = namespace
        self.syncer = syncer
        self.client = client
        self.cache = cache
        self.allow_delete = allow_delete
        self.selection = check_policy(selection)
        self.nursery = nursery
        self.watch_interval = watch_interval
        self._files = self._ensure_entries()  # inode -> control file name
        self._uploads: dict[int, Handle] = {}
        self._next_upload = 5  # inodes 5 .. FIRST_DYNAMIC_INODE-1 belong to the control layer
        self._lock = trio.Lock()  # one batch at a time: duplicate checks see the previous batch
        self._added_hashes: dict[str, str] = {}  # added by this process, maybe not synced yet
        self._watch: dict[str, None] = {}
        self._watching = False
        self._errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECENT)
        self._actions: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECENT)
        self._traffic: dict[str, Any] | None = None
        self._traffic_at = -TRAFFIC_TTL
        self._reachable: bool | None = None
        self._probe_at = -PROBE_TTL

    def _ensure_entries(self) -> dict[int, str]:
        """Put the control files into ``.rdfs/`` of the tree (idempotent)."""
        now = time.time()
        specs = [
            EntrySpec(key=f"ctl:{name}", parent_key=CONTROL_KEY, name=name, kind="file", mtime=now)
            for name in CONTROL_FILES
        ]
        diff = self.cache.diff_entries(Scope("e.parent = ?", (CONTROL_INODE,)), specs)
        # Only additions and removals matter; an mtime change alone is not worth a write.
        diff.upsert = [s for s in diff.upsert if s.key not in diff.existing]
        if diff:
            self.cache.apply_diff(diff)
        return {self.cache.inode_for(f"ctl:{name}"): name for name in CONTROL_FILES}

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
            if upload.node is not None and upload.node.name == name:
                return upload.node
        return None

    def open(self, inode: int, flags: int) -> Handle:
        upload = self._uploads.get(inode)
        if upload is not None:
            return upload
        kind = self._files[inode]
        if kind == "status" and flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EACCES)
        return Handle(kind, inode)

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        if handle.kind != "status":
            return b""
        if off == 0 or not handle.snapshot:
            handle.snapshot = (json.dumps(await self.status(), indent=2, sort_keys=True) + "\n").encode()
        return handle.snapshot[off : off + size]

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        if handle.kind == "status":
            raise pyfuse3.FUSEError(errno.EACCES)
        if handle.kind == "refresh":
            log.info("refresh requested through .rdfs/refresh")
            self.syncer.trigger()
            return len(buf)
        if handle.kind == "upload":
            return self._write_upload(handle, off, buf)
        handle.buffer += buf
        end = handle.buffer.rfind(b"\n")
        if end >= 0:
            batch = bytes(handle.buffer[: end + 1])
            del handle.buffer[: end + 1]
            await self._run(handle.kind, batch)
        elif len(handle.buffer) > MAX_BATCH_BYTES:
            handle.buffer.clear()
            self._refuse(handle.kind, f"a line longer than {MAX_BATCH_BYTES} bytes")
        return len(buf)

    async def flush(self, handle: Handle) -> None:
        if handle.kind == "upload":
            if handle.buffer and not handle.done:
                handle.done = True
                await self._add_upload(handle)
        elif handle.kind in ("add", "delete") and handle.buffer:
            batch = bytes(handle.buffer)
            handle.buffer.clear()
            await self._run(handle.kind, batch)

    async def release(self, handle: Handle) -> None:
        if handle.kind != "upload":
            return
        if handle.buffer and not handle.done:
            handle.done = True
            try:
                await self._add_upload(handle)
            except pyfuse3.FUSEError:
                pass  # recorded for status; release cannot report errors
        self._uploads.pop(handle.inode, None)
        if handle.node is not None:
            try:
                pyfuse3.invalidate_entry_async(CONTROL_INODE, os.fsencode(handle.node.name), ignore_enoent=True)
            except OSError as exc:
                log.debug("invalidate upload %s: %s", handle.node.name, exc)

    def accepts_create(self, parent_inode: int, name: str) -> bool:
        return (
            parent_inode == CONTROL_INODE
            and name.lower().endswith(UPLOAD_SUFFIX)
            and name not in CONTROL_FILES
            and self.lookup(parent_inode, name) is None
        )

    def create(self, parent_inode: int, name: str) -> tuple[Node, Handle]:
        inode = self._upload_inode()
        node = Node(inode=inode, parent=parent_inode, name=name, kind="file", size=0, mtime=time.time(), nlink=1)
        handle = Handle("upload", inode, node=node)
        self._uploads[inode] = handle
        return node, handle

    async def remove_node(self, node: Node) -> None:
        """``rm``/``rmdir`` with ``--allow-delete``: a torrent directory or a ``downloads/`` file.

        Files and folders inside a torrent cannot be deleted one by one on RD; removing them is
        accepted without effect so that ``rm -r torrents/<name>`` reaches the directory itself.
        """
        if node.parent == TORRENTS_INODE and node.torrent_id:
            target = Target("torrent", node.torrent_id, f"{TORRENTS_DIR}/{node.name}")
        elif node.parent == DOWNLOADS_INODE and node.download_id:
            target = Target("download", node.download_id, f"{DOWNLOADS_DIR}/{node.name}")
        elif node.torrent_id:
            log.debug("rm of %s inside torrent %s: no upstream effect", node.name, node.torrent_id)
            return
        else:
            raise pyfuse3.FUSEError(errno.EPERM)
        await self._delete([target])

    # --- batches --------------------------------------------------------------------------------

    async def _run(self, kind: str, batch: bytes) -> None:
        try:
            lines = parse_lines(batch.decode("utf-8"))
        except UnicodeDecodeError:
            self._refuse(kind, "the input is not UTF-8 text")
        if not lines:
            return
        if kind == "add":
            try:
                magnets = parse_magnets(lines)
            except InvalidInput as exc:
                self._refuse(kind, str(exc))
            await self._add(magnets)
        else:
            await self._delete(await self._targets(lines))

    async def _add(self, items: list[Magnet] | list[TorrentFile]) -> list[Added]:
        async with self._lock:
            known = {t.hash.lower(): t.id for t in self.cache.torrents()} | self._added_hashes
            try:
                results = await add_items(self.client, items, policy=self.selection, known_hashes=known)
            except ActionFailed as exc:
                self._fail("add", str(exc))
        for added in results:
            if added.duplicate:
                log.info("%s is already in the account as torrent %s: not added again", added.info_hash, added.id)
                continue
            self._added_hashes[added.info_hash] = added.id
            self._watch_torrent(added.id)
        self._note_action("add", [a.to_json() for a in results])
        self.syncer.trigger()
        return results

    async def _add_upload(self, handle: Handle) -> None:
        try:
            torrent = parse_torrent_file(bytes(handle.buffer))
        except InvalidInput as exc:
            self._refuse("add", f"{handle.node.name if handle.node else 'upload'}: {exc}")
        await self._add([torrent])

    async def _targets(self, lines: list[str]) -> list[Target]:
        """Resolve every line of a delete batch, or refuse the batch naming the bad lines."""
        targets: list[Target] = []
        bad: list[str] = []
        for number, line in enumerate(lines, start=1):
            path = line.removeprefix("./").strip("/")
            top, _, name = path.partition("/")
            target: Target | None = None
            problem = f"no torrent or download named {line!r}"
            if looks_like_id(path):
                if self.cache.torrent(path) is not None or await self._exists_upstream(path):
                    target = Target("torrent", path, path)
                else:
                    problem = f"no torrent with id {path}"
            elif top in (TORRENTS_DIR, DOWNLOADS_DIR) and name:
                if "/" in name:
                    problem = f"{line!r} is inside an entry: name the torrent directory or the download itself"
                else:
                    parent = TORRENTS_INODE if top == TORRENTS_DIR else DOWNLOADS_INODE
                    node = self.namespace.lookup(parent, name)
                    if node is not None and top == TORRENTS_DIR and node.torrent_id:
                        target = Target("torrent", node.torrent_id, path)
                    elif node is not None and top == DOWNLOADS_DIR and node.download_id:
                        target = Target("download", node.download_id, path)
            if target is None:
                bad.append(f"line {number}: {problem}")
            else:
                targets.append(target)
        if bad:
            self._refuse("delete", "; ".join(bad))
        return targets

    async def _exists_upstream(self, torrent_id: str) -> bool:
        """An id the cache does not know yet (added moments ago elsewhere): ask RD."""
        try:
            await self.client.torrent_info(torrent_id)
        except UnknownResource:
            return False
        except RDError as exc:
            self._fail("delete", f"cannot check torrent {torrent_id}: {exc}")
        return True

    async def _delete(self, targets: list[Target]) -> None:
        async with self._lock:
            try:
                done = await delete_targets(self.client, targets)
            except ActionFailed as exc:
                self._forget([t for t in targets if t.id in exc.done])
                self._fail("delete", str(exc))
            self._forget(done)
        self._note_action("delete", [t.to_json() for t in done])
        self.syncer.trigger()

    def _forget(self, targets: list[Target]) -> None:
        """Remove what RD deleted from the tree now, without waiting for a sync."""
        changes = Changes()
        torrents = [t.id for t in targets if t.kind == "torrent"]
        downloads = [t.id for t in targets if t.kind == "download"]
        if torrents:
            changes.merge(self.cache.delete_torrents(torrents))
            self.cache.refresh_dir(TORRENTS_INODE, time.time())
            changes.inodes.add(TORRENTS_INODE)
            for torrent_id in torrents:
                self._watch.pop(torrent_id, None)
            self._added_hashes = {h: i for h, i in self._added_hashes.items() if i not in torrents}
        if downloads:
            self.cache.delete_downloads(downloads)
            diff = self.cache.diff_entries(Scope.downloads(), download_specs(self.cache.downloads()))
            changes.merge(self.cache.apply_diff(diff))
            self.cache.refresh_dir(DOWNLOADS_INODE, time.time())
            changes.inodes.add(DOWNLOADS_INODE)
        if changes and self.syncer.on_change is not None:
            self.syncer.on_change(
                TreeChange(entries=sorted(changes.entries), inodes=sorted(changes.inodes | changes.dirs), paths=[])
            )

    # --- errors ---------------------------------------------------------------------------------

    def _refuse(self, kind: str, reason: str) -> NoReturn:
        """Bad input: recorded for status, the writer gets EINVAL. Never returns."""
        self._note_error(kind, f"refused: {reason}")
        raise pyfuse3.FUSEError(errno.EINVAL)

    def _fail(self, kind: str, reason: str) -> NoReturn:
        """RD failed: recorded for status, the writer gets EIO. Never returns."""
        self._note_error(kind, reason)
        raise pyfuse3.FUSEError(errno.EIO)

    def _note_error(self, where: str, error: str) -> None:
        log.warning(".rdfs/%s: %s", where, error)
        self._errors.append({"time": time.time(), "where": f".rdfs/{where}", "error": error})

    def _note_action(self, kind: str, items: list[dict[str, Any]]) -> None:
        self._actions.append({"time": time.time(), "action": kind, "items": items})

    # --- watching added torrents ---------------------------------------------------------------

    def _watch_torrent(self, torrent_id: str) -> None:
        self._watch[torrent_id] = None
        if self.nursery is not None and not self._watching:
            self._watching = True
            self.nursery.start_soon(self._watch_loop)

    async def _watch_loop(self) -> None:
        """Follow torrents added here: select files once converted, sync once downloaded."""
        try:
            while self._watch:
                await trio.sleep(self.watch_interval)
                for torrent_id in list(self._watch):
                    await self._check(torrent_id)
        finally:
            self._watching = False

    async def _check(self, torrent_id: str) -> None:
        try:
            info = await select_when_ready(self.client, torrent_id, self.selection)
        except UnknownResource:
            self._watch.pop(torrent_id, None)
            return
        except RDError as exc:
            log.debug("watching torrent %s: %s (will retry)", torrent_id, exc)
            return
        if info.status == "downloaded" or info.status in FAILED_STATUSES:
            self._watch.pop(torrent_id, None)
            if info.status in FAILED_STATUSES:
                self._note_error("add", f"torrent {torrent_id} ({info.filename}) failed on RD: {info.status}")
            log.info("torrent %s is %s: syncing", torrent_id, info.status)
            self.syncer.trigger()

    # --- status ---------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The sync status plus API health, traffic left and what the control files did."""
        status = self.syncer.status()
        await self._probe()
        await self._refresh_traffic()
        errors = sorted(list(status.get("recent_errors", [])) + list(self._errors), key=lambda e: e["time"])
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
                    host: {"left": t.left, "bytes": t.bytes, "limit": t.limit, "type": t.type, "reset": t.reset}
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
        raise pyfuse3.FUSEError(errno.ENFILE)

    def _write_upload(self, handle: Handle, off: int, buf: bytes) -> int:
        end = off + len(buf)
        if end > MAX_UPLOAD_BYTES:
            raise pyfuse3.FUSEError(errno.EFBIG)
        if end > len(handle.buffer):
            handle.buffer.extend(bytes(end - len(handle.buffer)))
        handle.buffer[off:end] = buf
        handle.done = False
        if handle.node is not None:
            handle.node.size = len(handle.buffer)
        return len(buf)
