"""A mount made by an ordinary user (issue 14 item 5), through the kernel's permission checks
(``default_permissions``; the other tests run as root, which bypasses them), and a second user
reaching it through ``--allow-other``.

The test makes both users, opens ``/dev/fuse`` to them and allows ``user_allow_other`` in
``/etc/fuse.conf`` for its duration, and puts everything back afterwards, also when it fails."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from rdfs.emulator import FileSpec
from rdfs.emulator.bencode import encode
from tests import mountutil

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parents[2]
FUSE_DEVICE = Path("/dev/fuse")
FUSE_CONF = Path("/etc/fuse.conf")
# API endpoints an add, a delete or a streaming xattr would call (syncs only list).
ACTION_ENDPOINTS = ("addTorrent", "addMagnet", "delete", "streaming", "unrestrict", "selectFiles")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        """``argv`` as this user (no shell, a clean environment), output captured."""
        env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
        return subprocess.run(
            list(argv), user=self.uid, group=self.gid, extra_groups=[], env=env, capture_output=True, timeout=60, **kwargs
        )


@contextlib.contextmanager
def made_user(label: str) -> Iterator[User]:
    name = f"rdfs-{label}-{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@contextlib.contextmanager
def fuse_for_users() -> Iterator[None]:
    """/dev/fuse usable by everyone and ``user_allow_other`` on, restored afterwards."""
    fusermount = shutil.which("fusermount3")
    assert fusermount and os.stat(fusermount).st_mode & 0o4000, "fusermount3 (setuid root, package fuse3) is needed"
    mode = FUSE_DEVICE.stat().st_mode & 0o7777
    conf = FUSE_CONF.read_bytes() if FUSE_CONF.exists() else None
    try:
        FUSE_DEVICE.chmod(0o666)
        lines = (conf or b"").decode().splitlines()
        if "user_allow_other" not in (line.strip() for line in lines):
            FUSE_CONF.write_text("\n".join(lines + ["user_allow_other"]) + "\n")
        yield
    finally:
        FUSE_DEVICE.chmod(mode)
        if conf is None:
            FUSE_CONF.unlink(missing_ok=True)
        else:
            FUSE_CONF.write_bytes(conf)


def torrent_bytes(name: str, size: int = 123_456) -> tuple[bytes, str]:
    """A small single-file .torrent and its info hash."""
    info = {"name": name, "piece length": 16384, "length": size, "pieces": b"\0" * 20 * (size // 16384 + 1)}
    return encode({"announce": "http://tracker.invalid/announce", "info": info}), hashlib.sha1(encode(info)).hexdigest()


def hashes(control) -> set[str]:
    return {control.torrent_json(t)["hash"] for t in control.torrent_ids()}


def action_calls(control) -> dict[str, int]:
    return {k: v for k, v in control.counters.items() if any(e in k for e in ACTION_ENDPOINTS)}


def python_for_users() -> tuple[str, str]:
    """An interpreter other users may run (the venv's may live under /root) of the venv's
    version, and the PYTHONPATH that gives it rdfs and its dependencies from the venv."""
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/usr/bin/python3.11"):
        if not os.access(candidate, os.X_OK):
            continue
        found = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if found.stdout.strip() == str(tuple(sys.version_info[:2])):
            return candidate, f"{REPO}:{site}"
    raise AssertionError(f"no system python {sys.version_info[:2]} for the test users")


@contextlib.contextmanager
def traversable(path: Path) -> Iterator[None]:
    """Let other users traverse the directories down to ``path`` (a clone in a 0700 mktemp dir
    holds the venv and the sources they run); the modes are restored after."""
    changed = []
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode & 0o7777
        if not mode & 0o001:
            directory.chmod(mode | 0o001)
            changed.append((directory, mode))
    try:
        yield
    finally:
        for directory, mode in changed:
            directory.chmod(mode)


@pytest.fixture
def users() -> Iterator[tuple[User, User]]:
    with traversable(Path(REPO)), fuse_for_users(), made_user("owner") as owner, made_user("other") as other:
        yield owner, other


@pytest.fixture
def base(users) -> Iterator[Path]:
    """A directory both users can reach; the owner's mountpoint, cache and home in it."""
    owner, _ = users
    path = Path(tempfile.mkdtemp(prefix="rdfs-users-", dir="/tmp"))
    try:
        path.chmod(0o755)
        for sub in ("mnt", "cache", "home"):
            (path / sub).mkdir()
            os.chown(path / sub, owner.uid, owner.gid)
        yield path
    finally:
        mountutil.force_unmount(path / "mnt")
        shutil.rmtree(path, ignore_errors=True)


def test_non_root_owner_and_another_user(emulator_proc, users, base: Path) -> None:
    owner, other = users
    control = emulator_proc.control
    movie = control.add_torrent("Movie (2024)", [FileSpec("/movie.mkv", 200_000), FileSpec("/Subs/en.srt", 50)])
    victim = control.add_torrent("Victim", [FileSpec("/v.mkv", 1000), FileSpec("/extra/v.nfo", 10)])
    data, info_hash = torrent_bytes("Owner Upload")
    upload = base / "home" / "owner.torrent"
    upload.write_bytes(data)
    upload.chmod(0o644)
    python, pythonpath = python_for_users()
    home = str(base / "home")
    env = {"HOME": home, "XDG_CONFIG_HOME": home, "XDG_STATE_HOME": home, "PYTHONPATH": pythonpath}
    with mountutil.mount(
        emulator_proc.api_url, emulator_proc.token, base, "--allow-other", "--allow-delete", "--sync-interval", "600",
        env=env, popen={"user": owner.uid, "group": owner.gid, "extra_groups": [], "executable": python},
    ) as mounted:  # fmt: skip
        mnt = mounted.path
        assert psutil.Process(mounted.process.pid).uids().effective == owner.uid  # not root: modes apply
        mountutil.wait_for(lambda: (mnt / "torrents" / "Victim").exists(), what="first sync")
        media = mnt / "torrents" / "Movie (2024)" / "movie.mkv"
        assert os.stat(media).st_uid == owner.uid

        # Another user: lists and reads media, byte for byte.
        listing = other.run("ls", str(mnt / "torrents"))
        assert listing.returncode == 0 and b"Movie (2024)" in listing.stdout.split(b"\n"), listing
        read = other.run("cat", str(media))
        assert read.returncode == 0 and read.stdout == control.file_bytes(movie, 1), read.stderr
        # ... and nothing else, without an API call on their behalf.
        before, accounts = action_calls(control), hashes(control)
        refused = {
            "cp upload": other.run("cp", str(upload), str(mnt / ".rdfs" / "other.torrent")),
            "add": other.run("sh", "-c", f"echo {'ab' * 20} > '{mnt}/.rdfs/add'"),
            "delete": other.run("sh", "-c", f"echo torrents/Victim > '{mnt}/.rdfs/delete'"),
            "rm -r": other.run("rm", "-rf", str(mnt / "torrents" / "Victim")),
            "status": other.run("cat", str(mnt / ".rdfs" / "status")),
        }
        for what, result in refused.items():
            assert result.returncode != 0 and b"Permission denied" in result.stderr, (what, result)
        probe = (
            "import os, sys\n"
            "for name in ('user.rdfs.transcode', 'user.rdfs.mediainfo'):\n"
            "    try:\n        os.getxattr(sys.argv[1], name)\n    except OSError as e:\n        print(e.errno)\n"
            "    else:\n        print('read')\n"
        )
        xattrs = other.run(python, "-c", probe, str(media))
        assert xattrs.stdout.split() == [b"13", b"13"], xattrs  # EACCES, from rdfs itself (the file is 0444)
        file_id = "import os, sys; print(os.getxattr(sys.argv[1], 'user.rdfs.file_id').decode())"
        assert other.run(python, "-c", file_id, str(media)).stdout.strip() == b"1"
        assert action_calls(control) == before
        assert hashes(control) == accounts and (mnt / "torrents" / "Victim").exists()
        assert "refused for uid %d" % other.uid in mounted.log()

        # The owner, not root: an upload adds, rm -r deletes (--allow-delete).
        copied = owner.run("cp", str(upload), str(mnt / ".rdfs" / "owner.torrent"))
        assert copied.returncode == 0, copied
        mountutil.wait_for(lambda: info_hash in hashes(control), what="the owner's upload on RD")
        removed = owner.run("rm", "-r", str(mnt / "torrents" / "Victim"))
        assert removed.returncode == 0, removed
        mountutil.wait_for(lambda: victim not in control.torrent_ids(), what="the owner's rm -r on RD")
        assert movie in control.torrent_ids()
        assert not (mnt / "torrents" / "Victim").exists()
