"""mountinfo lines parsed into mount entries (no mount needed)."""

from __future__ import annotations

from rdfs.fuse.mountpoint import parse_line


def test_an_rdfs_mount_with_an_escaped_space() -> None:
    line = r"36 35 0:51 / /mnt/my\040dir rw,noatime master:1 - fuse.rdfs rdfs rw,user_id=0"
    entry = parse_line(line)
    assert entry is not None
    assert (entry.device, entry.path, entry.fstype) == ("0:51", "/mnt/my dir", "fuse.rdfs")
    assert entry.super_options == {"rw", "user_id=0"} and entry.is_fuse


def test_non_ascii_paths_stay_as_they_are() -> None:
    entry = parse_line("40 35 8:1 / /srv/médias\\134x rw - ext4 /dev/sda1 rw")
    assert entry is not None and entry.path == "/srv/médias\\x" and not entry.is_fuse


def test_a_line_of_another_shape_is_skipped() -> None:
    assert parse_line("") is None
    assert parse_line("36 35 0:51 / /mnt rw no-separator fuse rw") is None
