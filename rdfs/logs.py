"""Logging set-up with secret redaction.

Code never logs tokens on purpose; the redaction filter is the second line of defence: every
registered secret is replaced by ``***`` in every record, including exception text.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

_secrets: set[str] = set()
_AUTH_PATTERN = re.compile(
    r"(?i)(bearer\s+|auth_token=|access_token\"?\s*[:=]\s*\"?|refresh_token\"?\s*[:=]\s*\"?)[A-Za-z0-9._\-]{8,}"
)


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line (ignored when short enough to be a common word)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return _AUTH_PATTERN.sub(lambda m: m.group(1) + "***", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup(level: str = "INFO", log_file: Path | None = None) -> None:
    """Log to ``log_file`` (appending) or stderr; OSError when the file cannot be opened."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; URLs can carry auth_token, and it is noisy.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("hypercorn").setLevel(logging.WARNING)


def reopen() -> bool:
    """Reopen the log file by its path (SIGHUP after logrotate moved it); False when logging to
    stderr. A file that cannot be reopened keeps the old stream, so no line is lost."""
    reopened = False
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            with handler.lock:  # type: ignore[union-attr]
                try:
                    stream = handler._open()
                except OSError:
                    continue
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = stream
            reopened = True
    return reopened
