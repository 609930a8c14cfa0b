"""The async Real-Debrid client: ``RDClient``, its records (``models``) and errors (``errors``)."""

from rdfs.api.auth import (
    DEFAULT_OAUTH_URL,
    OPEN_SOURCE_CLIENT_ID,
    Credentials,
    OAuthClient,
    OAuthSession,
    StaticToken,
    TokenProvider,
    poll_device_login,
)
from rdfs.api.client import DEFAULT_API_URL, Page, RDClient
from rdfs.api.errors import APIError, NetworkError, RDError, ReauthRequired, UnexpectedResponse
from rdfs.api.ratelimit import RateLimiter
from rdfs.api.transport import ClientStats, RetryPolicy

__all__ = [
    "APIError",
    "ClientStats",
    "Credentials",
    "DEFAULT_API_URL",
    "DEFAULT_OAUTH_URL",
    "NetworkError",
    "OAuthClient",
    "OAuthSession",
    "OPEN_SOURCE_CLIENT_ID",
    "Page",
    "RDClient",
    "RDError",
    "RateLimiter",
    "ReauthRequired",
    "RetryPolicy",
    "StaticToken",
    "TokenProvider",
    "UnexpectedResponse",
    "poll_device_login",
]
