# tests/e2e/test_auth: session start (contract §1-2): hello, welcome, token auth, refusals.

import asyncio
import time

import pytest
import websockets

from harness import Meshd, async_test, open_ws


def check_welcome(w, *, id, kind, seq=0, device="default", cursor=0):
    assert w["type"] == "welcome", w
    assert w.get("id") == id, w
    assert w.get("kind") == kind, w
    assert isinstance(w.get("session"), str) and w["session"], w
    assert w.get("seq") == seq and type(w["seq"]) is int, w
    assert isinstance(w.get("epoch"), str) and w["epoch"], w
    assert w.get("server") == "meshd/0.1.0", w
    # design.md: welcome also carries the device and its stored cursor.
    assert w.get("device") == device, w
    assert w.get("cursor") == cursor, w


@async_test
async def test_welcome_fields_and_synced():
    async with Meshd() as m:
        tok = m.add_user("alice")
        c = await m.connect(tok)
        assert c.ws.subprotocol == "meshd.v1", "server must select the offered meshd.v1"
        w = await c.expect_welcome()
        check_welcome(w, id="alice", kind="user")
        s = await c.expect("synced")
        assert s.get("seq") == 0, s
        await c.assert_no_frame()
        # A second session gets a different session id, same epoch.
        c2 = await m.connect(tok, device="other")
        w2 = await c2.expect_welcome()
        check_welcome(w2, id="alice", kind="user", device="other")
        assert w2["session"] != w["session"], (w, w2)
        assert w2["epoch"] == w["epoch"], (w, w2)


@async_test
async def test_token_in_authorization_header():
    async with Meshd() as m:
        tok = m.add_user("alice")
        c = await m.connect(None, bearer=tok)  # hello without "token"
        w = await c.expect_welcome()
        check_welcome(w, id="alice", kind="user")
        await c.expect("synced", seq=0)


@async_test
async def test_wrong_bearer_header_refused():
    async with Meshd() as m:
        m.add_user("alice")
        c = await m.connect(None, bearer="mshd_" + "A" * 43)
        await c.expect_error("unauthorized")
        assert await c.wait_closed() == 1008


@async_test
async def test_wrong_token_refused():
    async with Meshd() as m:
        tok = m.add_user("alice")
        wrong = tok[:-1] + ("A" if tok[-1] != "A" else "B")
        for bad in (wrong, "mshd_" + "x" * 43, "", "not-a-token"):
            c = await m.connect(bad)
            await c.expect_error("unauthorized")
            code = await c.wait_closed()
            assert code == 1008, f"token {bad!r}: close code {code}, expected 1008"


@async_test
async def test_missing_token_refused():
    async with Meshd() as m:
        m.add_user("alice")
        c = await m.connect(None)
        await c.expect_error("unauthorized")
        assert await c.wait_closed() == 1008


@async_test
async def test_frames_before_hello_refused_without_effect():
    async with Meshd() as m:
        alice = m.add_user("alice")
        bob = m.add_user("bob")
        c = await m.connect(hello=False)
        # A send before hello: refused, not stored.
        await c.send_frame({"type": "send", "to": "alice", "ref": "early", "body": "x"})
        await c.expect_error("unauthorized", ref="early")
        await c.send_frame({"type": "ack", "upto": 0})
        await c.expect_error("unauthorized")
        await c.send_frame({"type": "nonsense"})
        await c.expect_error("unauthorized")
        # The connection still accepts a hello afterwards.
        await c.hello(bob)
        w = await c.expect_welcome()
        check_welcome(w, id="bob", kind="user", seq=0)
        await c.expect("synced", seq=0)
        # Nothing was stored for alice either.
        a = await m.login(alice)
        assert a.welcome["seq"] == 0 and a.replayed == [], (a.welcome, a.replayed)


@async_test
async def test_hello_timeout_closes_1008():
    async with Meshd(limits={"hello_timeout_ms": 300}) as m:
        m.add_user("alice")
        t0 = time.monotonic()
        c = await m.connect(hello=False)
        # design.md: error unauthorized, then close 1008.
        await c.expect_error("unauthorized", timeout=5)
        assert await c.wait_closed() == 1008
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed <= 4.0, f"closed after {elapsed:.2f}s, hello_timeout_ms=300"


@async_test
async def test_hello_in_time_not_closed_by_timeout():
    async with Meshd(limits={"hello_timeout_ms": 300}) as m:
        tok = m.add_user("alice")
        c = await m.login(tok)
        await c.assert_no_frame(0.8)  # well past hello_timeout_ms: still open
        assert c.close_code is None


@async_test
async def test_agent_kind():
    async with Meshd() as m:
        tok = m.add_user("helper-bot", agent=True)
        c = await m.connect(tok)
        w = await c.expect_welcome()
        check_welcome(w, id="helper-bot", kind="agent")


@async_test
async def test_name_case_folding():
    async with Meshd() as m:
        r = m.ctl("user", "add", "Bob")
        assert r["id"] == "bob" and r["kind"] == "user", r
        c = await m.connect(r["token"])
        w = await c.expect_welcome()
        check_welcome(w, id="bob", kind="user")
        # "BOB" is the same name: it exists already.
        e = m.ctl_fail("user", "add", "BOB")
        assert e["code"] == "exists", e


@async_test
async def test_no_subprotocol_accepted():
    async with Meshd() as m:
        tok = m.add_user("alice")
        c = await m.connect(tok, subprotocols=None)
        assert c.ws.subprotocol is None
        w = await c.expect_welcome()
        check_welcome(w, id="alice", kind="user")
        await c.expect("synced", seq=0)


@async_test
async def test_wrong_path_refused():
    async with Meshd() as m:
        m.add_user("alice")
        for path in ("/", "/v2/ws", "/v1/wsx", "/v1"):
            with pytest.raises((websockets.exceptions.InvalidHandshake, OSError,
                                asyncio.TimeoutError)) as ei:
                ws = await open_ws(m.port, path=path)
                await ws.close()
            if isinstance(ei.value, websockets.exceptions.InvalidStatusCode):
                assert ei.value.status_code == 404, f"{path}: HTTP {ei.value.status_code}"
        # The daemon still serves the right path.
        tok = m.ctl("user", "token", "alice")["token"]
        c = await m.login(tok)
        assert c.welcome["id"] == "alice"


@async_test
async def test_bad_device_name_refused():
    async with Meshd() as m:
        tok = m.add_user("alice")
        # design.md: device is [A-Za-z0-9._-]{1,64}.
        wrong = []
        for dev in ("", "a b", "x" * 65, "dév", "a/b"):
            c = await m.connect(tok, device=dev)
            f = await c.recv()
            # Not specified beyond "refused": bad_frame (bad field) or unauthorized.
            if f["type"] != "error" or f.get("code") not in ("bad_frame", "unauthorized"):
                wrong.append((dev, f))
            await c.close()
        assert not wrong, f"device names outside [A-Za-z0-9._-]{{1,64}} accepted: {wrong}"
        c = await m.login(tok, device="A-z_0.9")
        assert c.welcome["device"] == "A-z_0.9", c.welcome


@async_test
async def test_peer_answering_pings_stays_connected():
    # design.md: ping every limits.ping_interval_ms; two missed pongs close the connection.
    # A client that answers every ping (RFC 6455: a pong echoing the ping's empty payload)
    # must stay connected.
    async with Meshd(limits={"ping_interval_ms": 200}) as m:
        tok = m.add_user("alice")
        c = await m.login(tok)
        pings = 0
        real_pong = c.ws.pong

        async def counting_pong(data=b""):
            nonlocal pings
            pings += 1
            await real_pong(data)
        c.ws.pong = counting_pong
        await c.assert_no_frame(1.5)
        assert c.close_code is None
        assert pings >= 4, f"server sent {pings} pings in 1.5 s at ping_interval_ms=200"
        assert [s["id"] for s in m.ctl("sessions")["sessions"]] == ["alice"]


@async_test
async def test_dead_peer_dropped():
    # architecture.md: presence must never show a dead peer online.
    async with Meshd(limits={"ping_interval_ms": 200}) as m:
        tok = m.add_user("alice")
        dead = await m.login(tok, device="dead")

        async def no_pong(data=b""):
            pass
        dead.ws.pong = no_pong
        t0 = time.monotonic()
        code = await dead.wait_closed(timeout=4)
        elapsed = time.monotonic() - t0
        # meshd-protocol(7): 4003 = no pong to two pings (this peer still reads, so it sees it).
        assert code == 4003, f"dead peer closed with {code}, expected 4003"
        assert elapsed >= 0.3, f"dead peer dropped after {elapsed:.2f}s: before 2 missed pongs"
        assert m.ctl("sessions")["sessions"] == [], "dead peer still listed"


@async_test
async def test_token_never_logged():
    async with Meshd(log_level="debug") as m:
        tok = m.add_user("alice")
        await m.login(tok)
        await m.login(None, bearer=tok, device="hdr")
        c = await m.connect(tok[:-2] + "zz")
        await c.expect_error("unauthorized")
        await c.wait_closed()
        m.ctl("user", "token", "alice")
        await asyncio.sleep(0.1)
        log = m.log_text()
        assert tok not in log and tok[5:] not in log, "a token appears in the daemon log"
        assert (tok[:-2] + "zz")[5:] not in log, "a refused token appears in the daemon log"
