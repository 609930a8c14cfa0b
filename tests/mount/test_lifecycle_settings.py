"""Every bad setting gets one line, from every source (issue 14 item 7).

Each case runs the real `rdfs mount` against a live emulator: had the setting been taken, the
mount would start. It must instead exit non-zero with exactly one line on stderr, no traceback,
no cache directory created and nothing mounted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rdfs.fuse.mount import is_fuse_mount
from tests import mountutil

pytestmark = pytest.mark.mount

MNT = "{mnt}"  # replaced by the test's mountpoint


@dataclass
class Case:
    """A bad setting: TOML text, environment variables or flags, and a fragment of the message."""

    expect: str
    toml: str | bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


FILE_CASES = {
    "bool-as-number": Case("rate_limit must be a whole number", toml="rate_limit = true"),
    "number-as-bool": Case("allow_other must be true or false", toml="allow_other = 1"),
    "float-as-int": Case("rate_limit must be a whole number", toml="rate_limit = 2.5"),
    "string-as-number": Case("sync_interval must be a number", toml='sync_interval = "fast"'),
    "nan": Case("sync_interval must be a finite number", toml="sync_interval = nan"),
    "infinity": Case("link_ttl must be a finite number", toml="link_ttl = inf"),
    "negative-interval": Case("sync_interval must not be negative", toml="sync_interval = -1"),
    "negative-cache": Case("chunk_cache_mb must not be negative", toml="chunk_cache_mb = -1"),
    "negative-probe-cache": Case("probe_cache_mb must not be negative", toml="probe_cache_mb = -4"),
    "negative-probe-size": Case("probe_head_mb must not be negative", toml="probe_head_mb = -2"),
    "negative-ttl": Case("link_ttl must not be negative", toml="link_ttl = -5.0"),
    "zero-interval": Case("sync_interval must be positive", toml="sync_interval = 0"),
    "huge": Case("chunk_cache_mb must be at most", toml="chunk_cache_mb = 100000000000000000"),
    "log-level": Case("log_level must be one of", toml='log_level = "LOUD"'),
    "plain-http": Case("refusing plain HTTP", toml='api_url = "http://example.com/rest/1.0"'),
    "not-http": Case("not an HTTP(S) URL", toml='oauth_url = "ftp://example.com/oauth"'),
    "no-host": Case("not an HTTP(S) URL", toml='api_url = "https:///rest/1.0"'),
    "broken-ipv6": Case("Invalid IPv6 URL", toml='api_url = "https://[::1/rest"'),
    "selection": Case("selection must be 'all' or 'video'", toml='selection = "some"'),
    "downloads": Case("downloads must be 'own' or 'all'", toml='downloads = "mine"'),
    "downloads-type": Case("downloads must be a string", toml="downloads = true"),
    "busy-poll": Case("busy_poll_us must be within 0 and 1000", toml="busy_poll_us = 5000"),
    "unknown": Case("unknown setting(s): sync_intervall", toml="sync_intervall = 5"),
    "not-toml": Case("config.toml", toml="sync_interval = = 5"),
    "not-utf8": Case("is not UTF-8 text", toml=b"sync_interval = 5\n# caf\xe9\n"),
    "cache-inside": Case("is inside the mountpoint", toml=f'cache_dir = "{MNT}/cache"'),
    "log-inside": Case("is inside the mountpoint", toml=f'log_file = "{MNT}/rdfs.log"'),
}

ENV_CASES = {
    "nan": Case("RDFS_SYNC_INTERVAL: sync_interval must be a finite number", env={"RDFS_SYNC_INTERVAL": "nan"}),
    "bool-as-number": Case("RDFS_RATE_LIMIT: invalid value", env={"RDFS_RATE_LIMIT": "true"}),
    "number-as-bool": Case("RDFS_ALLOW_OTHER: allow_other must be true or false", env={"RDFS_ALLOW_OTHER": "2"}),
    "negative-cache": Case("chunk_cache_mb must not be negative", env={"RDFS_CHUNK_CACHE_MB": "-1"}),
    "infinity": Case("link_ttl must be a finite number", env={"RDFS_LINK_TTL": "inf"}),
    "fraction-nan": Case("max_delete_fraction must be a finite number", env={"RDFS_MAX_DELETE_FRACTION": "nan"}),
    "log-level": Case("log_level must be one of", env={"RDFS_LOG_LEVEL": "LOUD"}),
    "downloads": Case("downloads must be 'own' or 'all'", env={"RDFS_DOWNLOADS": "x"}),
    "busy-poll": Case("RDFS_BUSY_POLL_US: busy_poll_us must not be negative", env={"RDFS_BUSY_POLL_US": "-1"}),
    "plain-http": Case("refusing plain HTTP", env={"RDFS_API_URL": "http://example.com/rest/1.0"}),
    "cache-inside": Case("is inside the mountpoint", env={"RDFS_CACHE_DIR": f"{MNT}/c"}),
    "log-inside": Case("is inside the mountpoint", env={"RDFS_LOG_FILE": f"{MNT}/x.log"}),
}

FLAG_CASES = {
    "nan": Case("sync_interval must be a finite number", flags=("--sync-interval", "nan")),
    "infinity": Case("sync_interval must be a finite number", flags=("--sync-interval", "inf")),
    "negative-interval": Case("sync_interval must not be negative", flags=("--sync-interval", "-1")),
    "negative-rate": Case("rate_limit must not be negative", flags=("--rate-limit", "-5")),
    "bool-as-number": Case("argument --rate-limit: invalid int value", flags=("--rate-limit", "true")),
    "negative-cache": Case("chunk_cache_mb must not be negative", flags=("--chunk-cache-mb", "-1")),
    "plain-http": Case("refusing plain HTTP", flags=("--api-url", "http://example.com/rest/1.0")),
    "broken-ipv6": Case("Invalid IPv6 URL", flags=("--api-url", "http://[::1/rest")),
    "empty-cache-dir": Case("argument --cache-dir: an empty path", flags=("--cache-dir", "")),
    "cache-inside": Case("is inside the mountpoint", flags=("--cache-dir", f"{MNT}/cache")),
    "cache-is-mountpoint": Case("is inside the mountpoint", flags=("--cache-dir", MNT)),
    "log-inside": Case("is inside the mountpoint", flags=("--log-file", f"{MNT}/sub/rdfs.log")),
    "missing-config": Case("does not exist", flags=("--config", "/nonexistent/rdfs.toml")),
    "config-is-dir": Case("Is a directory", flags=("--config", "/")),
    "downloads": Case("argument --downloads: invalid choice", flags=("--downloads", "mine")),
}


def run_mount(tmp_path: Path, emulator, case: Case, *, foreground: bool = True) -> subprocess.CompletedProcess:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    config = tmp_path / "config.toml"

    def expand(text: str) -> str:
        return text.replace(MNT, str(mountpoint))

    if isinstance(case.toml, bytes):
        config.write_bytes(case.toml)
    elif case.toml is not None:
        config.write_text(expand(case.toml))
    env = dict(
        os.environ,
        RDFS_CONFIG=str(config),
        # The environment outranks the file: the file's api_url cases must not be overridden.
        RDFS_API_URL="" if "api_url" in str(case.toml) else emulator.api_url,
        RD_API_TOKEN=emulator.token,
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
    )
    env.update({name: expand(value) for name, value in case.env.items()})
    argv = [sys.executable, "-m", "rdfs", "mount", *(["--foreground"] if foreground else [])]
    if "--cache-dir" not in case.flags and "RDFS_CACHE_DIR" not in case.env and "cache_dir" not in str(case.toml):
        argv += ["--cache-dir", str(tmp_path / "cache")]
    argv += [expand(flag) for flag in case.flags] + [str(mountpoint)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the bad setting was taken: rdfs mounted with {case}") from None
    finally:
        mountutil.force_unmount(mountpoint)


def assert_refused(result: subprocess.CompletedProcess, tmp_path: Path, case: Case) -> None:
    assert result.returncode != 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rdfs: error: ") and case.expect in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    mountpoint = tmp_path / "mnt"
    assert not is_fuse_mount(mountpoint) and os.listdir(mountpoint) == []
    for created in ("cache", "xdg-cache"):
        assert not (tmp_path / created).exists(), f"{created} created for a refused setting"


@pytest.mark.parametrize("name", FILE_CASES)
def test_bad_setting_in_the_config_file(emulator_module, tmp_path, name):
    case = FILE_CASES[name]
    assert_refused(run_mount(tmp_path, emulator_module, case), tmp_path, case)


@pytest.mark.parametrize("name", ENV_CASES)
def test_bad_setting_in_the_environment(emulator_module, tmp_path, name):
    case = ENV_CASES[name]
    assert_refused(run_mount(tmp_path, emulator_module, case), tmp_path, case)


@pytest.mark.parametrize("name", FLAG_CASES)
def test_bad_setting_as_a_flag(emulator_module, tmp_path, name):
    case = FLAG_CASES[name]
    assert_refused(run_mount(tmp_path, emulator_module, case), tmp_path, case)


@pytest.mark.parametrize("name", ["nan", "cache-inside", "log-level"])
def test_bad_setting_refused_before_daemonising(emulator_module, tmp_path, name):
    case = {**FLAG_CASES, **ENV_CASES}[name]
    assert_refused(run_mount(tmp_path, emulator_module, case, foreground=False), tmp_path, case)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only filesystem: unwritable for root too."""
    path = tmp_path / "ro"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize(
    "flags, expect",
    [
        (("--cache-dir", "{ro}"), "cannot write in the cache dir"),
        (("--cache-dir", "{ro}/cache"), "cannot create the cache dir"),
        (("--log-file", "{ro}/rdfs.log"), "cannot write in the log file directory"),
    ],
)
def test_unwritable_cache_dir_or_log_file(emulator_module, tmp_path, read_only_dir, flags, expect):
    case = Case(expect, flags=tuple(f.replace("{ro}", str(read_only_dir)) for f in flags))
    result = run_mount(tmp_path, emulator_module, case)
    assert_refused(result, tmp_path, case)
    assert "Read-only file system" in result.stderr
    assert os.listdir(read_only_dir) == []


def test_cache_dir_that_is_a_file(emulator_module, tmp_path):
    (tmp_path / "afile").write_text("x")
    for cache_dir in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        case = Case("afile is not a directory", flags=("--cache-dir", str(cache_dir)))
        assert_refused(run_mount(tmp_path, emulator_module, case), tmp_path, case)


def test_a_failing_fuse_mount_is_one_line_with_the_kernels_reason(emulator_module, tmp_path):
    """fuse_session_mount failing: libfuse's own reason first (here the kernel refuses a
    /dev/fuse that is not the FUSE device), in a private mount namespace of the test."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    script = 'mount --bind /dev/null /dev/fuse && exec "$@"'
    argv = [
        "unshare", "--mount", "sh", "-c", script, "sh", sys.executable, "-m", "rdfs", "mount", "--foreground",
        "--cache-dir", str(tmp_path / "cache"), "--log-file", str(tmp_path / "rdfs.log"), str(mountpoint),
    ]  # fmt: skip
    env = dict(os.environ, RDFS_CONFIG=str(tmp_path / "none.toml"), RDFS_API_URL=emulator_module.api_url,
               RD_API_TOKEN=emulator_module.token)  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"rdfs: error: cannot mount {mountpoint}: fuse: mount failed: Invalid argument (fuse_session_mount failed)"
    ]
    assert not is_fuse_mount(mountpoint) and os.listdir(mountpoint) == []
    assert "Traceback" not in (tmp_path / "rdfs.log").read_text()


@pytest.mark.parametrize(
    "argv, expect",
    [
        (("add", "--wait", "nan", "0123456789abcdef0123456789abcdef01234567"), "argument --wait: must be a finite"),
        (("login", "--poll-interval", "-1"), "argument --poll-interval: must be a finite"),
        (("ls", "--api-url", "http://example.com/rest/1.0"), "refusing plain HTTP"),
        (("user", "--config", "/nonexistent.toml"), "does not exist"),
        (("status", ""), "argument mountpoint: an empty path"),
        (("umount", "/nonexistent/mnt"), "is not a FUSE mount"),
        (("mount",), "the following arguments are required: mountpoint"),
        (("bogus",), "invalid choice"),
    ],
)
def test_other_commands_give_one_line(tmp_path, argv, expect):
    env = dict(os.environ, RDFS_CONFIG=str(tmp_path / "none.toml"), RD_API_TOKEN="x" * 20,
               XDG_CONFIG_HOME=str(tmp_path / "config"))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "rdfs", *argv], capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rdfs: error: ") and expect in lines[0], result.stderr
