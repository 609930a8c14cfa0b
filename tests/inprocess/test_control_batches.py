"""The control layer in-process: a real Control, Cache and Syncer against the emulator over HTTP.

Each test drives the handlers fs.py calls (open/write/flush/release/truncate) the way the kernel
does, and checks upstream state in the emulator afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.ratelimit import RateLimiter
from rdfs.api.transport import RetryPolicy
from rdfs.store.metadata import CONTROL_INODE, TORRENTS_INODE, Cache
from rdfs.control.files import MAX_UPLOAD_BYTES, Control, Handle
from rdfs.emulator import Emulator, FileSpec
from rdfs.emulator.bencode import encode
from rdfs.events import UPLOAD_GONE, ChangeBus, TreeChange
from rdfs.outcome import FsError
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace

NO_WAIT = RetryPolicy(max_retries=1, wait_initial=0, wait_max=0, wait_jitter=0)
WAIT = 30.0  # bound on waiting for the worker (it needs milliseconds)


def fake_hash(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def make_torrent(name: str, size: int = 50_000) -> tuple[bytes, str]:
    info = {"name": name, "piece length": 16384, "length": size, "pieces": b"\0" * 20 * (size // 16384 + 1)}
    return encode({"announce": "http://tracker.invalid/announce", "info": info}), hashlib.sha1(encode(info)).hexdigest()


@dataclass
class Rig:
    emulator: Emulator
    control: Control
    changes: list[TreeChange] = field(default_factory=list)

    def hashes(self) -> set[str]:
        return {self.emulator.torrent_json(t)["hash"] for t in self.emulator.torrent_ids()}

    def open(self, name: str, flags: int = os.O_WRONLY) -> Handle:
        return self.control.open(self.control.cache.inode_for(f"ctl:{name}"), flags)

    async def finished(self, count: int) -> None:
        """Wait until the worker has run ``count`` batches in all."""
        with trio.fail_after(WAIT):
            while self.control.queue_status()["finished"] < count:
                await trio.sleep(0.01)


async def make_rig(emulator: Emulator, tmp_path: Path, **options) -> AsyncIterator[Rig]:
    async with RDClient(
        api_url=emulator.api_url, auth=StaticToken(emulator.token), rate_limit_per_minute=100_000, retry=NO_WAIT,
        add_limiter=RateLimiter(100_000),  # not RD's 20 adds per 10.5 s: 100 adds in milliseconds
    ) as client:  # fmt: skip
        cache = Cache.open(tmp_path, 4242)
        try:
            syncer = Syncer(client, cache)
            await syncer.sync_once()
            rig = Rig(emulator, None)  # type: ignore[arg-type]
            bus = ChangeBus(Namespace(cache).path)
            bus.subscribe(rig.changes.append)
            rig.control = Control(
                Namespace(cache), syncer, client, cache, bus=bus, watch_interval=0.05, **options
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.control.run)
                yield rig
                nursery.cancel_scope.cancel()
        finally:
            cache.close()


@pytest.fixture
async def rig(emulator: Emulator, tmp_path: Path) -> AsyncIterator[Rig]:
    emulator.add_torrent("Already Here", [FileSpec("/a.mkv", 1000)])
    async for made in make_rig(emulator, tmp_path):
        yield made


async def write_lines(rig: Rig, handle: Handle, *chunks: bytes) -> None:
    for chunk in chunks:
        assert await rig.control.write(handle, 0, chunk) == len(chunk)


async def refused(call) -> FsError:  # type: ignore[no-untyped-def]
    with pytest.raises(FsError) as caught:
        await call
    return caught.value


# --- batches ------------------------------------------------------------------------------------


async def test_a_bad_line_fails_its_write_and_nothing_of_the_batch_is_added(rig: Rig) -> None:
    before = rig.hashes()
    h1, h3 = fake_hash("one"), fake_hash("three")
    handle = rig.open("add")
    await write_lines(rig, handle, f"{h1}\n".encode())  # what bash's printf does: a write per line
    assert (await refused(rig.control.write(handle, 0, b"junk\n"))).errno == errno.EINVAL
    # The batch is dropped: later writes and every close of this open file say so too.
    assert (await refused(rig.control.write(handle, 0, f"{h3}\n".encode()))).errno == errno.EINVAL
    assert (await refused(rig.control.flush(handle))).errno == errno.EINVAL
    await rig.control.release(handle)
    assert rig.control.queue_status()["batches"] == 0
    # A good batch after it runs; had anything of the bad one been queued, it would have run first.
    sentinel = fake_hash("sentinel")
    handle = rig.open("add")
    await write_lines(rig, handle, f"{sentinel}\n".encode())
    await rig.control.release(handle)
    await rig.finished(1)
    assert rig.hashes() == before | {sentinel}
    assert rig.emulator.counters["POST /torrents/addMagnet"] == 1
    errors = [e["error"] for e in (await rig.control.status())["recent_errors"]]
    assert any("line 2" in e and "junk" in e for e in errors)


async def test_a_batch_spans_writes_and_runs_after_the_last_close(rig: Rig) -> None:
    first, second = fake_hash("first"), fake_hash("second")
    handle = rig.open("add")
    await write_lines(rig, handle, first[:17].encode())
    await rig.control.flush(handle)  # a duplicate closed mid-line: no error, nothing cut or sent
    await write_lines(rig, handle, first[17:].encode() + b"\n# a comment\n\n", f"magnet:?xt=urn:btih:{second}".encode())
    await rig.control.flush(handle)
    assert rig.control.queue_status()["batches"] == 0 and rig.emulator.counters["POST /torrents/addMagnet"] == 0
    await rig.control.release(handle)  # the unterminated last line belongs to the batch
    assert rig.control.queue_status()["items"] == 2
    await rig.finished(1)
    assert {first, second} <= rig.hashes()
    assert rig.emulator.counters["POST /torrents/addMagnet"] == 2
    action = (await rig.control.status())["recent_actions"][-1]
    assert action["outcome"] == "done" and [i["hash"] for i in action["items"]] == [first, second]


async def test_close_reports_a_last_line_that_cannot_become_valid(rig: Rig) -> None:
    before = rig.hashes()
    handle = rig.open("add")
    await write_lines(rig, handle, f"{fake_hash('good')}\n".encode(), b"not-a-hash")
    assert (await refused(rig.control.flush(handle))).errno == errno.EINVAL
    await rig.control.release(handle)
    assert rig.control.queue_status()["batches"] == 0
    # A half-written path of a delete can still become valid: close passes, the last close judges.
    handle = rig.open("delete")
    await write_lines(rig, handle, b"torrents/Already")
    await rig.control.flush(handle)
    await write_lines(rig, handle, b" Gone")
    await rig.control.release(handle)
    assert rig.control.queue_status()["batches"] == 0
    assert rig.hashes() == before
    errors = [e["error"] for e in (await rig.control.status())["recent_errors"]]
    assert any("not-a-hash" in e for e in errors) and any("Already Gone" in e for e in errors)


async def test_a_delete_batch_with_an_unknown_id_deletes_nothing(rig: Rig) -> None:
    kept = rig.emulator.torrent_ids()
    handle = rig.open("delete")
    # Id-shaped lines the cache does not know are confirmed upstream before anything is deleted.
    await write_lines(rig, handle, b"torrents/Already Here\n", b"ZZZZZZZZZZZZZZZ\n")
    await rig.control.release(handle)
    await rig.finished(1)
    assert rig.emulator.torrent_ids() == kept
    assert rig.emulator.counters["DELETE /torrents/delete"] == 0
    status = await rig.control.status()
    assert status["recent_actions"][-1]["outcome"] == "refused"
    assert "no torrent with id ZZZZZZZZZZZZZZZ" in status["recent_errors"][-1]["error"]


async def test_a_failing_add_batch_is_rolled_back_in_the_worker(rig: Rig) -> None:
    before = rig.hashes()
    rig.emulator.faults.add_limit = (1, 600.0)  # the second add of the batch is refused (429)
    handle = rig.open("add")
    await write_lines(rig, handle, *(f"{fake_hash(f'rollback {i}')}\n".encode() for i in range(3)))
    await rig.control.release(handle)
    await rig.finished(1)
    assert rig.emulator.counters["POST /torrents/addMagnet"] >= 2  # the first was added, then undone
    assert rig.hashes() == before
    status = await rig.control.status()
    assert status["recent_actions"][-1]["outcome"] == "failed"
    assert "were removed" in status["recent_errors"][-1]["error"]


async def test_a_hundred_lines_return_at_once_and_all_are_added(rig: Rig) -> None:
    wanted = [fake_hash(f"bulk {i}") for i in range(100)]
    handle = rig.open("add")
    for line in wanted:  # none of these calls waits for RD
        await rig.control.write(handle, 0, f"{line}\n".encode())
    await rig.control.release(handle)
    # The writer is back while every add still waits for the worker (nothing ran in between).
    queue = rig.control.queue_status()
    assert queue["items"] == 100 and queue["batches"] == 1
    assert not set(wanted) & rig.hashes()
    assert (await rig.control.status())["queue"]["items"] > 0  # and status shows the queue
    await rig.finished(1)
    assert set(wanted) <= rig.hashes()
    assert rig.control.queue_status()["items"] == 0


# --- uploads ------------------------------------------------------------------------------------


async def test_upload_reopened_with_o_trunc_and_truncated_keeps_only_the_new_bytes(rig: Rig) -> None:
    data, info_hash = make_torrent("Truncated Upload")
    node, first = rig.control.create(CONTROL_INODE, "t.torrent")
    await rig.control.write(first, 0, b"x" * (len(data) + 500))
    second = rig.control.open(node.inode, os.O_WRONLY | os.O_TRUNC)
    assert node.size == 0
    await rig.control.write(second, 0, data + b"tail")
    rig.control.truncate(node.inode, len(data))  # ftruncate(2) through fs.setattr
    await rig.control.flush(second)
    await rig.control.release(second)  # not the last handle: still open, nothing sent
    assert rig.control.lookup(CONTROL_INODE, "t.torrent") is node
    assert await rig.control.read(first, 0, len(data) + 100) == data
    await rig.control.release(first)
    assert rig.control.lookup(CONTROL_INODE, "t.torrent") is None
    assert [(c.origin, c.entries) for c in rig.changes] == [(UPLOAD_GONE, [(CONTROL_INODE, "t.torrent")])]
    await rig.finished(1)
    assert info_hash in rig.hashes()


async def test_a_half_written_upload_closes_cleanly_and_a_broken_one_does_not(rig: Rig) -> None:
    data, _ = make_torrent("Half")
    _, handle = rig.control.create(CONTROL_INODE, "half.torrent")
    await rig.control.write(handle, 0, data[:40])
    await rig.control.flush(handle)  # a beginning of a .torrent: no error yet
    await rig.control.write(handle, 0, b"Q")  # overwrites the leading "d": nothing can make this valid
    assert (await refused(rig.control.flush(handle))).errno == errno.EINVAL
    await rig.control.release(handle)
    queue = rig.control.queue_status()
    assert (queue["batches"], queue["items"], queue["upload_bytes"], queue["uploads_open"]) == (0, 0, 0, 0)


async def test_uploads_in_flight_share_one_memory_bound(emulator: Emulator, tmp_path: Path) -> None:
    bound = 3 * 1024 * 1024
    async for rig in make_rig(emulator, tmp_path, upload_memory=bound):
        handles = [rig.control.create(CONTROL_INODE, f"u{i}.torrent")[1] for i in range(5)]
        chunk = b"\0" * (256 * 1024)
        written = 0
        for handle in handles:
            for off in range(0, 1024 * 1024, len(chunk)):
                try:
                    await rig.control.write(handle, off, chunk)
                except FsError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
                written += len(chunk)
        assert written == bound and rig.control.queue_status()["upload_bytes"] == bound
        # One file stays within its own cap, whatever the total allows.
        assert (await refused(rig.control.write(handles[-1], MAX_UPLOAD_BYTES, b"x"))).errno == errno.EFBIG
        for handle in handles:
            await rig.control.release(handle)
        assert rig.control.queue_status()["upload_bytes"] == 0 and rig.control.queue_status()["uploads_open"] == 0
        # Freed memory is usable again.
        _, handle = rig.control.create(CONTROL_INODE, "after.torrent")
        await rig.control.write(handle, 0, chunk)
        await rig.control.release(handle)


async def test_the_bencode_crash_file_is_refused(rig: Rig) -> None:
    before = rig.hashes()
    _, handle = rig.control.create(CONTROL_INODE, "crash.torrent")
    await rig.control.write(handle, 0, b"dli1eei1ee")
    error = await refused(rig.control.flush(handle))
    assert error.errno == errno.EINVAL and "not a string" in error.reason
    await rig.control.release(handle)
    assert rig.control.queue_status()["batches"] == 0 and rig.hashes() == before


async def test_status_is_read_only_and_control_files_only_truncate_to_zero(rig: Rig) -> None:
    status_inode = rig.control.cache.inode_for("ctl:status")
    with pytest.raises(FsError) as caught:
        rig.control.open(status_inode, os.O_WRONLY)
    assert caught.value.errno == errno.EACCES
    with pytest.raises(FsError) as caught:
        rig.control.truncate(status_inode, 0)
    assert caught.value.errno == errno.EACCES
    add_inode = rig.control.cache.inode_for("ctl:add")
    rig.control.truncate(add_inode, 0)  # `echo x > .rdfs/add` truncates first
    with pytest.raises(FsError) as caught:
        rig.control.truncate(add_inode, 10)
    assert caught.value.errno == errno.EINVAL



# --- junk into every control file: only FsError leaves a handler -----------------------------

_JUNK = st.lists(
    st.tuples(
        st.sampled_from(["add", "delete", "refresh", "status", "upload"]),
        st.sampled_from(["write", "flush", "release", "truncate", "read"]),
        st.binary(max_size=64) | st.sampled_from([b"\n", b"junk\n", b"torrents/x", b"d", b"dli1eei1ee", b"\xff\n"]),
        st.integers(0, 2**62),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_JUNK)
def test_junk_into_every_control_file_only_ever_raises_fs_error(tmp_path: Path, operations) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        # Nothing of this may ever be sent: the API address is one that refuses connections.
        async with RDClient(api_url="http://127.0.0.1:9/rest/1.0", auth=StaticToken("t"), retry=NO_WAIT) as client:
            cache = Cache.open(tmp_path / os.urandom(6).hex(), 1)
            try:
                control = Control(Namespace(cache), Syncer(client, cache), client, cache)
                handles: dict[str, Handle] = {}
                for kind, operation, data, offset in operations:
                    handle = handles.get(kind)
                    try:
                        if handle is None:
                            handle = handles[kind] = (
                                control.create(CONTROL_INODE, "j.torrent")[1]
                                if kind == "upload"
                                else control.open(cache.inode_for(f"ctl:{kind}"), os.O_RDWR if kind != "status" else 0)
                            )
                        if operation == "write":
                            await control.write(handle, offset % (MAX_UPLOAD_BYTES + 2), data)
                        elif operation == "flush":
                            await control.flush(handle)
                        elif operation == "read":
                            assert isinstance(await control.read(handle, offset, 4096), bytes)
                        elif operation == "truncate":
                            control.truncate(handle.inode, offset % (MAX_UPLOAD_BYTES + 2))
                        else:
                            del handles[kind]
                            await control.release(handle)
                    except FsError as exc:
                        assert exc.errno in (errno.EINVAL, errno.EACCES, errno.EFBIG, errno.ENOSPC, errno.ENOENT)
                for handle in handles.values():
                    await control.release(handle)
                queue = control.queue_status()
                assert (queue["batches"], queue["uploads_open"], queue["upload_bytes"]) == (0, 0, 0)
            finally:
                cache.close()

    trio.run(main)


async def test_rm_is_not_held_up_by_a_batch_and_has_a_deadline(rig: Rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rdfs.control.files

    await rig.control.syncer.sync_once()
    node = rig.control.namespace.lookup(TORRENTS_INODE, "Already Here")
    assert node is not None
    rig.emulator.faults.api_latency = 5.0  # RD answers nothing in time
    monkeypatch.setattr(rdfs.control.files, "REMOVE_TIMEOUT", 0.2)
    error = await refused(rig.control.remove_node(node))
    assert error.errno == errno.EIO and "no answer within" in error.reason
    rig.emulator.faults.api_latency = 0.0
    assert "no answer within" in (await rig.control.status())["recent_errors"][-1]["error"]
    # While a long add batch runs (its adds wait here), rm is answered at once.
    gate = trio.Event()
    original = rig.control.client.add_magnet

    async def slow_add(uri: str):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(uri)

    monkeypatch.setattr(rig.control.client, "add_magnet", slow_add)
    handle = rig.open("add")
    await write_lines(rig, handle, f"{fake_hash('held')}\n".encode())
    await rig.control.release(handle)
    with trio.fail_after(WAIT):
        while rig.control.queue_status()["current"] is None:
            await trio.sleep(0.01)
    monkeypatch.setattr(rdfs.control.files, "REMOVE_TIMEOUT", WAIT)
    await rig.control.remove_node(node)
    assert node.torrent_id not in rig.emulator.torrent_ids()
    assert rig.control.queue_status()["current"] is not None  # the batch is still running
    gate.set()
    await rig.finished(1)
    assert fake_hash("held") in rig.hashes()


async def test_an_add_batch_stopped_half_way_is_rolled_back(rig: Rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rdfs.control.actions import add_items, parse_magnet

    before = rig.hashes()
    client = rig.control.client
    original, calls = client.add_magnet, []

    async def add_then_hang(uri: str):  # type: ignore[no-untyped-def]
        calls.append(uri)
        if len(calls) > 1:
            await trio.sleep_forever()  # the stop arrives while RD handles the second add
        return await original(uri)

    monkeypatch.setattr(client, "add_magnet", add_then_hang)
    items = [parse_magnet(fake_hash(f"stopped {i}")) for i in range(3)]
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: add_items(client, items))
            with trio.fail_after(WAIT):
                while len(calls) < 2:
                    await trio.sleep(0.01)
            assert items[0].info_hash in rig.hashes()
            scope.cancel()
    assert rig.hashes() == before
