"""Exceptions of the Real-Debrid client.

``RDError`` is the root. ``NetworkError`` means the transport failed (no HTTP answer);
``APIError`` means RD answered with an error status. Each documented ``error_code`` has its own
``APIError`` subclass so callers can ``except HosterUnavailable:`` instead of comparing numbers;
``error_for`` picks the class from an error response. Messages are built from RD's ``error``
string, the code and the status only: never from request URLs or headers, so never from a token.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class RDError(Exception):
    """Base of every error raised by ``rdfs.api``."""


class NetworkError(RDError):
    """The request got no HTTP answer (connect/read failure, timeout, broken connection).

    ``reached`` tells whether the request may have reached RD: ``False`` when the connection
    was never established (safe to repeat any request), ``True`` when it may have been processed.
    """

    def __init__(self, message: str, *, reached: bool, endpoint: str = "") -> None:
        super().__init__(message)
        self.reached = reached
        self.endpoint = endpoint


class UnexpectedResponse(RDError):
    """RD answered a success status with a body of the wrong shape (e.g. a 200 non-array list)."""

    def __init__(self, message: str, *, endpoint: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class BadRecord(UnexpectedResponse):
    """One record of an answer is unusable: a size that is not a finite int in 0..2^63-1, an id
    that is not a string (or an integer), a URL that is not http(s) with an encodable host.

    A list endpoint drops such a record (one warning); an object endpoint raises it."""


class BadLink(UnexpectedResponse):
    """``/unrestrict/link`` answered a download URL or ``filesize`` rdfs cannot use (a host that
    does not encode, a broken IPv6 literal, a size out of range). This file's link is unusable
    for now; it says nothing about the torrent, nor about other files. Never retried by the
    client (RD did act: the answer is its result)."""


class ReauthRequired(RDError):
    """The OAuth grant is gone (refresh refused, or no way to get a token): log in again."""


class LoginExpired(RDError):
    """The device code expired before the user approved it."""


class APIError(RDError):
    """RD answered with an error status; ``code`` is RD's ``error_code`` (None when absent)."""

    code: ClassVar[int | None] = None
    description: ClassVar[str] = "API error"

    def __init__(
        self,
        status: int,
        code: int | None = None,
        error: str = "",
        message: str = "",
        details: Any = None,
        *,
        endpoint: str = "",
    ) -> None:
        self.status = status
        self.code = code  # type: ignore[misc]  # instance value may differ for the generic class
        self.error = error
        self.message = message or self.description
        self.details = details
        self.endpoint = endpoint
        self.retry_after: float | None = None  # seconds, from a 429's Retry-After header
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.endpoint}: " if self.endpoint else ""
        label = self.error or "error"
        code = f"error_code {self.code}, " if self.code is not None else ""
        text = f"{where}{label} ({code}HTTP {self.status}): {self.message}"
        if self.details:
            text += f" [{self.details}]"
        return text

    def __str__(self) -> str:
        return self._text()


class GatewayError(APIError):
    """A 5xx answer that carries no RD ``error_code`` (a proxy's or load balancer's 502/503/504
    page): RD itself said nothing, so this is transient and never a verdict on a link or torrent."""

    description = "Gateway error (no answer from RD itself)"


def _api_error(name: str, code: int, description: str) -> type[APIError]:
    return type(
        name, (APIError,), {"code": code, "description": description, "__module__": __name__}
    )


InternalError = _api_error("InternalError", -1, "Internal error")
MissingParameter = _api_error("MissingParameter", 1, "Missing parameter")
BadParameter = _api_error("BadParameter", 2, "Bad parameter value")
UnknownMethod = _api_error("UnknownMethod", 3, "Unknown method")
MethodNotAllowed = _api_error("MethodNotAllowed", 4, "Method not allowed")
SlowDown = _api_error("SlowDown", 5, "Slow down")
ResourceUnreachable = _api_error("ResourceUnreachable", 6, "Ressource unreachable")
UnknownResource = _api_error("UnknownResource", 7, "Resource not found")
BadToken = _api_error("BadToken", 8, "Bad token (expired, invalid)")
PermissionDenied = _api_error("PermissionDenied", 9, "Permission denied")
TwoFactorRequired = _api_error("TwoFactorRequired", 10, "Two-Factor authentication needed")
TwoFactorPending = _api_error("TwoFactorPending", 11, "Two-Factor authentication pending")
InvalidLogin = _api_error("InvalidLogin", 12, "Invalid login")
InvalidPassword = _api_error("InvalidPassword", 13, "Invalid password")
AccountLocked = _api_error("AccountLocked", 14, "Account locked")
AccountNotActivated = _api_error("AccountNotActivated", 15, "Account not activated")
UnsupportedHoster = _api_error("UnsupportedHoster", 16, "Unsupported hoster")
HosterInMaintenance = _api_error("HosterInMaintenance", 17, "Hoster in maintenance")
HosterLimitReached = _api_error("HosterLimitReached", 18, "Hoster limit reached")
HosterUnavailable = _api_error("HosterUnavailable", 19, "Hoster temporarily unavailable")
HosterNotFree = _api_error("HosterNotFree", 20, "Hoster not available for free users")
TooManyActiveDownloads = _api_error("TooManyActiveDownloads", 21, "Too many active downloads")
IPNotAllowed = _api_error("IPNotAllowed", 22, "IP Address not allowed")
TrafficExhausted = _api_error("TrafficExhausted", 23, "Traffic exhausted")
FileUnavailable = _api_error("FileUnavailable", 24, "File unavailable")
ServiceUnavailable = _api_error("ServiceUnavailable", 25, "Service unavailable")
UploadTooBig = _api_error("UploadTooBig", 26, "Upload too big")
UploadError = _api_error("UploadError", 27, "Upload error")
FileNotAllowed = _api_error("FileNotAllowed", 28, "File not allowed")
TorrentTooBig = _api_error("TorrentTooBig", 29, "Torrent too big")
TorrentFileInvalid = _api_error("TorrentFileInvalid", 30, "Torrent file invalid")
ActionAlreadyDone = _api_error("ActionAlreadyDone", 31, "Action already done")
ImageResolutionError = _api_error("ImageResolutionError", 32, "Image resolution error")
TorrentAlreadyActive = _api_error("TorrentAlreadyActive", 33, "Torrent already active")
TooManyRequests = _api_error("TooManyRequests", 34, "Too many requests")
InfringingFile = _api_error("InfringingFile", 35, "Infringing file")
FairUsageLimit = _api_error("FairUsageLimit", 36, "Fair Usage Limit")
DisabledEndpoint = _api_error("DisabledEndpoint", 37, "Endpoint disabled")

ERRORS_BY_CODE: dict[int, type[APIError]] = {
    cls.code: cls
    for cls in (
        InternalError,
        MissingParameter,
        BadParameter,
        UnknownMethod,
        MethodNotAllowed,
        SlowDown,
        ResourceUnreachable,
        UnknownResource,
        BadToken,
        PermissionDenied,
        TwoFactorRequired,
        TwoFactorPending,
        InvalidLogin,
        InvalidPassword,
        AccountLocked,
        AccountNotActivated,
        UnsupportedHoster,
        HosterInMaintenance,
        HosterLimitReached,
        HosterUnavailable,
        HosterNotFree,
        TooManyActiveDownloads,
        IPNotAllowed,
        TrafficExhausted,
        FileUnavailable,
        ServiceUnavailable,
        UploadTooBig,
        UploadError,
        FileNotAllowed,
        TorrentTooBig,
        TorrentFileInvalid,
        ActionAlreadyDone,
        ImageResolutionError,
        TorrentAlreadyActive,
        TooManyRequests,
        InfringingFile,
        FairUsageLimit,
        DisabledEndpoint,
    )  # fmt: skip
    if cls.code is not None
}

# Statuses that mean one thing even when RD sends no error_code (proxies, older answers).
_BY_STATUS: dict[int, type[APIError]] = {
    401: BadToken,
    429: TooManyRequests,
    509: TooManyActiveDownloads,  # field notes: addMagnet/selectFiles over the active limit
}


def error_for(status: int, body: bytes, *, endpoint: str = "") -> APIError:
    """Build the exception for an error response (any body: JSON, HTML, empty)."""
    data: Any = None
    if body:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            data = None
    if not isinstance(data, dict):
        kind = "an empty body" if not body else f"a non-JSON body ({len(body)} bytes)"
        cls = _BY_STATUS.get(status) or (GatewayError if status >= 500 else APIError)
        return cls(status, cls.code, "", f"{cls.description}, with {kind}", endpoint=endpoint)
    raw_code = data.get("error_code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    if code is None and isinstance(raw_code, str) and raw_code.lstrip("-").isdigit():
        code = int(raw_code)
    raw_error = data.get("error")
    error = raw_error if isinstance(raw_error, str) else ""
    details = data.get("error_details")
    if code is not None:
        cls = ERRORS_BY_CODE.get(code, APIError)
    else:
        cls = _BY_STATUS.get(status) or (GatewayError if status >= 500 else APIError)
        code = cls.code
    return cls(status, code, error, "", details, endpoint=endpoint)
