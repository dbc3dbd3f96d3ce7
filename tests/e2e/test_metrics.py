# tests/e2e/test_metrics: the metrics module and the core metrics it exposes (issue
# "metrics"): Prometheus text on GET [metrics] path of its own listener, values that move with
# traffic, `promtool check metrics` on what is served, 404/405/HEAD, the http= field of
# server.ready, meshctl status --json, and the errors of a bad [metrics] table or a busy port.
#
# promtool comes with Debian's `prometheus` package (tests/run installs it). Without it this
# test fails under CI (CI set in the environment, as .ci/run does) and is skipped elsewhere.

import asyncio
import http.client
import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidHandshake

from harness import Meshd, async_test, meshd_bin

METRICS_LOAD = ("auth_token", "route_direct", "metrics")
METRICS_TOML = '[metrics]\nlisten = "127.0.0.1:0"\n'
HTTP_LISTEN_RE = r"^level=info event=http\.listen module=metrics listen=127\.0\.0\.1:(\d+) path=(\S+)"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_TIMEOUT_S = 5

# Every family the core and the module register, with its type.
FAMILIES = {
    "meshd_build_info": "gauge",
    "meshd_uptime_seconds": "gauge",
    "meshd_connections": "gauge",
    "meshd_sessions": "gauge",
    "meshd_frames_received_total": "counter",
    "meshd_frames_sent_total": "counter",
    "meshd_received_bytes_total": "counter",
    "meshd_sent_bytes_total": "counter",
    "meshd_messages_stored_total": "counter",
    "meshd_deliveries_total": "counter",
    "meshd_errors_total": "counter",
    "meshd_rate_limited_total": "counter",
    "meshd_commit_batch_messages": "histogram",
    "meshd_commit_duration_seconds": "histogram",
    "meshd_commit_failures_total": "counter",
    "meshd_write_queue_bytes": "gauge",
    "meshd_delivery_backlog_messages": "gauge",
    "meshd_database_size_bytes": "gauge",
    "meshd_store_degraded": "gauge",
    "meshd_principals": "gauge",
    "meshd_events_dropped_total": "counter",
    "meshd_metrics_scrapes_total": "counter",
    "meshd_typing_total": "counter",
    "meshd_receipts_sent_total": "counter",
    "meshd_events_dropped_total": "counter",
    "meshd_history_reads_total": "counter",
    "meshd_read_duration_seconds": "histogram",
    "meshd_tasks_total": "counter",
}

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_exposition(text):
    """{(name, ((label, value), ...)): float} and {family: type} from text format 0.0.4."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"two TYPE lines for {name}"
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = tuple(sorted(LABEL_RE.findall(m.group(2) or "")))
        key = (m.group(1), labels)
        assert key not in samples, f"series twice: {line!r}"
        samples[key] = float(m.group(3))
    return samples, types


def value(samples, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no series {name}{labels} in the scrape"
    return samples[key]


def fetch(port, path="/metrics", method="GET"):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            return r.status, r.headers, r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read().decode("utf-8")


def scrape(port):
    status, headers, body = fetch(port)
    assert status == 200, (status, body)
    assert headers["Content-Type"] == CONTENT_TYPE, headers
    assert int(headers["Content-Length"]) == len(body.encode()), headers
    return body


def promtool():
    path = shutil.which("promtool")
    if path:
        return path
    message = ("promtool is missing: install Debian's `prometheus` package (tests/run does) to "
               "check the exposition format")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def check_with_promtool(text):
    p = subprocess.run([promtool(), "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    report = (p.stdout + p.stderr).decode("utf-8", "replace").strip()
    assert p.returncode == 0 and report == "", (
        f"promtool check metrics exited {p.returncode}:\n{report}\n--- text ---\n{text}")


async def metrics_port(m):
    match = await m.wait_log(HTTP_LISTEN_RE)
    return int(match.group(1))


def metrics_daemon(**kw):
    return Meshd(load=METRICS_LOAD, extra=kw.pop("extra", METRICS_TOML), **kw)


@async_test
async def test_metrics_move_with_traffic_and_pass_promtool():
    async with metrics_daemon() as m:
        port = await metrics_port(m)
        text0 = scrape(port)
        check_with_promtool(text0)
        s0, types = parse_exposition(text0)
        for family, kind in FAMILIES.items():
            assert types.get(family) == kind, f"{family}: TYPE {types.get(family)}, want {kind}"
        assert value(s0, "meshd_build_info", version="0.1.0") == 1
        assert value(s0, "meshd_uptime_seconds") >= 0
        assert value(s0, "meshd_connections") == 0
        assert value(s0, "meshd_sessions", kind="user") == 0
        assert value(s0, "meshd_sessions", kind="agent") == 0
        assert value(s0, "meshd_messages_stored_total") == 0
        assert value(s0, "meshd_errors_total", code="bad_frame") == 0
        assert value(s0, "meshd_rate_limited_total", reason="inflight") == 0
        assert value(s0, "meshd_commit_batch_messages_count") == 0
        assert value(s0, "meshd_database_size_bytes", file="db") > 0

        ta = m.add_user("alice")
        tb = m.add_user("robot", agent=True)
        ca = await m.login(ta, label="alice")
        cb = await m.login(tb, label="robot")
        for i in range(3):
            await ca.send("robot", {"n": i}, ref=f"r{i}")
            await ca.expect("ack", ref=f"r{i}", seq=i + 1)
            await cb.expect("msg", seq=i + 1)
        await ca.send_frame("this is not json")
        await ca.expect_error("bad_frame")
        await ca.send("nobody", "x", ref="u")
        await ca.expect_error("unknown_peer", ref="u")

        text1 = scrape(port)
        check_with_promtool(text1)
        s1, _ = parse_exposition(text1)
        assert value(s1, "meshd_connections") == 2
        assert value(s1, "meshd_sessions", kind="user") == 1
        assert value(s1, "meshd_sessions", kind="agent") == 1
        assert value(s1, "meshd_principals") == 2
        # 2 hellos, 3 sends, the bad frame and the send to nobody.
        assert value(s1, "meshd_frames_received_total") == 7
        # welcome + synced each, 3 acks, 3 msgs, 2 errors.
        assert value(s1, "meshd_frames_sent_total") >= 12
        assert value(s1, "meshd_received_bytes_total") > value(s0, "meshd_received_bytes_total")
        assert value(s1, "meshd_sent_bytes_total") > value(s0, "meshd_sent_bytes_total")
        assert value(s1, "meshd_messages_stored_total") == 3
        assert value(s1, "meshd_deliveries_total") == 3
        assert value(s1, "meshd_errors_total", code="bad_frame") == 1
        assert value(s1, "meshd_errors_total", code="unknown_peer") == 1
        assert value(s1, "meshd_errors_total", code="unauthorized") == 0
        # Each send waited for its ack: three commits of one message each.
        assert value(s1, "meshd_commit_batch_messages_count") == 3
        assert value(s1, "meshd_commit_batch_messages_sum") == 3
        assert value(s1, "meshd_commit_batch_messages_bucket", le="1") == 3
        assert value(s1, "meshd_commit_batch_messages_bucket", le="+Inf") == 3
        commits = value(s1, "meshd_commit_duration_seconds_count")
        assert commits >= 5, "2 user adds and 3 sends were committed"
        assert value(s1, "meshd_commit_duration_seconds_bucket", le="+Inf") == commits
        assert value(s1, "meshd_commit_duration_seconds_sum") > 0
        assert value(s1, "meshd_commit_failures_total") == 0
        assert value(s1, "meshd_store_degraded") == 0
        assert value(s1, "meshd_write_queue_bytes") == 0
        assert value(s1, "meshd_delivery_backlog_messages") == 0
        assert value(s1, "meshd_metrics_scrapes_total") == 2
        assert value(s1, "meshd_uptime_seconds") >= value(s0, "meshd_uptime_seconds")

        await ca.close()
        await cb.close()
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            s2, _ = parse_exposition(scrape(port))
            if value(s2, "meshd_connections") == 0 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert value(s2, "meshd_connections") == 0
        assert value(s2, "meshd_sessions", kind="user") == 0
        assert value(s2, "meshd_sessions", kind="agent") == 0


@async_test
async def test_http_other_paths_methods_and_head():
    async with metrics_daemon() as m:
        port = await metrics_port(m)
        status, headers, body = fetch(port, "/other")
        assert status == 404 and "/metrics" in body, (status, body)
        status, headers, body = fetch(port, "/metrics/x")
        assert status == 404, (status, body)
        status, headers, body = fetch(port, "/metrics", method="POST")
        assert status == 405, (status, body)
        assert headers["Allow"] == "GET, HEAD", headers
        status, headers, body = fetch(port, "/metrics", method="DELETE")
        assert status == 405, (status, body)
        status, headers, body = fetch(port, "/metrics", method="HEAD")
        assert status == 200 and body == "", (status, body)
        assert headers["Content-Type"] == CONTENT_TYPE, headers
        assert int(headers["Content-Length"]) > 100, headers
        # A query string does not change the path.
        status, _, body = fetch(port, "/metrics?x=1")
        assert status == 200 and "meshd_build_info" in body
        # Never a WebSocket on this listener (the upgrade gets a bare close, fast, not a
        # timeout); the broker's listener knows nothing of /metrics.
        with pytest.raises((InvalidHandshake, ConnectionError, EOFError)):
            ws = await asyncio.wait_for(
                websockets.connect(f"ws://127.0.0.1:{port}/metrics", open_timeout=3), 5)
            await ws.close()
        status, _, _ = fetch(m.port, "/metrics")
        assert status == 404, "the WebSocket listener must not serve metrics"


@async_test
async def test_keep_alive_and_clean_stop_with_an_open_http_connection():
    async with metrics_daemon() as m:
        port = await metrics_port(m)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
        try:
            for _ in range(3):  # one connection, several requests
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                assert r.status == 200 and b"meshd_build_info" in r.read()
            # The connection stays open while meshd stops: it must still exit 0, cleanly.
            await m.stop()
        finally:
            conn.close()


@async_test
async def test_server_ready_names_the_http_listener():
    async with metrics_daemon() as m:
        port = await metrics_port(m)
        ready = await m.wait_log(r"^level=info event=server\.ready listen=(\S+) control=(\S+) "
                                 r"version=\S+ pid=\d+ http=(\S+)$")
        assert ready.group(1) == f"127.0.0.1:{m.port}"
        assert ready.group(3) == f"127.0.0.1:{port}"


@async_test
async def test_custom_path():
    async with metrics_daemon(extra='[metrics]\nlisten = "127.0.0.1:0"\npath = "/prom"\n') as m:
        port = await metrics_port(m)
        assert (await m.wait_log(HTTP_LISTEN_RE)).group(2) == "/prom"
        status, _, body = fetch(port, "/prom")
        assert status == 200 and "meshd_build_info" in body
        assert fetch(port, "/metrics")[0] == 404


@async_test
async def test_status_json_and_text():
    async with metrics_daemon() as m:
        port = await metrics_port(m)
        await m.login(m.add_user("alice"))
        await m.login(m.add_user("robot", agent=True))
        await m.login(m.add_user("bot2", agent=True))
        st = m.ctl("status")
        assert st["version"] == "0.1.0", st
        assert type(st["uptime_s"]) is int and st["uptime_s"] >= 0, st
        assert st["listeners"] == [f"127.0.0.1:{m.port}"], st
        assert st["http_listeners"] == [
            {"module": "metrics", "listen": f"127.0.0.1:{port}", "path": "/metrics"}], st
        assert [(x["name"], x["version"]) for x in st["modules"]] == [
            ("auth_token", "0.1.0"), ("route_direct", "0.1.0"), ("metrics", "0.1.0")], st
        assert st["connections"] == 3 and st["sessions"] == 3, st
        assert st["sessions_by_kind"] == {"user": 1, "agent": 2}, st
        assert type(st["store"]["bytes"]) is int and st["store"]["bytes"] > 0, st
        text = m.ctl("status", json=False)
        assert f"http:         metrics http://127.0.0.1:{port}/metrics\n" in text, text
        assert "sessions:     3 (1 user, 2 agent)\n" in text, text


@async_test
async def test_status_without_http_listeners():
    async with Meshd() as m:
        st = m.ctl("status")
        assert st["http_listeners"] == [], st
        assert "http:" not in m.ctl("status", json=False)
        assert " http=" not in m.current_log()


def run_to_exit(m, timeout=15):
    p = subprocess.run([meshd_bin(), "--config", m.config_path], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stderr.decode("utf-8", "replace")


def test_bad_metrics_table_refused_with_position():
    with metrics_daemon(start=False,
                        extra='[metrics]\nlisen = "127.0.0.1:0"\npath = 9770\n') as m:
        text = open(m.config_path).read().splitlines()
        row = text.index('lisen = "127.0.0.1:0"') + 1
        want = [f"{m.config_path}:{row}:1: unknown key metrics.lisen (did you mean "
                f"metrics.listen?)",
                f"{m.config_path}:{row + 1}:8: metrics.path must be a string (the HTTP path "
                f"served, e.g. \"/metrics\"), got 9770"]
        rc, err = run_to_exit(m)
        assert rc == 1, err
        for line in want:
            assert line + "\n" in err, err
        assert "event=module.load_failed" in err and "event=server.ready" not in err, err
        # meshd --check opens the module to read its key list, and reports the same lines.
        p = subprocess.run([meshd_bin(), "--config", m.config_path, "--check"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
        assert p.returncode == 1, p
        assert p.stderr.decode().splitlines() == want, p.stderr.decode()


def test_busy_port_stops_start_naming_address_and_key():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with metrics_daemon(start=False,
                            extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n') as m:
            rc, err = run_to_exit(m)
            assert rc == 1, err
            lines = [l for l in err.splitlines() if "event=server.listen_failed" in l]
            assert len(lines) == 1, err
            assert f"cannot listen on 127.0.0.1:{port} ([metrics] listen, for module metrics)" \
                in lines[0], lines
            assert "event=server.ready" not in err, err
            assert not os.path.exists(m.socket)


def test_bad_listen_address_refused():
    with metrics_daemon(start=False, extra='[metrics]\nlisten = "localhost:9770"\n') as m:
        rc, err = run_to_exit(m)
        assert rc == 1, err
        lines = [l for l in err.splitlines() if "event=http.listen_refused" in l]
        assert len(lines) == 1 and "module=metrics" in lines[0], err
        assert 'cannot listen on \\"localhost:9770\\" ([metrics] listen)' in lines[0], lines
        assert "event=module.load_failed" in err, err


@async_test
async def test_reload_listen_needs_restart():
    async with metrics_daemon() as m:
        port = await metrics_port(m)
        m.write_config(extra='[metrics]\nlisten = "127.0.0.1:1"\npath = "/other"\n')
        r = m.ctl("reload")
        assert sorted(r["restart_required"]) == ["metrics.listen", "metrics.path"], r
        assert r["applied"] == [], r
        # Still served where it was.
        assert fetch(port)[0] == 200
        # A bad key refuses the reload as a whole.
        m.write_config(extra='[metrics]\nlisten = 1\n')
        e = m.ctl_fail("reload")
        assert e["code"] == "bad_config" and "metrics.listen must be a string" in e["message"], e
        assert fetch(port)[0] == 200
