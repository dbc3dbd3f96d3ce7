# tests/e2e/test_receipts: receipts for direct messages (meshd-protocol.7 CONVERSATIONS,
# "receipt", "read", "receipts", "settings"): a device of the recipient acking past a message
# gives the sender's live devices "delivered" with the seq of the sender's log, a read marker
# gives "read"; receipts are cumulative (one per sender per move), never for a sender's own
# devices acking its copy, and also for entries older than the memory tail (read off the
# loop); read receipts can be turned off (stored, survives a restart); the `receipts` query
# reports direct and group messages (members, delivered, read); bad input names the field.

import asyncio

from harness import Meshd, async_test

LOAD = ("auth_token", "route_direct", "route_groups")

async def login(m, token, **kw):
    """Log in a device that asked for receipts events (hello "events"), as clients of this
    feature do; devices that did not ask never get them."""
    return await m.login(token, events=["receipts"], **kw)



async def send_acked(c, to, body, ref):
    await c.send(to, body, ref=ref)
    while True:
        f = await c.recv()
        if f["type"] == "ack" and f.get("ref") == ref:
            return f["seq"]
        assert f["type"] in ("msg", "receipt"), f"{c.label}: unexpected {f}"


async def expect_receipt(c, state, seq, by, timeout=5):
    f = await c.expect("receipt", timeout)
    assert f == {"type": "receipt", "state": state, "seq": seq, "by": by}, (
        f"{c.label}: expected receipt {state} seq {seq} by {by}, got {f}")
    return f


async def query(c, seqs, ref="q"):
    await c.send_frame({"type": "receipts", "ref": ref, "seqs": seqs})
    while True:
        f = await c.recv()
        if f["type"] in ("msg", "receipt"):
            continue
        assert f["type"] == "receipts" and f.get("ref") == ref, f"{c.label}: got {f}"
        assert set(f) == {"type", "ref", "receipts"}, f
        return f["receipts"]


async def until_ok(c, ref):
    """The next frame other than msg/receipt is ok (echoing ref; none when ref is None)."""
    want = {"type": "ok"} if ref is None else {"type": "ok", "ref": ref}
    while True:
        f = await c.recv()
        if f["type"] in ("msg", "receipt"):
            continue
        assert f == want, f"{c.label}: expected {want}, got {f}"
        return


@async_test
async def test_delivered_and_read_with_the_senders_seq():
    async with Meshd(load=LOAD) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        laptop = await login(m, ta, device="laptop", label="alice/laptop")
        phone = await login(m, ta, device="phone", label="alice/phone")
        carol = await login(m, tc, label="carol")
        # alice's log gets entries bob never sees, so her seqs differ from bob's.
        for i in range(3):
            await send_acked(laptop, "carol", f"c{i}", f"c{i}")
            await phone.expect("msg")
            await carol.expect("msg", seq=i + 1)
        s1 = await send_acked(laptop, "bob", "one", "b1")
        s2 = await send_acked(laptop, "bob", "two", "b2")
        assert (s1, s2) == (4, 5)
        for _ in range(2):
            await phone.expect("msg")
        # A device that did not ask for receipts (a v1 client) never gets one.
        old = await m.login(ta, device="old", label="alice/old")
        assert old.welcome["events"] == [] and laptop.welcome["events"] == ["receipts"]
        bob = await login(m, tb, device="desk", label="bob/desk")
        bob2 = await login(m, tb, device="pad", label="bob/pad")
        assert [x["seq"] for x in bob.replayed] == [1, 2]
        # bob acks his seq 1 (alice's 4): both of alice's devices learn it, as her seq.
        await bob.send_frame({"type": "ack", "upto": 1})
        await expect_receipt(laptop, "delivered", s1, "bob")
        await expect_receipt(phone, "delivered", s1, "bob")
        # The other device acking the same again says nothing new.
        await bob2.send_frame({"type": "ack", "upto": 1})
        await bob2.barrier()
        await laptop.assert_no_frame(0.3)
        await bob2.send_frame({"type": "ack", "upto": 2})
        await expect_receipt(laptop, "delivered", s2, "bob")
        await expect_receipt(phone, "delivered", s2, "bob")
        # Read marker: one receipt covering everything up to it; answered ok with a ref.
        await bob.send_frame({"type": "read", "upto": 2, "ref": "r1"})
        await until_ok(bob, "r1")
        await expect_receipt(laptop, "read", s2, "bob")
        await expect_receipt(phone, "read", s2, "bob")
        # A lower read marker changes nothing and tells nobody.
        await bob.send_frame({"type": "read", "upto": 1, "ref": "r2"})
        await until_ok(bob, "r2")
        await laptop.assert_no_frame(0.3)
        # carol never got a receipt for alice's messages to bob; alice/old got none at all
        # (only her own sends, as msgs).
        await carol.barrier()
        assert [f["type"] for f in old.replayed] == ["msg"] * 5
        await old.barrier()
        # The receipts query says the same.
        r = await query(laptop, [s1, s2, 1])
        assert r == [{"seq": s1, "to": "bob", "delivered": True, "read": True},
                     {"seq": s2, "to": "bob", "delivered": True, "read": True},
                     {"seq": 1, "to": "carol", "delivered": False, "read": False}], r
        # The read marker is shown in welcome, and survives a restart.
        await m.restart()
        bob = await login(m, tb, device="desk", label="bob again")
        assert bob.welcome["read"] == 2, bob.welcome


@async_test
async def test_cumulative_and_older_than_the_tail():
    """300 from alice after 10 from carol, bob offline; one ack of all 310: one receipt each,
    alice's from the memory tail, carol's (older than the 256-entry tail) read off the loop."""
    async with Meshd(load=LOAD) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        alice = await login(m, ta, label="alice")
        carol = await login(m, tc, label="carol")
        for i in range(10):
            last_carol = await send_acked(carol, "bob", i, f"c{i}")
        for i in range(300):
            await alice.send("bob", i, ref=f"a{i}")
        last_alice = None
        for i in range(300):
            last_alice = (await alice.expect("ack", ref=f"a{i}"))["seq"]
        bob = await login(m, tb, label="bob")
        assert len(bob.replayed) == 310
        await bob.send_frame({"type": "ack", "upto": 310})
        await expect_receipt(alice, "delivered", last_alice, "bob")
        await expect_receipt(carol, "delivered", last_carol, "bob")
        await alice.assert_no_frame(0.3)
        await carol.assert_no_frame(0.1)
        # Reading in two steps: carol's part, then the rest.
        await bob.send_frame({"type": "read", "upto": 5})
        await expect_receipt(carol, "read", 5, "bob")
        await bob.send_frame({"type": "read", "upto": 310})
        await expect_receipt(alice, "read", last_alice, "bob")
        await expect_receipt(carol, "read", last_carol, "bob")
        # Receipts are not stored: a sender that was offline asks with the receipts query.
        r = await query(carol, [1, 10])
        assert r == [{"seq": 1, "to": "bob", "delivered": True, "read": True},
                     {"seq": 10, "to": "bob", "delivered": True, "read": True}], r


@async_test
async def test_acks_through_a_long_replay():
    """bob acks every entry of a 700-entry replay one by one: carol's 400 (older than the
    memory tail by the end) are read off the loop in merged scans, one at a time; carol
    ends up told her newest, never anything above it, in far fewer receipts than acks."""
    async with Meshd(load=LOAD) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        alice = await login(m, ta, label="alice")
        carol = await login(m, tc, label="carol")
        for who, c, n in ((("carol", carol, 400)), ("alice", alice, 300)):
            for i in range(n):
                await c.send("bob", i, ref=f"{who}{i}")
            for i in range(n):
                await c.expect("ack", ref=f"{who}{i}")
        bob = await login(m, tb, label="bob")
        assert len(bob.replayed) == 700
        for seq in range(1, 701):
            await bob.ws.send(f'{{"type":"ack","upto":{seq}}}')
        await bob.barrier()
        got = {"alice": [], "carol": []}
        for who, c, last in (("alice", alice, 300), ("carol", carol, 400)):
            # Receipts may come out of order (cumulative: the client keeps the highest).
            while last not in got[who]:
                f = await c.expect("receipt", 10, state="delivered", by="bob")
                got[who].append(f["seq"])
            while True:
                try:
                    f = await c.expect("receipt", 0.5, state="delivered", by="bob")
                except AssertionError:
                    break
                got[who].append(f["seq"])
            assert all(1 <= x <= last for x in got[who]), (who, got[who])
        assert len(got["carol"]) < 700, got["carol"]


@async_test
async def test_own_devices_never_produce_receipts():
    async with Meshd(load=LOAD) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        laptop = await login(m, ta, device="laptop", label="alice/laptop")
        phone = await login(m, ta, device="phone", label="alice/phone")
        bob = await login(m, tb, label="bob")
        s1 = await send_acked(laptop, "bob", "hi", "a1")
        await phone.expect("msg", seq=s1)
        await bob.expect("msg", seq=1)
        # alice's own devices ack and read past her own send: nobody gets a receipt.
        await phone.send_frame({"type": "ack", "upto": s1})
        await laptop.send_frame({"type": "ack", "upto": s1})
        await phone.send_frame({"type": "read", "upto": s1})
        await phone.barrier()
        await laptop.assert_no_frame(0.3)
        await phone.assert_no_frame(0.1)
        await bob.assert_no_frame(0.1)
        # bob's device acking it does.
        await bob.send_frame({"type": "ack", "upto": 1})
        await expect_receipt(laptop, "delivered", s1, "bob")
        await expect_receipt(phone, "delivered", s1, "bob")
        # bob's reply, acked by bob's own device in his log: no receipt for bob (nor alice).
        s2 = await send_acked(bob, "alice", "yo", "b1")
        await bob.send_frame({"type": "ack", "upto": s2})
        await bob.barrier()
        await bob.assert_no_frame(0.3)
        # ... but alice's devices acking bob's message tell bob.
        await laptop.expect("msg", seq=2)
        await phone.expect("msg", seq=2)
        await laptop.send_frame({"type": "ack", "upto": 2})
        await expect_receipt(bob, "delivered", s2, "alice")
        # A message to oneself: stored once, no receipt, left out of the receipts query.
        s3 = await send_acked(laptop, "alice", "note", "self")
        await phone.expect("msg", seq=s3)
        await phone.send_frame({"type": "ack", "upto": s3})
        await phone.barrier()
        await laptop.assert_no_frame(0.3)
        r = await query(laptop, [s1, s3])
        assert r == [{"seq": s1, "to": "bob", "delivered": True, "read": False}], r


@async_test
async def test_read_receipts_off():
    async with Meshd(load=LOAD) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        alice = await login(m, ta, label="alice")
        bob = await login(m, tb, label="bob")
        # The settings query, then the change (answered ok once stored).
        await bob.send_frame({"type": "settings", "ref": "g1"})
        assert await bob.recv() == {"type": "settings", "ref": "g1", "read_receipts": True}
        await bob.send_frame({"type": "settings", "ref": "s1", "read_receipts": False})
        await until_ok(bob, "s1")
        s1 = await send_acked(alice, "bob", "one", "a1")
        await bob.expect("msg", seq=1)
        await bob.send_frame({"type": "read", "upto": 1, "ref": "r1"})
        await until_ok(bob, "r1")
        # Read without ack: alice hears "delivered" (a read message was delivered), never
        # "read".
        await expect_receipt(alice, "delivered", s1, "bob")
        await alice.assert_no_frame(0.3)
        r = await query(alice, [s1])
        assert r == [{"seq": s1, "to": "bob", "delivered": True, "read": None}], r
        # Stored: after a restart it is still off; the read marker still works for bob.
        await m.restart()
        alice = await login(m, ta, label="alice again")
        bob = await login(m, tb, label="bob again")
        assert bob.welcome["read"] == 1
        await bob.send_frame({"type": "settings"})
        assert await bob.recv() == {"type": "settings", "read_receipts": False}
        s2 = await send_acked(alice, "bob", "two", "a2")
        await bob.expect("msg", seq=2)
        await bob.send_frame({"type": "ack", "upto": 2})
        await expect_receipt(alice, "delivered", s2, "bob")
        await bob.send_frame({"type": "read", "upto": 2})
        await bob.barrier()
        await alice.assert_no_frame(0.3)
        # Turned on again: later reads are receipted.
        await bob.send_frame({"type": "settings", "read_receipts": True})
        await until_ok(bob, None)
        s3 = await send_acked(alice, "bob", "three", "a3")
        await bob.expect("msg", seq=3)
        await bob.send_frame({"type": "read", "upto": 3})
        await expect_receipt(alice, "read", s3, "bob")


@async_test
async def test_group_receipt_counts():
    async with Meshd(load=LOAD) as m:
        tokens = {n: m.add_user(n) for n in ("alice", "bob", "carol", "dave", "erin")}
        m.ctl("group", "add", "#team", "alice", "bob", "carol", "dave")
        c = {n: await login(m, tokens[n], label=n) for n in ("alice", "bob", "carol", "dave")}
        g1 = await send_acked(c["alice"], "#team", "standup", "g1")
        g2 = await send_acked(c["alice"], "#team", "retro", "g2")
        d1 = await send_acked(c["alice"], "bob", "psst", "d1")
        for n in ("bob", "carol", "dave"):
            await c[n].expect("msg", seq=1)
            await c[n].expect("msg", seq=2)
        await c["bob"].expect("msg", seq=3)
        # bob acks all and reads g1; carol acks g1; dave nothing. Group messages get no
        # receipt frames, only the direct one does.
        await c["bob"].send_frame({"type": "ack", "upto": 3})
        await expect_receipt(c["alice"], "delivered", d1, "bob")
        await c["bob"].send_frame({"type": "read", "upto": 1})
        await c["carol"].send_frame({"type": "ack", "upto": 1})
        # dave turns read receipts off and reads everything: counted delivered, not read.
        await c["dave"].send_frame({"type": "settings", "read_receipts": False, "ref": "s"})
        await until_ok(c["dave"], "s")
        await c["dave"].send_frame({"type": "read", "upto": 2})
        for n in ("bob", "carol", "dave"):
            await c[n].barrier()
        await c["alice"].assert_no_frame(0.3)
        r = await query(c["alice"], [g1, g2, d1])
        assert r == [
            {"seq": g1, "to": "#team", "members": 3, "delivered": 3, "read": 1},
            {"seq": g2, "to": "#team", "members": 3, "delivered": 2, "read": 0},
            {"seq": d1, "to": "bob", "delivered": True, "read": False},
        ], r
        # Members are those whose log holds it: erin, added later, is not counted; carol,
        # deleted, is no longer counted.
        m.ctl("group", "add", "#team", "erin")
        m.ctl("user", "del", "carol")
        r = await query(c["alice"], [g1], ref="q2")
        assert r == [{"seq": g1, "to": "#team", "members": 2, "delivered": 2, "read": 1}], r
        # bob asking about alice's messages (in his log, not sent by him): left out.
        r = await query(c["bob"], [1, 2, 3], ref="q3")
        assert r == [], r


@async_test
async def test_bad_receipts_read_and_settings_input():
    async with Meshd(load=LOAD) as m:
        ta = m.add_user("alice")
        m.add_user("bob")
        alice = await login(m, ta, label="alice")
        await send_acked(alice, "bob", 1, "a1")
        await send_acked(alice, "bob", 2, "a2")
        cases = [
            ({"type": "receipts"}, 'receipts needs "seqs"'),
            ({"type": "receipts", "seqs": 5}, '"seqs" must be an array of 1 to 100 seqs'),
            ({"type": "receipts", "seqs": []}, "got 0 seqs"),
            ({"type": "receipts", "seqs": list(range(1, 102))}, "got 101 seqs"),
            ({"type": "receipts", "seqs": [1, "2"]}, '"seqs[1]" must be a seq'),
            ({"type": "receipts", "seqs": [1, 2, 0]}, '"seqs[2]" must be a seq'),
            ({"type": "receipts", "seqs": [1.5]}, '"seqs[0]" must be a seq'),
            ({"type": "receipts", "seqs": [1, 3]}, '"seqs[1]" 3 is above the log\'s head 2'),
            ({"type": "read"}, 'read needs "upto"'),
            ({"type": "read", "upto": -1}, '"upto" must be an integer >= 0'),
            ({"type": "read", "upto": "2"}, '"upto" must be an integer >= 0'),
            ({"type": "read", "upto": 3}, "upto 3 is above the log's head 2"),
            ({"type": "settings", "read_receipts": "no"}, '"read_receipts" must be true or false'),
            ({"type": "settings", "read_receipts": 0}, '"read_receipts" must be true or false'),
        ]
        for i, (frame, text) in enumerate(cases):
            await alice.send_frame({**frame, "ref": f"b{i}"})
            e = await alice.expect_error("bad_frame", ref=f"b{i}")
            assert text in e["message"], (frame, e)
        # Nothing changed: the marker is still 0, the setting still on.
        await alice.send_frame({"type": "settings", "ref": "g"})
        assert await alice.recv() == {"type": "settings", "ref": "g", "read_receipts": True}
        r = await query(alice, [1, 2])
        assert [x["read"] for x in r] == [False, False], r
        # 100 seqs are fine (repeats too).
        r = await query(alice, [1] * 50 + [2] * 50, ref="many")
        assert len(r) == 100, r
