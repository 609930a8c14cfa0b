"""Secrets: tokens never reach logs, status, exceptions or xattrs; credential files are private;
TLS is verified; the mount is private to its user unless ``--allow-other``."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import httpcore
import pytest
import trio

from rdfs import credentials
from rdfs.api import NetworkError, RDClient, RetryPolicy, StaticToken
from rdfs.api.auth import Credentials
from rdfs.api.errors import RDError
from rdfs.emulator import Emulator, FileSpec
from rdfs.data.links import LinkResolver
from rdfs.fuse.mountpoint import entry_at
from rdfs.data.reader import ReaderPool
from tests import mountutil

MiB = 1024 * 1024
NO_WAIT = RetryPolicy(max_retries=1, wait_initial=0, wait_max=0, wait_jitter=0)


def _everything_about(exc: BaseException) -> str:
    """What an exception could ever show: its repr, message, and the whole chained traceback."""
    return repr(exc) + str(exc) + "".join(traceback.format_exception(exc)) + repr(exc.args)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_exceptions_never_carry_the_token(emulator: Emulator) -> None:
    token = emulator.token
    wrong = secrets.token_hex(26)
    emulator.add_torrent("Movie", [FileSpec("/m.mkv", 1000)])
    caught: list[BaseException] = []

    async def expect_failure(client: RDClient) -> None:
        async with client:
            with pytest.raises(RDError) as raised:
                await client.torrents(page=1, limit=10)
        caught.append(raised.value)

    # A refused token, in the header and in the query string.
    await expect_failure(RDClient(emulator.api_url, auth=StaticToken(wrong), retry=NO_WAIT))
    await expect_failure(RDClient(emulator.api_url, auth=StaticToken(wrong), retry=NO_WAIT, token_in_query=True))
    # A read timeout, a refused connection and a garbage body, with the token in the URL.
    emulator.faults.api_latency = 1.0
    await expect_failure(
        RDClient(emulator.api_url, auth=StaticToken(token), retry=NO_WAIT, token_in_query=True, timeout=0.2)
    )
    emulator.faults.api_latency = 0.0
    await expect_failure(
        RDClient(f"http://127.0.0.1:{_closed_port()}/rest/1.0", auth=StaticToken(token), retry=NO_WAIT, token_in_query=True)
    )
    emulator.faults.malformed_json_rate = 1.0
    await expect_failure(RDClient(emulator.api_url, auth=StaticToken(token), retry=NO_WAIT, token_in_query=True))
    emulator.faults.malformed_json_rate = 0.0
    assert len(caught) == 5 and any(isinstance(exc, NetworkError) for exc in caught)
    for exc in caught:
        text = _everything_about(exc)
        assert token not in text and wrong not in text, text


@pytest.mark.mount
def test_token_never_in_logs_status_or_xattrs(emulator_proc, tmp_path):
    control, token = emulator_proc.control, emulator_proc.token
    torrent_id = control.add_torrent("Secret Movie (2024)", [FileSpec("/Secret.Movie.2024.mkv", 2 * MiB)])
    env = {"RDFS_LOG_LEVEL": "DEBUG"}
    with mountutil.mount(emulator_proc.api_url, token, tmp_path, "--rate-limit", "3000", env=env) as mounted:
        movie = mounted.path / "torrents" / "Secret Movie (2024)" / "Secret.Movie.2024.mkv"
        mountutil.wait_for(movie.exists, what="movie")
        assert movie.read_bytes() == control.file_bytes(torrent_id, 1)
        # Error paths log the most: refused tokens, garbage answers, refused download URLs.
        control.expire_links()
        control.set_faults(api_error_rate=1.0, api_error_status=401)
        (mounted.path / ".rdfs" / "refresh").write_text("1\n")
        mountutil.wait_for(lambda: "bad_token" in mounted.log(), what="bad token logged")
        control.set_faults(api_error_rate=0.0, malformed_json_rate=1.0)
        (mounted.path / ".rdfs" / "refresh").write_text("1\n")
        mountutil.wait_for(lambda: "non-JSON" in mounted.log(), what="garbage logged")
        control.reset_faults()
        with open(movie, "rb") as f:
            f.seek(MiB + 12345)
            f.read(1000)
        status_text = (mounted.path / ".rdfs" / "status").read_text()
        cli_status = subprocess.run(
            [sys.executable, "-m", "rdfs", "status", str(mounted.path), "--json"], capture_output=True, text=True
        )
        xattrs = []
        for path in [mounted.path, *mounted.path.rglob("*")]:
            for name in os.listxattr(path):
                xattrs.append(f"{path}:{name}={os.getxattr(path, name)!r}")
        log = mounted.log()
    assert cli_status.returncode == 0, cli_status.stderr
    assert "DEBUG" in log and "unrestricted" in log  # the log did see the interesting parts
    assert len(xattrs) > 5
    for where, text in {"log": log, "status": status_text, "cli status": cli_status.stdout + cli_status.stderr,
                        "xattrs": "\n".join(xattrs)}.items():  # fmt: skip
        assert token not in text, where


@pytest.mark.mount
def test_credential_files_are_private(emulator_proc, tmp_path):
    token = emulator_proc.token
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), RDFS_API_URL=emulator_proc.api_url)
    login = subprocess.run(
        [sys.executable, "-m", "rdfs", "login", "--token"], input=token + "\n", env=env, capture_output=True, text=True
    )
    assert login.returncode == 0, login.stderr
    assert token not in login.stdout + login.stderr
    stored = tmp_path / "config" / "rdfs" / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    oauth_dir = tmp_path / "oauth"
    credentials.save_oauth(Credentials("CLIENTID", "S" * 40, "A" * 52, "R" * 52, 0.0), directory=oauth_dir)
    assert stat.S_IMODE((oauth_dir / "credentials.json").stat().st_mode) == 0o600
    # A file someone made readable to others is put back to 0600 when rdfs reads it.
    os.chmod(stored, 0o644)
    assert credentials.load(stored.parent) is not None
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_plain_http_refused_for_non_loopback() -> None:
    for kwargs in ({"api_url": "http://api.real-debrid.com/rest/1.0"}, {"oauth_url": "http://api.real-debrid.com/oauth/v2"}):
        with pytest.raises(ValueError, match="plain HTTP"):
            RDClient(**kwargs)


def _self_signed(directory: Path) -> ssl.SSLContext:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
async def test_tls_certificates_are_verified(tmp_path: Path) -> None:
    """An HTTPS server with an untrusted certificate: the API client and the reader refuse it."""
    context = _self_signed(tmp_path)
    handshakes = 0

    async def handler(stream: trio.SSLStream) -> None:
        nonlocal handshakes
        handshakes += 1
        try:
            await stream.do_handshake()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_ssl_over_tcp, handler, 0, context)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        base = f"https://127.0.0.1:{port}"
        async with RDClient(f"{base}/rest/1.0", auth=StaticToken("T" * 52), retry=NO_WAIT) as rd:
            with pytest.raises(NetworkError, match="CERTIFICATE_VERIFY_FAILED"):
                await rd.user()
            pool = ReaderPool(LinkResolver(rd, None))
            try:
                with pytest.raises(httpcore.ConnectError) as refused:
                    await pool.http.request("GET", f"{base}/d/ID/movie.mkv")
                causes, seen = [], refused.value
                while seen is not None:
                    causes.append(str(seen))
                    seen = seen.__cause__ or seen.__context__
                assert any("CERTIFICATE_VERIFY_FAILED" in cause for cause in causes), causes
            finally:
                await pool.aclose()
        nursery.cancel_scope.cancel()
    assert handshakes >= 2


def _super_options(path: Path) -> set[str]:
    entry = entry_at(path)
    assert entry is not None
    return set(entry.super_options)


def _ls_as_nobody(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["ls", str(path)], user=65534, group=65534, capture_output=True, text=True)


@pytest.mark.mount
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_mount_is_private_unless_allow_other(emulator_proc):
    base = Path(tempfile.mkdtemp(prefix="rdfs-private-"))
    try:
        os.chmod(base, 0o755)  # other users may reach the mountpoint: only FUSE keeps them out
        with mountutil.mount(emulator_proc.api_url, emulator_proc.token, base, name="private") as mounted:
            os.chmod(mounted.path.parent, 0o755)
            assert "allow_other" not in _super_options(mounted.path)
            assert "torrents" in os.listdir(mounted.path)
            denied = _ls_as_nobody(mounted.path)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        with mountutil.mount(
            emulator_proc.api_url, emulator_proc.token, base, "--allow-other", name="shared"
        ) as mounted:
            assert "allow_other" in _super_options(mounted.path)
            allowed = _ls_as_nobody(mounted.path)
            assert allowed.returncode == 0 and "torrents" in allowed.stdout.split()
    finally:
        shutil.rmtree(base, ignore_errors=True)
