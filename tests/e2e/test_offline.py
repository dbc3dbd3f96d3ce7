# tests/e2e/test_offline: stored messages, replay, cursors and resume (contract §2-3).

import asyncio

from harness import Meshd, async_test, check_msg


async def send_n(c, to, n, start=0):
    """Send n messages, wait for their acks (in order); returns the ack seqs."""
    for i in range(start, start + n):
        await c.send(to, {"n": i}, ref=f"r{i}")
    seqs = []
    for i in range(start, start + n):
        ack = await c.expect("ack")
        assert ack.get("ref") == f"r{i}", f"acks out of order: {ack}"
        seqs.append(ack["seq"])
    return seqs


async def offline_setup(m, n=5):
    """alice online sends n messages to offline bob. Returns (alice client, bob token)."""
    ta, tb = m.add_user("alice"), m.add_user("bob")
    ca = await m.login(ta, label="alice")
    assert await send_n(ca, "bob", n) == list(range(1, n + 1))
    ca.token = ta
    return ca, tb


def check_replay(msgs, seqs, frm="alice", to="bob"):
    assert [x["seq"] for x in msgs] == list(seqs), f"replayed seqs {[x['seq'] for x in msgs]}"
    for x, s in zip(msgs, seqs):
        check_msg(x, seq=s, frm=frm, to=to, body={"n": s - 1})


@async_test
async def test_offline_messages_delivered_in_order_before_synced():
    async with Meshd() as m:
        _, tb = await offline_setup(m, 5)
        cb = await m.connect(tb, device="phone", label="bob")
        w = await cb.expect_welcome()
        assert w["seq"] == 5 and w["cursor"] == 0 and w["device"] == "phone", w
        msgs = await cb.recv_until_synced()
        check_replay(msgs, [1, 2, 3, 4, 5])
        assert cb.synced == {"type": "synced", "seq": 5}, cb.synced
        await cb.assert_no_frame()


@async_test
async def test_ack_upto_then_reconnect_replays_only_newer():
    async with Meshd() as m:
        ca, tb = await offline_setup(m, 5)
        cb = await m.login(tb, device="phone", label="bob")
        check_replay(cb.replayed, [1, 2, 3, 4, 5])
        await cb.send_frame({"type": "ack", "upto": 3})
        await cb.barrier()
        await cb.close()
        cb = await m.login(tb, device="phone", label="bob")
        assert cb.welcome["cursor"] == 3 and cb.welcome["seq"] == 5, cb.welcome
        check_replay(cb.replayed, [4, 5])
        assert cb.synced["seq"] == 5, cb.synced
        # A device never seen before gets everything.
        other = await m.login(tb, device="tablet", label="bob/tablet")
        assert other.welcome["cursor"] == 0, other.welcome
        check_replay(other.replayed, [1, 2, 3, 4, 5])
        # Live messages continue after the replay, on both devices.
        assert await send_n(ca, "bob", 1, start=5) == [6]
        for c in (cb, other):
            check_msg(await c.expect("msg"), seq=6, frm="alice", to="bob", body={"n": 5})


@async_test
async def test_ack_upto_then_close_without_barrier():
    # A client that acks and closes at once: the cursor must still be stored.
    async with Meshd() as m:
        _, tb = await offline_setup(m, 3)
        cb = await m.login(tb, device="phone")
        await cb.send_frame({"type": "ack", "upto": 3})
        await cb.close()
        cb = await m.login(tb, device="phone")
        assert cb.welcome["cursor"] == 3, cb.welcome
        assert cb.replayed == [], cb.replayed


@async_test
async def test_cursor_is_monotonic():
    async with Meshd() as m:
        _, tb = await offline_setup(m, 5)
        cb = await m.login(tb, device="phone")
        await cb.send_frame({"type": "ack", "upto": 4})
        await cb.send_frame({"type": "ack", "upto": 2})  # lower: ignored, cursor stays 4
        await cb.barrier()
        await cb.close()
        cb = await m.login(tb, device="phone")
        assert cb.welcome["cursor"] == 4, cb.welcome
        check_replay(cb.replayed, [5])


@async_test
async def test_resume_n_replays_only_above_n():
    async with Meshd() as m:
        _, tb = await offline_setup(m, 5)
        cb = await m.login(tb, device="d3", resume=2)
        check_replay(cb.replayed, [3, 4, 5])
        assert cb.synced["seq"] == 5
        # resume 0 on a new device is everything; resume == head is nothing.
        c0 = await m.login(tb, device="d0", resume=0)
        check_replay(c0.replayed, [1, 2, 3, 4, 5])
        c5 = await m.login(tb, device="d5", resume=5)
        assert c5.replayed == [] and c5.synced["seq"] == 5, (c5.replayed, c5.synced)


@async_test
async def test_replay_from_max_of_resume_and_cursor():
    async with Meshd() as m:
        _, tb = await offline_setup(m, 5)
        cb = await m.login(tb, device="phone")
        await cb.send_frame({"type": "ack", "upto": 3})
        await cb.barrier()
        await cb.close()
        # resume below the stored cursor: the cursor wins.
        cb = await m.login(tb, device="phone", resume=1)
        check_replay(cb.replayed, [4, 5])
        await cb.close()
        # resume above the cursor: resume wins.
        cb = await m.login(tb, device="phone", resume=4)
        check_replay(cb.replayed, [5])


@async_test
async def test_resume_head_skips_backlog():
    async with Meshd() as m:
        ca, tb = await offline_setup(m, 5)
        cb = await m.connect(tb, device="fresh", resume="head", label="bob")
        w = await cb.expect_welcome()
        assert w["seq"] == 5, w
        assert await cb.recv_until_synced() == [], cb.replayed
        assert cb.synced["seq"] == 5, cb.synced
        await cb.assert_no_frame()
        # Live continues with the next seq.
        assert await send_n(ca, "bob", 1, start=5) == [6]
        check_msg(await cb.expect("msg"), seq=6, frm="alice", to="bob", body={"n": 5})


@async_test
async def test_resume_above_head_invalid_then_hello_again():
    async with Meshd() as m:
        _, tb = await offline_setup(m, 5)
        c = await m.connect(tb, device="phone", resume=6, label="bob")
        await c.expect_error("resume_invalid")
        # Still open and not authenticated.
        await c.send_frame({"type": "send", "to": "alice", "ref": "x", "body": 1})
        await c.expect_error("unauthorized", ref="x")
        assert c.close_code is None
        # Another hello on the same connection works.
        await c.hello(tb, device="phone", resume=4)
        w = await c.expect_welcome()
        assert w["id"] == "bob" and w["seq"] == 5, w
        check_replay(await c.recv_until_synced(), [5])


@async_test
async def test_wrong_epoch_resume_invalid():
    async with Meshd() as m:
        _, tb = await offline_setup(m, 5)
        first = await m.login(tb, device="phone")
        epoch = first.welcome["epoch"]
        await first.close()
        c = await m.connect(tb, device="phone", resume=2, epoch=epoch + "-other", label="bob")
        await c.expect_error("resume_invalid")
        await c.assert_no_frame(0.1)
        assert c.close_code is None
        # The right epoch is accepted.
        await c.hello(tb, device="phone", resume=2, epoch=epoch)
        w = await c.expect_welcome()
        assert w["epoch"] == epoch, w
        check_replay(await c.recv_until_synced(), [3, 4, 5])


@async_test
async def test_replay_includes_own_sends():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        cb = await m.login(tb, label="bob")
        ca = await m.login(ta, device="laptop", label="alice")
        await ca.send("bob", "a->b 1", ref="1")
        await ca.expect("ack", ref="1", seq=1)
        check_msg(await cb.expect("msg"), seq=1, frm="alice", to="bob", body="a->b 1")
        await cb.send("alice", "b->a", ref="2")
        await cb.expect("ack", ref="2", seq=2)
        check_msg(await ca.expect("msg"), seq=2, frm="bob", to="alice", body="b->a")
        await ca.send("bob", "a->b 2", ref="3")
        await ca.expect("ack", ref="3", seq=3)
        # A new device of alice replays her whole log, her own sends included.
        c2 = await m.login(ta, device="phone", label="alice/phone")
        got = [(x["seq"], x["from"], x["to"], x["body"]) for x in c2.replayed]
        assert got == [(1, "alice", "bob", "a->b 1"), (2, "bob", "alice", "b->a"),
                       (3, "alice", "bob", "a->b 2")], got
        for x in c2.replayed:
            check_msg(x, seq=x["seq"], frm=x["from"], to=x["to"], body=x["body"])
        # The sending device itself, reconnecting without ack, gets them too (cursor 0).
        await ca.close()
        c1 = await m.login(ta, device="laptop", label="alice/laptop")
        assert [x["seq"] for x in c1.replayed] == [1, 2, 3], c1.replayed
        # After "ack upto" past its own sends, nothing.
        await c1.send_frame({"type": "ack", "upto": 3})
        await c1.barrier()
        await c1.close()
        c1 = await m.login(ta, device="laptop")
        assert c1.replayed == [], c1.replayed


@async_test
async def test_ack_upto_own_ack_seq_allowed():
    # contract: "An ack{seq} counts as seen: a device may ack upto ... past its own sends."
    async with Meshd() as m:
        ta, _ = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, device="laptop")
        await ca.send("bob", "x", ref="1")
        await ca.expect("ack", ref="1", seq=1)
        await ca.send_frame({"type": "ack", "upto": 1})
        await ca.assert_no_frame(0.2)  # no error
        await ca.close()
        ca = await m.login(ta, device="laptop", resume=1)
        assert ca.replayed == [] and ca.welcome["cursor"] == 1, (ca.welcome, ca.replayed)


@async_test
async def test_large_backlog_replay_in_order():
    # More than one replay page (architecture: pages of a few hundred rows).
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        n = 700
        for i in range(n):
            await ca.send("bob", {"n": i}, ref=f"r{i}")
        for i in range(n):
            ack = await ca.expect("ack")
            assert ack.get("ref") == f"r{i}" and ack.get("seq") == i + 1, ack
        cb = await m.connect(tb, label="bob")
        w = await cb.expect_welcome()
        assert w["seq"] == n, w
        msgs = await cb.recv_until_synced(timeout=30)
        assert [x["seq"] for x in msgs] == list(range(1, n + 1))
        assert [x["body"]["n"] for x in msgs] == list(range(n))
        assert cb.synced["seq"] == n


@async_test
async def test_no_gap_or_dup_between_replay_and_live():
    # bob connects while alice keeps sending: every seq arrives once, in order, across the
    # switch from replay to live.
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        n = 400
        acked = asyncio.Event()
        count = 0

        async def sender():
            nonlocal count
            for i in range(n):
                await ca.send("bob", {"n": i}, ref=f"r{i}")
                if i % 20 == 19:
                    await asyncio.sleep(0.002)
            for i in range(n):
                ack = await ca.expect("ack", timeout=15)
                assert ack["ref"] == f"r{i}" and ack["seq"] == i + 1, ack
                count += 1
                if count == 50:
                    acked.set()

        async def receiver():
            await acked.wait()
            cb = await m.connect(tb, label="bob")
            w = await cb.expect_welcome()
            head = w["seq"]
            replay = await cb.recv_until_synced(timeout=15)
            assert cb.synced["seq"] == head, (w, cb.synced)
            assert [x["seq"] for x in replay] == list(range(1, head + 1)), "replay seqs"
            live = []
            while head + len(live) < n:
                live.append(await cb.expect("msg", timeout=15))
            assert [x["seq"] for x in live] == list(range(head + 1, n + 1)), "live seqs"
            allm = replay + live
            assert [x["body"]["n"] for x in allm] == list(range(n))
            await cb.assert_no_frame()
            return head

        _, head = await asyncio.gather(sender(), receiver())
        assert 50 <= head <= n, head
