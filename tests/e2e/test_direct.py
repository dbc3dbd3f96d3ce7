# tests/e2e/test_direct: live direct messages (contract §3): bodies, ack, seq, from, self.

import asyncio
import json

from harness import Meshd, async_test, check_msg, now_ms, same_json


async def pair(m, a="alice", b="bob"):
    ta, tb = m.add_user(a), m.add_user(b)
    ca = await m.login(ta, label=a)
    cb = await m.login(tb, label=b)
    ca.token, cb.token = ta, tb
    return ca, cb


async def roundtrip(ca, cb, body, *, ref, seq_sender, seq_recipient, frm="alice", to="bob"):
    t0 = now_ms()
    await ca.send(to, body, ref=ref)
    ack = await ca.expect("ack")
    assert ack.get("ref") == ref and ack.get("seq") == seq_sender, (
        f"expected ack ref={ref} seq={seq_sender}: {ack}")
    assert not ack.get("dup", False), ack
    msg = await cb.expect("msg")
    check_msg(msg, seq=seq_recipient, frm=frm, to=to, body=body, t0=t0, t1=now_ms())
    return ack, msg


@async_test
async def test_object_body():
    async with Meshd() as m:
        ca, cb = await pair(m)
        body = {"text": "hi", "n": 3, "f": 1.5, "ok": True, "none": None,
                "list": [1, "two", [3], {"four": 4}], "nested": {"a": {"b": {"c": []}}},
                "enc": "box", "nonce": "AAAA", "ct": "Zm9vYmFy"}
        await roundtrip(ca, cb, body, ref="c-1", seq_sender=1, seq_recipient=1)
        # The sending device gets no echo (its ack stands for it); bob gets nothing more.
        await ca.assert_no_frame()
        await cb.assert_no_frame(0.05)


@async_test
async def test_scalar_and_empty_bodies():
    async with Meshd() as m:
        ca, cb = await pair(m)
        bodies = ["plain string", "", 42, -7, 0, 1.25, -0.5, True, False, [], {}, [[]],
                  "quote \" backslash \\ slash / tab \t newline \n cr \r"]
        for i, body in enumerate(bodies, start=1):
            await roundtrip(ca, cb, body, ref=f"s-{i}", seq_sender=i, seq_recipient=i)


@async_test
async def test_null_body():
    # body is "any JSON value" (contract §3): null included.
    async with Meshd() as m:
        ca, cb = await pair(m)
        await ca.send_frame('{"type":"send","to":"bob","ref":"n-1","body":null}')
        await ca.expect("ack", ref="n-1", seq=1)
        msg = await cb.expect("msg")
        assert "body" in msg and msg["body"] is None, msg


@async_test
async def test_unicode_body():
    async with Meshd() as m:
        ca, cb = await pair(m)
        # Raw UTF-8 (emoji, CJK, accents) mixed with \u escapes (BMP and a surrogate pair).
        raw = ('{"type":"send","to":"bob","ref":"u-1","body":'
               '{"raw":"héllo 😀 漢字 日本語 한국어 👩‍👩‍👧",'
               '"esc":"\\u00e9\\u6f22\\u5b57 \\ud83d\\ude00 \\u2603",'
               '"mixed":["ü","\\u00fc","\\"q\\"","\\\\","\\/"],'
               '"emoji key 🔑":"v"}}')
        expected = {"raw": "héllo 😀 漢字 日本語 한국어 👩‍👩‍👧",
                    "esc": "é漢字 😀 ☃",
                    "mixed": ["ü", "ü", '"q"', "\\", "/"],
                    "emoji key 🔑": "v"}
        assert same_json(json.loads(raw)["body"], expected)  # the test's own premise
        await ca.send_frame(raw)
        await ca.expect("ack", ref="u-1", seq=1)
        msg = await cb.expect("msg")
        check_msg(msg, seq=1, frm="alice", to="bob", body=expected)
        # A bare string body with the same characters.
        await ca.send_frame('{"type":"send","to":"bob","ref":"u-2","body":"\\ud83d\\ude00 😀 中"}')
        await ca.expect("ack", ref="u-2", seq=2)
        msg = await cb.expect("msg")
        check_msg(msg, seq=2, frm="alice", to="bob", body="😀 😀 中")


@async_test
async def test_nul_escape_in_body():
    # "\u0000" is a valid JSON string escape; the body must survive it (no C-string cut).
    async with Meshd() as m:
        ca, cb = await pair(m)
        await ca.send_frame('{"type":"send","to":"bob","ref":"z","body":"a\\u0000b"}')
        await ca.expect("ack", ref="z", seq=1)
        msg = await cb.expect("msg")
        check_msg(msg, seq=1, frm="alice", to="bob", body="a\x00b")


@async_test
async def test_number_fidelity():
    # Opaque body: numbers must not go through a double (2^53+1, uint64 max).
    async with Meshd() as m:
        ca, cb = await pair(m)
        text = "[9007199254740993,18446744073709551615,-9223372036854775808,0.1,1.5e-7,-0]"
        await ca.send_frame('{"type":"send","to":"bob","ref":"num","body":' + text + "}")
        await ca.expect("ack", ref="num", seq=1)
        msg = await cb.expect("msg")
        check_msg(msg, seq=1, frm="alice", to="bob", body=json.loads(text))


@async_test
async def test_body_relayed_verbatim():
    # architecture.md (session): "the body is relayed as the exact JSON text received".
    async with Meshd() as m:
        ca, cb = await pair(m)
        body_text = '{ "b" : [1, 2.50, "\\u00e9"] ,"a":{}}'
        await ca.send_frame('{"type":"send","to":"bob","ref":"v","body":' + body_text + "}")
        await ca.expect("ack", ref="v", seq=1)
        await cb.expect("msg")
        assert body_text in cb.last_raw, f"body text not relayed verbatim: {cb.last_raw!r}"


@async_test
async def test_forged_from_ignored():
    async with Meshd() as m:
        ca, cb = await pair(m)
        m.add_user("mallory")
        await ca.send("bob", "trust me", ref="f-1", **{"from": "mallory"})
        await ca.expect("ack", ref="f-1", seq=1)
        msg = await cb.expect("msg")
        check_msg(msg, seq=1, frm="alice", to="bob", body="trust me")
        # Forged seq/ts are ignored too.
        await ca.send("bob", "again", ref="f-2", seq=999, ts=5)
        await ca.expect("ack", ref="f-2", seq=2)
        msg = await cb.expect("msg")
        check_msg(msg, seq=2, frm="alice", to="bob", body="again", t0=now_ms() - 10000)


@async_test
async def test_ack_seq_is_senders_log_seq():
    async with Meshd() as m:
        ca, cb = await pair(m)
        tc = m.add_user("carol")
        cc = await m.login(tc, label="carol")
        # bob -> alice twice: alice's log 1,2; bob's log 1,2.
        await roundtrip(cb, ca, "b1", ref="b1", seq_sender=1, seq_recipient=1, frm="bob",
                        to="alice")
        await roundtrip(cb, ca, "b2", ref="b2", seq_sender=2, seq_recipient=2, frm="bob",
                        to="alice")
        # alice -> bob: alice's log 3 (her ack), bob's log 3 (his msg).
        await roundtrip(ca, cb, "a1", ref="a1", seq_sender=3, seq_recipient=3)
        # carol -> bob: carol's log 1, bob's log 4.
        await roundtrip(cc, cb, "c1", ref="c1", seq_sender=1, seq_recipient=4, frm="carol")
        users = {u["id"]: u for u in m.ctl("user", "list")["users"]}
        assert users["alice"]["seq"] == 3, users
        assert users["bob"]["seq"] == 4, users
        assert users["carol"]["seq"] == 1, users
        # A fresh device of alice sees her log: 1,2 from bob, 3 her own send.
        a2 = await m.login(ca.token, device="fresh")
        assert [(x["seq"], x["from"], x["to"], x["body"]) for x in a2.replayed] == [
            (1, "bob", "alice", "b1"), (2, "bob", "alice", "b2"), (3, "alice", "bob", "a1")
        ], a2.replayed


@async_test
async def test_seq_strictly_increasing_per_recipient():
    async with Meshd() as m:
        ca, cb = await pair(m)
        cc = await m.login(m.add_user("carol"), label="carol")
        n = 15
        # Pipelined, interleaved sends from two senders.
        for i in range(n):
            await ca.send("bob", {"from": "a", "i": i}, ref=f"a{i}")
            await cc.send("bob", {"from": "c", "i": i}, ref=f"c{i}")
        for who, c in (("a", ca), ("c", cc)):
            acks = [await c.expect("ack") for _ in range(n)]
            assert [a["ref"] for a in acks] == [f"{who}{i}" for i in range(n)], acks
            assert [a["seq"] for a in acks] == list(range(1, n + 1)), acks
        msgs = [await cb.expect("msg") for _ in range(2 * n)]
        # bob's log holds only these: seqs 1..2n, strictly increasing, no gap, no reuse.
        assert [x["seq"] for x in msgs] == list(range(1, 2 * n + 1)), [x["seq"] for x in msgs]
        for who, frm in (("a", "alice"), ("c", "carol")):
            mine = [x for x in msgs if x["from"] == frm]
            assert [x["body"] for x in mine] == [{"from": who, "i": i} for i in range(n)], mine
        await cb.assert_no_frame()


@async_test
async def test_send_to_self():
    async with Meshd() as m:
        tok = m.add_user("alice")
        a1 = await m.login(tok, device="one", label="alice/one")
        a2 = await m.login(tok, device="two", label="alice/two")
        await a1.send("alice", {"note": "to self"}, ref="me")
        ack = await a1.expect("ack", ref="me", seq=1)
        assert not ack.get("dup", False), ack
        msg = await a2.expect("msg")
        check_msg(msg, seq=1, frm="alice", to="alice", body={"note": "to self"})
        await a1.assert_no_frame()  # the sending device: ack only
        await a2.assert_no_frame(0.05)  # one log entry, delivered once
        a3 = await m.login(tok, device="three")
        assert a3.welcome["seq"] == 1, a3.welcome
        assert len(a3.replayed) == 1, a3.replayed
        check_msg(a3.replayed[0], seq=1, frm="alice", to="alice", body={"note": "to self"})


@async_test
async def test_msg_carries_sender_id():
    # design.md: msg carries "id" when the sender gave one.
    async with Meshd() as m:
        ca, cb = await pair(m)
        await ca.send("bob", "with id", ref="i", id="msg-0001")
        await ca.expect("ack", ref="i", seq=1)
        msg = await cb.expect("msg")
        check_msg(msg, seq=1, frm="alice", to="bob", body="with id")
        assert msg.get("id") == "msg-0001", msg
        await ca.send("bob", "no id", ref="j")
        await ca.expect("ack", ref="j", seq=2)
        msg = await cb.expect("msg")
        assert "id" not in msg, msg


@async_test
async def test_send_without_ref():
    async with Meshd() as m:
        ca, cb = await pair(m)
        await ca.send("bob", "no ref")
        ack = await ca.expect("ack", seq=1)
        assert "ref" not in ack or ack["ref"] is None, ack
        check_msg(await cb.expect("msg"), seq=1, frm="alice", to="bob", body="no ref")


@async_test
async def test_frames_to_a_device_leave_in_seq_order():
    # contract "Order and guarantees": frames to one device leave in seq order (an ack for
    # seq 58 never precedes the msg with seq 57). Two principals send to each other at once.
    async with Meshd() as m:
        ca, cb = await pair(m)
        n = 100

        async def blast(c, to, tag):
            for i in range(n):
                await c.send(to, {"tag": tag, "i": i}, ref=f"{tag}{i}")

        async def collect(c):
            seqs, acks, msgs = [], 0, 0
            while acks < n or msgs < n:
                f = await c.recv(timeout=10)
                assert f["type"] in ("ack", "msg"), f
                seqs.append(f["seq"])
                if f["type"] == "ack":
                    acks += 1
                else:
                    msgs += 1
            return seqs

        ra, rb, _, _ = await asyncio.gather(collect(ca), collect(cb), blast(ca, "bob", "a"),
                                            blast(cb, "alice", "b"))
        for who, seqs in (("alice", ra), ("bob", rb)):
            assert seqs == sorted(seqs), f"{who}: frames out of seq order: {seqs}"
            assert seqs == list(range(1, 2 * n + 1)), f"{who}: seqs {seqs}"


@async_test
async def test_many_clients_all_to_all():
    async with Meshd() as m:
        names = [f"u{i}" for i in range(8)]
        clients = {}
        for nm in names:
            clients[nm] = await m.login(m.add_user(nm), label=nm)
        per_pair = 5
        total = (len(names) - 1) * per_pair * 2  # each log: own sends + received

        async def run(nm):
            c = clients[nm]
            for k in range(per_pair):
                for other in names:
                    if other != nm:
                        await c.send(other, {"from": nm, "k": k}, ref=f"{other}-{k}")
            frames = []
            while len(frames) < total:
                frames.append(await c.recv(timeout=15))
            return frames

        results = await asyncio.gather(*(run(nm) for nm in names))
        for nm, frames in zip(names, results):
            seqs = [f["seq"] for f in frames]
            assert seqs == list(range(1, total + 1)), f"{nm}: seqs {seqs}"
            got = {}
            for f in frames:
                if f["type"] == "msg":
                    assert f["to"] == nm, f
                    got.setdefault(f["from"], []).append(f["body"]["k"])
                else:
                    assert f["type"] == "ack", f
            assert got == {o: list(range(per_pair)) for o in names if o != nm}, (nm, got)
            await clients[nm].assert_no_frame(0.05)
