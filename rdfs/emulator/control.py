"""``EmulatorControl``: the emulator's control API over HTTP, for an emulator in another process.

Same method names as ``Emulator`` (blocking calls through a sync ``httpx.Client``).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from .model import Faults, FileSpec


class ControlError(Exception):
    """The emulator refused a control call (unknown torrent, bad argument, ...)."""


class EmulatorControl:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"EmulatorControl({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, **arguments: Any) -> Any:
        response = self._http.post(f"/_emu/call/{method}", json=arguments)
        body = response.json()
        if response.status_code != 200:
            raise ControlError(f"{method}: {body.get('error')}")
        if "bytes" in body:
            return base64.b64decode(body["bytes"])
        return body["result"]

    def add_torrent(
        self,
        name: str,
        files: Sequence[FileSpec],
        *,
        status: str = "downloaded",
        selected: Iterable[int] | None = None,
        packed: bool = False,
        added: datetime | None = None,
        info_hash: str | None = None,
    ) -> str:
        return self._call(
            "add_torrent",
            name=name,
            files=[
                {
                    "path": f.path,
                    "size": f.size,
                    "source": str(f.source) if f.source else None,
                    "seed": f.seed,
                }
                for f in files
            ],
            status=status,
            selected=list(selected) if selected is not None else None,
            packed=packed,
            added=added.isoformat() if added else None,
            info_hash=info_hash,
        )

    def bulk_add_torrents(
        self, count: int, files_per_torrent: int = 5, file_size: int = 100 * 1024 * 1024
    ) -> list[str]:
        return self._call(
            "bulk_add_torrents",
            count=count,
            files_per_torrent=files_per_torrent,
            file_size=file_size,
        )

    def add_synthetic_library(self, count: int) -> list[str]:
        return self._call("add_synthetic_library", count=count)

    def add_media_dir(self, directory: Path) -> list[str]:
        return self._call("add_media_dir", directory=str(directory))

    def remove_torrent(self, torrent_id: str) -> None:
        self._call("remove_torrent", torrent_id=torrent_id)

    def set_status(self, torrent_id: str, status: str, progress: float | None = None) -> None:
        self._call("set_status", torrent_id=torrent_id, status=status, progress=progress)

    def kill_torrent(self, torrent_id: str) -> None:
        self._call("kill_torrent", torrent_id=torrent_id)

    def torrent_json(self, torrent_id: str) -> dict[str, Any]:
        return self._call("torrent_json", torrent_id=torrent_id)

    def add_hoster_download(self, filename: str, size: int, link: str, host: str) -> str:
        return self._call("add_hoster_download", filename=filename, size=size, link=link, host=host)

    def torrent_ids(self) -> list[str]:
        return self._call("torrent_ids")

    def file_bytes(
        self, torrent_id: str, file_id: int, offset: int = 0, length: int | None = None
    ) -> bytes:
        return self._call(
            "file_bytes", torrent_id=torrent_id, file_id=file_id, offset=offset, length=length
        )

    def link_bytes(self, link: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("link_bytes", link=link, offset=offset, length=length)

    def expire_links(self) -> None:
        self._call("expire_links")

    def approve_device(self, user_code: str) -> None:
        self._call("approve_device", user_code=user_code)

    def register_app(self, client_id: str, client_secret: str) -> None:
        self._call("register_app", client_id=client_id, client_secret=client_secret)

    def expire_access_tokens(self) -> None:
        self._call("expire_access_tokens")

    def revoke_oauth(self) -> None:
        self._call("revoke_oauth")

    @property
    def counters(self) -> collections.Counter[str]:
        """A snapshot of the emulator's counters (missing keys count 0)."""
        return collections.Counter(self._call("counters_json"))

    def reset_counters(self) -> None:
        self._call("reset_counters")

    @property
    def faults(self) -> Faults:
        """A snapshot; change faults with ``set_faults``."""
        return Faults(**self._call("faults_json"))

    def set_faults(self, **changes: Any) -> None:
        unknown = set(changes) - {f.name for f in dataclasses.fields(Faults)}
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self._call("set_faults", **changes)

    def reset_faults(self) -> None:
        self._call("reset_faults")
