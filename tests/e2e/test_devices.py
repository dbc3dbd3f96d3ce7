# tests/e2e/test_devices: one principal on several devices (contract §2-3, close code 4000).

import json

from harness import Meshd, async_test, check_msg


@async_test
async def test_recipient_on_two_devices_gets_each_msg():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        phone = await m.login(tb, device="phone", label="bob/phone")
        laptop = await m.login(tb, device="laptop", label="bob/laptop")
        for i in range(1, 4):
            await ca.send("bob", {"i": i}, ref=f"r{i}")
            await ca.expect("ack", ref=f"r{i}", seq=i)
        for dev in (phone, laptop):
            for i in range(1, 4):
                check_msg(await dev.expect("msg"), seq=i, frm="alice", to="bob", body={"i": i})
            await dev.assert_no_frame(0.1)


@async_test
async def test_sender_other_device_gets_copy_sending_device_only_ack():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        a1 = await m.login(ta, device="a1", label="alice/a1")
        a2 = await m.login(ta, device="a2", label="alice/a2")
        cb = await m.login(tb, label="bob")
        await a1.send("bob", "from a1", ref="x1")
        ack = await a1.expect("ack", ref="x1", seq=1)
        assert not ack.get("dup", False), ack
        check_msg(await a2.expect("msg"), seq=1, frm="alice", to="bob", body="from a1")
        check_msg(await cb.expect("msg"), seq=1, frm="alice", to="bob", body="from a1")
        await a1.assert_no_frame()  # no echo to the sending device
        # And the other way round, with a message from bob in between.
        await cb.send("alice", "to alice", ref="y")
        await cb.expect("ack", ref="y", seq=2)
        for dev in (a1, a2):
            check_msg(await dev.expect("msg"), seq=2, frm="bob", to="alice", body="to alice")
        await a2.send("bob", "from a2", ref="x2")
        await a2.expect("ack", ref="x2", seq=3)
        check_msg(await a1.expect("msg"), seq=3, frm="alice", to="bob", body="from a2")
        check_msg(await cb.expect("msg"), seq=3, frm="alice", to="bob", body="from a2")
        await a2.assert_no_frame()
        await a1.assert_no_frame(0.05)


@async_test
async def test_same_device_replaces_old_connection():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        old = await m.login(tb, device="phone", label="bob/old")
        other = await m.login(tb, device="laptop", label="bob/laptop")
        new = await m.connect(tb, device="phone", label="bob/new")
        w = await new.expect_welcome()
        assert w["id"] == "bob" and w["device"] == "phone", w
        await new.recv_until_synced()
        code = await old.wait_closed(timeout=5)
        assert code == 4000, f"replaced connection closed with {code}, expected 4000"
        # The new connection works; the other device is untouched.
        await ca.send("bob", "after replace", ref="r")
        await ca.expect("ack", ref="r", seq=1)
        check_msg(await new.expect("msg"), seq=1, frm="alice", to="bob", body="after replace")
        check_msg(await other.expect("msg"), seq=1, frm="alice", to="bob", body="after replace")
        await new.send("alice", "from new", ref="n")
        await new.expect("ack", ref="n", seq=2)
        check_msg(await ca.expect("msg"), seq=2, frm="bob", to="alice", body="from new")
        assert other.close_code is None


@async_test
async def test_replaced_connection_state_is_new_devices():
    # The replacing connection continues from the device's stored cursor.
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        for i in range(1, 4):
            await ca.send("bob", i, ref=f"r{i}")
            await ca.expect("ack", ref=f"r{i}", seq=i)
        old = await m.login(tb, device="phone", label="bob/old")
        assert [x["seq"] for x in old.replayed] == [1, 2, 3]
        await old.send_frame({"type": "ack", "upto": 2})
        await old.barrier()
        new = await m.login(tb, device="phone", label="bob/new")
        assert new.welcome["cursor"] == 2, new.welcome
        assert [x["seq"] for x in new.replayed] == [3], new.replayed
        assert await old.wait_closed() == 4000


@async_test
async def test_sessions_lists_each_device():
    async with Meshd() as m:
        tb = m.add_user("bob")
        await m.login(tb, device="phone")
        await m.login(tb, device="laptop")
        s = m.ctl("sessions")["sessions"]
        got = sorted((x["id"], x["device"]) for x in s)
        assert got == [("bob", "laptop"), ("bob", "phone")], s


@async_test
async def test_max_devices_refuses_new_device():
    # architecture.md: at most limits.max_devices per principal; a new one past that is
    # refused with a clear error. Known devices keep working.
    async with Meshd(limits={"max_devices": 2}) as m:
        tb = m.add_user("bob")
        d1 = await m.login(tb, device="d1")
        d2 = await m.login(tb, device="d2")
        c = await m.connect(tb, device="d3")
        f = await c.recv()
        assert f["type"] == "error" and isinstance(f.get("code"), str), (
            f"third device with max_devices=2 must be refused: {f}")
        assert isinstance(f.get("message"), str) and f["message"], f
        await c.close()
        await d1.close()
        await d2.close()
        again = await m.login(tb, device="d1")  # a known device, after closing
        assert again.welcome["device"] == "d1"


@async_test
async def test_slow_device_loses_nothing():
    # contract: a device that cannot keep up is either served at its own pace or closed with
    # 4001 ("too slow ... resume later, nothing is lost"); either way, after resuming from
    # what it processed it has every message exactly once, in order.
    async with Meshd(limits={"max_queue": 65536, "ping_interval_ms": 60000}) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        slow = await m.login(tb, device="phone", label="bob/slow")
        slow.ws.max_queue = 1  # the client library stops reading after one queued frame
        n, size = 40, 400_000  # far more than the socket buffers hold
        for i in range(n):
            await ca.send("bob", {"i": i, "pad": "x" * size}, ref=f"r{i}")
        for i in range(n):
            await ca.expect("ack", ref=f"r{i}", seq=i + 1, timeout=20)
        await ca.assert_no_frame(0.2)
        got = []
        while len(got) < n:
            try:
                f = await slow.recv(timeout=10)
            except AssertionError:
                break
            assert f["type"] == "msg", f
            got.append(f)
        if len(got) < n:
            assert slow.close_code == 4001, (
                f"slow device got {len(got)}/{n}, then closed with {slow.close_code}; "
                f"only 4001 (too slow) is allowed")
            again = await m.login(tb, device="phone", resume=len(got), label="bob/again")
            got += again.replayed
        assert [x["seq"] for x in got] == list(range(1, n + 1)), [x["seq"] for x in got]
        assert [x["body"]["i"] for x in got] == list(range(n))
        assert all(len(x["body"]["pad"]) == size for x in got)


@async_test
async def test_stalled_consumer_is_bounded_closed_and_catches_up():
    # A device that stops reading altogether: deliveries to others go on (its output is pulled
    # from the log, so nothing queues up for it in meshd), the device is closed with a clear
    # code once it stops answering pings, and on reconnect it gets everything it missed, once,
    # in order.
    async with Meshd(limits={"ping_interval_ms": 500}) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        ca = await m.login(ta, label="alice")
        cc = await m.login(tc, label="carol")
        stalled = await m.login(tb, device="phone", label="bob/stalled")
        stalled.ws.max_queue = 1  # the client library stops reading after one queued frame
        stalled.ws.transport.pause_reading()  # and stops reading the socket at all
        n, size = 60, 500_000  # 30 MB for bob, far more than socket buffers hold
        for i in range(n):
            await ca.send("bob", {"i": i, "pad": "x" * size}, ref=f"b{i}")
            await ca.send("carol", {"i": i}, ref=f"c{i}")
            await ca.expect("ack", ref=f"b{i}", timeout=20)
            await ca.expect("ack", ref=f"c{i}", timeout=20)
            # Carol is served as fast as she reads, whatever bob does.
            f = await cc.expect("msg", timeout=5)
            assert f["body"] == {"i": i}, f
        # Two unanswered pings later meshd closes the stalled device with 4003 (or 4001 for a
        # full queue), saying why; the close frame waits behind the unread bytes, so the peer
        # that never reads is dropped 3 s later and may only see the connection reset (1006).
        await m.wait_log(r"event=session\.close conn=\d+ code=400[13] reason=\S.* "
                         r"principal=bob", timeout=15)
        stalled.ws.transport.resume_reading()
        code = await stalled.wait_closed(timeout=15, allow_frames=True)
        assert code in (4001, 4003, 1006), code
        if code != 1006:
            assert stalled.ws.close_reason, "the close frame must say why"
        got = [json.loads(x) for x in stalled.late_frames]
        got = [x for x in got if x.get("type") == "msg"]
        again = await m.login(tb, device="phone", resume=got[-1]["seq"] if got else None,
                              label="bob/again")
        got += again.replayed
        assert [x["seq"] for x in got] == list(range(1, n + 1)), [x["seq"] for x in got][:10]
        assert [x["body"]["i"] for x in got] == list(range(n))
