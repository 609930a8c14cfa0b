"""Configuration in one place: built-in defaults < config file < environment < command-line flags.

The config file is TOML (``$XDG_CONFIG_HOME/rdfs/config.toml``); its top-level keys are the
field names of :class:`Config` (``sync_interval = 30``, ``cache_dir = "/srv/rdfs"`` …).
Environment variables are ``RDFS_<FIELD>`` in upper case, plus ``RD_API_TOKEN`` for the token.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rdfs.api.auth import DEFAULT_OAUTH_URL
from rdfs.api.client import DEFAULT_API_URL, check_base_url


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def config_dir() -> Path:
    """Where credentials and config.toml live (``$XDG_CONFIG_HOME/rdfs``)."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "rdfs"


def default_cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "rdfs"


class ConfigError(Exception):
    """A configuration value is invalid; the message is one line for the user."""


@dataclass
class Config:
    api_url: str = DEFAULT_API_URL
    oauth_url: str = DEFAULT_OAUTH_URL
    token: str | None = field(default=None, repr=False)
    cache_dir: Path = field(default_factory=default_cache_dir)
    sync_interval: float = 15.0
    rate_limit: int = 250  # API requests per minute, shared by everything in one process
    chunk_cache_mb: int = 128  # memory bound of the shared read cache (half of it for read-ahead)
    link_ttl: float = 6 * 3600.0  # assumed lifetime of an unrestricted link (RD publishes none)
    max_delete_fraction: float = (
        0.2  # a removal of more than this fraction of a list is a large one
    )
    # A torrent missing from a complete listing is deleted once a later complete listing
    # confirms it; a large removal (more than small_removal, or max_delete_fraction) must also
    # persist this long.
    delete_confirm_minutes: float = 30.0
    small_removal: int = 3
    sync_stall_minutes: float = 5.0  # a sync running longer is reported stalled (abandoned at 3x)
    allow_other: bool = False
    allow_delete: bool = False  # let `rm -r torrents/<name>` delete upstream
    selection: str = "all"  # files selected when adding a magnet: "all" or "video" (+ subtitles)
    # What downloads/ shows: "own" (the user's hoster downloads; not the /downloads entries every
    # unrestrict of a torrent's link adds) or "all" (every entry of /downloads).
    downloads: str = "own"
    # Direct I/O (False, the default): each application read reaches rdfs as it was made, and rdfs's
    # read-ahead and block cache do the caching; one copy less per byte and no kernel readahead
    # speculating past a media probe's reads (scripts/bench: sequential loopback 492 -> 690 MB/s,
    # scan bytes 2.6x -> 1.45x what ffprobe read). True serves reads through the kernel page cache,
    # the only way a shared memory map (mmap MAP_SHARED) of a file works.
    page_cache: bool = False
    # With page_cache: kernel readahead for the mount's bdi (set after mounting). rdfs's own
    # read-ahead hides the download latency, so this only keeps requests in flight; larger values
    # make the kernel ask far more than a media probe reads (4096 KiB fetched 7.2x, 512 2.6x).
    read_ahead_kb: int = 512
    max_background: int = 64  # FUSE requests the kernel keeps in flight
    # The kernel keeps each directory's listing until a sync changes it (a second walk of the
    # tree costs rdfs nothing). Needs the pyfuse3 scripts/bootstrap builds (patches/); with a
    # stock pyfuse3, or false, every listing is asked of rdfs (opendir, readdir, releasedir).
    dir_cache: bool = True
    # After answering a request from memory, the FUSE loop polls up to this many microseconds for
    # the client's next one before it sleeps: a scanner waiting on each answer (find, a media
    # server) then is not woken from another CPU per request (a walk of the tree ~2x faster).
    # 0 = off; off on one CPU, and with a stock pyfuse3 (patches/pyfuse3-busy-poll.patch).
    busy_poll_us: int = 100
    probe_cache_mb: int = 4096  # disk bound of the persistent head/tail cache (0 = off)
    probe_head_mb: int = 32  # the first MiB of every file read are kept on disk
    probe_tail_mb: int = 16  # and the last MiB
    repair: bool = False  # re-add dead torrents from their hash and swap them in place
    repair_per_hour: int = 6  # at most this many repairs per hour
    log_level: str = "INFO"
    log_file: Path | None = None
    # The file the settings were read from: features read their tables ([views], [hooks]) there.
    config_path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            if item.name != "config_path":
                setattr(self, item.name, _checked(item.name, getattr(self, item.name)))
        self.cache_dir = Path(self.cache_dir).expanduser()
        if self.log_file is not None:
            self.log_file = Path(self.log_file).expanduser()
        for name in (
            "sync_interval",
            "rate_limit",
            "chunk_cache_mb",
            "link_ttl",
            "read_ahead_kb",
            "max_background",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.selection not in ("all", "video"):
            raise ConfigError(f"selection must be 'all' or 'video', got {self.selection!r}")
        if self.downloads not in ("own", "all"):
            raise ConfigError(f"downloads must be 'own' or 'all', got {self.downloads!r}")
        if not 0 < self.max_delete_fraction <= 1:
            raise ConfigError(
                f"max_delete_fraction must be in (0, 1], got {self.max_delete_fraction}"
            )
        if not 0 <= self.delete_confirm_minutes <= 10 * 24 * 60:
            raise ConfigError(
                "delete_confirm_minutes must be within 0 and 14400, "
                f"got {self.delete_confirm_minutes}"
            )
        if not 0 <= self.busy_poll_us <= 1000:
            raise ConfigError(f"busy_poll_us must be within 0 and 1000, got {self.busy_poll_us}")
        if self.small_removal < 0:
            raise ConfigError(f"small_removal must not be negative, got {self.small_removal}")
        if not 0 < self.sync_stall_minutes <= 24 * 60:
            raise ConfigError(
                f"sync_stall_minutes must be within 0 and 1440, got {self.sync_stall_minutes}"
            )
        level = self.log_level.upper()
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        self.log_level = level
        for name in ("api_url", "oauth_url"):
            try:
                check_base_url(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Upper bounds keep every setting in the range the code below it handles (SQLite integers,
# trio deadlines, byte counts derived from MiB): far beyond any useful value, they only stop typos.
MAX_INT = 2**40
MAX_SECONDS = 10 * 365 * 86400.0


def _check_range(name: str, value: float, maximum: float) -> None:
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:.0f}, got {value}")


def _checked(name: str, value: Any) -> Any:
    """``value`` if it has the field's type and a finite, non-negative value, else ConfigError.

    Strict on types: a bool is not a number (``rate_limit = true``) and a number is not a bool.
    """
    if value is None and name in _OPTIONAL:
        return None
    kind = _KINDS[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        _check_range(name, value, MAX_INT)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        _check_range(name, value, MAX_SECONDS)
    elif kind is Path:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ConfigError(f"{name} must be a path, got {value!r}")
        if "\0" in str(value):
            raise ConfigError(f"{name} must not contain a NUL byte")
    elif kind is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "config_path"}
# The type each field holds, from its annotation ("Path | None" -> Path): no default is built
# at import (the default cache dir needs a home directory).
_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}
_KINDS: dict[str, type] = {
    f.name: _TYPES.get(str(f.type).removesuffix(" | None"), object)  # object: not type-checked here
    for f in dataclasses.fields(Config)
    if f.name != "config_path"
}
_OPTIONAL = {f.name for f in dataclasses.fields(Config) if str(f.type).endswith(" | None")}


def _coerce(name: str, value: Any) -> Any:
    """Turn an environment string into the field's type; other values (TOML, flags) are kept as
    they are, to be type-checked strictly by :func:`_checked`."""
    if not isinstance(value, str):
        return value
    kind = _KINDS[name]
    text = value.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"invalid value for {name}: {value!r}") from None
    if kind is Path:
        return Path(value) if value else value
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_table(path: Path | None, name: str) -> dict[str, Any] | None:
    """The ``[name]`` table of the config file (views, hooks …); None when it has none."""
    if path is None or not path.exists():
        return None
    table = _read_toml(path).get(name)
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return table


def load_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = _read_toml(path)
    # Tables ([views] …) belong to other features; plain keys must be known settings.
    unknown = sorted(k for k, v in data.items() if k not in _FIELDS and not isinstance(v, dict))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    values = {k: v for k, v in data.items() if k in _FIELDS}
    for name, value in values.items():
        if name in ("cache_dir", "log_file") and isinstance(value, str) and value:
            values[name] = Path(value)
        try:
            _checked(name, values[name])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return values


def load_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        env_name = f"RDFS_{name.upper()}"
        if (
            environ.get(env_name, "") != ""
        ):  # an empty variable counts as unset, as for RD_API_TOKEN
            try:
                values[name] = _checked(name, _coerce(name, environ[env_name]))
            except ConfigError as exc:
                raise ConfigError(f"{env_name}: {exc}") from None
    if environ.get("RD_API_TOKEN"):
        values["token"] = environ["RD_API_TOKEN"]
    return values


def load(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Config:
    """Merge the layers; ``flags`` holds only the options the user actually gave (None = unset)."""
    environ = os.environ if environ is None else environ
    path = config_file or Path(environ.get("RDFS_CONFIG", config_dir() / "config.toml"))
    if config_file is not None and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    merged: dict[str, Any] = {"config_path": path}
    merged.update(load_file(path))
    merged.update(load_env(environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None and k in _FIELDS})
    return Config(**merged)
