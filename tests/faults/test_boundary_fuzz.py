"""A bounded fuzz run through a real FUSE mount: four threads throw random requests with random
names (non-UTF-8, too long, control characters) at it for FUZZ_SECONDS. The mount stays up, every
byte read is the emulator's, the account is unchanged, and the log holds no traceback (the
FUSE boundary logs an unexpected failure with one; mountutil fails the test on it)."""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from rdfs.fuse.mount import is_fuse_mount
from tests import mountutil

pytestmark = [pytest.mark.mount, pytest.mark.slow]

FUZZ_SECONDS = float(os.environ.get("RDFS_FUZZ_SECONDS", "45"))
THREADS = 4
FILES = {"a.bin": 700_001, "b.bin": 3000, "sub/c.bin": 1024 * 1024 + 7, "empty.bin": 0}
ODD_NAMES = [b"\xff", b"\xed\xa0\x80", b"caf\xe9", b"\x80", b"n" * 255, b"n" * 256, b"x" * 1500, b"\x1b[31m", b"."]
FLAGS = [
    os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND, os.O_RDONLY | os.O_DIRECTORY,
    os.O_RDONLY | os.O_NOATIME, os.O_RDONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_DIRECT, os.O_RDONLY | os.O_SYNC,
    os.O_WRONLY | os.O_CREAT, os.O_RDWR | os.O_CREAT | os.O_EXCL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
]  # fmt: skip
XATTRS = [
    "user.rdfs.torrent_id", "user.rdfs.file_id", "user.rdfs.hash", "user.rdfs.mediainfo", "user.x", "security.selinux",
    "system.posix_acl_access", "trusted.x", "security.capability",
]  # fmt: skip


class Fuzzer:
    """One thread's random requests; ``failures`` collects what must never happen."""

    def __init__(self, root: Path, sources: dict[str, bytes], seed: int, deadline: float) -> None:
        self.root = os.fsencode(root)
        self.sources = sources
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.failures: list[str] = []
        self.calls = 0
        self.bytes_checked = 0

    def name(self) -> bytes:
        rng = self.rng
        choice = rng.random()
        if choice < 0.3:
            return rng.choice(ODD_NAMES)
        if choice < 0.6:
            return bytes(rng.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(rng.randint(1, 40)))
        return rng.choice([b"a.bin", b"sub", b"c.bin", b"Fuzz A", b"Fuzz B", b"add", b"x.torrent", b"zz.torrent"])

    def path(self) -> bytes:
        rng = self.rng
        base = rng.choice([b"", b"torrents", b"torrents/Fuzz A", b"torrents/Fuzz A/sub", b".rdfs", b"downloads"])
        parts = [self.root, base] if base else [self.root]
        if rng.random() < 0.8:
            parts.append(self.name())
        return b"/".join(parts)

    def media(self) -> tuple[str, bytes]:
        rel = self.rng.choice(sorted(self.sources))
        return rel, os.path.join(self.root, b"torrents/Fuzz A", os.fsencode(rel))

    def run(self) -> None:
        ops = [
            self.stat, self.listdir, self.read_exact, self.read_exact, self.open_flags, self.xattrs,
            self.create, self.control_junk, self.change, self.readdir_odd,
        ]  # fmt: skip
        while time.monotonic() < self.deadline and not self.failures:
            op = self.rng.choice(ops)
            try:
                op()
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:
                    self.failures.append(f"{op.__name__}: the mount is gone ({exc})")
            except Exception as exc:  # noqa: BLE001 - anything but OSError is the test's own bug or a lie
                self.failures.append(f"{op.__name__}: {exc!r}")
            self.calls += 1

    def stat(self) -> None:
        os.lstat(self.path())

    def listdir(self) -> None:
        os.listdir(self.path())

    def readdir_odd(self) -> None:
        for entry in os.scandir(os.path.join(self.root, b"torrents")):
            entry.stat()

    def read_exact(self) -> None:
        rel, path = self.media()
        want = self.sources[rel]
        size = len(want)
        offset = self.rng.choice([0, max(0, size - 1), size, size + 5, 2**40, 2**62, self.rng.randint(0, max(size, 1))])
        length = self.rng.choice([0, 1, 4096, 65536, 131072, 1 << 20])
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if got != want[offset : offset + length]:
            self.failures.append(f"read of {rel} at {offset}+{length}: wrong bytes ({len(got)} bytes)")
        self.bytes_checked += len(got)

    def open_flags(self) -> None:
        path = self.rng.choice([self.media()[1], self.path()])
        fd = os.open(path, self.rng.choice(FLAGS), 0o644)
        try:
            if self.rng.random() < 0.5:
                os.read(fd, 100)
        finally:
            os.close(fd)

    def xattrs(self) -> None:
        path = self.rng.choice([self.media()[1], self.path()])
        action = self.rng.random()
        if action < 0.5:
            os.getxattr(path, self.rng.choice(XATTRS + [os.fsdecode(self.name())[:200]]))
        elif action < 0.7:
            os.listxattr(path)
        elif action < 0.85:
            os.setxattr(path, self.rng.choice(XATTRS), b"v")
        else:
            os.removexattr(path, self.rng.choice(XATTRS))

    def create(self) -> None:
        """A new file anywhere, sometimes an upload into .rdfs/ that is not a valid .torrent."""
        if self.rng.random() < 0.5:
            path = os.path.join(self.root, b".rdfs", self.rng.choice([b"fuzz.torrent", self.name() + b".torrent"]))
        else:
            path = self.path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self.rng.choice([b"", b"de", b"x" + self.rng.randbytes(self.rng.randint(0, 3000))]))
        finally:
            os.close(fd)

    def control_junk(self) -> None:
        """Lines that are no magnet, hash, id or path of the account into the control files."""
        target = self.rng.choice([b"add", b"delete", b"refresh", b"status"])
        junk = self.rng.choice([
            b"junk-" + self.rng.randbytes(8).hex().encode() + b"zz\n",
            b"torrents/zz-no-such-" + self.rng.randbytes(4).hex().encode() + b"\n",
            b"\xff\xfe\n", b"magnet:?xt=urn:btih:zz\n", b"\x00" * 64, b"no newline",
        ])  # fmt: skip
        fd = os.open(os.path.join(self.root, b".rdfs", target), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, junk)
        finally:
            os.close(fd)

    def change(self) -> None:
        rng = self.rng
        action = rng.choice(["mkdir", "rmdir", "unlink", "rename", "symlink", "link", "truncate", "chmod", "utime"])
        if action == "mkdir":
            os.mkdir(self.path())
        elif action == "rmdir":
            os.rmdir(self.path())
        elif action == "unlink":
            os.unlink(self.path())
        elif action == "rename":
            os.rename(self.path(), self.path())
        elif action == "symlink":
            os.symlink(b"/etc/passwd", self.path())
        elif action == "link":
            os.link(self.media()[1], self.path())
        elif action == "truncate":
            os.truncate(rng.choice([self.media()[1], self.path()]), 0)
        elif action == "chmod":
            os.chmod(self.media()[1], 0o777)
        else:
            os.utime(self.path(), (0, 0))


@pytest.fixture
def account(emulator_proc):
    control = emulator_proc.control
    torrent = control.add_torrent("Fuzz A", [FileSpec(f"/{rel}", size) for rel, size in FILES.items()])
    control.add_torrent("Fuzz B", [FileSpec("/x.bin", 65536)])
    sources = {rel: control.file_bytes(torrent, index, 0, size) for index, (rel, size) in enumerate(FILES.items(), 1)}
    assert [len(v) for v in sources.values()] == list(FILES.values())
    return control, sources


def test_random_requests_from_four_threads(emulator_proc, account, tmp_path: Path) -> None:
    control, sources = account
    before = sorted(control.torrent_ids())
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Fuzz A" / "sub").exists(), what="first sync")
        deadline = time.monotonic() + FUZZ_SECONDS
        fuzzers = [Fuzzer(mounted.path, sources, seed, deadline) for seed in range(THREADS)]
        threads = [threading.Thread(target=f.run, name=f"fuzz-{i}") for i, f in enumerate(fuzzers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=FUZZ_SECONDS + 120)
        assert not any(t.is_alive() for t in threads), "a request hung"
        failures = [f for fuzzer in fuzzers for f in fuzzer.failures]
        assert failures == [], failures[:20]
        # Still mounted, still the same tree and bytes, nothing added or deleted upstream.
        assert mounted.process.poll() is None and is_fuse_mount(mounted.path)
        assert {"Fuzz A", "Fuzz B"} <= set(os.listdir(mounted.path / "torrents"))
        for rel, want in sources.items():
            assert (mounted.path / "torrents" / "Fuzz A" / rel).read_bytes() == want, rel
        print(f"{sum(f.calls for f in fuzzers)} requests, {sum(f.bytes_checked for f in fuzzers)} bytes checked")
        assert sum(f.calls for f in fuzzers) > 10 * FUZZ_SECONDS
        assert sum(f.bytes_checked for f in fuzzers) > 0
        assert sorted(control.torrent_ids()) == before
        assert "failed unexpectedly" not in mounted.log()
