# tests/e2e/test_crash: acked means stored and delivered exactly once, across repeated SIGKILLs
# under load (contract §3 "Order and guarantees").
#
# 8 senders send continuously (each with an id, several in flight) to 8 receivers, half of
# them online (reading, acking, resuming from what they processed) and half offline until
# the end. meshd is killed with SIGKILL at random moments ROUNDS times and restarted on the
# same data dir; after each restart every sender resends what was not acked, with the same
# ids. At the end every message must be in its recipient's log once, delivered once, in
# per-sender order, none missing; every resend of a stored message is acked dup:true with the
# seq of the first store (each sender also drops every LOSE_EVERY-th ack it reads, as a
# client that crashed after sending would, so that case is always exercised).

import asyncio
import json
import os
import random
import time

from websockets.exceptions import ConnectionClosed

from harness import Meshd, async_test, connect

SENDERS = 8
RECEIVERS = 8
ONLINE = 4             # receivers r0..r3 are online during the rounds, r4..r7 only at the end
ROUNDS = 10
WINDOW = 16            # sends in flight per sender
LOSE_EVERY = 97        # a sender "loses" every 97th ack, as a client that crashed would
MAX_PER_SENDER = 100000
SEED = int(os.environ.get("MESHD_CRASH_SEED") or time.time())


def recipient(i, n):
    return f"r{(i + n) % RECEIVERS}"


class Sender:
    def __init__(self, i, token):
        self.i = i
        self.name = f"s{i}"
        self.token = token
        self.next_n = 0
        self.limit = MAX_PER_SENDER
        self.unacked = {}          # id -> n, in send order (dicts keep insertion order)
        self.attempts = {}         # id -> sends so far
        self.acks = {}             # id -> [(seq, dup), ...]
        self.lost = {}             # id -> seq of an ack the sender pretended not to get
        self.acks_read = 0
        self.lose_acks = True
        self.errors = []
        self.room = asyncio.Event()

    def frame(self, n):
        mid = f"{self.name}-{n}"
        return mid, {"type": "send", "to": recipient(self.i, n), "ref": mid, "id": mid,
                     "body": {"s": self.i, "n": n}}

    async def run(self, port, stop):
        """One connection's life: resend what is unacked, then keep sending until stop is
        set (or meshd dies)."""
        c = await connect(port, self.token, device="out", resume="head", label=self.name)
        w = await c.expect("welcome")
        assert w["id"] == self.name, w
        await c.expect("synced")
        reader = asyncio.ensure_future(self.read(c))
        try:
            for mid, n in list(self.unacked.items()):
                await self.send(c, n)
            while not stop.is_set():
                if self.next_n >= self.limit:
                    if not self.unacked:
                        return
                    await asyncio.sleep(0.01)
                    continue
                if len(self.unacked) >= WINDOW:
                    self.room.clear()
                    try:
                        await asyncio.wait_for(self.room.wait(), 0.05)
                    except asyncio.TimeoutError:
                        pass
                    if reader.done():
                        return
                    continue
                n = self.next_n
                self.next_n += 1
                mid, _ = self.frame(n)
                self.unacked[mid] = n
                await self.send(c, n)
        except (ConnectionClosed, ConnectionError, OSError):
            return
        finally:
            if stop.is_set() or self.next_n >= self.limit:
                await self.drain(reader)
            reader.cancel()
            await c.abort()

    async def drain(self, reader):
        deadline = time.monotonic() + 20
        while self.unacked and not reader.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def send(self, c, n):
        mid, f = self.frame(n)
        self.attempts[mid] = self.attempts.get(mid, 0) + 1
        await c.send_frame(f)

    async def read(self, c):
        try:
            while True:
                f = json.loads(await c.ws.recv())
                if f["type"] == "ack":
                    mid = f.get("ref")
                    self.acks_read += 1
                    if (self.lose_acks and self.acks_read % LOSE_EVERY == 0 and
                            mid not in self.lost):
                        self.lost[mid] = f["seq"]  # stays unacked: resent after the restart
                        continue
                    self.acks.setdefault(mid, []).append((f["seq"], bool(f.get("dup"))))
                    self.unacked.pop(mid, None)
                    self.room.set()
                else:
                    self.errors.append(f)
        except (ConnectionClosed, ConnectionError, OSError, asyncio.CancelledError):
            return


class Receiver:
    def __init__(self, j, token):
        self.j = j
        self.name = f"r{j}"
        self.token = token
        self.last = 0              # highest seq processed
        self.got = []              # (seq, from, s, n), in arrival order
        self.problems = []

    async def run(self, port, stop=None, until_synced=False):
        c = await connect(port, self.token, device="in",
                          resume=self.last if self.last else None, label=self.name)
        try:
            w = await c.expect("welcome")
            assert w["id"] == self.name, w
            since_ack = 0
            while True:
                if stop is not None and stop.is_set():
                    return
                try:
                    f = await c.recv(timeout=0.2 if stop is not None else 10)
                except AssertionError:
                    if c.close_code is not None or c.ws.closed:
                        return
                    if stop is not None:
                        continue
                    raise
                if f["type"] == "synced":
                    if until_synced:
                        await c.send_frame({"type": "ack", "upto": self.last})
                        return
                    continue
                if f["type"] != "msg":
                    self.problems.append(f)
                    continue
                if f["seq"] <= self.last:
                    self.problems.append(("seq not increasing", self.last, f))
                self.last = f["seq"]
                self.got.append((f["seq"], f["from"], f["body"]["s"], f["body"]["n"]))
                since_ack += 1
                if since_ack >= 20:
                    since_ack = 0
                    await c.send_frame({"type": "ack", "upto": self.last})
        except (ConnectionClosed, ConnectionError, OSError):
            return
        finally:
            await c.abort()


@async_test
async def test_sigkill_under_load_loses_nothing_and_duplicates_nothing():
    rnd = random.Random(SEED)
    print(f"MESHD_CRASH_SEED={SEED}")
    async with Meshd(limits={"hello_timeout_ms": 10000, "ping_interval_ms": 30000}) as m:
        senders = [Sender(i, m.add_user(f"s{i}", agent=True)) for i in range(SENDERS)]
        receivers = [Receiver(j, m.add_user(f"r{j}")) for j in range(RECEIVERS)]
        for rnd_no in range(ROUNDS):
            if rnd_no > 0:
                m.start()
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(s.run(m.port, stop)) for s in senders]
            tasks += [asyncio.ensure_future(r.run(m.port, stop)) for r in receivers[:ONLINE]]
            await asyncio.sleep(rnd.uniform(0.4, 1.2))
            m.kill9()
            stop.set()
            done, pending = await asyncio.wait(tasks, timeout=15)
            assert not pending, f"round {rnd_no}: clients still running after the kill"
            for t in done:
                if t.exception() is not None:
                    raise t.exception()

        # Final run: no new sends; every sender resends until all is acked.
        m.start()
        for s in senders:
            s.limit = s.next_n
            s.lose_acks = False
        stop = asyncio.Event()
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(s.run(m.port, stop)) for s in senders], timeout=40)
        assert not pending, "senders did not get every ack within 40 s"
        for t in done:
            if t.exception() is not None:
                raise t.exception()
        for r in receivers:
            await r.run(m.port, until_synced=True)

        total = sum(s.next_n for s in senders)
        assert total >= SENDERS * ROUNDS, f"too little traffic to mean anything: {total}"
        dups = 0
        resent = 0
        for s in senders:
            assert not s.errors, f"{s.name} got error frames: {s.errors[:5]}"
            assert not s.unacked, f"{s.name}: never acked: {list(s.unacked)[:10]}"
            for n in range(s.next_n):
                mid = f"{s.name}-{n}"
                acks = s.acks.get(mid)
                assert acks, f"{mid} was never acked"
                seqs = {seq for seq, _ in acks}
                assert len(seqs) == 1, f"{mid} acked with different seqs: {acks}"
                assert not acks[0][1] or s.attempts[mid] > 1, (
                    f"{mid}: dup:true on its first send: {acks}")
                if s.attempts[mid] > 1:
                    resent += 1
                dups += sum(1 for _, dup in acks if dup)
                if mid in s.lost:
                    # Its first ack was lost: the resend must say dup:true with the same seq.
                    assert acks == [(s.lost[mid], True)] * len(acks), (
                        f"{mid}: first ack seq {s.lost[mid]} was lost; resends got {acks}")
        lost = sum(len(s.lost) for s in senders)
        assert lost > 0, "no ack was lost on purpose; the dup:true check did not run"
        expected = {}
        for s in senders:
            for n in range(s.next_n):
                expected.setdefault(recipient(s.i, n), set()).add((s.i, n))
        for r in receivers:
            assert not r.problems, f"{r.name}: {r.problems[:5]}"
            seen = set()
            last_n = {}
            for seq, frm, si, n in r.got:
                assert frm == f"s{si}", (r.name, seq, frm, si)
                assert (si, n) not in seen, f"{r.name}: s{si}-{n} delivered twice"
                seen.add((si, n))
                assert n > last_n.get(si, -1), f"{r.name}: s{si} out of order at {n}"
                last_n[si] = n
            missing = expected.get(r.name, set()) - seen
            assert not missing, f"{r.name}: {len(missing)} missing, e.g. {sorted(missing)[:5]}"
            extra = seen - expected.get(r.name, set())
            assert not extra, f"{r.name}: unexpected {sorted(extra)[:5]}"
        print(f"crash test: {total} messages, {ROUNDS} SIGKILLs, {resent} resent, "
              f"{lost} acks lost on purpose, {dups} acked dup:true")
