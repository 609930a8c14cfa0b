"""Issue 15: a gateway page (5xx without an RD error_code) is never a verdict on a torrent."""

from __future__ import annotations

import pytest

from rdfs.emulator import FileSpec
from rdfs.data.links import LinkGone

from tests.inprocess.test_repair import ADD, Env, env, settle  # noqa: F401  (env: the fixture)


async def test_gateway_page_is_not_a_verdict(env: Env) -> None:  # noqa: F811
    torrent_id = env.emu.add_torrent("Flaky.2019", [FileSpec("/Flaky.2019.mkv", 4000)])
    await settle(env)
    link = env.emu.torrent_json(torrent_id)["links"][0]
    env.emu.kill_torrent(torrent_id)  # not synced: rdfs still believes it is downloaded
    with pytest.raises(LinkGone):
        await env.resolver.resolve(link)
    [suspect] = env.repairer.broken.values()
    assert suspect.torrent_id == torrent_id and not suspect.confirmed
    env.emu.set_status(torrent_id, "downloaded")  # the link works again upstream ...
    env.emu.faults.api_error_status, env.emu.faults.api_error_rate = 502, 1.0  # ... behind a 502 gateway
    env.emu.reset_counters()
    for _ in range(3):
        assert await env.repairer.check() == 0
    assert env.emu.counters["POST /unrestrict/link"] == 3  # asked each time: the 502 said nothing
    assert not suspect.confirmed and torrent_id not in env.repairer.gave_up
    assert env.emu.counters[ADD] == 0 and torrent_id in env.emu.torrent_ids()
    env.emu.faults.api_error_rate = 0.0  # the gateway is back: RD says the link is fine
    assert await env.repairer.check() == 0
    assert env.repairer.broken == {} and env.repairer.status()["broken"] == []
