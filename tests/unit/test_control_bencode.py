"""The .torrent parser takes any bytes: a torrent or ``InvalidInput``, never another exception."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdfs.control.actions import MAX_BENCODE_DEPTH, InvalidInput, TorrentFile, TruncatedTorrent, parse_torrent_file
from rdfs.emulator.bencode import encode


def parse_or_refuse(data: bytes) -> TorrentFile | None:
    """The parser's answer; ``None`` for a refusal. Any other exception fails the test."""
    try:
        return parse_torrent_file(data)
    except InvalidInput as exc:
        assert str(exc).startswith("not a valid .torrent file")
        return None


# Bencode-shaped noise: fragments of the grammar in random order, so that the fuzzing reaches
# deep into lists and dictionaries instead of failing on the first byte.
_TOKENS = st.sampled_from(
    [b"d", b"l", b"e", b"i", b"i1e", b"i-1e", b"i-0e", b"i01e", b"ie", b"0:", b"1:", b"4:", b"4:info", b"4:name",
     b"12:piece length", b"6:length", b"5:files", b"1_0:", b" 1:", b"-1:", b"99999999999999999999:", b"x", b":"]
)  # fmt: skip


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_random_bytes_are_a_torrent_or_refused(data: bytes) -> None:
    parse_or_refuse(data)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TOKENS, max_size=60))
def test_bencode_shaped_noise_is_a_torrent_or_refused(tokens: list[bytes]) -> None:
    data = b"".join(tokens)
    parsed = parse_or_refuse(data)
    if parsed is not None:
        assert parsed.data == data and len(parsed.info_hash) == 40


def raw_encode(value: object) -> bytes:
    """Bencode without the rules: a ``tuple`` of pairs is a dictionary with keys of any type."""
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(raw_encode(v) for v in value) + b"e"
    assert isinstance(value, tuple)
    return b"d" + b"".join(raw_encode(k) + raw_encode(v) for k, v in value) + b"e"


_RAW = st.recursive(
    st.integers(-5, 5) | st.sampled_from([b"", b"info", b"name", b"piece length", b"length"]),
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(inner, inner), max_size=3).map(tuple),
    max_leaves=12,
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_RAW)
def test_rule_breaking_structures_are_a_torrent_or_refused(value: object) -> None:
    parse_or_refuse(raw_encode(value))


_VALUES = st.recursive(
    st.integers(min_value=-(2**70), max_value=2**70) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(info_extra=st.dictionaries(st.binary(min_size=1, max_size=8), _VALUES, max_size=4), cut=st.integers(0, 400))
def test_valid_torrents_parse_and_every_cut_of_them_is_refused(info_extra: dict[bytes, object], cut: int) -> None:
    info = {**info_extra, b"name": b"Fuzzed", b"piece length": 16384, b"length": 5, b"pieces": b"\0" * 20}
    data = encode({b"announce": b"http://tracker.invalid/", b"info": info})
    parsed = parse_or_refuse(data)
    assert parsed is not None and parsed.info_hash == hashlib.sha1(encode(info)).hexdigest()
    assert parsed.name == "Fuzzed"
    if cut < len(data):
        assert parse_or_refuse(data[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"dli1eei1ee",  # a list as a dictionary key: was a TypeError that killed the mount
        b"d" * 100_000,  # nesting: was a RecursionError path
        b"l" * (MAX_BENCODE_DEPTH + 2) + b"e" * (MAX_BENCODE_DEPTH + 2),
        b"i1_0e",  # int() alone accepts these
        b"i 1e",
        b"1_0:0123456789",
        b"i" + b"9" * 5000 + b"e",  # int() of a huge digit string raises (or is slow)
        b"d4:infoi1e4:infoi2ee",  # duplicate key
        b"d4:infod12:piece lengthi1e6:lengthi1ee",  # no trailing e
    ],
)
def test_hostile_torrents_are_refused(data: bytes) -> None:
    assert parse_or_refuse(data) is None


def test_nesting_up_to_the_bound_is_accepted() -> None:
    deep: object = b"leaf"
    for _ in range(MAX_BENCODE_DEPTH - 2):
        deep = [deep]
    info = {b"name": b"Deep", b"piece length": 1, b"length": 1, b"x": deep}
    assert parse_or_refuse(encode({b"info": info})) is not None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(info_extra=st.dictionaries(st.binary(min_size=1, max_size=8), _VALUES, max_size=4), data=st.data())
def test_every_beginning_of_a_torrent_counts_as_truncated(info_extra: dict[bytes, object], data: st.DataObject) -> None:
    """A copy still being written is told apart from a broken file (a close mid-copy is no error)."""
    info = {**info_extra, b"name": b"Cut", b"piece length": 16384, b"length": 5, b"pieces": b"\0" * 20}
    whole = encode({b"info": info})
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(TruncatedTorrent):
        parse_torrent_file(whole[:cut])
    for hopeless in (whole + b"e", b"x" + whole[:cut]):
        with pytest.raises(InvalidInput) as refused:
            parse_torrent_file(hopeless)
        assert not isinstance(refused.value, TruncatedTorrent)
