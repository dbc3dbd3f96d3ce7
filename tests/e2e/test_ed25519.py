# tests/e2e/test_ed25519: ed25519 challenge authentication (contract §2, meshd-protocol.7
# "Ed25519 challenge") through the auth_ed25519 module, and meshctl key add/list/revoke
# (contract §4, meshctl.8), with PyNaCl as the client's crypto:
#
#   C: hello{id, pubkey}   S: challenge{nonce}   C: auth{sig = sign("meshd-auth-v1" || nonce)}
#
# Every refusal must be error{code:"unauthorized"} followed by close code 1008: bad base64,
# wrong key or signature length, an unregistered key, a replayed or foreign nonce, a
# signature over anything but the prefixed nonce, auth before a challenge, and no answer in
# time. Revoking a key closes (4002) exactly the sessions it opened.

import asyncio
import base64
import re
import subprocess
import time

from nacl.signing import SigningKey

from harness import Meshd, async_test, meshd_bin, now_ms

LOAD = ("auth_token", "auth_ed25519", "route_direct")
PREFIX = b"meshd-auth-v1"
B64_RE = re.compile(r"^[A-Za-z0-9+/]{43}=$")


class Key:
    """One device's ed25519 key pair."""

    def __init__(self):
        self.sk = SigningKey.generate()
        self.raw = bytes(self.sk.verify_key)
        self.b64 = base64.b64encode(self.raw).decode()

    def sign(self, data):
        return base64.b64encode(self.sk.sign(data).signature).decode()

    def answer(self, nonce):
        return self.sign(PREFIX + nonce)


def b64(data):
    return base64.b64encode(data).decode()


async def challenged(m, id_, key_b64, device=None, label=None):
    """Open a connection, send hello{id, pubkey}, and return (client, nonce bytes)."""
    c = await m.connect(None, device=device, label=label or f"{id_}[{device or 'default'}]",
                        id=id_, pubkey=key_b64)
    f = await c.expect("challenge")
    assert set(f) == {"type", "nonce"}, f"challenge frame keys: {f}"
    assert isinstance(f["nonce"], str) and B64_RE.match(f["nonce"]), (
        f"nonce must be standard base64 of 32 bytes: {f}")
    nonce = base64.b64decode(f["nonce"], validate=True)
    assert len(nonce) == 32, f
    return c, nonce


async def ed_login(m, id_, key, device=None, **auth_fields):
    """The whole challenge flow; returns the client after welcome and synced."""
    c, nonce = await challenged(m, id_, key.b64, device)
    await c.send_frame({"type": "auth", "sig": key.answer(nonce), **auth_fields})
    w = await c.expect_welcome()
    assert w["id"] == id_ and w["device"] == (device or "default"), w
    await c.recv_until_synced()
    c.nonce = nonce
    return c


async def refused(c, why, timeout=5):
    """The next frame is error unauthorized, then the server closes with 1008."""
    e = await c.expect_error("unauthorized", timeout=timeout)
    code = await c.wait_closed()
    assert code == 1008, f"{why}: close code {code}, expected 1008"
    return e


def add_key(m, name, key):
    r = m.ctl("key", "add", name, key.b64)
    assert set(r) == {"id", "key", "added_ms"}, r
    assert r["id"] == name.lower() and r["key"] == key.b64, r
    return r


def keys(m, *name):
    r = m.ctl("key", "list", *name)
    assert set(r) == {"keys"} and isinstance(r["keys"], list), r
    for k in r["keys"]:
        assert set(k) == {"id", "key", "added_ms", "sessions"}, k
        assert B64_RE.match(k["key"]) and type(k["added_ms"]) is int, k
    return r["keys"]


def sessions(m):
    return m.ctl("sessions")["sessions"]


# ---- success ------------------------------------------------------------------------------

@async_test
async def test_login_welcome_and_messages():
    async with Meshd(load=LOAD) as m:
        alice_token = m.add_user("alice")
        m.add_user("bot", agent=True)
        key = Key()
        t0 = now_ms()
        add_key(m, "bot", key)
        bot = await ed_login(m, "bot", key)
        assert bot.welcome["kind"] == "agent" and bot.welcome["seq"] == 0, bot.welcome
        alice = await m.login(alice_token)  # a token hello still works beside it

        await alice.send("bot", {"q": 1}, ref="a1")
        await alice.expect("ack", ref="a1", seq=1)
        msg = await bot.expect("msg", seq=1, to="bot", body={"q": 1})
        assert msg["from"] == "alice", msg
        await bot.send("alice", "answer", ref="b1")
        await bot.expect("ack", ref="b1", seq=2)
        await alice.expect("msg", seq=2, body="answer")

        # meshctl sessions names how each session logged in.
        by_id = {s["id"]: s for s in sessions(m)}
        assert by_id["bot"]["auth"] == "ed25519", by_id
        assert by_id["bot"]["credential"] == "ed25519:" + key.b64, by_id
        assert by_id["alice"]["auth"] == "token" and by_id["alice"]["credential"] == "token"
        text = m.ctl("sessions", json=False)
        header, *rows = text.splitlines()
        assert "AUTH" in header.split(), text
        col = header.split().index("AUTH")
        assert {r.split()[0]: r.split()[col] for r in rows} == {
            "alice": "token", "bot": "ed25519"}, text
        listed = keys(m)
        assert len(listed) == 1 and listed[0]["sessions"] == 1, listed
        assert t0 - 2000 <= listed[0]["added_ms"] <= now_ms() + 2000, listed


@async_test
async def test_nonces_are_fresh_and_an_echoed_nonce_is_accepted():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        seen = set()
        for i in range(5):
            c, nonce = await challenged(m, "alice", key.b64, device=f"d{i}")
            assert nonce not in seen, "a nonce was issued twice"
            seen.add(nonce)
            await c.close()
        # auth may name the nonce it answers (the one issued): accepted.
        c, nonce = await challenged(m, "alice", key.b64, device="echo")
        await c.send_frame({"type": "auth", "nonce": b64(nonce), "sig": key.answer(nonce)})
        await c.expect_welcome()
        # The pubkey may come without its '=' padding; the session's key is the same one.
        c2, nonce2 = await challenged(m, "alice", key.b64.rstrip("="), device="nopad")
        await c2.send_frame({"type": "auth", "sig": key.answer(nonce2)})
        await c2.expect_welcome()
        creds = {s["device"]: s["credential"] for s in sessions(m)}
        assert creds == {"echo": "ed25519:" + key.b64, "nopad": "ed25519:" + key.b64}, creds


@async_test
async def test_two_keys_for_one_principal_on_two_devices():
    async with Meshd(load=LOAD) as m:
        bob_token = m.add_user("bob")
        m.add_user("alice")
        laptop, phone = Key(), Key()
        add_key(m, "alice", laptop)
        add_key(m, "alice", phone)
        cl = await ed_login(m, "alice", laptop, device="laptop")
        cp = await ed_login(m, "alice", phone, device="phone")
        bob = await m.login(bob_token)
        await bob.send("alice", "to both", ref="x")
        await bob.expect("ack", ref="x", seq=1)
        await cl.expect("msg", seq=1, body="to both")
        await cp.expect("msg", seq=1, body="to both")
        listed = keys(m, "alice")
        assert sorted(k["key"] for k in listed) == sorted([laptop.b64, phone.b64]), listed
        assert [k["sessions"] for k in listed] == [1, 1], listed
        assert [k["key"] for k in listed] == [laptop.b64, phone.b64], "ordered by time added"
        # Either key works on either device name: keys are per principal.
        await cl.close()
        c = await ed_login(m, "alice", phone, device="laptop")
        assert c.welcome["cursor"] == 0, c.welcome


@async_test
async def test_key_list_text_and_json():
    async with Meshd(load=LOAD) as m:
        for n in ("carol", "alice", "bob"):
            m.add_user(n)
        assert keys(m) == []
        assert m.ctl("key", "list", json=False) == (
            "no keys; add one with: meshctl key add NAME PUBKEY\n")
        assert m.ctl("key", "list", "bob", json=False) == (
            "bob has no keys; add one with: meshctl key add NAME PUBKEY\n")
        ka, kb, kc = Key(), Key(), Key()
        out = m.ctl("key", "add", "carol", kc.b64, json=False)
        assert out == f"added key {kc.b64} for carol\n", out
        add_key(m, "alice", ka)
        add_key(m, "Bob", kb)  # names are case-folded
        listed = keys(m)
        assert [(k["id"], k["key"]) for k in listed] == [
            ("alice", ka.b64), ("bob", kb.b64), ("carol", kc.b64)], listed
        assert [(k["id"], k["key"]) for k in keys(m, "BOB")] == [("bob", kb.b64)]
        await ed_login(m, "bob", kb)
        text = m.ctl("key", "list", json=False)
        lines = text.splitlines()
        assert lines[0].split() == ["NAME", "KEY", "ADDED", "(UTC)", "SESSIONS"], text
        rows = [l.split() for l in lines[1:]]
        assert [(r[0], r[1], r[-1]) for r in rows] == [
            ("alice", ka.b64, "0"), ("bob", kb.b64, "1"), ("carol", kc.b64, "0")], text
        assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", r[2]) for r in rows), text
        one = m.ctl("key", "list", "alice", json=False).splitlines()
        assert len(one) == 2 and one[1].split()[:2] == ["alice", ka.b64], one


# ---- refusals: every one is error unauthorized, then close 1008 -----------------------------

@async_test
async def test_bad_pubkey_refused_before_any_challenge():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        url_safe = base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()  # has - and _
        cases = {
            "not base64": ("alice", "this is not base64!"),
            "padding inside": ("alice", "AAAA====AAAA"),
            "url-safe alphabet": ("alice", url_safe),
            "whitespace": ("alice", key.b64[:20] + " " + key.b64[20:]),
            "16 bytes": ("alice", b64(bytes(16))),
            "31 bytes": ("alice", b64(key.raw[:31])),
            "33 bytes": ("alice", b64(key.raw + b"\0")),
            "64 bytes (a secret key)": ("alice", b64(bytes(key.sk._signing_key))),
            "no id": (None, key.b64),
        }
        for why, (id_, pub) in cases.items():
            fields = {"pubkey": pub} if id_ is None else {"id": id_, "pubkey": pub}
            c = await m.connect(None, label=why, **fields)
            e = await refused(c, why)
            if "bytes" in why:
                assert "32 bytes" in e["message"], (why, e)
            elif why == "no id":
                assert '"id"' in e["message"], e
            else:
                assert "base64" in e["message"], (why, e)
        assert sessions(m) == []


@async_test
async def test_bad_signature_encoding_refused():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        cases = {
            "63 bytes": lambda n: b64(base64.b64decode(key.answer(n))[:63]),
            "65 bytes": lambda n: b64(base64.b64decode(key.answer(n)) + b"\0"),
            "not base64": lambda n: "%%" + key.answer(n)[2:],
            "empty": lambda n: "",
            "missing": None,
        }
        for why, make in cases.items():
            c, nonce = await challenged(m, "alice", key.b64, label=why)
            frame = {"type": "auth"}
            if make is not None:
                frame["sig"] = make(nonce)
            await c.send_frame(frame)
            e = await refused(c, why)
            if "bytes" in why:
                assert "64 bytes" in e["message"], (why, e)


@async_test
async def test_unregistered_key_refused_after_a_challenge():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        m.add_user("bob")
        alice_key, bob_key, stranger = Key(), Key(), Key()
        add_key(m, "alice", alice_key)
        add_key(m, "bob", bob_key)
        # A challenge comes whether or not id and key exist: nothing leaks before the proof.
        for why, id_, key in (("key of nobody", "alice", stranger),
                              ("bob's key as alice", "alice", bob_key),
                              ("no such principal", "nobody", stranger),
                              ("no such principal, known key", "nobody", alice_key)):
            c, nonce = await challenged(m, id_, key.b64, label=why)
            await c.send_frame({"type": "auth", "sig": key.answer(nonce)})
            await refused(c, why)
        assert sessions(m) == []


@async_test
async def test_replayed_nonce_refused():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        first = await ed_login(m, "alice", key, device="one")
        old_sig = key.answer(first.nonce)
        await first.close()
        # A later connection answers with the signature made for the first one's nonce.
        c, nonce = await challenged(m, "alice", key.b64, device="two")
        assert nonce != first.nonce
        await c.send_frame({"type": "auth", "sig": old_sig})
        await refused(c, "replayed signature")
        # Naming the old nonce does not help either.
        c, nonce = await challenged(m, "alice", key.b64, device="three")
        await c.send_frame({"type": "auth", "nonce": b64(first.nonce), "sig": old_sig})
        await refused(c, "replayed nonce and signature")


@async_test
async def test_foreign_nonce_refused():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        a, nonce_a = await challenged(m, "alice", key.b64, device="a")
        b, nonce_b = await challenged(m, "alice", key.b64, device="b")
        assert nonce_a != nonce_b
        # b answers a's challenge: refused, with or without naming a's nonce.
        await b.send_frame({"type": "auth", "sig": key.answer(nonce_a)})
        await refused(b, "signature over another connection's nonce")
        c, nonce_c = await challenged(m, "alice", key.b64, device="c")
        await c.send_frame({"type": "auth", "nonce": b64(nonce_a), "sig": key.answer(nonce_a)})
        e = await refused(c, "naming another connection's nonce")
        assert "nonce" in e["message"], e
        # Naming its own nonce with a signature over another one: refused as well.
        d, nonce_d = await challenged(m, "alice", key.b64, device="d")
        await d.send_frame({"type": "auth", "nonce": b64(nonce_d), "sig": key.answer(nonce_a)})
        await refused(d, "signature over a foreign nonce")
        # a's own challenge is still good.
        await a.send_frame({"type": "auth", "sig": key.answer(nonce_a)})
        w = await a.expect_welcome()
        assert w["device"] == "a", w


@async_test
async def test_signature_over_anything_else_refused():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        key, other = Key(), Key()
        add_key(m, "alice", key)
        add_key(m, "alice", other)
        cases = {
            "nonce without the prefix": lambda n: key.sign(n),
            "another prefix": lambda n: key.sign(b"meshd-auth-v2" + n),
            "prefix with a NUL": lambda n: key.sign(PREFIX + b"\0" + n),
            "nonce then prefix": lambda n: key.sign(n + PREFIX),
            "prefix only": lambda n: key.sign(PREFIX),
            "the base64 nonce text": lambda n: key.sign(PREFIX + b64(n).encode()),
            "another registered key": lambda n: other.answer(n),
        }
        for why, make in cases.items():
            c, nonce = await challenged(m, "alice", key.b64, label=why)
            await c.send_frame({"type": "auth", "sig": make(nonce)})
            await refused(c, why)
        assert sessions(m) == []


@async_test
async def test_auth_before_any_challenge_refused():
    async with Meshd(load=LOAD) as m:
        tok = m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        c = await m.connect(hello=False)
        await c.send_frame({"type": "auth", "sig": key.answer(bytes(32))})
        await refused(c, "auth before hello")
        # On a session that is already logged in, auth is a bad frame and changes nothing.
        t = await m.login(tok)
        await t.send_frame({"type": "auth", "sig": "x", "ref": "late"})
        await t.expect_error("bad_frame", ref="late")
        await t.assert_no_frame()


@async_test
async def test_challenge_timeout():
    async with Meshd(load=LOAD, extra="[auth_ed25519]\nchallenge_timeout_ms = 300\n") as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        t0 = time.monotonic()
        c, nonce = await challenged(m, "alice", key.b64)
        e = await refused(c, "no answer", timeout=5)
        elapsed = time.monotonic() - t0
        assert "300 ms" in e["message"], e
        # Checked by the session sweep: a quarter of hello_timeout_ms (3000) at most late.
        assert 0.25 <= elapsed <= 2.5, f"closed after {elapsed:.2f}s, challenge_timeout_ms=300"
        # An answer in time is not cut off by the timeout.
        c = await ed_login(m, "alice", key)
        await c.assert_no_frame(0.8)
        assert c.close_code is None


@async_test
async def test_default_challenge_timeout_leaves_time_to_answer():
    async with Meshd(load=LOAD, limits={"hello_timeout_ms": 400}) as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        c, nonce = await challenged(m, "alice", key.b64)
        # Past hello_timeout_ms: the module's challenge_timeout_ms (10 s) applies now.
        await asyncio.sleep(0.9)
        await c.send_frame({"type": "auth", "sig": key.answer(nonce)})
        await c.expect_welcome()


@async_test
async def test_new_hello_starts_over():
    async with Meshd(load=LOAD) as m:
        tok = m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        c, first = await challenged(m, "alice", key.b64)
        await c.hello(None, id="alice", pubkey=key.b64)
        f = await c.expect("challenge")
        second = base64.b64decode(f["nonce"])
        assert second != first
        await c.send_frame({"type": "auth", "sig": key.answer(first)})
        await refused(c, "answer to the replaced challenge")
        # A token hello in place of the answer logs in with the token, challenge forgotten.
        c, _ = await challenged(m, "alice", key.b64, device="t")
        await c.hello(tok, device="t")
        w = await c.expect_welcome()
        assert w["device"] == "t", w
        assert {s["device"]: s["auth"] for s in sessions(m)} == {"t": "token"}


@async_test
async def test_frames_while_challenged_have_no_effect():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        m.add_user("bob")
        key = Key()
        add_key(m, "alice", key)
        c, nonce = await challenged(m, "alice", key.b64)
        await c.send_frame({"type": "send", "to": "bob", "ref": "s", "body": 1})
        await c.expect_error("unauthorized", ref="s")
        await c.send_frame({"type": "auth", "sig": key.answer(nonce)})
        w = await c.expect_welcome()
        assert w["seq"] == 0, "the early send must not have been stored"


@async_test
async def test_refusals_count_as_failed_logins_for_ratelimit():
    # Every refusal, the unanswered challenge too, reaches the auth_failed hook: with the
    # ratelimit module, they use up the address's failed logins like bad tokens do.
    extra = ("[auth_ed25519]\nchallenge_timeout_ms = 200\n"
             "[ratelimit]\nauth_fail_rate = 0.1\nauth_fail_burst = 3\n")
    async with Meshd(load=LOAD + ("ratelimit",), extra=extra) as m:
        m.add_user("alice")
        key, stranger = Key(), Key()
        add_key(m, "alice", key)
        c, nonce = await challenged(m, "alice", key.b64, device="a")
        await c.send_frame({"type": "auth", "sig": key.sign(nonce)})  # no prefix
        await refused(c, "bad signature")
        c, nonce = await challenged(m, "alice", stranger.b64, device="b")
        await c.send_frame({"type": "auth", "sig": stranger.answer(nonce)})
        await refused(c, "unregistered key")
        c, nonce = await challenged(m, "alice", key.b64, device="c")
        await refused(c, "no answer")
        assert len(re.findall(r"event=session\.auth_failed ", m.current_log())) == 3
        # The right key is now refused at connect, before its hello is read.
        c = await m.connect(hello=False, label="blocked")
        e = await c.expect_error("rate_limited")
        assert "failed logins" in e["message"], e
        assert await c.wait_closed() == 1013


# ---- revoke, delete -----------------------------------------------------------------------

@async_test
async def test_revoke_closes_exactly_the_sessions_of_that_key():
    async with Meshd(load=LOAD) as m:
        tok = m.add_user("alice")
        bob_tok = m.add_user("bob")
        revoked, kept = Key(), Key()
        add_key(m, "alice", revoked)
        add_key(m, "alice", kept)
        r1 = await ed_login(m, "alice", revoked, device="r1")
        r2 = await ed_login(m, "alice", revoked, device="r2")
        k = await ed_login(m, "alice", kept, device="k")
        t = await m.login(tok, device="t")
        bob = await m.login(bob_tok)
        assert [x["sessions"] for x in keys(m, "alice")] == [2, 1]

        r = m.ctl("key", "revoke", "alice", revoked.b64)
        assert r == {"id": "alice", "key": revoked.b64, "closed_sessions": 2}, r
        assert await r1.wait_closed() == 4002
        assert await r2.wait_closed() == 4002
        for c in (k, t, bob):
            await c.barrier()
            assert c.close_code is None, c.label
        assert sorted(s["device"] for s in sessions(m) if s["id"] == "alice") == ["k", "t"]
        assert [x["key"] for x in keys(m, "alice")] == [kept.b64]
        # The revoked key opens nothing any more, on any connection.
        c, nonce = await challenged(m, "alice", revoked.b64, device="again")
        await c.send_frame({"type": "auth", "sig": revoked.answer(nonce)})
        await refused(c, "revoked key")
        # The others still work and still deliver.
        await bob.send("alice", "still here", ref="b")
        await bob.expect("ack", ref="b", seq=1)
        await k.expect("msg", seq=1, body="still here")
        await t.expect("msg", seq=1, body="still here")
        text = m.ctl("key", "revoke", "alice", kept.b64, json=False)
        assert text == f"revoked key {kept.b64} of alice; closed 1 session\n", text
        assert await k.wait_closed() == 4002
        await t.barrier()


@async_test
async def test_user_del_and_readd_drops_keys():
    async with Meshd(load=LOAD) as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        c = await ed_login(m, "alice", key)
        r = m.ctl("user", "del", "alice")
        assert r["closed_sessions"] == 1, r
        assert await c.wait_closed() == 4002
        assert keys(m) == []
        m.add_user("alice")
        assert keys(m, "alice") == [], "a re-added name starts with no keys"
        c, nonce = await challenged(m, "alice", key.b64)
        await c.send_frame({"type": "auth", "sig": key.answer(nonce)})
        await refused(c, "key of the deleted principal")
        # The key is free again, and works once registered for the new alice.
        add_key(m, "alice", key)
        c = await ed_login(m, "alice", key)
        assert c.welcome["seq"] == 0, c.welcome


# ---- meshctl key errors -------------------------------------------------------------------

def test_meshctl_key_errors():
    with Meshd(load=LOAD) as m:
        m.add_user("alice")
        m.add_user("bob")
        key = Key()
        add_key(m, "alice", key)
        cases = [
            (("key", "add", "alice", "not base64!"), "bad_key", "not standard base64"),
            (("key", "add", "alice", key.b64[:-2] + "-_"), "bad_key", "not standard base64"),
            (("key", "add", "alice", b64(key.raw[:16])), "bad_key", "decodes to 16 bytes"),
            (("key", "add", "alice", b64(key.raw + b"x")), "bad_key", "decodes to 33 bytes"),
            (("key", "add", "alice", ""), "bad_key", "PUBKEY is empty"),
            (("key", "revoke", "alice", "@@@@"), "bad_key", "not standard base64"),
            (("key", "add", "nobody", key.b64), "not_found", "nobody"),
            (("key", "add", "Not A Name", key.b64), "bad_name", "not a valid name"),
            (("key", "add", "alice", key.b64), "exists", "already registered for alice"),
            (("key", "add", "bob", key.b64), "conflict", "already registered for alice"),
            (("key", "revoke", "bob", key.b64), "not_found", "bob has no such key"),
            (("key", "list", "nobody"), "not_found", "nobody"),
        ]
        for args, code, words in cases:
            e = m.ctl_fail(*args)
            assert e["code"] == code, (args, e)
            assert words in e["message"], (args, e)
            if code == "bad_key":
                assert "44 characters of standard base64" in e["message"], e
            # Text mode: the same, as one line on stderr and nothing on stdout.
            rc, out, err = m.ctl_raw(*args, json=False)
            assert rc == 1 and out == "", (args, rc, out)
            assert err.count("\n") == 1 and err.startswith("meshctl: "), err
        assert [(k["id"], k["key"]) for k in keys(m)] == [("alice", key.b64)], "nothing changed"
        usage = [
            ("key",),
            ("key", "add"),
            ("key", "add", "alice"),
            ("key", "revoke", "alice"),
            ("key", "add", "alice", key.b64, "extra"),
            ("key", "list", "alice", "extra"),
            ("key", "rotate", "alice"),
        ]
        for args in usage:
            rc, out, err = m.ctl_raw(*args)
            assert rc == 2, (args, rc, out, err)
            assert '"code":"usage"' in out and err.startswith("meshctl: "), (args, out, err)
            assert err.count("\n") == 1, err


# ---- config -------------------------------------------------------------------------------

def test_config_errors_and_reload():
    with Meshd(load=LOAD, start=False) as m:
        # The key the module declares is checked like a core key, at start and by --check.
        for extra, column, words in (
                ("[auth_ed25519]\nchallenge_timeout_ms = 50\n", 24,
                 ["auth_ed25519.challenge_timeout_ms", "50", "100..60000"]),
                ("[auth_ed25519]\nchallenge_timeout_ms = \"10s\"\n", 24,
                 ["auth_ed25519.challenge_timeout_ms", "integer", '"10s"']),
                ("[auth_ed25519]\ntimeout = 1\n", None,
                 ["unknown key auth_ed25519.timeout", "challenge_timeout_ms"])):
            m.write_config(extra=extra)
            line = m.config_text().splitlines().index("[auth_ed25519]") + 2
            where = re.compile(re.escape(m.config_path) + f":{line}:" +
                               (f"{column}: " if column else r"\d+: "))
            for args in (["--config", m.config_path], ["--config", m.config_path, "--check"]):
                p = subprocess.run([meshd_bin(), *args], capture_output=True, timeout=20,
                                   stdin=subprocess.DEVNULL)
                out = p.stdout.decode() + p.stderr.decode()
                assert p.returncode == 1, (extra, args, p.returncode, out)
                found = [l for l in out.splitlines() if where.match(l)]
                assert len(found) == 1, (extra, args, where.pattern, out)
                assert all(w in found[0] for w in words), (extra, words, found[0])
                assert "event=server.ready" not in out
        m.write_config(extra="[auth_ed25519]\nchallenge_timeout_ms = 5000\n")
        m.start()
        # A bad reload changes nothing; a good one applies the new timeout.
        m.write_config(extra="[auth_ed25519]\nchallenge_timeout_ms = 0\n")
        e = m.ctl_fail("reload")
        assert e["code"] == "bad_config", e
        assert "auth_ed25519.challenge_timeout_ms" in e["message"], e
        assert "100..60000" in e["message"], e
        m.write_config(extra="[auth_ed25519]\nchallenge_timeout_ms = 250\n")
        r = m.ctl("reload")
        assert r["applied"] == ["auth_ed25519.challenge_timeout_ms"], r

        async def times_out():
            m.add_user("alice")
            key = Key()
            add_key(m, "alice", key)
            c, _ = await challenged(m, "alice", key.b64)
            e = await refused(c, "reloaded timeout")
            assert "250 ms" in e["message"], e
            await c.abort()
        asyncio.run(times_out())


@async_test
async def test_keys_not_logged():
    async with Meshd(load=LOAD, log_level="debug") as m:
        m.add_user("alice")
        key = Key()
        add_key(m, "alice", key)
        await ed_login(m, "alice", key)
        m.ctl("key", "list")
        m.ctl("key", "revoke", "alice", key.b64)
        await asyncio.sleep(0.1)
        log = m.log_text()
        assert key.b64 not in log and key.b64[:20] not in log, "a public key is in the log"
        assert "event=control.key_added id=alice" in log, log
        assert re.search(r"event=control\.key_revoked id=alice closed_sessions=1", log), log
        assert re.search(r"event=session\.open .*principal=alice .*auth=ed25519", log), log
