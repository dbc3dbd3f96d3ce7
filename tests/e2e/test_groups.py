# tests/e2e/test_groups: groups (contract §3 "#group", meshctl.8 "group", meshd-protocol.7
# GROUPS): meshctl group add/list/del/remove, and sends to "#group" through route_groups:
# one stored message, one entry in every member's log (the sender's included), forbidden for
# non-members, unknown_peer for unknown groups, membership changes applying to the next send,
# user del leaving every group, and a 1,000-member group written in a single commit.

import asyncio
from concurrent.futures import ThreadPoolExecutor

from harness import Meshd, async_test, check_msg, now_ms

LOAD = ("auth_token", "route_direct", "route_groups")
MSG_KEYS = {"type", "seq", "from", "to", "ts", "body"}


def groups(m):
    """meshctl --json group list, checked for its shape; returns {group: members}."""
    r = m.ctl("group", "list")
    assert set(r) == {"groups"} and isinstance(r["groups"], list), r
    for g in r["groups"]:
        assert set(g) == {"group", "members"}, f"group entry keys: {g}"
        assert g["members"] == sorted(g["members"]), f"members must be sorted: {g}"
    names = [g["group"] for g in r["groups"]]
    assert names == sorted(names), f"groups must be sorted by name: {names}"
    return {g["group"]: g["members"] for g in r["groups"]}


def heads(m):
    """The head of every principal's log (user.list seq)."""
    return {u["id"]: u["seq"] for u in m.control("user.list")["users"]}


def commits(m):
    store = m.control("status")["store"]
    assert type(store.get("commits")) is int, f"status store.commits must be an integer: {store}"
    return store["commits"]


async def send_ok(c, to, body, *, ref, seq, **extra):
    await c.send(to, body, ref=ref, **extra)
    ack = await c.expect("ack", ref=ref, seq=seq)
    assert not ack.get("dup", False), ack
    return ack


async def expect_group_msg(c, *, seq, frm, to, body, t0=None, msg_id=None):
    m = await c.expect("msg")
    check_msg(m, seq=seq, frm=frm, to=to, body=body, t0=t0)
    keys = MSG_KEYS | ({"id"} if msg_id is not None else set())
    assert set(m) == keys, f"{c.label}: msg keys {sorted(m)}, expected {sorted(keys)}"
    if msg_id is not None:
        assert m["id"] == msg_id, m
    return m


async def members_login(m, names, **kw):
    """Add users and log each one in (device "default"); returns {name: client}."""
    out = {}
    for n in names:
        token = m.add_user(n)
        out[n] = await m.login(token, label=n, **kw)
        out[n].token = token
    return out


# ---- meshctl group ---------------------------------------------------------------------

def test_group_commands_json():
    with Meshd(load=LOAD) as m:
        for n in ("alice", "bob", "carol"):
            m.add_user(n)
        assert groups(m) == {}
        # Created: both spellings of the name, members sorted, all of them new.
        r = m.ctl("group", "add", "#team", "bob", "alice")
        assert r == {"group": "team", "members": ["alice", "bob"], "added": ["alice", "bob"]}, r
        r = m.ctl("group", "add", "team", "carol", "bob")
        assert r == {"group": "team", "members": ["alice", "bob", "carol"],
                     "added": ["carol"]}, r
        # Names are case-folded like principal names; nothing new to add.
        r = m.ctl("group", "add", "#Team", "ALICE")
        assert r == {"group": "team", "members": ["alice", "bob", "carol"], "added": []}, r
        r = m.ctl("group", "add", "ops", "carol")
        assert r == {"group": "ops", "members": ["carol"], "added": ["carol"]}, r
        assert groups(m) == {"ops": ["carol"], "team": ["alice", "bob", "carol"]}

        r = m.ctl("group", "remove", "#team", "bob")
        assert r == {"group": "team", "members": ["alice", "carol"], "removed": ["bob"]}, r
        # A name that is no member is just not listed in removed.
        r = m.ctl("group", "remove", "team", "bob")
        assert r == {"group": "team", "members": ["alice", "carol"], "removed": []}, r
        # Removing the last members leaves the group, empty, until group del.
        r = m.ctl("group", "remove", "team", "carol", "alice")
        assert r == {"group": "team", "members": [], "removed": ["alice", "carol"]}, r
        assert groups(m) == {"ops": ["carol"], "team": []}
        r = m.ctl("group", "add", "team", "bob")
        assert r == {"group": "team", "members": ["bob"], "added": ["bob"]}, r

        r = m.ctl("group", "del", "#team")
        assert r == {"group": "team"}, r
        assert groups(m) == {"ops": ["carol"]}
        r = m.ctl("group", "del", "OPS")
        assert r == {"group": "ops"}, r
        assert groups(m) == {}


def test_group_errors():
    with Meshd(load=LOAD) as m:
        for n in ("alice", "bob"):
            m.add_user(n)
        m.ctl("group", "add", "team", "alice")
        # No such group.
        for args in (("group", "del", "nope"), ("group", "remove", "nope", "alice")):
            rc, out, err = m.ctl_raw(*args)
            assert rc == 1, (args, rc, out, err)
            assert m.ctl_fail(*args)["code"] == "not_found", args
        # A member that is no user: the message names it, and nothing changes (not even the
        # valid members of the same request, nor the creation of a new group).
        e = m.ctl_fail("group", "add", "team", "bob", "nobody")
        assert e["code"] == "not_found" and "nobody" in e["message"], e
        e = m.ctl_fail("group", "add", "fresh", "alice", "nobody")
        assert e["code"] == "not_found" and "nobody" in e["message"], e
        e = m.ctl_fail("group", "remove", "team", "alice", "nobody")
        assert e["code"] == "not_found" and "nobody" in e["message"], e
        assert groups(m) == {"team": ["alice"]}
        # Invalid names, of the group and of a member.
        for bad in ("a b", "x" * 65, "caf\u00e9", "semi;colon", "#", "Team!"):
            e = m.ctl_fail("group", "add", bad, "alice")
            assert e["code"] == "bad_name", (bad, e)
            e = m.ctl_fail("group", "del", bad)
            assert e["code"] == "bad_name", (bad, e)
        e = m.ctl_fail("group", "add", "team", "bob", "a b")
        assert e["code"] == "bad_name", e
        assert groups(m) == {"team": ["alice"]}
        # Human error output: one line on stderr, nothing on stdout.
        rc, out, err = m.ctl_raw("group", "del", "nope", json=False)
        assert rc == 1 and out == "", (rc, out, err)
        assert len([l for l in err.splitlines() if l.strip()]) == 1, err
        assert err.startswith("meshctl: ") and "nope" in err, err
        # meshctl takes one '#' off; what is left must be a valid name on its own, so "##team"
        # is no spelling of #team (the daemon must not take off a second '#').
        for args in (("group", "add", "##team", "bob"), ("group", "del", "##team"),
                     ("group", "remove", "##team", "alice")):
            rc, out, err = m.ctl_raw(*args)
            assert rc == 1, f"meshctl {' '.join(args)}: exit {rc}, expected bad_name: {out}"
            assert m.ctl_fail(*args)["code"] == "bad_name", args
        assert groups(m) == {"team": ["alice"]}


def test_group_usage_errors():
    with Meshd(load=LOAD) as m:
        for args in (("group",), ("group", "add"), ("group", "add", "team"),
                     ("group", "remove"), ("group", "remove", "team"), ("group", "del"),
                     ("group", "del", "team", "extra"), ("group", "list", "extra"),
                     ("group", "frob"), ("group", "add", "team", "alice", "--agent")):
            rc, out, err = m.ctl_raw(*args)
            assert rc == 2, (args, rc, out, err)
            e = m.ctl_fail(*args)
            assert e["code"] == "usage", (args, e)
        assert groups(m) == {}


def test_group_human_output():
    with Meshd(load=LOAD) as m:
        for n in ("alice", "bob", "carol"):
            m.add_user(n)
        assert m.ctl("group", "list", json=False) == "no groups\n"
        out = m.ctl("group", "add", "#team", "carol", "alice", json=False)
        assert out == "group #team: alice, carol (added alice, carol)\n", out
        out = m.ctl("group", "add", "team", "bob", json=False)
        assert out == "group #team: alice, bob, carol (added bob)\n", out
        assert m.ctl("group", "list", json=False) == "#team  alice, bob, carol\n"
        m.ctl("group", "add", "ab", "carol")
        # One line per group, sorted, the members in a column.
        out = m.ctl("group", "list", json=False)
        assert out == "#ab    carol\n#team  alice, bob, carol\n", out
        out = m.ctl("group", "remove", "team", "bob", "carol", json=False)
        assert out == "group #team: alice (removed bob, carol)\n", out
        out = m.ctl("group", "remove", "team", "alice", json=False)
        assert out == "group #team: no members (removed alice)\n", out
        assert m.ctl("group", "list", json=False) == "#ab    carol\n#team  no members\n"
        assert m.ctl("group", "del", "#team", json=False) == "deleted group #team\n"
        assert m.ctl("group", "del", "ab", json=False) == "deleted group #ab\n"
        assert m.ctl("group", "list", json=False) == "no groups\n"


# ---- sends to a group ------------------------------------------------------------------

@async_test
async def test_fan_out_each_member_own_seq():
    async with Meshd(load=LOAD) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        laptop = await m.login(ta, device="laptop", label="alice/laptop")
        phone = await m.login(ta, device="phone", label="alice/phone")
        bob = await m.login(tb, label="bob")
        carol = await m.login(tc, label="carol")
        # Give the logs different heads first: alice 2, bob 3, carol 1.
        await send_ok(laptop, "bob", "d1", ref="d1", seq=1)
        await send_ok(laptop, "bob", "d2", ref="d2", seq=2)
        for c in (phone, bob):
            for seq in (1, 2):
                await c.expect("msg", seq=seq)
        await send_ok(bob, "carol", "d3", ref="d3", seq=3)
        await carol.expect("msg", seq=1)
        m.ctl("group", "add", "team", "alice", "bob", "carol")

        t0 = now_ms()
        body = {"text": "hello team", "n": [1, 2]}
        await send_ok(laptop, "#team", body, ref="g1", seq=3, id="g-1")
        await expect_group_msg(phone, seq=3, frm="alice", to="#team", body=body, t0=t0,
                               msg_id="g-1")
        await expect_group_msg(bob, seq=4, frm="alice", to="#team", body=body, t0=t0,
                               msg_id="g-1")
        await expect_group_msg(carol, seq=2, frm="alice", to="#team", body=body, t0=t0,
                               msg_id="g-1")
        # The sending device gets only its ack; nobody gets a second copy.
        for c in (laptop, phone, bob, carol):
            await c.assert_no_frame(0.1)
        assert heads(m) == {"alice": 3, "bob": 4, "carol": 2}

        # Another member's send reaches both of alice's devices.
        await send_ok(bob, "#team", "from bob", ref="g2", seq=5)
        for c, seq in ((laptop, 4), (phone, 4), (carol, 3)):
            await expect_group_msg(c, seq=seq, frm="bob", to="#team", body="from bob")
        await bob.assert_no_frame(0.1)
        assert heads(m) == {"alice": 4, "bob": 5, "carol": 3}

        # A new device replays alice's log: her own group send included, from herself.
        tablet = await m.login(ta, device="tablet", label="alice/tablet")
        got = [(x["seq"], x["from"], x["to"], x["body"]) for x in tablet.replayed]
        assert got == [(1, "alice", "bob", "d1"), (2, "alice", "bob", "d2"),
                       (3, "alice", "#team", body), (4, "bob", "#team", "from bob")], got
        assert tablet.replayed[2].get("id") == "g-1", tablet.replayed[2]


@async_test
async def test_non_member_and_unknown_group():
    async with Meshd(load=LOAD) as m:
        c = await members_login(m, ("alice", "bob", "dave"))
        m.ctl("group", "add", "team", "alice", "bob")
        m.ctl("group", "add", "empty", "alice")
        m.ctl("group", "remove", "empty", "alice")
        await c["dave"].send("#team", "let me in", ref="x1")
        await c["dave"].expect_error("forbidden", ref="x1")
        await c["dave"].send("#empty", "anyone?", ref="x2")
        await c["dave"].expect_error("forbidden", ref="x2")
        await c["dave"].send("#nope", "hello?", ref="x3")
        await c["dave"].expect_error("unknown_peer", ref="x3")
        await c["alice"].send("#nope", "hello?", ref="x4")
        await c["alice"].expect_error("unknown_peer", ref="x4")
        # Nothing was stored or delivered.
        for n in ("alice", "bob", "dave"):
            await c[n].assert_no_frame(0.1)
        assert heads(m) == {"alice": 0, "bob": 0, "dave": 0}
        # The refused connections stay usable, and seqs continue at 1.
        await send_ok(c["dave"], "bob", "direct", ref="d1", seq=1)
        await expect_group_msg(c["bob"], seq=1, frm="dave", to="bob", body="direct")
        await send_ok(c["alice"], "#team", "members only", ref="g1", seq=1)
        await expect_group_msg(c["bob"], seq=2, frm="alice", to="#team", body="members only")
        await c["dave"].assert_no_frame(0.1)


@async_test
async def test_offline_member_gets_it_on_reconnect():
    async with Meshd(load=LOAD) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        alice = await m.login(ta, label="alice")
        carol = await m.login(tc, label="carol")
        m.ctl("group", "add", "team", "alice", "bob", "carol")
        for i in range(5):
            await send_ok(alice, "#team", {"i": i}, ref=f"g{i}", seq=i + 1)
        for i in range(5):
            await expect_group_msg(carol, seq=i + 1, frm="alice", to="#team", body={"i": i})
        # bob was never connected: all five, in order, then synced.
        bob = await m.connect(tb, label="bob")
        w = await bob.expect_welcome()
        assert w["seq"] == 5, w
        msgs = await bob.recv_until_synced()
        assert bob.synced["seq"] == 5, bob.synced
        assert len(msgs) == 5, msgs
        for i, x in enumerate(msgs):
            check_msg(x, seq=i + 1, frm="alice", to="#team", body={"i": i})
        # After acking 3 and leaving, a later send is replayed after the unacked ones.
        await bob.send_frame({"type": "ack", "upto": 3})
        await bob.barrier()
        await bob.close()
        await send_ok(alice, "#team", "late", ref="late", seq=6)
        await expect_group_msg(carol, seq=6, frm="alice", to="#team", body="late")
        again = await m.login(tb, label="bob-again")
        got = [(x["seq"], x["body"]) for x in again.replayed]
        assert got == [(4, {"i": 3}), (5, {"i": 4}), (6, "late")], got
        await again.assert_no_frame(0.1)


@async_test
async def test_membership_change_applies_to_next_send():
    async with Meshd(load=LOAD) as m:
        c = await members_login(m, ("alice", "bob", "carol", "dave"))
        m.ctl("group", "add", "team", "alice", "bob", "carol")
        await send_ok(c["alice"], "#team", "m1", ref="m1", seq=1)
        for n in ("bob", "carol"):
            await expect_group_msg(c[n], seq=1, frm="alice", to="#team", body="m1")

        r = m.ctl("group", "remove", "team", "bob")
        assert r["members"] == ["alice", "carol"], r
        await send_ok(c["alice"], "#team", "m2", ref="m2", seq=2)
        await expect_group_msg(c["carol"], seq=2, frm="alice", to="#team", body="m2")
        await c["bob"].assert_no_frame(0.2)
        # A removed member may no longer send to it either.
        await c["bob"].send("#team", "still here?", ref="b1")
        await c["bob"].expect_error("forbidden", ref="b1")

        r = m.ctl("group", "add", "team", "dave")
        assert r["members"] == ["alice", "carol", "dave"] and r["added"] == ["dave"], r
        await send_ok(c["alice"], "#team", "m3", ref="m3", seq=3)
        await expect_group_msg(c["carol"], seq=3, frm="alice", to="#team", body="m3")
        await expect_group_msg(c["dave"], seq=1, frm="alice", to="#team", body="m3")
        await send_ok(c["dave"], "#team", "m4", ref="m4", seq=2)
        await expect_group_msg(c["alice"], seq=4, frm="dave", to="#team", body="m4")
        await expect_group_msg(c["carol"], seq=4, frm="dave", to="#team", body="m4")
        for n in ("alice", "bob", "carol", "dave"):
            await c[n].assert_no_frame(0.1)
        assert heads(m) == {"alice": 4, "bob": 1, "carol": 4, "dave": 2}

        # Logs, replayed on new devices: bob has only m1, dave only what came after joining.
        bob2 = await m.login(c["bob"].token, device="b2", label="bob/b2")
        assert [(x["seq"], x["body"]) for x in bob2.replayed] == [(1, "m1")], bob2.replayed
        dave2 = await m.login(c["dave"].token, device="d2", label="dave/d2")
        got = [(x["seq"], x["from"], x["body"]) for x in dave2.replayed]
        assert got == [(1, "alice", "m3"), (2, "dave", "m4")], got


@async_test
async def test_user_del_leaves_every_group():
    async with Meshd(load=LOAD) as m:
        c = await members_login(m, ("alice", "bob", "carol"))
        m.ctl("group", "add", "team", "alice", "bob", "carol")
        m.ctl("group", "add", "ops", "bob", "carol")
        await send_ok(c["alice"], "#team", "before", ref="b", seq=1)
        await expect_group_msg(c["bob"], seq=1, frm="alice", to="#team", body="before")
        await expect_group_msg(c["carol"], seq=1, frm="alice", to="#team", body="before")

        r = m.ctl("user", "del", "bob")
        assert r == {"id": "bob", "closed_sessions": 1}, r
        assert await c["bob"].wait_closed(timeout=3) == 4002
        assert groups(m) == {"ops": ["carol"], "team": ["alice", "carol"]}
        await send_ok(c["alice"], "#team", "after", ref="a", seq=2)
        await expect_group_msg(c["carol"], seq=2, frm="alice", to="#team", body="after")

        # A bob added again is a new principal: in no group, empty log.
        tb = m.add_user("bob")
        assert groups(m) == {"ops": ["carol"], "team": ["alice", "carol"]}
        bob = await m.login(tb, label="bob-new")
        assert bob.welcome["seq"] == 0 and bob.replayed == [], (bob.welcome, bob.replayed)
        await bob.send("#team", "me again", ref="x")
        await bob.expect_error("forbidden", ref="x")
        await send_ok(c["alice"], "#team", "not for bob", ref="n", seq=3)
        await expect_group_msg(c["carol"], seq=3, frm="alice", to="#team", body="not for bob")
        await bob.assert_no_frame(0.2)
        assert heads(m) == {"alice": 3, "bob": 0, "carol": 3}


# ---- a large group ---------------------------------------------------------------------

BIG = 1000


@async_test
async def test_thousand_members_one_commit():
    async with Meshd(load=LOAD) as m:
        names = [f"u{i:04d}" for i in range(BIG)]
        # One control request per user; a few at a time to keep the setup short.
        with ThreadPoolExecutor(max_workers=8) as pool:
            tokens = dict(zip(names, pool.map(m.add_user, names)))
        for lo in range(0, BIG, 250):
            r = m.control("group.add", group="big", members=names[lo:lo + 250])
            assert r["group"] == "big" and r["added"] == names[lo:lo + 250], r["added"][:5]
            assert r["members"] == names[:lo + 250], len(r["members"])
        assert m.control("group.list") == {"groups": [{"group": "big", "members": names}]}

        # The only client: the sender, who acks nothing. Nothing else writes meanwhile.
        sender = await m.login(tokens["u0000"], label="u0000")
        await sender.barrier()
        before = commits(m)
        assert commits(m) == before, "the store commits while idle"
        t0 = now_ms()
        await send_ok(sender, "#big", {"to": "all"}, ref="big", seq=1)
        after = commits(m)
        assert after == before + 1, (
            f"one send to a {BIG}-member group took {after - before} commits, expected 1")
        await sender.assert_no_frame(0.1)
        await sender.close()

        hs = heads(m)
        assert len(hs) == BIG and set(hs.values()) == {1}, (
            {k: v for k, v in hs.items() if v != 1})
        for n in ("u0001", "u0500", "u0998", "u0999"):
            c = await m.login(tokens[n], label=n)
            assert c.welcome["seq"] == 1, c.welcome
            assert len(c.replayed) == 1, c.replayed
            check_msg(c.replayed[0], seq=1, frm="u0000", to="#big", body={"to": "all"}, t0=t0)
            await c.close()
