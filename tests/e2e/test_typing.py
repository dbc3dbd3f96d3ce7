# tests/e2e/test_typing: typing notices (meshd-protocol.7 CONVERSATIONS, "typing"): relayed to
# the live devices of a peer or of a group's other members, never to the sender's own
# devices; never stored, so never replayed on reconnect or resume; at most one start per
# typing.interval_ms per sender and conversation (the rest dropped, counted, no error); a
# stop only after a start; the same address rules as send (unknown_peer, forbidden).

import asyncio

from harness import Meshd, async_test

LOAD = ("auth_token", "route_direct", "route_groups")

async def login(m, token, **kw):
    """Log in a device that asked for typing events (hello "events"), as clients of this
    feature do; devices that did not ask never get them."""
    return await m.login(token, events=["typing"], **kw)



def typing(frm, to, state="start"):
    return {"type": "typing", "from": frm, "to": to, "state": state}


async def typing_from(c, to, state=None, ref=None):
    f = {"type": "typing", "to": to}
    if state is not None:
        f["state"] = state
    if ref is not None:
        f["ref"] = ref
    await c.send_frame(f)


def metric(m, name, labels):
    """A sample of meshd's own counters, through the metrics module's scrape."""
    import urllib.request
    text = urllib.request.urlopen(f"http://{m.metrics_listen}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{{{labels}}} in the scrape")


@async_test
async def test_relayed_to_live_devices_never_replayed():
    async with Meshd(load=LOAD, extra="[typing]\ninterval_ms = 60000\n") as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        laptop = await login(m, ta, device="laptop", label="alice/laptop")
        phone = await login(m, ta, device="phone", label="alice/phone")
        desk = await login(m, tb, device="desk", label="bob/desk")
        pad = await login(m, tb, device="pad", label="bob/pad")
        # A device that did not ask for typing events (a v1 client) never gets one; unknown
        # event names are left out of welcome's list, not refused.
        old = await m.login(tb, device="old", label="bob/old",
                            events=["typing", "presence-v9", "receipts"])
        assert old.welcome["events"] == ["receipts", "typing"], old.welcome
        plain = await m.login(tb, device="plain", label="bob/plain")
        assert plain.welcome["events"] == [], plain.welcome
        # Answered ok only when asked with a ref.
        await typing_from(laptop, "BOB", ref="t1")
        assert await laptop.recv() == {"type": "ok", "ref": "t1"}
        for c in (desk, pad):
            assert await c.recv() == typing("alice", "bob"), c.label
        await phone.assert_no_frame(0.3)  # the sender's own devices know
        assert await old.recv() == typing("alice", "bob")
        await plain.assert_no_frame(0.1)
        # More starts within the interval are dropped, without an error.
        for _ in range(5):
            await typing_from(laptop, "bob")
        await laptop.barrier()
        await desk.assert_no_frame(0.3)
        # A stop ends the start that went out: relayed once; a second stop is dropped.
        await typing_from(phone, "bob", "stop")
        await typing_from(laptop, "bob", "stop")
        await laptop.barrier()
        for c in (desk, pad):
            assert await c.recv() == typing("alice", "bob", "stop"), c.label
            await c.assert_no_frame(0.2)
        assert await old.recv() == typing("alice", "bob", "stop")
        await plain.barrier()
        await old.close()
        await plain.close()
        # Nothing is stored: the logs are empty, reconnects and resumes replay nothing.
        await desk.close()
        desk = await login(m, tb, device="desk", label="bob/desk again")
        assert desk.welcome["seq"] == 0 and desk.replayed == [], desk.welcome
        await pad.close()
        pad = await login(m, tb, device="pad", resume=0, label="bob/pad again")
        assert pad.replayed == []
        await desk.assert_no_frame(0.3)
        # Messages and typing interleave; a message after a typing notice is seq 1.
        await laptop.send("bob", "hello", ref="s1")
        await laptop.expect("ack", ref="s1", seq=1)
        await desk.expect("msg", seq=1)
        await pad.expect("msg", seq=1)
        await desk.close()
        desk = await login(m, tb, device="desk2", label="bob/desk2")
        assert [x["type"] for x in desk.replayed] == ["msg"]
        # bob, offline on every device but desk2, gets nothing later either.
        await pad.close()
        # A principal with no live device: dropped silently (the sender still gets ok).
        m.add_user("carol")
        await typing_from(laptop, "carol", ref="t2")
        assert await laptop.recv() == {"type": "ok", "ref": "t2"}


@async_test
async def test_rate_limit_per_sender_and_conversation():
    async with Meshd(load=LOAD + ("metrics",),
                     extra="[typing]\ninterval_ms = 400\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
                     ) as m:
        m.metrics_listen = (await m.wait_log(r"event=server\.ready .* http=(\S+)")).group(1)
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        alice = await login(m, ta, label="alice")
        bob = await login(m, tb, label="bob")
        carol = await login(m, tc, label="carol")
        dropped0 = metric(m, "meshd_typing_total", 'result="dropped"')
        # Two conversations of alice are limited apart; carol's own notices too.
        for _ in range(10):
            await typing_from(alice, "bob")
            await typing_from(alice, "carol")
            await typing_from(carol, "bob")
        await alice.barrier()
        assert await carol.recv() == typing("alice", "carol")
        await carol.barrier()
        got = []
        while True:
            try:
                got.append(await bob.recv(0.5))
            except AssertionError:
                break
        assert sorted(map(str, got)) == sorted(map(str, [typing("alice", "bob"),
                                                          typing("carol", "bob")])), got
        await carol.assert_no_frame(0.2)
        assert metric(m, "meshd_typing_total", 'result="dropped"') - dropped0 == 27
        # After the interval, the next start goes out again.
        await asyncio.sleep(0.5)
        await typing_from(alice, "bob")
        assert await bob.recv() == typing("alice", "bob")


@async_test
async def test_groups_and_address_rules():
    async with Meshd(load=LOAD) as m:
        tokens = {n: m.add_user(n) for n in ("alice", "bob", "carol", "dave")}
        m.ctl("group", "add", "#team", "alice", "bob", "carol")
        c = {n: await login(m, tokens[n], label=n) for n in tokens}
        alice2 = await login(m, tokens["alice"], device="phone", label="alice/phone")
        await typing_from(c["alice"], "#Team", ref="g")
        assert await c["alice"].recv() == {"type": "ok", "ref": "g"}
        for n in ("bob", "carol"):
            assert await c[n].recv() == typing("alice", "#team"), n
        await c["dave"].assert_no_frame(0.2)
        await alice2.assert_no_frame(0.1)
        # Not a member: forbidden; no such group or principal: unknown_peer; bad frames.
        await typing_from(c["dave"], "#team", ref="x1")
        await c["dave"].expect_error("forbidden", ref="x1")
        await typing_from(c["alice"], "#nope", ref="x2")
        await c["alice"].expect_error("unknown_peer", ref="x2")
        await typing_from(c["alice"], "nobody", ref="x3")
        await c["alice"].expect_error("unknown_peer", ref="x3")
        for i, (frame, text) in enumerate([
                ({"type": "typing"}, 'typing needs "to"'),
                ({"type": "typing", "to": 7}, '"to" must be a string'),
                ({"type": "typing", "to": ""}, '"to" must not be empty'),
                ({"type": "typing", "to": "bob", "state": "paused"},
                 '"state" must be "start" or "stop"'),
                ({"type": "typing", "to": "bob", "state": True}, '"state" must be a string')]):
            await c["alice"].send_frame({**frame, "ref": f"b{i}"})
            e = await c["alice"].expect_error("bad_frame", ref=f"b{i}")
            assert text in e["message"], (frame, e)
        for n in ("bob", "carol", "dave"):
            await c[n].assert_no_frame(0.1)
        # Typing to oneself reaches nobody (one's own devices are left out).
        await typing_from(c["alice"], "alice", ref="self")
        assert await c["alice"].recv() == {"type": "ok", "ref": "self"}
        await alice2.assert_no_frame(0.2)
