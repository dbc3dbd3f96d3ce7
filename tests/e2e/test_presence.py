# tests/e2e/test_presence: presence and status (meshd-protocol(7), PRESENCE AND DIRECTORY):
# watch and its reply, presence events on online/offline (a dead peer included), no flap on a
# reconnect within [presence] grace_ms, automatic away that never overrides busy/dnd/away,
# status kept across a restart, events never stored nor replayed, and bad frames.

import asyncio
import time

from harness import Meshd, async_test, now_ms


def presence_toml(grace_ms=300, away_after_s=0, max_watch=1000):
    return (f"[presence]\ngrace_ms = {grace_ms}\naway_after_s = {away_after_s}\n"
            f"max_watch = {max_watch}\n")


async def watch(c, ids, ref="w"):
    await c.send_frame({"type": "watch", "ids": ids, "ref": ref})
    return await c.expect("watch", ref=ref)


async def set_status(c, status, note=None, ref="s"):
    f = {"type": "status", "status": status, "ref": ref}
    if note is not None:
        f["note"] = note
    await c.send_frame(f)
    await c.expect("ok", ref=ref)


def check_presence(p, id, *, online, status="available", note="", kind="user"):
    assert p.get("id") == id, p
    assert p.get("kind") == kind, p
    assert p.get("online") is online, f"expected online={online}: {p}"
    assert p.get("status") == status, f"expected status {status!r}: {p}"
    assert p.get("note") == note, f"expected note {note!r}: {p}"
    seen = p.get("last_seen")
    assert seen is None or type(seen) is int, p
    if online:
        assert type(seen) is int and abs(seen - now_ms()) < 5000, f"online: last_seen ~now: {p}"
    return p


async def expect_presence(c, id, timeout=5, **state):
    f = await c.expect("presence", timeout=timeout)
    return check_presence(f, id, **state)


@async_test
async def test_watch_reply_then_online_and_offline_events():
    async with Meshd(extra=presence_toml(grace_ms=300)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob", agent=True)
        ca = await m.login(ta, label="alice")
        r = await watch(ca, ["Bob", "zed", "bob", "bad name!"])
        # The current state of each known id (case-folded, repeats once), unknown ones named.
        assert len(r["presence"]) == 1, r
        p = check_presence(r["presence"][0], "bob", online=False, kind="agent")
        assert p["last_seen"] is None, f"never connected: last_seen null: {p}"
        assert r.get("unknown") == ["zed", "bad name!"], r

        t0 = now_ms()
        cb = await m.login(tb, device="phone", label="bob/phone")
        await expect_presence(ca, "bob", online=True, kind="agent")
        await ca.assert_no_frame(0.2)  # one event, not one per frame bob exchanges

        # A second device changes nothing; closing one of two changes nothing.
        cb2 = await m.login(tb, device="laptop", label="bob/laptop")
        await cb2.close()
        await ca.assert_no_frame(0.8)

        await cb.close()
        t_close = time.monotonic()
        await ca.assert_no_frame(0.15)  # the grace window
        p = await expect_presence(ca, "bob", timeout=3, online=False, kind="agent")
        waited = time.monotonic() - t_close
        assert 0.25 <= waited <= 2.0, f"offline announced {waited:.2f}s after close, grace 0.3s"
        assert type(p["last_seen"]) is int and t0 - 1000 <= p["last_seen"] <= now_ms(), p
        await ca.assert_no_frame(0.3)


@async_test
async def test_dead_peer_is_reported_offline():
    # A peer that stops answering pings is closed (4003) after two missed pongs, and its
    # watchers see it offline once the grace window has passed: never a dead peer online.
    async with Meshd(limits={"ping_interval_ms": 300}, extra=presence_toml(grace_ms=200)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        dead = await m.login(tb, label="bob/dead")
        r = await watch(ca, ["bob"])
        check_presence(r["presence"][0], "bob", online=True)

        async def no_pong(data=b""):
            pass
        dead.ws.pong = no_pong
        t0 = time.monotonic()
        p = None
        while p is None:  # alice keeps answering pings meanwhile (the library does it)
            f = await ca.recv(timeout=6)
            assert f["type"] == "presence", f
            p = check_presence(f, "bob", online=False)
        elapsed = time.monotonic() - t0
        assert elapsed >= 0.5, f"bob reported offline after {elapsed:.2f}s: before 2 missed pings"
        code = await dead.wait_closed(timeout=5)
        assert code in (4003, 1006), code
        assert m.ctl("sessions")["sessions"][0]["id"] == "alice"


@async_test
async def test_quick_reconnect_does_not_flap_and_offline_comes_after_grace():
    async with Meshd(extra=presence_toml(grace_ms=2000)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="bob")
        await watch(ca, ["bob"])
        # Reconnects within the grace window: a new connection after a close, and one that
        # replaces the old connection of the same device (close 4000).
        await cb.close()
        await asyncio.sleep(0.3)
        cb = await m.login(tb, label="bob/again")
        cb2 = await m.login(tb, label="bob/replacing")
        assert await cb.wait_closed() == 4000
        await ca.assert_no_frame(2.5)  # well past the grace window: no offline, no online
        r = await watch(ca, ["bob"], ref="w2")
        check_presence(r["presence"][0], "bob", online=True)

        await cb2.close()
        t_close = time.monotonic()
        await ca.assert_no_frame(1.5)
        await expect_presence(ca, "bob", timeout=3, online=False)
        waited = time.monotonic() - t_close
        assert waited <= 3.5, f"offline announced {waited:.2f}s after close, grace 2s"


@async_test
async def test_automatic_away_and_back_never_over_dnd_busy_or_manual_away():
    async with Meshd(extra=presence_toml(grace_ms=300, away_after_s=1)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="bob")
        r = await watch(ca, ["bob"])
        check_presence(r["presence"][0], "bob", online=True, status="available")
        # bob sends nothing from here on.
        t0 = time.monotonic()
        await expect_presence(ca, "bob", timeout=4, online=True, status="away")
        idle = time.monotonic() - t0
        assert 0.7 <= idle <= 3.5, f"away after {idle:.2f}s with away_after_s = 1"
        # Any frame from a device brings it back (here one of an unknown type).
        await cb.send_frame({"type": "x-poke", "ref": "p"})
        await cb.expect_error("unknown_type", ref="p")
        await expect_presence(ca, "bob", online=True, status="available")
        # The stored status is untouched by automatic away.
        await expect_presence(ca, "bob", timeout=4, online=True, status="away")

        # dnd: set by bob; idleness never changes what others see.
        await cb.send_frame({"type": "status", "status": "dnd", "note": "deep work", "ref": "d"})
        await cb.expect("ok", ref="d")
        await expect_presence(ca, "bob", online=True, status="available")  # bob woke up
        await expect_presence(ca, "bob", online=True, status="dnd", note="deep work")
        await ca.assert_no_frame(2.5)  # idle again: still dnd, no event
        await cb.send_frame({"type": "x-poke", "ref": "p2"})
        await cb.expect_error("unknown_type", ref="p2")
        await ca.assert_no_frame(0.5)  # active again: still dnd, no event

        for status in ("busy", "away"):
            await set_status(cb, status, ref=status)
            await expect_presence(ca, "bob", online=True, status=status)
            await ca.assert_no_frame(2.5)
        # Back to available by hand, then idle again: automatic away works as before.
        await set_status(cb, "available", ref="av")
        await expect_presence(ca, "bob", online=True, status="available")
        await expect_presence(ca, "bob", timeout=4, online=True, status="away")


@async_test
async def test_status_and_note_survive_restart_and_show_offline():
    async with Meshd(extra=presence_toml(grace_ms=0)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        cb = await m.login(tb, label="bob")
        await set_status(cb, "busy", "in a meeting")
        await cb.close()
        await m.restart()
        ca = await m.login(ta, label="alice")
        assert (ca.welcome["status"], ca.welcome["note"]) == ("available", ""), ca.welcome
        r = await watch(ca, ["bob"])
        p = check_presence(r["presence"][0], "bob", online=False, status="busy",
                           note="in a meeting")
        assert type(p["last_seen"]) is int, f"bob was connected before the restart: {p}"
        cb = await m.login(tb, label="bob/again")
        # A device starts from what the principal set, on any device, before the restart.
        assert (cb.welcome["status"], cb.welcome["note"]) == ("busy", "in a meeting"), \
            cb.welcome
        await expect_presence(ca, "bob", online=True, status="busy", note="in a meeting")
        # A status without a note clears the note.
        await set_status(cb, "busy")
        await expect_presence(ca, "bob", online=True, status="busy", note="")
        # The same status again is ok and tells nobody anything.
        await set_status(cb, "busy", ref="again")
        await ca.assert_no_frame(0.3)


@async_test
async def test_watch_is_per_session_replaced_and_events_never_replayed():
    async with Meshd(extra=presence_toml(grace_ms=0)) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        ca = await m.login(ta, device="laptop", label="alice/laptop")
        phone = await m.login(ta, device="phone", label="alice/phone")
        await watch(ca, ["bob"])
        cb = await m.login(tb, label="bob")
        await expect_presence(ca, "bob", online=True)
        await phone.assert_no_frame(0.3)  # watching is per connection
        # A new watch replaces the old one.
        r = await watch(ca, ["carol"], ref="w2")
        check_presence(r["presence"][0], "carol", online=False)
        await cb.close()
        cc = await m.login(tc, label="carol")
        await expect_presence(ca, "carol", online=True)
        await ca.assert_no_frame(0.3)  # nothing about bob any more
        # An empty list stops watching.
        r = await watch(ca, [], ref="w3")
        assert r["presence"] == [] and "unknown" not in r, r
        await cc.close()
        await ca.assert_no_frame(0.5)
        # Presence is not a message: nothing in the log, nothing replayed.
        await ca.close()
        again = await m.login(ta, device="laptop", resume=0, label="alice/again")
        assert again.welcome["seq"] == 0, again.welcome
        assert again.replayed == [], again.replayed
        await again.assert_no_frame(0.3)


@async_test
async def test_deleted_principal_goes_offline_for_its_watchers():
    async with Meshd(extra=presence_toml(grace_ms=5000)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="bob")
        await watch(ca, ["bob"])
        m.ctl("user", "del", "bob")
        assert await cb.wait_closed() == 4002
        # At once, not after the grace window.
        await expect_presence(ca, "bob", timeout=2, online=False)
        m.add_user("bob")
        r = await watch(ca, ["bob"], ref="w2")
        check_presence(r["presence"][0], "bob", online=False)
        assert r["presence"][0]["last_seen"] is None, "a re-added name is a new principal"


@async_test
async def test_bad_presence_frames():
    async with Meshd(extra=presence_toml(max_watch=3)) as m:
        ta = m.add_user("alice")
        m.add_user("bob")
        pre = await m.connect(ta, hello=False)
        await pre.send_frame({"type": "status", "status": "busy", "ref": "early"})
        await pre.expect_error("unauthorized", ref="early")
        await pre.send_frame({"type": "watch", "ids": ["bob"], "ref": "early2"})
        await pre.expect_error("unauthorized", ref="early2")

        ca = await m.login(ta)
        cases = [
            ({"type": "status"}, "bad_frame", '"status"'),
            ({"type": "status", "status": "sleeping"}, "bad_frame", '"status"'),
            ({"type": "status", "status": "Busy"}, "bad_frame", '"status"'),
            ({"type": "status", "status": 3}, "bad_frame", '"status"'),
            ({"type": "status", "status": "busy", "note": 5}, "bad_frame", '"note"'),
            ({"type": "status", "status": "busy", "note": "x" * 201}, "bad_frame", '"note"'),
            ({"type": "watch"}, "bad_frame", '"ids"'),
            ({"type": "watch", "ids": "bob"}, "bad_frame", '"ids"'),
            ({"type": "watch", "ids": ["bob", 7]}, "bad_frame", '"ids"[1]'),
            ({"type": "watch", "ids": ["a", "b", "c", "d"]}, "too_large", '"ids"'),
        ]
        for i, (frame, code, names) in enumerate(cases):
            ref = f"b{i}"
            await ca.send_frame({**frame, "ref": ref})
            e = await ca.expect_error(code, ref=ref)
            assert names in e["message"], f"{frame}: the message should name {names}: {e}"
        # At the limits: a 200-byte note, 3 ids (repeats counted as given).
        await set_status(ca, "dnd", "é" * 100)
        r = await watch(ca, ["bob", "bob", "nobody"], ref="w3")
        assert [p["id"] for p in r["presence"]] == ["bob"] and r["unknown"] == ["nobody"], r
        # Nothing was changed by the refused frames: the note is the last good one.
        cb = await m.login(m.add_user("carol"), label="carol")
        r = await watch(cb, ["alice"])
        check_presence(r["presence"][0], "alice", online=True, status="dnd", note="é" * 100)
