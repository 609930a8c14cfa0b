"""Stored login: a private API token or OAuth credentials.

They live in ``$XDG_CONFIG_HOME/rdfs``, mode 0600.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rdfs import config as configuration
from rdfs import logs
from rdfs.api.auth import Credentials, OAuthSession, StaticToken

log = logging.getLogger(__name__)

FILE_NAME = "credentials.json"


class NotLoggedIn(configuration.ConfigError):
    pass


def path(directory: Path | None = None) -> Path:
    return (directory or configuration.config_dir()) / FILE_NAME


def _write_private(target: Path, data: dict) -> None:
    """Write ``data`` as JSON readable by the owner only.

    Atomically: there is never a world-readable moment.
    """
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = target.with_name(target.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(data, f)
    os.replace(temporary, target)


def save_token(token: str, directory: Path | None = None) -> None:
    _write_private(path(directory), {"kind": "token", "token": token})


def save_oauth(credentials: Credentials, directory: Path | None = None) -> None:
    _write_private(path(directory), {"kind": "oauth", **credentials.to_json()})


def load(directory: Path | None = None) -> StaticToken | Credentials | None:
    """The stored login, or None when there is none."""
    target = path(directory)
    try:
        data = json.loads(target.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise configuration.ConfigError(f"cannot read {target}: {exc}") from None
    if target.stat().st_mode & 0o077:
        log.warning("%s is readable by others; fixing its mode to 0600", target)
        os.chmod(target, 0o600)
    try:
        if data.get("kind") == "token":
            logs.register_secret(data["token"])
            return StaticToken(str(data["token"]))
        credentials = Credentials.from_json(data)
    except (KeyError, TypeError, ValueError):
        raise configuration.ConfigError(
            f"{target} is damaged; log in again with: rdfs login"
        ) from None
    for secret in (credentials.client_secret, credentials.access_token, credentials.refresh_token):
        logs.register_secret(secret)
    return credentials


def forget(directory: Path | None = None) -> bool:
    try:
        path(directory).unlink()
    except FileNotFoundError:
        return False
    return True


async def identity(auth: StaticToken | OAuthSession) -> bytes:
    """What tells one login from another, for the cache's account fingerprints (never stored as is).

    A private token is its own identity. An OAuth login is its client id with its refresh token:
    the access token changes hourly, the refresh token only with a new login.
    """
    if isinstance(auth, OAuthSession):
        credentials = auth.credentials
        return (
            b"oauth\0" + credentials.client_id.encode() + b"\0" + credentials.refresh_token.encode()
        )
    return b"token\0" + (await auth.token()).encode()


def auth_for(
    config: configuration.Config, directory: Path | None = None
) -> StaticToken | OAuthSession:
    """How to authenticate: ``--token`` / ``RD_API_TOKEN`` first, else the stored login."""
    if config.token:
        logs.register_secret(config.token)
        return StaticToken(config.token)
    stored = load(directory)
    if stored is None:
        raise NotLoggedIn("not logged in: run `rdfs login` (or pass --token / set RD_API_TOKEN)")
    if isinstance(stored, StaticToken):
        return stored

    def persist(credentials: Credentials) -> None:
        for secret in (credentials.access_token, credentials.refresh_token):
            logs.register_secret(secret)
        save_oauth(credentials, directory)

    return OAuthSession(stored, on_update=persist)
