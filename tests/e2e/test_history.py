# tests/e2e/test_history: the `history` query (meshd-protocol.7 CONVERSATIONS, "history"):
# pages of the principal's own log, newest first by default, backwards with "before" and
# forwards with "after", optionally only one conversation ("with" a peer: direct messages
# either way; "with" a "#group": that group's messages), on a log of 10,000 entries; msg
# objects exactly as msg frames carry them; reads never move cursors; a scan that walks the
# whole log does not hold up other clients; bad input named by field.

import asyncio
import time

from harness import Meshd, async_test

LOAD = ("auth_token", "route_direct", "route_groups")
MSG_KEYS = {"type", "seq", "from", "to", "ts", "body"}


async def sends(c, to, bodies, *, ids=None):
    """Pipelines one send per body, then collects the acks; returns the acked seqs in order."""
    frames = []
    for i, body in enumerate(bodies):
        f = {"type": "send", "to": to, "ref": f"s{i}", "body": body}
        if ids is not None and ids[i] is not None:
            f["id"] = ids[i]
        frames.append(f)
    for f in frames:
        await c.send_frame(f)
    seqs = {}
    while len(seqs) < len(frames):
        f = await c.recv(10)
        if f["type"] != "ack":
            continue  # msgs of other conversations reach a logged-in sender too
        seqs[f["ref"]] = f["seq"]
    return [seqs[f"s{i}"] for i in range(len(frames))]


async def history(c, ref="h", **q):
    await c.send_frame({"type": "history", "ref": ref, **q})
    while True:
        f = await c.recv(20)
        if f["type"] in ("msg", "receipt", "typing"):
            continue
        assert f["type"] == "history", f"{c.label}: expected a history answer, got {f}"
        assert f.get("ref") == ref, f
        assert set(f) == {"type", "ref", "messages", "more"}, f
        assert isinstance(f["more"], bool), f
        seqs = [m["seq"] for m in f["messages"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (
            f"a page is in ascending seq order: {seqs[:20]}")
        return f


async def page_all(c, *, backwards, limit, **q):
    """Every entry, paging with before (backwards) or after; returns (entries, pages)."""
    out, pages = [], 0
    cursor = None
    while True:
        args = dict(q, limit=limit)
        if backwards and cursor is not None:
            args["before"] = cursor
        elif not backwards:
            args["after"] = cursor or 0
        f = await history(c, ref=f"p{pages}", **args)
        pages += 1
        msgs = f["messages"]
        assert len(msgs) <= limit, f"{len(msgs)} entries over limit {limit}"
        if backwards:
            out = msgs + out
            if msgs:
                cursor = msgs[0]["seq"]
        else:
            out = out + msgs
            if msgs:
                cursor = msgs[-1]["seq"]
        if not f["more"]:
            return out, pages
        assert len(msgs) == limit, f"more:true on a short page ({len(msgs)} of {limit})"
        assert pages < 1000, "paging does not end"


class BigLog:
    """alice, bob, carol in #team; bob's log of 10,000 entries, interleaved in 100 rounds of
    40 alice->bob, 40 carol->bob, 10 bob->alice, 10 alice->#team (ids on every 7th)."""

    ROUNDS = 100

    def __init__(self, m):
        self.m = m
        self.expected = []  # bob's log: (from, to, body, id)

    async def build(self):
        m = self.m
        self.tokens = {n: m.add_user(n) for n in ("alice", "bob", "carol", "dave")}
        m.ctl("group", "add", "#team", "alice", "bob", "carol")
        alice = await m.login(self.tokens["alice"], label="alice")
        bob = await m.login(self.tokens["bob"], device="writer", label="bob")
        carol = await m.login(self.tokens["carol"], label="carol")
        n = 0
        for r in range(self.ROUNDS):
            for c, frm, to, count in ((alice, "alice", "bob", 40), (carol, "carol", "bob", 40),
                                      (bob, "bob", "alice", 10), (alice, "alice", "#team", 10)):
                bodies, ids = [], []
                for _ in range(count):
                    n += 1
                    bodies.append({"n": n, "r": r})
                    ids.append(f"id-{n}" if n % 7 == 0 else None)
                await sends(c, to, bodies, ids=ids)
                for b, i in zip(bodies, ids):
                    self.expected.append((frm, to, b, i))
        for c in (alice, bob, carol):
            await c.close()
        assert len(self.expected) == 10000

    def entries(self, keep=lambda e: True):
        """(seq, entry) of bob's log that keep() accepts."""
        return [(i + 1, e) for i, e in enumerate(self.expected) if keep(e)]


def check_page_entries(got, want):
    """got: msg objects; want: [(seq, (from, to, body, id))] — equal, in order."""
    assert len(got) == len(want), f"{len(got)} entries, expected {len(want)}"
    for m, (seq, (frm, to, body, mid)) in zip(got, want):
        keys = MSG_KEYS | ({"id"} if mid else set())
        assert set(m) == keys, f"msg object keys {sorted(m)}, expected {sorted(keys)}: {m}"
        assert m["type"] == "msg", m
        assert m["seq"] == seq and m["from"] == frm and m["to"] == to, (m, seq, frm, to)
        assert m["body"] == body, (m, body)
        assert type(m["ts"]) is int, m
        if mid:
            assert m["id"] == mid, m


def test_paging_both_ways_whole_log_and_per_conversation():
    async def run():
        async with Meshd(load=LOAD) as m:
            log = BigLog(m)
            await log.build()
            bob = await m.login(log.tokens["bob"], device="reader", resume="head", label="bob")
            assert bob.welcome["seq"] == 10000, bob.welcome

            # Default: the newest page of 50.
            f = await history(bob)
            check_page_entries(f["messages"], log.entries()[-50:])
            assert f["more"] is True
            # The newest 7 before seq 100; the oldest after 9,990 (only 10 left).
            f = await history(bob, before=100, limit=7)
            check_page_entries(f["messages"], log.entries()[92:99])
            assert f["more"] is True
            f = await history(bob, after=9990, limit=100)
            check_page_entries(f["messages"], log.entries()[9990:])
            assert f["more"] is False
            # Past either end: empty pages.
            for q in ({"before": 1}, {"before": 0}, {"after": 10000}, {"after": 20000}):
                f = await history(bob, **q)
                assert f["messages"] == [] and f["more"] is False, (q, f)
            # before above the head is the same as no before.
            f = await history(bob, before=50000, limit=3)
            check_page_entries(f["messages"], log.entries()[-3:])

            # The whole log both ways, at the largest limit.
            got, pages = await page_all(bob, backwards=True, limit=500)
            check_page_entries(got, log.entries())
            assert pages == 20, pages
            got, pages = await page_all(bob, backwards=False, limit=500)
            check_page_entries(got, log.entries())

            # One peer: the direct messages between bob and alice, either way; not #team.
            with_alice = log.entries(lambda e: {e[0], e[1]} == {"alice", "bob"})
            assert len(with_alice) == 5000
            got, _ = await page_all(bob, backwards=True, limit=333, **{"with": "alice"})
            check_page_entries(got, with_alice)
            got, _ = await page_all(bob, backwards=False, limit=500, **{"with": "ALICE"})
            check_page_entries(got, with_alice)
            with_carol = log.entries(lambda e: e[0] == "carol")
            got, _ = await page_all(bob, backwards=False, limit=450, **{"with": "carol"})
            check_page_entries(got, with_carol)
            # A peer bob never talked to: nothing, after a scan of the whole log.
            f = await history(bob, **{"with": "dave"})
            assert f["messages"] == [] and f["more"] is False, f
            # A window in the middle of one conversation.
            mid = with_alice[2500][0]
            f = await history(bob, before=mid, limit=10, **{"with": "alice"})
            check_page_entries(f["messages"], with_alice[2490:2500])
            assert f["more"] is True

            # One group.
            team = log.entries(lambda e: e[1] == "#team")
            assert len(team) == 1000
            got, _ = await page_all(bob, backwards=True, limit=64, **{"with": "#team"})
            check_page_entries(got, team)
            f = await history(bob, after=0, limit=5, **{"with": "#TEAM"})
            check_page_entries(f["messages"], team[:5])
            # A group that does not exist (or no longer does) just has no messages.
            f = await history(bob, **{"with": "#nope"})
            assert f["messages"] == [] and f["more"] is False, f

            # alice's view of the same conversation carries alice's seqs.
            alice = await m.login(log.tokens["alice"], device="reader", resume="head")
            f = await history(alice, limit=500, **{"with": "bob"})
            assert len(f["messages"]) == 500 and f["more"] is True
            assert all({x["from"], x["to"]} == {"alice", "bob"} for x in f["messages"])
            assert f["messages"][-1]["seq"] <= alice.welcome["seq"]
    asyncio.run(asyncio.wait_for(run(), 240))


@async_test
async def test_history_never_moves_cursors_and_sees_only_committed():
    async with Meshd(load=LOAD) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        alice = await m.login(ta, label="alice")
        await sends(alice, "bob", [{"n": i} for i in range(1, 21)])
        bob = await m.login(tb, device="phone", label="bob")
        assert len(bob.replayed) == 20
        await bob.send_frame({"type": "ack", "upto": 5})
        # Reading history, all of it and past the cursor, many times.
        for i in range(5):
            f = await history(bob, ref=f"r{i}", after=0, limit=500)
            assert [x["seq"] for x in f["messages"]] == list(range(1, 21))
        f = await history(bob, limit=3)
        assert [x["seq"] for x in f["messages"]] == [18, 19, 20]
        await bob.close()
        # The cursor is the acked 5: the reconnect replays 6..20, exactly as without history.
        bob = await m.login(tb, device="phone", label="bob again")
        assert bob.welcome["cursor"] == 5, bob.welcome
        assert [x["seq"] for x in bob.replayed] == list(range(6, 21))
        # history pages and the live stream do not mix: a live msg still arrives as msg.
        await sends(alice, "bob", [{"n": 21}])
        live = await bob.expect("msg", seq=21)
        assert live["body"] == {"n": 21}


@async_test
async def test_big_scan_does_not_stall_other_clients():
    """Scans of the whole log (a peer with no message) off the loop: meanwhile another client
    sends and gets its ack, and the scans all complete."""
    async with Meshd(load=LOAD, extra="[history]\nreaders = 1\nmax_inflight = 8\n") as m:
        tokens = {n: m.add_user(n) for n in ("alice", "bob", "carol")}
        alice = await m.login(tokens["alice"], label="alice")
        for r in range(10):
            await sends(alice, "bob", [{"r": r, "i": i} for i in range(1000)])
        bob = await m.login(tokens["bob"], resume="head", label="bob")
        carol = await m.login(tokens["carol"], label="carol")
        for i in range(8):
            await bob.send_frame({"type": "history", "ref": f"scan{i}", "with": "carol",
                                  "limit": 500})
        t0 = time.monotonic()
        await carol.send("alice", "still here", ref="c1")
        await carol.expect("ack", ref="c1")
        await alice.expect("msg", **{"from": "carol"})
        took = time.monotonic() - t0
        answers = set()
        while len(answers) < 8:
            f = await bob.recv(30)
            assert f["type"] == "history", f
            assert f["messages"] == [] and f["more"] is False, f
            answers.add(f["ref"])
        print(f"send round trip during 8 full scans: {took * 1000:.1f} ms")


@async_test
async def test_bad_history_requests_name_the_field():
    async with Meshd(load=LOAD, extra="[history]\nmax_inflight = 1\n") as m:
        ta = m.add_user("alice")
        m.add_user("bob")
        alice = await m.login(ta, label="alice")
        await sends(alice, "bob", [1, 2, 3])
        cases = [
            ({"before": -1}, '"before" must be a seq'),
            ({"before": 1.5}, '"before" must be a seq'),
            ({"after": "3"}, '"after" must be a seq'),
            ({"after": None}, '"after" must be a seq'),
            ({"before": 3, "after": 1}, '"before" or "after", not both'),
            ({"limit": 501}, '"limit" must be an integer 1..500, got 501'),
            ({"limit": 0}, '"limit" must be an integer 1..500, got 0'),
            ({"limit": "50"}, '"limit" must be an integer 1..500'),
            ({"limit": 10.0}, '"limit" must be an integer 1..500'),
            ({"with": 5}, '"with" must be a string'),
            ({"with": ""}, '"with" must not be empty'),
            ({"with": "#"}, '"with" must be a principal id or "#group"'),
            ({"with": "bad name"}, '"with" must be a principal id or "#group"'),
        ]
        for i, (q, text) in enumerate(cases):
            await alice.send_frame({"type": "history", "ref": f"b{i}", **q})
            e = await alice.expect_error("bad_frame", ref=f"b{i}")
            assert text in e["message"], (q, e)
        await alice.send_frame({"type": "history", "ref": "u", "with": "nobody"})
        e = await alice.expect_error("unknown_peer", ref="u")
        assert "nobody" in e["message"] and '"with"' in e["message"], e
        # history.max_inflight = 1: queries while one is unanswered are refused (a slot is
        # free again once its answer is written, so sent back to back most are refused).
        for i in range(5):
            await alice.ws.send(f'{{"type":"history","ref":"q{i}","limit":1}}')
        got = {}
        for _ in range(5):
            f = await alice.recv()
            got[f["ref"]] = f
        assert got["q0"]["type"] == "history", got
        refused = [f for f in got.values() if f["type"] == "error"]
        assert refused, f"no query was refused: {got}"
        for f in refused:
            assert f["code"] == "rate_limited" and f["retry_after_ms"] >= 1, f
            assert "history.max_inflight" in f["message"], f
        # Once answered, the slot is free again.
        f = await history(alice, ref="q3", limit=1)
        assert [x["seq"] for x in f["messages"]] == [3]
        # hello "events" must be a list of names.
        for i, (events, text) in enumerate([("typing", '"events" must be an array'),
                                            ([1], '"events[0]" must be a string')]):
            c = await m.connect(ta, events=events, label="bad events")
            e = await c.expect_error("bad_frame")
            assert text in e["message"], e
        # Before welcome: unauthorized, as for any frame.
        c = await m.connect(hello=False, label="anon")
        await c.send_frame({"type": "history", "ref": "x"})
        await c.expect_error("unauthorized", ref="x")
