# tests/e2e/test_devices_admin: meshctl device list / device forget (design.md "Control socket
# protocol", meshctl.8): which devices are known, forgetting one closes it with 4002, deletes
# its cursor (it gets the whole log again) and frees its limits.max_devices slot.

import asyncio
import time

from harness import Meshd, async_test, check_msg

DEVICE_KEYS = {"device", "cursor", "head", "lag", "live"}


def device_list(m, name):
    """meshctl --json device list NAME, checked for its shape; returns the devices."""
    r = m.ctl("device", "list", name)
    assert set(r) == {"id", "devices"}, r
    assert r["id"] == name, r
    assert isinstance(r["devices"], list), r
    for d in r["devices"]:
        assert set(d) == DEVICE_KEYS, f"device entry keys: {d}"
        for k in ("cursor", "head", "lag"):
            assert type(d[k]) is int, f"{k} must be an integer: {d}"
        assert type(d["live"]) is bool, f"live must be a boolean: {d}"
        assert d["lag"] == d["head"] - d["cursor"], f"lag is head - cursor: {d}"
    names = [d["device"] for d in r["devices"]]
    assert names == sorted(names), f"devices must be sorted by device: {names}"
    return r["devices"]


async def wait_devices(m, name, expected, timeout=3.0):
    """Poll device list until it equals `expected` (cursor writes and disconnects are
    asynchronous); returns it or fails showing the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        got = device_list(m, name)
        if got == expected:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"device list {name}: expected {expected}, got {got}")
        await asyncio.sleep(0.05)


def dev(device, cursor, head, live):
    return {"device": device, "cursor": cursor, "head": head, "lag": head - cursor, "live": live}


async def send_n(sender, to, n, first_seq=1, tag="r"):
    for i in range(n):
        await sender.send(to, {"i": i}, ref=f"{tag}{i}")
        await sender.expect("ack", ref=f"{tag}{i}", seq=first_seq + i)


@async_test
async def test_device_list_live_then_stored():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        assert device_list(m, "bob") == []
        ca = await m.login(ta, label="alice")
        laptop = await m.login(tb, device="laptop", label="bob/laptop")
        # Connected but nothing acked yet: known while it is connected.
        await wait_devices(m, "bob", [dev("laptop", 0, 0, True)])
        await send_n(ca, "bob", 3)
        for i in range(3):
            await laptop.expect("msg", seq=i + 1)
        await laptop.send_frame({"type": "ack", "upto": 2})
        await laptop.barrier()
        await wait_devices(m, "bob", [dev("laptop", 2, 3, True)])
        # A second device that never acks: listed while connected, gone once it closes.
        phone = await m.login(tb, device="phone", label="bob/phone")
        assert [x["seq"] for x in phone.replayed] == [1, 2, 3], phone.replayed
        await wait_devices(m, "bob", [dev("laptop", 2, 3, True), dev("phone", 0, 3, True)])
        rc, out, err = m.ctl_raw("device", "list", "bob", json=False)
        assert rc == 0, (rc, out, err)
        lines = out.splitlines()
        assert lines[0].split() == ["DEVICE", "CURSOR", "LAG", "LIVE"], out
        assert lines[1].split() == ["laptop", "2", "1", "yes"], out
        assert lines[2].split() == ["phone", "0", "3", "yes"], out
        assert len(lines) == 3, out
        await phone.close()
        await laptop.close()
        # After the disconnect: the acked device stays, with its cursor and lag, not live.
        await wait_devices(m, "bob", [dev("laptop", 2, 3, False)])
        rc, out, err = m.ctl_raw("device", "list", "bob", json=False)
        assert rc == 0, (rc, out, err)
        assert "laptop" in out and "phone" not in out, out
        # Other principals' devices are not bob's.
        await wait_devices(m, "alice", [dev("default", 0, 3, True)])


@async_test
async def test_device_forget_live_closes_4002():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        phone = await m.login(tb, device="phone", label="bob/phone")
        laptop = await m.login(tb, device="laptop", label="bob/laptop")
        await send_n(ca, "bob", 2)
        for c in (phone, laptop):
            for i in range(2):
                await c.expect("msg", seq=i + 1)
            await c.send_frame({"type": "ack", "upto": 2})
            await c.barrier()
        await wait_devices(m, "bob", [dev("laptop", 2, 2, True), dev("phone", 2, 2, True)])
        r = m.ctl("device", "forget", "bob", "laptop")
        assert r == {"id": "bob", "device": "laptop", "closed_sessions": 1}, r
        t0 = time.monotonic()
        code = await laptop.wait_closed(timeout=3)
        assert code == 4002, f"forgotten device closed with {code}, expected 4002"
        assert time.monotonic() - t0 < 2.0, "device forget must close the session at once"
        await wait_devices(m, "bob", [dev("phone", 2, 2, True)])
        # The other device and the other principal are untouched.
        assert phone.close_code is None and ca.close_code is None
        await ca.send("bob", "after forget", ref="a")
        await ca.expect("ack", ref="a", seq=3)
        check_msg(await phone.expect("msg"), seq=3, frm="alice", to="bob", body="after forget")
        await phone.assert_no_frame(0.1)
        # The forgotten device comes back as a new one: cursor 0, the whole log.
        again = await m.login(tb, device="laptop", label="bob/laptop-again")
        assert again.welcome["device"] == "laptop" and again.welcome["cursor"] == 0, (
            again.welcome)
        assert [x["seq"] for x in again.replayed] == [1, 2, 3], again.replayed
        assert again.synced["seq"] == 3, again.synced


@async_test
async def test_forgotten_device_gets_whole_log_again():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        await send_n(ca, "bob", 4)
        phone = await m.login(tb, device="phone", label="bob/phone")
        assert [x["seq"] for x in phone.replayed] == [1, 2, 3, 4], phone.replayed
        await phone.send_frame({"type": "ack", "upto": 4})
        await phone.barrier()
        await wait_devices(m, "bob", [dev("phone", 4, 4, True)])
        await phone.close()
        await wait_devices(m, "bob", [dev("phone", 4, 4, False)])
        # Before forget, the device resumes from its cursor: nothing to replay.
        back = await m.login(tb, device="phone", label="bob/phone-back")
        assert back.welcome["cursor"] == 4 and back.replayed == [], (back.welcome, back.replayed)
        await back.close()
        await wait_devices(m, "bob", [dev("phone", 4, 4, False)])
        r = m.ctl("device", "forget", "bob", "phone")
        assert r == {"id": "bob", "device": "phone", "closed_sessions": 0}, r
        assert device_list(m, "bob") == []
        out = m.ctl("device", "list", "bob", json=False)
        assert out.strip() == "bob has no devices", out
        # Reconnecting: welcome cursor 0 and every message replayed, in order.
        fresh = await m.connect(tb, device="phone", label="bob/phone-fresh")
        w = await fresh.expect_welcome()
        assert w["device"] == "phone" and w["cursor"] == 0 and w["seq"] == 4, w
        msgs = await fresh.recv_until_synced()
        assert fresh.synced["seq"] == 4, fresh.synced
        assert len(msgs) == 4, msgs
        for i, x in enumerate(msgs):
            check_msg(x, seq=i + 1, frm="alice", to="bob", body={"i": i})
        await wait_devices(m, "bob", [dev("phone", 0, 4, True)])


@async_test
async def test_forget_survives_crash():
    # meshctl reports success only after the deletion is committed: a SIGKILL right after it
    # must not bring the cursor back.
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        await send_n(ca, "bob", 2)
        phone = await m.login(tb, device="phone", label="bob/phone")
        await phone.send_frame({"type": "ack", "upto": 2})
        await phone.barrier()
        await wait_devices(m, "bob", [dev("phone", 2, 2, True)])
        r = m.ctl("device", "forget", "bob", "phone")
        assert r == {"id": "bob", "device": "phone", "closed_sessions": 1}, r
        m.kill9()
        m.start()
        assert device_list(m, "bob") == []
        again = await m.login(tb, device="phone", label="bob/phone-again")
        assert again.welcome["cursor"] == 0, again.welcome
        assert [x["seq"] for x in again.replayed] == [1, 2], again.replayed


@async_test
async def test_max_devices_forget_frees_slot():
    async with Meshd(limits={"max_devices": 2}) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        await send_n(ca, "bob", 1)
        d1 = await m.login(tb, device="d1", label="bob/d1")
        d2 = await m.login(tb, device="d2", label="bob/d2")
        # d1 acks and disconnects: its stored cursor keeps its slot.
        await d1.send_frame({"type": "ack", "upto": 1})
        await d1.barrier()
        await wait_devices(m, "bob", [dev("d1", 1, 1, True), dev("d2", 0, 1, True)])
        await d1.close()
        await wait_devices(m, "bob", [dev("d1", 1, 1, False), dev("d2", 0, 1, True)])

        async def refused(device):
            c = await m.connect(tb, device=device, label=f"bob/{device}-refused")
            await c.expect_error("forbidden")
            await c.close()

        await refused("d3")
        # Forgetting the offline device frees its slot.
        r = m.ctl("device", "forget", "bob", "d1")
        assert r == {"id": "bob", "device": "d1", "closed_sessions": 0}, r
        d3 = await m.login(tb, device="d3", label="bob/d3")
        assert d3.welcome["device"] == "d3" and d3.welcome["cursor"] == 0, d3.welcome
        assert [x["seq"] for x in d3.replayed] == [1], d3.replayed
        await wait_devices(m, "bob", [dev("d2", 0, 1, True), dev("d3", 0, 1, True)])
        # Full again; forgetting a connected device closes it and frees its slot too.
        await refused("d4")
        out = m.ctl("device", "forget", "bob", "d2", json=False)
        assert "d2" in out and "bob" in out, out
        assert await d2.wait_closed(timeout=3) == 4002
        d4 = await m.login(tb, device="d4", label="bob/d4")
        assert d4.welcome["device"] == "d4", d4.welcome
        await wait_devices(m, "bob", [dev("d3", 0, 1, True), dev("d4", 0, 1, True)])
        assert d3.close_code is None


@async_test
async def test_device_errors():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        phone = await m.login(tb, device="phone", label="bob/phone")
        await wait_devices(m, "bob", [dev("phone", 0, 0, True)])
        # Unknown user.
        rc, out, err = m.ctl_raw("device", "list", "nobody")
        assert rc == 1, (rc, out, err)
        assert m.ctl_fail("device", "list", "nobody")["code"] == "not_found"
        assert m.ctl_fail("device", "forget", "nobody", "phone")["code"] == "not_found"
        # Unknown device of a known user (alice has none; bob has only phone).
        rc, out, err = m.ctl_raw("device", "forget", "bob", "tablet")
        assert rc == 1, (rc, out, err)
        assert m.ctl_fail("device", "forget", "bob", "tablet")["code"] == "not_found"
        assert m.ctl_fail("device", "forget", "alice", "phone")["code"] == "not_found"
        # Invalid names.
        assert m.ctl_fail("device", "list", "a b")["code"] == "bad_name"
        assert m.ctl_fail("device", "forget", "a b", "phone")["code"] == "bad_name"
        for bad in ("has space", "x" * 65, "caf\u00e9", "semi;colon"):
            e = m.ctl_fail("device", "forget", "bob", bad)
            assert e["code"] == "bad_name", (bad, e)
        # Nothing changed, and the live device is still open.
        assert device_list(m, "bob") == [dev("phone", 0, 0, True)]
        assert device_list(m, "alice") == []
        await phone.assert_no_frame(0.1)
        assert phone.close_code is None
        # Human error output: one line on stderr, nothing on stdout.
        rc, out, err = m.ctl_raw("device", "forget", "bob", "tablet", json=False)
        assert rc == 1 and out == "", (rc, out, err)
        assert len([l for l in err.splitlines() if l.strip()]) == 1, err
        assert err.startswith("meshctl: ") and "tablet" in err, err


def test_device_usage_errors():
    with Meshd() as m:
        for args in (("device",), ("device", "list"), ("device", "forget"),
                     ("device", "forget", "bob"), ("device", "list", "bob", "extra"),
                     ("device", "forget", "bob", "phone", "extra"), ("device", "frob")):
            rc, out, err = m.ctl_raw(*args)
            assert rc == 2, (args, rc, out, err)
            e = m.ctl_fail(*args)
            assert e["code"] == "usage", (args, e)


@async_test
async def test_forget_while_device_keeps_acking():
    # Acks that reach meshd after `device forget` began must not bring the cursor back:
    # once meshctl reports success, the device is gone and its next connection starts at 0.
    # storage.sync = "full" makes the forget's commit wait for an fdatasync, so the device's
    # acks arrive while it is in flight.
    async with Meshd(storage={"sync": "full"}) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        await send_n(ca, "bob", 3)
        for attempt in range(5):
            c = await m.login(tb, device="laptop", label=f"bob/laptop#{attempt}")
            assert c.welcome["cursor"] == 0, (attempt, c.welcome)
            stop = asyncio.Event()

            async def pump_acks():
                try:
                    while not stop.is_set():
                        await c.ws.send('{"type":"ack","upto":3}')
                        await asyncio.sleep(0)
                except Exception:
                    pass  # closed by the forget

            pump = asyncio.ensure_future(pump_acks())
            await wait_devices(m, "bob", [dev("laptop", 3, 3, True)])
            r = await asyncio.to_thread(m.ctl, "device", "forget", "bob", "laptop")
            stop.set()
            await pump
            assert r == {"id": "bob", "device": "laptop", "closed_sessions": 1}, (attempt, r)
            assert await c.wait_closed(timeout=3, allow_frames=True) == 4002, attempt
            got = device_list(m, "bob")
            assert got == [], (f"attempt {attempt}: forgotten device is listed again after acks "
                               f"that raced the forget: {got}")
