# tests/e2e/test_ratelimit: the ratelimit module (meshd.toml(5) [ratelimit], meshd-protocol(7)
# rate_limited and close 1013): a send past the burst is refused with retry_after_ms and not
# stored; connections and failed logins are limited per source IP (127.0.0.2 and 127.0.0.3
# serve as other sources on loopback); dry_run refuses nothing and logs what it would have;
# meshctl reload changes the limits under a connected client, and a bad value is refused
# with the old limits kept; a full table lets new sources through (fails open) with a warning.
#
# Rates are slow (one token per 5 s or more) so that a slow, shared machine cannot refill a
# bucket in the middle of a step; waits use the server's retry_after_ms plus slack.

import asyncio
import re
import subprocess

import websockets
from websockets.exceptions import ConnectionClosed

from harness import Client, Meshd, async_test, check_msg, meshd_bin

LOAD = ("auth_token", "route_direct", "ratelimit")
BAD_TOKEN = "mshd_" + "A" * 43
SLACK_S = 0.2  # on top of a retry_after_ms, for the loop's clock granularity


def section(**keys):
    """A [ratelimit] table; floats as Python writes them (valid TOML), strings quoted."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        return repr(v)
    return "[ratelimit]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())


async def open_from(m, source, label=None):
    """A WebSocket to meshd whose TCP socket is bound to `source` (another loopback address
    is another source IP). No hello is sent."""
    ws = await asyncio.wait_for(
        websockets.connect(f"ws://127.0.0.1:{m.port}/v1/ws", subprotocols=["meshd.v1"],
                           compression=None, ping_interval=None, open_timeout=5,
                           close_timeout=2, local_addr=(source, 0)), 10)
    c = Client(ws, label or f"client@{source}")
    m.clients.append(c)
    return c


async def login_from(m, source, token, device=None, label=None):
    c = await open_from(m, source, label)
    await c.hello(token, device)
    await c.expect_welcome()
    await c.recv_until_synced()
    return c


async def hello_racing_refusal(c, token, device=None):
    """Send hello on a connection the server may already have refused and closed."""
    try:
        await c.hello(token, device)
    except ConnectionClosed:
        pass


async def expect_refused_connection(c, why):
    """The server's first frame is error{rate_limited, retry_after_ms}; then close 1013."""
    e = await c.expect_error("rate_limited")
    wait = e.get("retry_after_ms")
    assert type(wait) is int and wait > 0, f"{c.label}: retry_after_ms must be > 0: {e}"
    assert why in e["message"], f"{c.label}: message should say {why!r}: {e}"
    code = await c.wait_closed()
    assert code == 1013, f"{c.label}: expected close 1013 (try again later), got {code}"
    assert c.ws.close_reason == "try again later", c.ws.close_reason
    return e


def heads(m):
    return {u["id"]: u["seq"] for u in m.control("user.list")["users"]}


def ratelimit_lines(m, event):
    """[(reason, count, total)] of the event=ratelimit.<event> lines, in order."""
    rx = re.compile(r"event=ratelimit\." + event + r" module=ratelimit "
                    r"message=\"reason=(\w+) count=(\d+) total=(\d+) ")
    out = []
    for line in m.current_log().splitlines():
        hit = rx.search(line)
        if hit:
            out.append((hit.group(1), int(hit.group(2)), int(hit.group(3))))
    return out


@async_test
async def test_send_limit_refuses_with_retry_after_and_stores_nothing():
    # One token per 5 s, three at once.
    async with Meshd(load=LOAD, extra=section(send_rate=0.2, send_burst=3)) as m:
        ta, tb, tc = m.add_user("alice"), m.add_user("bob"), m.add_user("carol")
        ca = await m.login(ta, device="laptop", label="alice")
        cb = await m.login(tb, label="bob")
        for i in range(3):
            await ca.send("bob", f"m{i}", ref=f"r{i}")
            await ca.expect("ack", ref=f"r{i}", seq=i + 1)
        await ca.send("bob", "refused", ref="r3")
        e = await ca.expect_error("rate_limited", ref="r3")
        wait = e.get("retry_after_ms")
        assert type(wait) is int and 0 < wait <= 5000, f"retry_after_ms in (0, 5000]: {e}"
        assert "retry in" in e["message"] and "alice" in e["message"], e
        assert "ratelimit.send_rate=0.2" in e["message"], e

        # The limit is the principal's, not the connection's: her other device waits too.
        cp = await m.login(ta, device="phone", label="alice-phone")
        assert [f["body"] for f in cp.replayed] == ["m0", "m1", "m2"], cp.replayed
        await cp.send("bob", "refused too", ref="p1")
        e2 = await cp.expect_error("rate_limited", ref="p1")
        assert 0 < e2["retry_after_ms"] <= wait, (e, e2)

        # Nothing refused was stored or delivered, and no seq was used up.
        for i in range(3):
            check_msg(await cb.expect("msg"), seq=i + 1, frm="alice", to="bob", body=f"m{i}")
        await cb.assert_no_frame(0.3)
        assert heads(m) == {"alice": 3, "bob": 3, "carol": 0}, heads(m)

        # Other principals have their own bucket.
        cc = await m.login(tc, label="carol")
        await cc.send("bob", "from carol", ref="c1")
        await cc.expect("ack", ref="c1", seq=1)
        check_msg(await cb.expect("msg"), seq=4, frm="carol", to="bob", body="from carol")

        # After the advertised wait, one send passes (the next seq, no gap), the next does not.
        await asyncio.sleep(e2["retry_after_ms"] / 1000 + SLACK_S)
        await ca.send("bob", "after the wait", ref="r4")
        await ca.expect("ack", ref="r4", seq=4)
        check_msg(await cb.expect("msg"), seq=5, frm="alice", to="bob", body="after the wait")
        await ca.send("bob", "too soon again", ref="r5")
        e3 = await ca.expect_error("rate_limited", ref="r5")
        assert 0 < e3["retry_after_ms"] <= 5000, e3
        await cb.assert_no_frame(0.3)
        assert heads(m) == {"alice": 4, "bob": 5, "carol": 1}, heads(m)
        await m.wait_log(r"event=ratelimit\.refused module=ratelimit "
                         r"message=\"reason=send count=\d+ total=3 last=alice\"")


@async_test
async def test_connection_limit_per_source_ip():
    async with Meshd(load=LOAD, extra=section(connect_rate=0.2, connect_burst=3)) as m:
        ta = m.add_user("alice")
        devices = [await m.login(ta, device=f"d{i}", label=f"alice-d{i}") for i in range(3)]
        # The refusal comes before anything is read: the hello is not answered.
        refused = await open_from(m, "127.0.0.1", label="fourth")
        await hello_racing_refusal(refused, ta, "d9")
        e = await expect_refused_connection(refused, "too many connections from 127.0.0.1")
        assert e["retry_after_ms"] <= 5000, e
        # The connections already open are untouched.
        for c in devices:
            await c.barrier()
        # Another source address has a bucket of its own.
        other = await login_from(m, "127.0.0.2", ta, device="other", label="from-127.0.0.2")
        assert other.welcome["id"] == "alice"
        # After the advertised wait, 127.0.0.1 may connect again, once.
        await asyncio.sleep(e["retry_after_ms"] / 1000 + SLACK_S)
        again = await m.login(ta, device="d3", label="after-wait")
        assert again.welcome["device"] == "d3"
        await expect_refused_connection(await open_from(m, "127.0.0.1", label="fifth"),
                                        "too many connections")
        await m.wait_log(r"event=session\.close .*code=1013 reason=\"try again later\"")


@async_test
async def test_failed_logins_block_the_source_ip_until_refill():
    async with Meshd(load=LOAD, extra=section(auth_fail_rate=0.2, auth_fail_burst=3)) as m:
        ta = m.add_user("alice")
        # Three refused hellos: two bad tokens and an invalid id each take a token.
        for i, hello in enumerate([{"token": BAD_TOKEN}, {"token": BAD_TOKEN + "x"},
                                   {"token": ta, "id": "not a name!"}]):
            c = await m.connect(hello=False, label=f"bad{i}")
            await c.hello(**hello)
            await c.expect_error("unauthorized")
            assert await c.wait_closed() == 1008
        # Now even the right token is refused at connect, before its hello is read.
        c = await open_from(m, "127.0.0.1", label="good-but-blocked")
        await hello_racing_refusal(c, ta)
        e = await expect_refused_connection(c, "too many failed logins from 127.0.0.1")
        assert e["retry_after_ms"] <= 5000, e
        # Other sources are not blocked.
        other = await login_from(m, "127.0.0.2", ta, label="from-127.0.0.2")
        assert other.welcome["id"] == "alice"
        # Once a failure is forgiven (one token back), the right token works again.
        await asyncio.sleep(e["retry_after_ms"] / 1000 + SLACK_S)
        ok = await m.login(ta, device="later", label="after-wait")
        assert ok.welcome["id"] == "alice"
        assert len(re.findall(r"event=session\.auth_failed ", m.current_log())) == 3


@async_test
async def test_dry_run_refuses_nothing_and_logs_what_it_would():
    limits = dict(send_rate=0.1, send_burst=1, connect_rate=0.1, connect_burst=2,
                  auth_fail_rate=0.1, auth_fail_burst=1, dry_run=True)
    async with Meshd(load=LOAD, extra=section(**limits)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        cb = await m.login(tb, label="bob")           # connection 1
        ca = await m.login(ta, label="alice")         # connection 2: the burst is used up
        # Six sends in a row: the burst is one, so five would be refused.
        for i in range(6):
            await ca.send("bob", f"m{i}", ref=f"r{i}")
        for i in range(6):
            await ca.expect("ack", ref=f"r{i}", seq=i + 1)
        for i in range(6):
            check_msg(await cb.expect("msg"), seq=i + 1, frm="alice", to="bob", body=f"m{i}")
        # Connection 3 (would be refused: connect) fails its login: the auth bucket is empty.
        c = await m.connect(BAD_TOKEN, label="bad")
        await c.expect_error("unauthorized")
        assert await c.wait_closed() == 1008
        # Connection 4 (would be refused twice: connect and auth_fail) logs in all the same.
        c4 = await m.login(ta, device="second", label="alice-second")
        assert c4.welcome["id"] == "alice"

        # Each reason's lines add up to its total, the first line comes at once and later
        # ones are aggregated (at most one a second), so there are fewer lines than refusals.
        want = {"send": 5, "connect": 2, "auth_fail": 1}
        for reason, total in want.items():
            await m.wait_log(r"event=ratelimit\.dry_run module=ratelimit message=\"reason="
                             + reason + r" count=\d+ total=" + str(total) + " ", timeout=10)
        lines = ratelimit_lines(m, "dry_run")
        for reason, total in want.items():
            mine = [(count, t) for r, count, t in lines if r == reason]
            assert sum(count for count, _ in mine) == total, (reason, lines)
            assert mine[-1][1] == total and mine[0][0] == 1, (reason, lines)
        send_lines = [l for l in lines if l[0] == "send"]
        assert len(send_lines) < 5, f"send lines were not aggregated: {send_lines}"
        assert ratelimit_lines(m, "refused") == [], "dry_run must not refuse"
        assert "rate_limited" not in m.current_log()
        assert heads(m) == {"alice": 6, "bob": 6}, heads(m)


@async_test
async def test_reload_changes_limits_without_dropping_connections():
    async with Meshd(load=LOAD, extra=section(send_rate=0.1, send_burst=2)) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="bob")
        seq = 0

        async def send_ok(body):
            nonlocal seq
            seq += 1
            await ca.send("bob", body, ref=body)
            await ca.expect("ack", ref=body, seq=seq)
            check_msg(await cb.expect("msg"), seq=seq, frm="alice", to="bob", body=body)

        async def send_refused(ref, most_ms, body=None):
            await ca.send("bob", body or ref, ref=ref)
            e = await ca.expect_error("rate_limited", ref=ref)
            assert 0 < e["retry_after_ms"] <= most_ms, e
            return e

        await send_ok("a1")
        await send_ok("a2")
        await send_refused("a3", 10000)

        # Loosen: a fast refill lets alice through at once, on the same connection.
        m.write_config(extra=section(send_rate=1000, send_burst=5))
        r = m.ctl("reload")
        assert sorted(r["applied"]) == ["ratelimit.send_burst", "ratelimit.send_rate"], r
        assert r["restart_required"] == [], r
        await m.wait_log(r"event=ratelimit\.reloaded .*send_rate=1000 send_burst=5 ")
        await send_ok("b1")
        await send_ok("b2")

        # Tighten, for sends and connections: the full bucket is clamped to the new burst.
        m.write_config(extra=section(send_rate=0.1, send_burst=1, connect_rate=0.1,
                                     connect_burst=1))
        r = m.ctl("reload")
        assert r["applied"] == ["ratelimit.connect_burst", "ratelimit.connect_rate",
                                "ratelimit.send_burst", "ratelimit.send_rate"], r
        await send_ok("c1")
        await send_refused("c2", 10000)
        # Connected clients stay; a new connection gets the new connection limit.
        await m.login(ta, device="new", label="alice-new")
        await expect_refused_connection(await open_from(m, "127.0.0.1", label="one-too-many"),
                                        "too many connections")

        # A bad value is refused with a message naming the key, and nothing of the file is
        # applied: the old send limit stays, and so does the old limits.max_frame (a frame of
        # 5000 bytes is still read, then refused by the send limit, not as too_large).
        for bad, words in ((dict(send_rate=-1, send_burst=1), ("ratelimit.send_rate", "-1")),
                           (dict(send_rate="fast", send_burst=1), ("ratelimit.send_rate",)),
                           (dict(send_rate=0.1, send_burst=0.5), ("ratelimit.send_burst",))):
            m.write_config(extra=section(**bad), limits={"max_frame": 4096})
            err = m.ctl_fail("reload")
            assert err["code"] == "bad_config", err
            for w in words:
                assert w in err["message"], f"reload error should name {w!r}: {err}"
            await send_refused("d-" + str(bad["send_rate"]), 10000, body="x" * 5000)
        assert m.running()

        # A good file again: applies, and alice's connection has been there all along.
        m.write_config(extra=section(send_rate=1000, send_burst=5), limits={"max_frame": 1048576})
        m.ctl("reload")
        await send_ok("e1")
        assert ca.close_code is None and cb.close_code is None
        assert not re.search(r"event=session\.close .*principal=(alice|bob)\b",
                             m.current_log()), "a reload closed a session"


@async_test
async def test_full_table_fails_open_with_a_warning():
    limits = dict(connect_rate=0.1, connect_burst=1, max_tracked=2)
    async with Meshd(load=LOAD, extra=section(**limits)) as m:
        ta = m.add_user("alice")
        # Two sources fill the table (their buckets are empty, so they stay tracked).
        await login_from(m, "127.0.0.2", ta, device="two")
        await login_from(m, "127.0.0.3", ta, device="three")
        # A third source is not tracked: not limited, however often it connects.
        await login_from(m, "127.0.0.4", ta, device="four-a")
        await login_from(m, "127.0.0.4", ta, device="four-b")
        await m.wait_log(r"^level=warn event=ratelimit\.table_full module=ratelimit .*"
                         r"max_tracked=2 .*fail open")
        # The tracked sources are still limited.
        await expect_refused_connection(await open_from(m, "127.0.0.2"),
                                        "too many connections from 127.0.0.2")


def test_bad_value_at_start_refuses_to_start():
    with Meshd(load=LOAD, extra=section(connect_burst=0), start=False) as m:
        p = subprocess.run([meshd_bin(), "--config", m.config_path], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=20)
        err = p.stderr.decode("utf-8", "replace")
        assert p.returncode == 1, (p.returncode, err)
        assert "ratelimit.connect_burst = 0 is out of range" in err, err
        assert "it must be 1..1000000000" in err, err
        assert f"{m.config_path}:" in err, err  # FILE:LINE:COL, like core keys
        assert "event=server.ready" not in err


@async_test
async def test_refusals_are_counted_in_metrics():
    # With the metrics module: enforced refusals go to meshd_rate_limited_total{reason},
    # the core's family; dry-run ones to meshd_ratelimit_dry_run_total{reason}.
    from test_metrics import (HTTP_LISTEN_RE, check_with_promtool, parse_exposition, scrape,
                              value)
    load = LOAD + ("metrics",)
    extra = section(send_rate=0.01, send_burst=1) + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
    async with Meshd(load=load, extra=extra) as m:
        port = int((await m.wait_log(HTTP_LISTEN_RE)).group(1))
        c = await m.login(m.add_user("alice"), label="alice")
        m.add_user("bob")
        await c.send("bob", "ok", ref="1")
        await c.expect("ack", ref="1")
        for i in range(3):
            await c.send("bob", "no", ref=f"n{i}")
            await c.expect_error("rate_limited", ref=f"n{i}")
        samples, _ = parse_exposition(scrape(port))
        assert value(samples, "meshd_rate_limited_total", reason="send") == 3, samples
        assert value(samples, "meshd_rate_limited_total", reason="connect") == 0
        assert value(samples, "meshd_rate_limited_total", reason="inflight") == 0
        assert value(samples, "meshd_ratelimit_dry_run_total", reason="send") == 0

        m.write_config(extra=section(send_rate=0.01, send_burst=1, dry_run=True) +
                       '\n[metrics]\nlisten = "127.0.0.1:0"\n')
        m.ctl("reload")
        await c.send("bob", "passes in dry run", ref="d")
        await c.expect("ack", ref="d")
        text = scrape(port)
        check_with_promtool(text)
        samples, _ = parse_exposition(text)
        assert value(samples, "meshd_ratelimit_dry_run_total", reason="send") == 1, samples
        assert value(samples, "meshd_rate_limited_total", reason="send") == 3
