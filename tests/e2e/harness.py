# tests/e2e/harness: runs a real meshd (and meshctl) for the end-to-end scenarios.
#
# Meshd      one daemon on 127.0.0.1 with a free port, a temp data dir and control socket,
#            stderr captured to a file, always stopped (or killed) when the test ends; a clean
#            stop must exit 0 with no sanitizer report, and a failing test prints the log.
# Client     a WebSocket client (python3-websockets 10.4, asyncio) with bounded waits.
# async_test runs an `async def test_*` under asyncio.run with an overall time limit
#            (pytest-asyncio is not available).
#
# Environment: MESHD, MESHCTL, MESHD_MODULES_DIR (set by meson). Without them the binaries of
# ../../build are used and a modules dir is assembled from build/modules/*/*.so.

import asyncio
import atexit
import functools
import json as jsonlib
import os
import re
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import time

import websockets
from websockets.exceptions import ConnectionClosed

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(REPO, "build")

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
TEST_TIMEOUT_S = 90.0
CTL_TIMEOUT_S = 15.0

READY_RE = re.compile(r"^level=info event=server\.ready listen=(\S+) control=(\S+)")
SANITIZER_MARKERS = ("Sanitizer", "runtime error")
TOKEN_RE = re.compile(r"^mshd_[A-Za-z0-9_-]{43}$")


def meshd_bin():
    return os.environ.get("MESHD") or os.path.join(BUILD, "daemon", "meshd")


def meshctl_bin():
    return os.environ.get("MESHCTL") or os.path.join(BUILD, "ctl", "meshctl")


def _modules_dir(tmp):
    """MESHD_MODULES_DIR, or a dir of symlinks to build/modules/*/*.so."""
    env = os.environ.get("MESHD_MODULES_DIR")
    if env:
        return os.path.abspath(env)
    out = os.path.join(tmp, "modules")
    os.makedirs(out, exist_ok=True)
    root = os.path.join(BUILD, "modules")
    if os.path.isdir(root):
        for sub in sorted(os.listdir(root)):
            d = os.path.join(root, sub)
            if not os.path.isdir(d):
                continue
            for f in os.listdir(d):
                if f.endswith(".so") and not os.path.lexists(os.path.join(out, f)):
                    os.symlink(os.path.join(d, f), os.path.join(out, f))
    return out


# Every daemon still running; killed at interpreter exit whatever happened.
_LIVE = set()


@atexit.register
def _kill_leftovers():
    for m in list(_LIVE):
        m._hard_kill()


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return jsonlib.dumps(v)  # a TOML basic string is JSON-compatible for our values
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


class Meshd:
    """One meshd process. Use `async with Meshd(...) as m:` (or `with` where no client is open).

    kwargs: listen, load, modules_dir, log_level, limits={...}, storage={...}, extra="TOML text
    appended verbatim", start=True.
    Short defaults: limits.hello_timeout_ms = 3000, limits.ping_interval_ms = 3000.
    """

    def __init__(self, *, listen=("127.0.0.1:0",), load=("auth_token", "route_direct"),
                 modules_dir=None, log_level="info", limits=None, storage=None, extra="",
                 start=True):
        self.tmp = tempfile.mkdtemp(prefix="meshd-e2e-")
        self.data_dir = os.path.join(self.tmp, "data")
        os.makedirs(self.data_dir)
        self.socket = os.path.join(self.tmp, "control.sock")
        self.config_path = os.path.join(self.tmp, "meshd.toml")
        self.opts = {
            "listen": list(listen),
            "load": list(load),
            "modules_dir": modules_dir or _modules_dir(self.tmp),
            "log_level": log_level,
            "limits": {"hello_timeout_ms": 3000, "ping_interval_ms": 3000, **(limits or {})},
            # MESHD_E2E_SYNC=full reruns a suite with storage.sync = "full" (meson e2e_full_*).
            "storage": {**({"sync": os.environ["MESHD_E2E_SYNC"]}
                           if os.environ.get("MESHD_E2E_SYNC") else {}), **(storage or {})},
            "extra": extra,
        }
        self.proc = None
        self._exit_expected = False
        self.port = None
        self.listen = None
        self.runs = []  # stderr file of every start, in order
        self.clients = []
        self.write_config()
        self._want_start = start

    # -- config ---------------------------------------------------------------------------
    def config_text(self, **changes):
        o = {**self.opts, **changes}
        lines = [
            "[server]",
            f"listen = {toml_value(o['listen'])}",
            f"data_dir = {toml_value(self.data_dir)}",
            "",
            "[control]",
            f"socket = {toml_value(self.socket)}",
            "",
            "[modules]",
            f"dir = {toml_value(o['modules_dir'])}",
            f"load = {toml_value(o['load'])}",
            "",
            "[limits]",
        ]
        lines += [f"{k} = {toml_value(v)}" for k, v in o["limits"].items()]
        if o["storage"]:
            lines += ["", "[storage]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in o["storage"].items()]
        lines += ["", "[log]", f"level = {toml_value(o['log_level'])}", ""]
        if o["extra"]:
            lines += [o["extra"], ""]
        return "\n".join(lines)

    def write_config(self, **changes):
        """Rewrite the config file; changes (same names as __init__) persist for restarts."""
        for table in ("limits", "storage"):
            if table in changes:
                changes[table] = {**self.opts[table], **changes[table]}
        self.opts.update(changes)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())

    def write_raw_config(self, text):
        with open(self.config_path, "w") as f:
            f.write(text)

    # -- process --------------------------------------------------------------------------
    def start(self, cwd=None):
        """Start meshd (in cwd, default the temp dir) and wait (bounded) for its
        server.ready line."""
        assert self.proc is None or self.proc.poll() is not None, "meshd already running"
        log_path = os.path.join(self.tmp, f"meshd.{len(self.runs)}.stderr")
        self.runs.append(log_path)
        self._exit_expected = False
        with open(log_path, "wb") as err, open(log_path + ".stdout", "wb") as out:
            self.proc = subprocess.Popen([meshd_bin(), "--config", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=cwd or self.tmp)
        _LIVE.add(self)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for line in self.current_log().splitlines():
                m = READY_RE.match(line)
                if m:
                    self.listen = m.group(1).split(",")
                    host, port = self.listen[0].rsplit(":", 1)
                    assert host == "127.0.0.1", line
                    self.port = int(port)
                    assert self.port > 0, line
                    assert m.group(2) == self.socket, (
                        f"server.ready names control={m.group(2)}, config has {self.socket}")
                    return self
            if self.proc.poll() is not None:
                self.print_log("meshd exited before server.ready")
                raise AssertionError(f"meshd exited with {self.proc.returncode} before "
                                     f"`event=server.ready` (log printed above)")
            if time.monotonic() > deadline:
                self._hard_kill()
                self.print_log("meshd not ready")
                raise AssertionError(f"no `event=server.ready` line within {READY_TIMEOUT_S}s")
            time.sleep(0.01)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        assert self.running(), "meshd is not running"
        self._exit_expected = True
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout=STOP_TIMEOUT_S):
        """Wait for the process to exit while the event loop keeps serving clients."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self._hard_kill()
                raise AssertionError(f"meshd did not exit within {timeout}s (killed)")
            await asyncio.sleep(0.01)
        _LIVE.discard(self)
        return self.proc.returncode

    def check_log_clean(self):
        text = self.current_log()
        for marker in SANITIZER_MARKERS:
            assert marker not in text, f"{marker!r} in meshd stderr:\n{text[-6000:]}"

    async def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM; meshd must exit 0 within `timeout` with no sanitizer report."""
        self.signal(signal.SIGTERM)
        rc = await self.wait_exit(timeout)
        assert rc == 0, f"meshd exited with {rc} after SIGTERM, expected 0"
        self.check_log_clean()

    def stop_sync(self, timeout=STOP_TIMEOUT_S):
        asyncio.run(self.stop(timeout))

    def kill9(self):
        """SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        _LIVE.discard(self)
        self.check_log_clean()

    async def restart(self):
        """Clean stop, then start on the same config and data dir (the port changes)."""
        await self.stop()
        self.start()

    def _hard_kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        _LIVE.discard(self)

    async def _abort(self):
        """After a failure: try SIGTERM briefly, then SIGKILL; never raises."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 3
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self._hard_kill()

    # -- logs -----------------------------------------------------------------------------
    def current_log(self):
        if not self.runs:
            return ""
        with open(self.runs[-1], "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_text(self):
        parts = []
        for p in self.runs:
            with open(p, "rb") as f:
                parts.append(f.read().decode("utf-8", "replace"))
        return "".join(parts)

    def print_log(self, why="test failed"):
        print(f"===== meshd stderr ({why}; {self.tmp}) =====", file=sys.stdout)
        for i, p in enumerate(self.runs):
            with open(p, "rb") as f:
                data = f.read().decode("utf-8", "replace")
            if len(data) > 40000:
                data = "[...]\n" + data[-40000:]
            print(f"--- run {i} ---\n{data}", file=sys.stdout)
        if self.proc is not None and self.proc.poll() is not None:
            print(f"meshd exit status: {self.proc.returncode}"
                  f"{'' if self._exit_expected else ' (not stopped by the test)'}",
                  file=sys.stdout)
        print("===== end of meshd stderr =====", file=sys.stdout)

    async def wait_log(self, pattern, timeout=5.0):
        """Wait for a regex to match a line of the current run's stderr; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.current_log().splitlines():
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no stderr line matching {pattern!r} within {timeout}s")
            await asyncio.sleep(0.02)

    # -- context manager ------------------------------------------------------------------
    def _enter(self):
        """Start (unless start=False); on failure leave nothing behind."""
        if self._want_start:
            try:
                self.start()
            except BaseException:
                self._hard_kill()
                self._cleanup()
                raise
        return self

    async def __aenter__(self):
        return self._enter()

    async def __aexit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._check_not_died()
                if self.running():
                    try:
                        await self.stop()
                    except BaseException:
                        self.print_log("stop failed")
                        raise
            else:
                died = self.proc is not None and not self.running() and not self._exit_expected
                await self._abort()
                self.print_log(f"test failed: {exc_type.__name__}"
                               + ("; meshd had exited by itself" if died else ""))
        finally:
            self._hard_kill()
            for c in self.clients:
                await c.abort()
            self._cleanup()
        return False

    def __enter__(self):
        return self._enter()

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._check_not_died()
                if self.running():
                    try:
                        self.stop_sync()
                    except BaseException:
                        self.print_log("stop failed")
                        raise
            else:
                self._hard_kill()
                self.print_log(f"test failed: {exc_type.__name__}")
        finally:
            self._hard_kill()
            self._cleanup()
        return False

    def _check_not_died(self):
        """meshd must not have exited on its own (crash, abort) during the test."""
        if self.proc is not None and not self.running() and not self._exit_expected:
            _LIVE.discard(self)
            self.print_log("meshd died")
            raise AssertionError(f"meshd exited by itself with {self.proc.returncode} "
                                 f"during the test (log printed above)")

    def _cleanup(self):
        if not os.environ.get("MESHD_E2E_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- meshctl --------------------------------------------------------------------------
    def ctl_raw(self, *args, json=True, socket=None):
        """Run meshctl; returns (rc, stdout, stderr)."""
        cmd = [meshctl_bin(), "--socket", socket or self.socket]
        if json:
            cmd.append("--json")
        cmd += list(args)
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=CTL_TIMEOUT_S)
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        for marker in SANITIZER_MARKERS:
            assert marker not in err, f"{marker!r} in meshctl stderr:\n{err}"
        return p.returncode, out, err

    def ctl(self, *args, json=True):
        """Run meshctl, assert success; returns the one JSON document (or stdout text)."""
        rc, out, err = self.ctl_raw(*args, json=json)
        assert rc == 0, f"meshctl {' '.join(args)} exited {rc}\nstdout: {out}\nstderr: {err}"
        if not json:
            return out
        return parse_one_json(out, f"meshctl --json {' '.join(args)}")

    def ctl_fail(self, *args):
        """Run meshctl --json expecting failure; returns the error object
        {"code","message"} after checking the contract's failure shape."""
        rc, out, err = self.ctl_raw(*args, json=True)
        assert rc != 0, f"meshctl {' '.join(args)} succeeded, expected failure: {out}"
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1, f"expected one stderr line, got {err!r}"
        doc = parse_one_json(out, f"failed meshctl --json {' '.join(args)}")
        assert isinstance(doc, dict) and set(doc) == {"error"}, doc
        e = doc["error"]
        assert isinstance(e.get("code"), str) and e["code"], doc
        assert isinstance(e.get("message"), str) and e["message"], doc
        return e

    def control(self, cmd, **fields):
        """One request on the control socket (design.md "Control socket protocol"), without
        meshctl (fast under sanitizers); asserts ok and returns the result."""
        req = jsonlib.dumps({"cmd": cmd, **fields}) + "\n"
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
            s.settimeout(CTL_TIMEOUT_S)
            s.connect(self.socket)
            s.sendall(req.encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        assert buf.endswith(b"\n") and buf.count(b"\n") == 1, f"control reply {buf!r}"
        r = jsonlib.loads(buf)
        assert r.get("ok") is True and isinstance(r.get("result"), dict), (
            f"control {req.strip()} -> {r}")
        return r["result"]

    def add_user(self, name, agent=False, meshctl=False):
        """Add a principal; returns the token. Uses the control socket directly unless
        meshctl=True (meshctl itself is covered by test_admin)."""
        if meshctl:
            r = self.ctl(*(["user", "add", name] + (["--agent"] if agent else [])))
        else:
            r = self.control("user.add", name=name, kind="agent" if agent else "user")
        assert r.get("id") == name.lower(), r
        assert r.get("kind") == ("agent" if agent else "user"), r
        assert isinstance(r.get("token"), str) and TOKEN_RE.match(r["token"]), r
        return r["token"]

    # -- clients --------------------------------------------------------------------------
    async def connect(self, token=None, **kw):
        c = await connect(self.port, token, **kw)
        self.clients.append(c)
        return c

    async def login(self, token, **kw):
        c = await login(self.port, token, **kw)
        self.clients.append(c)
        return c


def parse_one_json(text, what):
    try:
        doc = jsonlib.loads(text)
    except ValueError as e:
        raise AssertionError(f"{what}: stdout is not exactly one JSON document ({e}): {text!r}")
    return doc


# ---- WebSocket client -------------------------------------------------------------------

_MISSING = object()


class Client:
    def __init__(self, ws, label):
        self.ws = ws
        self.label = label
        self.welcome = None
        self.synced = None
        self.replayed = []  # msgs between welcome and synced
        self.last_raw = None

    @property
    def close_code(self):
        return self.ws.close_code

    async def send_frame(self, frame):
        """dict/list -> JSON text frame; str -> text frame as is; bytes -> binary frame."""
        if isinstance(frame, (dict, list)):
            frame = jsonlib.dumps(frame)
        await asyncio.wait_for(self.ws.send(frame), 5)

    async def hello(self, token=None, device=None, resume=None, **extra):
        f = {"type": "hello"}
        if token is not None:
            f["token"] = token
        if device is not None:
            f["device"] = device
        if resume is not None:
            f["resume"] = resume
        f.update(extra)
        await self.send_frame(f)

    async def send(self, to, body, ref=None, **extra):
        f = {"type": "send", "to": to, "body": body}
        if ref is not None:
            f["ref"] = ref
        f.update(extra)
        await self.send_frame(f)

    async def recv_raw(self, timeout=5):
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.label}: no frame within {timeout}s") from None
        except ConnectionClosed:
            raise AssertionError(
                f"{self.label}: connection closed (code {self.ws.close_code}, reason "
                f"{self.ws.close_reason!r}) while waiting for a frame") from None
        self.last_raw = data
        return data

    async def recv(self, timeout=5):
        data = await self.recv_raw(timeout)
        assert isinstance(data, str), f"{self.label}: binary frame from server: {data!r}"
        try:
            obj = jsonlib.loads(data)
        except ValueError:
            raise AssertionError(f"{self.label}: server frame is not JSON: {data!r}") from None
        assert isinstance(obj, dict) and isinstance(obj.get("type"), str), (
            f"{self.label}: server frame without string type: {data!r}")
        return obj

    async def expect(self, type_, timeout=5, **fields):
        """The next frame must have this type (and these field values)."""
        f = await self.recv(timeout)
        assert f["type"] == type_, f"{self.label}: expected a {type_!r} frame, got {f}"
        for k, v in fields.items():
            assert k in f and same_json(f[k], v), (
                f"{self.label}: {type_} frame field {k!r}: expected {v!r}, got {f}")
        return f

    async def expect_error(self, code, ref=_MISSING, timeout=5):
        """The next frame must be error{code}; with ref given, it must echo it."""
        f = await self.expect("error", timeout)
        assert f.get("code") == code, f"{self.label}: expected error code {code!r}, got {f}"
        assert isinstance(f.get("message"), str) and f["message"], (
            f"{self.label}: error without a message: {f}")
        if ref is not _MISSING:
            assert f.get("ref") == ref, f"{self.label}: error should echo ref {ref!r}: {f}"
        return f

    async def expect_welcome(self, timeout=5):
        self.welcome = await self.expect("welcome", timeout)
        return self.welcome

    async def recv_until_synced(self, timeout=5):
        """Collect the replay: msg frames until synced. Returns the msgs; gap frames (entries
        retention deleted) are kept in self.gaps, task events in self.replay_tasks, and every
        frame in self.replay_frames."""
        msgs = []
        self.gaps = []
        self.replay_tasks = []
        self.replay_frames = []
        deadline = time.monotonic() + timeout
        while True:
            f = await self.recv(max(0.05, deadline - time.monotonic()))
            if f["type"] == "synced":
                self.synced = f
                break
            assert f["type"] in ("msg", "gap", "task"), (
                f"{self.label}: only log entries (msg, task) and gap frames may precede "
                f"synced, got {f}")
            self.replay_frames.append(f)
            {"msg": msgs, "gap": self.gaps, "task": self.replay_tasks}[f["type"]].append(f)
        self.replayed = msgs
        return msgs

    async def assert_no_frame(self, timeout=0.3):
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            return
        except ConnectionClosed:
            raise AssertionError(f"{self.label}: connection closed (code {self.ws.close_code}) "
                                 f"where it should stay open") from None
        raise AssertionError(f"{self.label}: unexpected frame: {data!r}")

    async def wait_closed(self, timeout=5, allow_frames=False):
        """Wait until the server closes the connection; returns the close code. Frames
        arriving first fail the test unless allow_frames (then they are in .late_frames)."""
        self.late_frames = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: still open after {timeout}s")
            try:
                data = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.label}: still open after {timeout}s") from None
            except ConnectionClosed:
                break
            assert allow_frames, f"{self.label}: frame before the expected close: {data!r}"
            self.late_frames.append(data)
        try:
            await asyncio.wait_for(self.ws.wait_closed(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        return self.ws.close_code

    async def barrier(self, tag="barrier"):
        """Round trip through the server: frames sent before it have been processed."""
        await self.send_frame({"type": "x-e2e-barrier", "ref": tag})
        await self.expect_error("unknown_type", ref=tag)

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass

    async def abort(self):
        try:
            self.ws.transport.abort()
        except Exception:
            pass


async def open_ws(port, *, path="/v1/ws", subprotocols=("meshd.v1",), bearer=None,
                  headers=(), host="127.0.0.1"):
    extra = list(headers)
    if bearer is not None:
        extra.append(("Authorization", f"Bearer {bearer}"))
    return await asyncio.wait_for(
        websockets.connect(f"ws://{host}:{port}{path}",
                           subprotocols=list(subprotocols) if subprotocols else None,
                           extra_headers=extra, compression=None, max_size=64 * 1024 * 1024,
                           ping_interval=None, open_timeout=5, close_timeout=2), 10)


async def connect(port, token=None, device=None, resume=None, *, hello=True, bearer=None,
                  subprotocols=("meshd.v1",), path="/v1/ws", label=None, **hello_fields):
    """Open a WebSocket and (unless hello=False) send hello. Does not wait for welcome."""
    ws = await open_ws(port, path=path, subprotocols=subprotocols, bearer=bearer)
    c = Client(ws, label or f"client[{device or 'default'}]")
    if hello:
        await c.hello(token, device, resume, **hello_fields)
    return c


async def login(port, token, device=None, resume=None, *, label=None, **kw):
    """connect + welcome + replay up to synced (in c.welcome, c.replayed, c.synced)."""
    c = await connect(port, token, device, resume, label=label, **kw)
    await c.expect_welcome()
    await c.recv_until_synced()
    return c


# ---- helpers ----------------------------------------------------------------------------

def same_json(a, b):
    """Equal as JSON values, with types kept apart (true != 1, 1 != 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def now_ms():
    return int(time.time() * 1000)


def check_msg(m, *, seq, frm, to, body, t0=None, t1=None):
    """A msg frame with exactly these values; ts (if t0/t1 given) within [t0-2s, t1+2s]."""
    assert m["type"] == "msg", m
    assert m.get("seq") == seq and type(m.get("seq")) is int, f"expected seq {seq}: {m}"
    assert m.get("from") == frm, f"expected from {frm!r}: {m}"
    assert m.get("to") == to, f"expected to {to!r}: {m}"
    assert "body" in m and same_json(m["body"], body), f"expected body {body!r}: {m}"
    ts = m.get("ts")
    assert type(ts) is int, f"ts must be an integer (ms since epoch): {m}"
    if t0 is not None:
        assert t0 - 2000 <= ts <= (t1 or now_ms()) + 2000, f"ts {ts} not within [{t0},{t1}]"


def async_test(fn):
    """Run an async test function to completion under a time limit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        async def bounded():
            return await asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_S)
        return asyncio.run(bounded())
    return wrapper
