# tests/e2e/test_admin: meshctl commands and their --json shapes (contract §4, design.md
# "Control socket protocol"), live effects of user del / user token, reload.

import asyncio
import json
import os
import stat
import subprocess
import time

from harness import TOKEN_RE, Meshd, async_test, check_msg, meshctl_bin, meshd_bin, now_ms


@async_test
async def test_user_add_list_shapes():
    async with Meshd() as m:
        t0 = now_ms()
        r = m.ctl("user", "add", "alice")
        assert r["id"] == "alice" and r["kind"] == "user" and TOKEN_RE.match(r["token"]), r
        r2 = m.ctl("user", "add", "robot", "--agent")
        assert r2["id"] == "robot" and r2["kind"] == "agent" and TOKEN_RE.match(r2["token"]), r2
        assert r["token"] != r2["token"]
        t1 = now_ms()
        users = m.ctl("user", "list")
        assert set(users) == {"users"}, users
        by = {u["id"]: u for u in users["users"]}
        assert set(by) == {"alice", "robot"}, users
        for name, kind in (("alice", "user"), ("robot", "agent")):
            u = by[name]
            assert u["kind"] == kind and u["seq"] == 0 and u["sessions"] == 0, u
            assert type(u["created_ms"]) is int and t0 - 2000 <= u["created_ms"] <= t1 + 2000, u
            assert "token" not in u, "user list must not show tokens"
        # The token is never printed again, nor logged.
        assert r["token"] not in m.log_text(), "token appears in the daemon log"


@async_test
async def test_user_add_text_output_prints_token():
    async with Meshd() as m:
        out = m.ctl("user", "add", "alice", json=False)
        toks = [w for w in out.split() if TOKEN_RE.match(w)]
        assert len(toks) == 1, f"plain `user add` should print the token once: {out!r}"
        c = await m.login(toks[0])
        assert c.welcome["id"] == "alice"


@async_test
async def test_user_add_errors():
    async with Meshd() as m:
        m.add_user("alice")
        assert m.ctl_fail("user", "add", "alice")["code"] == "exists"
        assert m.ctl_fail("user", "add", "ALICE")["code"] == "exists"
        for bad in ("a b", "x" * 65, "caf\u00e9", "semi;colon", "#group"):
            e = m.ctl_fail("user", "add", bad)
            assert e["code"] == "bad_name", (bad, e)
        assert m.ctl_fail("user", "del", "nobody")["code"] == "not_found"
        assert m.ctl_fail("user", "token", "nobody")["code"] == "not_found"
        # Only alice exists.
        assert [u["id"] for u in m.ctl("user", "list")["users"]] == ["alice"]


@async_test
async def test_list_counts_seq_and_sessions():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, device="one")
        await m.login(ta, device="two")
        for i in range(3):
            await ca.send("bob", i, ref=str(i))
            await ca.expect("ack", ref=str(i), seq=i + 1)
        by = {u["id"]: u for u in m.ctl("user", "list")["users"]}
        assert by["alice"]["seq"] == 3 and by["alice"]["sessions"] == 2, by
        assert by["bob"]["seq"] == 3 and by["bob"]["sessions"] == 0, by


@async_test
async def test_user_del_closes_session_4002_and_refuses_login():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="bob")
        await ca.send("bob", "before delete", ref="1")
        await ca.expect("ack", ref="1", seq=1)
        await cb.expect("msg")
        r = m.ctl("user", "del", "bob")
        assert r["id"] == "bob" and r["closed_sessions"] == 1, r
        t0 = time.monotonic()
        code = await cb.wait_closed(timeout=3)
        assert code == 4002, f"deleted principal's session closed with {code}, expected 4002"
        assert time.monotonic() - t0 < 2.0, "user del must close the session at once"
        # The name can't log in any more, and is no longer a peer.
        c = await m.connect(tb)
        await c.expect_error("unauthorized")
        assert await c.wait_closed() == 1008
        await ca.send("bob", "after delete", ref="2")
        await ca.expect_error("unknown_peer", ref="2")
        assert [u["id"] for u in m.ctl("user", "list")["users"]] == ["alice"]


@async_test
async def test_readded_name_starts_empty():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        for i in range(3):
            await ca.send("bob", i, ref=str(i))
            await ca.expect("ack", ref=str(i), seq=i + 1)
        cb = await m.login(tb, device="phone")
        await cb.send_frame({"type": "ack", "upto": 2})
        await cb.barrier()
        m.ctl("user", "del", "bob")
        assert await cb.wait_closed() == 4002
        tb2 = m.add_user("bob")
        assert tb2 != tb
        # Old token still refused; new one gets an empty log and no cursor.
        old = await m.connect(tb)
        await old.expect_error("unauthorized")
        assert await old.wait_closed() == 1008
        cb = await m.connect(tb2, device="phone")
        w = await cb.expect_welcome()
        assert w["id"] == "bob" and w["seq"] == 0 and w["cursor"] == 0, w
        assert await cb.recv_until_synced() == []
        assert cb.synced["seq"] == 0
        # The new bob's log starts at 1; alice's log is unchanged (her sends stay hers).
        await ca.send("bob", "hello new bob", ref="n")
        await ca.expect("ack", ref="n", seq=4)
        check_msg(await cb.expect("msg"), seq=1, frm="alice", to="bob", body="hello new bob")


@async_test
async def test_user_token_rotation():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta, label="alice")
        b1 = await m.login(tb, device="phone", label="bob/phone")
        b2 = await m.login(tb, device="laptop", label="bob/laptop")
        await ca.send("bob", "kept", ref="1")
        await ca.expect("ack", ref="1", seq=1)
        for c in (b1, b2):
            await c.expect("msg")
        r = m.ctl("user", "token", "bob")
        assert set(r) >= {"id", "token", "closed_sessions"}, r
        assert r["id"] == "bob" and r["closed_sessions"] == 2, r
        assert TOKEN_RE.match(r["token"]) and r["token"] != tb, r
        for c in (b1, b2):
            code = await c.wait_closed(timeout=3)
            assert code == 4002, f"{c.label}: closed with {code} after token rotation"
        old = await m.connect(tb)
        await old.expect_error("unauthorized")
        assert await old.wait_closed() == 1008
        new = await m.login(r["token"], device="phone")
        assert new.welcome["id"] == "bob" and new.welcome["seq"] == 1, new.welcome
        # Rotation keeps the log and cursors.
        assert [x["seq"] for x in new.replayed] == [1], new.replayed
        assert ca.close_code is None  # other principals untouched
        await ca.send("bob", "after rotation", ref="2")
        await ca.expect("ack", ref="2", seq=2)
        check_msg(await new.expect("msg"), seq=2, frm="alice", to="bob", body="after rotation")


@async_test
async def test_sessions_shape():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        cb = await m.login(tb, label="bob")
        t0 = now_ms()
        ca = await m.login(ta, device="laptop", label="alice")
        t1 = now_ms()
        for i in range(3):
            await cb.send("alice", i, ref=str(i))
            await cb.expect("ack", ref=str(i), seq=i + 1)
        for i in range(3):
            await ca.expect("msg", seq=i + 1)
        await ca.send_frame({"type": "ack", "upto": 2})
        await ca.barrier()
        # A fourth message that alice receives live.
        await cb.send("alice", 3, ref="3")
        await cb.expect("ack", ref="3", seq=4)
        await ca.expect("msg", seq=4)
        deadline = time.monotonic() + 3
        while True:
            s = m.ctl("sessions")
            assert set(s) == {"sessions"}, s
            mine = [x for x in s["sessions"] if x["id"] == "alice"]
            assert len(mine) == 1, s
            x = mine[0]
            if x["cursor"] == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert x["device"] == "laptop" and x["session"] == ca.welcome["session"], x
        local = ca.ws.local_address
        assert x["remote"] == f"127.0.0.1:{local[1]}", (x, local)
        assert type(x["connected_ms"]) is int and t0 - 2000 <= x["connected_ms"] <= t1 + 2000, x
        assert x["cursor"] == 2 and x["sent_seq"] == 4 and x["head"] == 4, x
        assert x["lag"] == 2, f"lag is head - cursor = 2: {x}"
        # The credential that opened the session (meshd-protocol.7, meshctl.8 sessions).
        assert x["auth"] == "token" and x["credential"] == "token", x
        assert sorted(y["id"] for y in s["sessions"]) == ["alice", "bob"], s


@async_test
async def test_status_shape():
    async with Meshd() as m:
        tb = m.add_user("bob")
        m.add_user("alice")
        await m.login(tb)
        unauth = await m.connect(hello=False)  # a connection, not a session
        await asyncio.sleep(0.1)
        st = m.ctl("status")
        assert st["version"] == "0.1.0", st
        assert st["pid"] == m.proc.pid, st
        assert type(st["uptime_s"]) is int and 0 <= st["uptime_s"] < 120, st
        assert st["listeners"] == [f"127.0.0.1:{m.port}"], st
        assert [x["name"] for x in st["modules"]] == ["auth_token", "route_direct"], st
        assert all(isinstance(x.get("version"), str) and x["version"] for x in st["modules"]), st
        assert st["connections"] == 2 and st["sessions"] == 1, st
        assert st["principals"] == 2, st
        assert st["tasks"] == {"queued": 0, "assigned": 0, "working": 0,
                               "queued_by_skill": {}}, st
        store = st["store"]
        assert store["state"] == "ok" and store["message"] == "", store
        assert os.path.dirname(store["path"]) == os.path.realpath(m.data_dir) or \
            os.path.dirname(store["path"]) == m.data_dir, (store, m.data_dir)
        assert os.path.exists(store["path"]), store
        assert type(store["bytes"]) is int and store["bytes"] > 0, store
        await unauth.close()


@async_test
async def test_text_output_without_json():
    async with Meshd() as m:
        m.add_user("alice")
        for args in (("status",), ("user", "list"), ("sessions",)):
            rc, out, err = m.ctl_raw(*args, json=False)
            assert rc == 0, (args, rc, out, err)
            assert out.strip(), f"meshctl {' '.join(args)} printed nothing"
        rc, out, err = m.ctl_raw("user", "list", json=False)
        assert "alice" in out, out


@async_test
async def test_control_socket_mode_0660():
    async with Meshd() as m:
        st = os.stat(m.socket)
        assert stat.S_ISSOCK(st.st_mode), "control path is not a socket"
        assert stat.S_IMODE(st.st_mode) == 0o660, oct(stat.S_IMODE(st.st_mode))
        await m.stop()
        assert not os.path.exists(m.socket), "control socket not removed at shutdown"


@async_test
async def test_control_socket_replaced_after_sigkill():
    async with Meshd() as m:
        m.add_user("alice")
        m.kill9()
        assert os.path.exists(m.socket)  # stale file left behind
        m.start()
        assert [u["id"] for u in m.ctl("user", "list")["users"]] == ["alice"]


def run_second_meshd(config_path):
    p = subprocess.Popen([meshd_bin(), "--config", config_path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("a second meshd on the same data_dir/control socket kept running")
    return p.returncode, err.decode("utf-8", "replace")


@async_test
async def test_second_daemon_refused():
    async with Meshd() as m:
        # Same config: same data_dir and control socket.
        rc, err = run_second_meshd(m.config_path)
        assert rc == 1, (rc, err)
        assert m.ctl("status")["pid"] == m.proc.pid
        # Own data_dir, same control socket (control_server.h: a live socket means another
        # meshd runs there, and that is an error). It must not unlink the live socket.
        other = os.path.join(m.tmp, "other.toml")
        os.makedirs(os.path.join(m.tmp, "data2"))
        with open(other, "w") as f:
            f.write(m.config_text().replace(m.data_dir, os.path.join(m.tmp, "data2")))
        rc, err = run_second_meshd(other)
        assert rc == 1, (rc, err)
        assert m.socket in err, f"error should name the control socket: {err}"
        assert os.path.exists(m.socket), "the failed second meshd removed the live socket"
        assert m.ctl("status")["pid"] == m.proc.pid


def test_meshctl_missing_socket():
    sock = "/tmp/meshd-e2e-no-such-dir/control.sock"
    p = subprocess.run([meshctl_bin(), "--socket", sock, "status"], capture_output=True,
                       timeout=15)
    assert p.returncode != 0
    lines = [l for l in p.stderr.decode().splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one stderr line: {p.stderr!r}"
    assert p.stdout == b"", p.stdout
    p = subprocess.run([meshctl_bin(), "--socket", sock, "--json", "status"],
                       capture_output=True, timeout=15)
    assert p.returncode != 0
    assert len([l for l in p.stderr.decode().splitlines() if l.strip()]) == 1, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) == {"error"} and isinstance(doc["error"].get("code"), str), doc
    assert isinstance(doc["error"].get("message"), str) and doc["error"]["message"], doc


def test_meshctl_unknown_command():
    with Meshd() as m:
        rc, out, err = m.ctl_raw("frobnicate")
        assert rc != 0
        assert len([l for l in err.splitlines() if l.strip()]) == 1, err
        assert set(json.loads(out)) == {"error"}, out


@async_test
async def test_reload_applies_limits():
    async with Meshd(limits={"max_frame": 1048576}) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        cb = await m.login(tb)
        big = "x" * 5000
        await ca.send("bob", big, ref="1")
        await ca.expect("ack", ref="1", seq=1)
        await cb.expect("msg")
        m.write_config(limits={"max_frame": 4096})
        r = m.ctl("reload")
        assert r["applied"] == ["limits.max_frame"] and r["restart_required"] == [], r
        # Applied live, on the existing connection.
        await ca.send("bob", big, ref="2")
        await ca.expect_error("too_large")
        await ca.send("bob", "small", ref="3")
        await ca.expect("ack", ref="3", seq=2)
        # Reload with no change: nothing applied.
        r = m.ctl("reload")
        assert r["applied"] == [] and r["restart_required"] == [], r


@async_test
async def test_reload_listen_change_requires_restart():
    async with Meshd() as m:
        ta = m.add_user("alice")
        port = m.port
        m.write_config(listen=["127.0.0.2:0"], limits={"max_depth": 32})
        r = m.ctl("reload")
        assert r["restart_required"] == ["server.listen"], r
        assert r["applied"] == ["limits.max_depth"], r
        # Still on the old listener.
        c = await m.login(ta)
        assert c.welcome["id"] == "alice"
        assert m.ctl("status")["listeners"] == [f"127.0.0.1:{port}"]


@async_test
async def test_reload_broken_config_keeps_running():
    async with Meshd(limits={"max_frame": 65536}) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        ca = await m.login(ta)
        cb = await m.login(tb)
        good = m.config_text()
        m.write_raw_config(good.replace("max_frame = 65536", 'max_frame = "huge"')
                           .replace("[limits]", "[limits]\nmax_depht = 3"))
        e = m.ctl_fail("reload")
        assert e["code"] == "bad_config", e
        lines = e["message"].splitlines()
        assert any(l.startswith(m.config_path + ":") and "max_frame" in l for l in lines), e
        assert any(l.startswith(m.config_path + ":") and "max_depht" in l for l in lines), e
        assert m.running()
        # Old config still in effect; connections unharmed.
        await ca.send("bob", "y" * 50000, ref="1")
        await ca.expect("ack", ref="1", seq=1)
        await cb.expect("msg")
        await ca.send("bob", "y" * 70000, ref="2")
        await ca.expect_error("too_large")
        # Unreadable syntax too.
        m.write_raw_config(good + "\n[limits\n")
        assert m.ctl_fail("reload")["code"] == "bad_config"
        m.write_raw_config(good)
        r = m.ctl("reload")
        assert r["applied"] == [] and r["restart_required"] == [], r


@async_test
async def test_reload_key_classes():
    # design.md: reloadable live: all [limits] keys, log.level, storage.dedupe_window_s.
    # Others need a restart.
    async with Meshd() as m:
        m.write_config(log_level="debug", storage={"dedupe_window_s": 60},
                       limits={"max_inflight": 10, "hello_timeout_ms": 2000})
        r = m.ctl("reload")
        assert sorted(r["applied"]) == ["limits.hello_timeout_ms", "limits.max_inflight",
                                        "log.level", "storage.dedupe_window_s"], r
        assert r["restart_required"] == [], r
        other = "normal" if m.opts["storage"].get("sync") == "full" else "full"
        m.write_config(storage={"dedupe_window_s": 60, "sync": other})
        r = m.ctl("reload")
        assert r["applied"] == [] and r["restart_required"] == ["storage.sync"], r
        # A restart picks the file up as a whole.
        await m.restart()
        r = m.ctl("reload")
        assert r["applied"] == [] and r["restart_required"] == [], r
