"""Shared fixtures: the Real-Debrid emulator, in-process (async) or as a subprocess (sync)."""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.transport import RetryPolicy
from rdfs.store.metadata import Cache
from rdfs.emulator import Emulator
from rdfs.emulator.control import EmulatorControl

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hypothesis keeps its files outside the work tree (the property tests use no example database).
with contextlib.suppress(ImportError):
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "rdfs-hypothesis"))


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator served on 127.0.0.1 (random port) in the test's trio loop."""
    emu = Emulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.serve)
        yield emu
        nursery.cancel_scope.cancel()


@dataclass
class EmulatorProcess:
    process: subprocess.Popen[bytes]
    api_url: str
    base_url: str
    oauth_url: str
    token: str = field(repr=False)
    control: EmulatorControl


def _read_exports(process: subprocess.Popen[bytes], timeout: float) -> dict[str, str]:
    """Read the ``export NAME=value`` lines the emulator prints once it listens."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    wanted = {"RDFS_API_URL", "RD_API_TOKEN", "RDFS_OAUTH_URL", "RDFS_EMULATOR_URL"}
    exports: dict[str, str] = {}
    pending = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not wanted <= exports.keys():
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError("the emulator did not start in time")
            data = os.read(fd, 65536)
            if not data:
                raise RuntimeError(f"the emulator exited early (status {process.wait()})")
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                name, _, value = line.decode().strip().removeprefix("export ").partition("=")
                exports[name] = shlex.split(value)[0] if value else ""
    return exports


@contextlib.contextmanager
def running_emulator(*args: str) -> Iterator[EmulatorProcess]:
    """``python -m rdfs.emulator --port 0`` in a subprocess, with its control API; always stopped."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rdfs.emulator", "--port", "0", *args], stdout=subprocess.PIPE, cwd=_REPO
    )
    try:
        exports = _read_exports(process, timeout=30)
        with EmulatorControl(exports["RDFS_EMULATOR_URL"]) as control:
            yield EmulatorProcess(
                process=process,
                api_url=exports["RDFS_API_URL"],
                base_url=exports["RDFS_EMULATOR_URL"],
                oauth_url=exports["RDFS_OAUTH_URL"],
                token=exports["RD_API_TOKEN"],
                control=control,
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def emulator_proc() -> Iterator[EmulatorProcess]:
    """An emulator subprocess for one test (for tests that do blocking I/O, e.g. on a mount)."""
    with running_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def emulator_module() -> Iterator[EmulatorProcess]:
    """An emulator subprocess shared by the tests of one module."""
    with running_emulator() as emu:
        yield emu


@pytest.fixture
def cache_db(tmp_path) -> Iterator[Cache]:
    """A metadata cache in a fresh SQLite file."""
    cache = Cache(tmp_path / "rdfs.db")
    try:
        yield cache
    finally:
        cache.close()


@pytest.fixture
async def rd_client(emulator: Emulator) -> AsyncIterator[RDClient]:
    """A client of the in-process emulator that fails at once instead of retrying."""
    retry = RetryPolicy(max_retries=0, wait_initial=0, wait_max=0, wait_jitter=0)
    async with RDClient(
        api_url=emulator.api_url, oauth_url=emulator.oauth_url, auth=StaticToken(emulator.token), retry=retry
    ) as client:
        yield client
