"""Which account's cache a credential may open: salted fingerprints of credentials, no secrets."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

ACCOUNTS_FILE = "accounts.json"


class Accounts:
    """Which account a credential belongs to, without asking the API and without storing it.

    ``<cache dir>/accounts.json`` maps salted fingerprints of credentials to RD user ids:
    ``HMAC-SHA256(salt, credential)``, the salt random per cache directory. RD tokens are long
    random strings, so a keyed hash is enough (no password stretching needed); the salt keeps
    fingerprints from matching across machines. A mount with a known credential opens its
    account's cache with no API call; an unknown one asks ``/user`` first. The file is a hint:
    unreadable or unwritable, it costs one ``/user`` call, never the mount.
    """

    MAX_ENTRIES = 32

    def __init__(self, cache_dir: Path | str) -> None:
        self.path = Path(cache_dir) / ACCOUNTS_FILE
        self._salt = b""
        self._known: dict[str, str] = {}
        try:
            data = json.loads(self.path.read_text())
            self._salt = bytes.fromhex(data["salt"])
            self._known = {str(k): str(v) for k, v in data["accounts"].items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "ignoring unreadable %s (%s): the account is asked from the API", self.path, exc
            )
        if len(self._salt) < 16:
            self._salt, self._known = secrets.token_bytes(16), {}

    def fingerprint(self, credential: bytes) -> str:
        return hmac.new(self._salt, credential, hashlib.sha256).hexdigest()

    def user_for(self, credential: bytes) -> str | None:
        """The user id a credential was seen with, or None when it is new here."""
        return self._known.get(self.fingerprint(credential))

    def remember(self, credential: bytes, user_id: str) -> None:
        """Note whose the credential is (best effort: a failure costs a ``/user`` call later)."""
        key = self.fingerprint(credential)
        if self._known.get(key) == user_id:
            return
        self._known.pop(key, None)
        self._known[key] = user_id
        while len(self._known) > self.MAX_ENTRIES:
            del self._known[next(iter(self._known))]
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"salt": self._salt.hex(), "accounts": self._known}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning(
                "cannot write %s (%s): the next mount asks the API whose token it is",
                self.path,
                exc,
            )
