"""The client's ETag cache is bounded by bytes and gives the answer back as it arrived."""

from __future__ import annotations

import json

import httpx

from rdfs.api.etagcache import ETagCache


def page(n: int, items: int = 2500) -> bytes:
    return json.dumps(
        [{"id": f"T{n}-{i}", "filename": f"Some.Name.{n}.{i}"} for i in range(items)]
    ).encode()


def test_the_budget_bounds_what_is_kept_least_recently_used_first() -> None:
    cache = ETagCache(budget=200_000)
    for n in range(50):  # a listing of 125,000 torrents
        cache.put(f"page={n}", f"e{n}", 200, httpx.Headers({"X-Total-Count": "125000"}), page(n))
        cache.get("page=0")  # the probes' page stays
        assert cache.size <= cache.budget
    assert cache.get("page=0") is not None and cache.get("page=1") is None
    assert 1 < len(cache) < 50


def test_an_entry_gives_the_same_bytes_and_headers_back() -> None:
    cache = ETagCache()
    body = page(1, items=10)
    cache.put("k", "etag-1", 200, httpx.Headers({"X-Total-Count": "10"}), body)
    entry = cache.get("k")
    assert entry is not None and entry.etag == "etag-1" and entry.content == body
    assert entry.headers["x-total-count"] == "10"
    cache.put("k", "etag-2", 200, httpx.Headers(), b"[]")  # replaced, counted once
    assert len(cache) == 1 and cache.get("k").etag == "etag-2"  # type: ignore[union-attr]
    assert cache.size == len(cache.get("k").packed)  # type: ignore[union-attr]


def test_an_answer_larger_than_the_budget_is_not_kept() -> None:
    cache = ETagCache(budget=100)
    cache.put("small", "e", 200, httpx.Headers(), b"[1]")
    cache.put("big", "e", 200, httpx.Headers(), bytes(range(256)) * 100)
    assert cache.get("big") is None and cache.get("small") is not None
