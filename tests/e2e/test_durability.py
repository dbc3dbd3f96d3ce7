# tests/e2e/test_durability: acked means stored, also across SIGKILL; idempotent resend by id
# (contract §3 "Order and guarantees").

import asyncio
import os

from harness import Meshd, async_test, check_msg


async def send_pipelined(c, to, bodies, refs, ids=None):
    for i, (b, r) in enumerate(zip(bodies, refs)):
        extra = {"id": ids[i]} if ids else {}
        await c.send(to, b, ref=r, **extra)
    acks = []
    for r in refs:
        ack = await c.expect("ack")
        assert ack.get("ref") == r, f"ack order: expected ref {r}: {ack}"
        acks.append(ack)
    return acks


@async_test
async def test_acked_messages_survive_sigkill():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        epoch = ca.welcome["epoch"]
        n = 20
        bodies = [{"k": i, "text": f"message {i} ✓"} for i in range(n)]
        acks = await send_pipelined(ca, "bob", bodies, [f"r{i}" for i in range(n)])
        assert [a["seq"] for a in acks] == list(range(1, n + 1)), acks
        m.kill9()  # right after the last ack
        m.start()
        cb = await m.connect(tb, label="bob")
        w = await cb.expect_welcome()
        assert w["seq"] == n and w["cursor"] == 0, w
        assert w["epoch"] == epoch, f"epoch changed across a restart: {epoch} -> {w['epoch']}"
        msgs = await cb.recv_until_synced()
        assert len(msgs) == n, f"expected exactly {n} messages once, got {len(msgs)}"
        for i, x in enumerate(msgs):
            check_msg(x, seq=i + 1, frm="alice", to="bob", body=bodies[i])
        assert cb.synced["seq"] == n
        await cb.assert_no_frame()
        # The sender's log survived too.
        ca = await m.login(ta, device="other")
        assert ca.welcome["seq"] == n and len(ca.replayed) == n, ca.welcome
        # After ack upto, a reconnect of the same device gets nothing.
        await cb.send_frame({"type": "ack", "upto": n})
        await cb.barrier()
        await cb.close()
        cb = await m.login(tb, label="bob")
        assert cb.welcome["cursor"] == n and cb.replayed == [], (cb.welcome, cb.replayed)


@async_test
async def test_cursor_survives_sigkill():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        await send_pipelined(ca, "bob", list(range(6)), [f"r{i}" for i in range(6)])
        cb = await m.login(tb, device="phone")
        assert len(cb.replayed) == 6
        await cb.send_frame({"type": "ack", "upto": 4})
        await cb.barrier()
        # Make sure the cursor reached the store: a later send's ack implies its batch
        # committed (cursors "go into the next batch").
        await ca.send("bob", "later", ref="later")
        await ca.expect("ack", ref="later", seq=7)
        m.kill9()
        m.start()
        cb = await m.login(tb, device="phone")
        assert cb.welcome["cursor"] == 4, cb.welcome
        assert [x["seq"] for x in cb.replayed] == [5, 6, 7], cb.replayed


@async_test
async def test_resend_same_id_is_dup():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="bob")
        body = {"pay": "once", "n": [1, 2]}
        await ca.send("bob", body, ref="c-1", id="7f3c-0001")
        first = await ca.expect("ack", ref="c-1", seq=1)
        assert not first.get("dup", False), first
        check_msg(await cb.expect("msg"), seq=1, frm="alice", to="bob", body=body)
        # The resend (new ref): same seq, dup:true, not stored or delivered again.
        await ca.send("bob", body, ref="c-2", id="7f3c-0001")
        again = await ca.expect("ack", ref="c-2", seq=1)
        assert again.get("dup") is True, again
        await cb.assert_no_frame()
        # Also from another device of the same principal.
        a2 = await m.login(ta, device="second", label="alice/2")
        assert [x["seq"] for x in a2.replayed] == [1], a2.replayed
        await a2.send("bob", body, ref="c-3", id="7f3c-0001")
        third = await a2.expect("ack", ref="c-3", seq=1)
        assert third.get("dup") is True, third
        await cb.assert_no_frame()
        await ca.assert_no_frame(0.05)  # alice/1 gets no copy of a dup
        # Stored once in each log.
        users = {u["id"]: u["seq"] for u in m.ctl("user", "list")["users"]}
        assert users == {"alice": 1, "bob": 1}, users
        fresh = await m.login(tb, device="fresh")
        assert [x["seq"] for x in fresh.replayed] == [1], fresh.replayed
        # A different id is a new message.
        await ca.send("bob", body, ref="c-4", id="7f3c-0002")
        await ca.expect("ack", ref="c-4", seq=2)
        check_msg(await cb.expect("msg"), seq=2, frm="alice", to="bob", body=body)


@async_test
async def test_same_id_different_body_or_to_is_conflict():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        m.add_user("carol")
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="bob")
        await ca.send("bob", "original", ref="o", id="dup-1")
        await ca.expect("ack", ref="o", seq=1)
        await cb.expect("msg")
        await ca.send("bob", "changed", ref="c1", id="dup-1")
        await ca.expect_error("conflict", ref="c1")
        await ca.send("carol", "original", ref="c2", id="dup-1")
        await ca.expect_error("conflict", ref="c2")
        await cb.assert_no_frame()
        # Nothing new stored; the connection keeps working.
        await ca.send("bob", "next", ref="n")
        await ca.expect("ack", ref="n", seq=2)
        check_msg(await cb.expect("msg"), seq=2, frm="alice", to="bob", body="next")
        users = {u["id"]: u["seq"] for u in m.ctl("user", "list")["users"]}
        assert users == {"alice": 2, "bob": 2, "carol": 0}, users


@async_test
async def test_ids_are_per_sender():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        tc = m.add_user("carol")
        ca = await m.login(ta)
        cc = await m.login(tc)
        cb = await m.login(tb)
        await ca.send("bob", "from alice", ref="a", id="same")
        await ca.expect("ack", ref="a", seq=1)
        await cc.send("bob", "from carol", ref="c", id="same")
        ack = await cc.expect("ack", ref="c", seq=1)
        assert not ack.get("dup", False), ack
        check_msg(await cb.expect("msg"), seq=1, frm="alice", to="bob", body="from alice")
        check_msg(await cb.expect("msg"), seq=2, frm="carol", to="bob", body="from carol")


@async_test
async def test_dedupe_survives_sigkill():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        await ca.send("bob", {"v": 1}, ref="1", id="persist-1")
        await ca.expect("ack", ref="1", seq=1)
        m.kill9()
        m.start()
        ca = await m.login(ta)
        assert [x["seq"] for x in ca.replayed] == [1]
        await ca.send("bob", {"v": 1}, ref="2", id="persist-1")
        ack = await ca.expect("ack", ref="2", seq=1)
        assert ack.get("dup") is True, ack
        cb = await m.login(tb)
        assert [x["seq"] for x in cb.replayed] == [1], cb.replayed
        assert cb.replayed[0].get("id") == "persist-1", cb.replayed[0]


@async_test
async def test_clean_restart_keeps_everything():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        epoch = ca.welcome["epoch"]
        await send_pipelined(ca, "bob", ["a", "b", "c"], ["1", "2", "3"])
        await m.restart()
        cb = await m.login(tb)
        assert cb.welcome["epoch"] == epoch, cb.welcome
        assert [(x["seq"], x["body"]) for x in cb.replayed] == [(1, "a"), (2, "b"), (3, "c")]
        # Tokens survive a restart; old clients were closed with 1001.
        assert ca.close_code == 1001, ca.close_code


@async_test
async def test_dedupe_window_expires():
    # contract: a repeat *within the dedupe window* is not stored again; past it the same id
    # is a new message.
    async with Meshd(storage={"dedupe_window_s": 1}) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        cb = await m.login(tb)
        await ca.send("bob", "v1", ref="1", id="window-1")
        await ca.expect("ack", ref="1", seq=1)
        await cb.expect("msg", seq=1)
        await ca.send("bob", "v1", ref="2", id="window-1")
        ack = await ca.expect("ack", ref="2", seq=1)
        assert ack.get("dup") is True, ack
        await asyncio.sleep(2.2)
        await ca.send("bob", "v2", ref="3", id="window-1")  # other body: no conflict now
        ack = await ca.expect("ack", ref="3", seq=2)
        assert not ack.get("dup", False), ack
        check_msg(await cb.expect("msg"), seq=2, frm="alice", to="bob", body="v2")


@async_test
async def test_epoch_changes_when_store_replaced():
    async with Meshd() as m:
        ta = m.add_user("alice")
        c = await m.login(ta)
        old_epoch = c.welcome["epoch"]
        await m.stop()
        for f in os.listdir(m.data_dir):
            p = os.path.join(m.data_dir, f)
            if os.path.isfile(p) and f.startswith("meshd.db"):
                os.unlink(p)
        m.start()
        ta = m.add_user("alice")
        c = await m.connect(ta, resume=0, epoch=old_epoch)
        await c.expect_error("resume_invalid")
        await c.hello(ta)
        w = await c.expect_welcome()
        assert w["epoch"] != old_epoch, w
