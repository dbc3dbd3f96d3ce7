# tests/e2e/test_tasks: work dispatch to agents by skill (meshd-protocol(7), WORK DISPATCH):
# sends to skill:NAME assigned to the available agent with the fewest unfinished tasks (ties
# round-robin in name order), who is a candidate (busy/dnd/away, users, the sender skipped;
# connecting, status available or publishing the skill makes one), durable FIFO skill queues
# (also across SIGKILL), task states moved by the holder and canceled by the sender, leases
# (kept on reconnect, restarted when meshd starts, requeued ahead of younger work), deadline
# and queue TTL expiry, 20 agents racing for one queued task, `meshctl tasks` (meshctl(8)),
# replay of task frames to the sender's devices, queue_cap, and refused frames.
#
# Every test but the last loads route_skills, and all set [presence] grace_ms = 0 (a closed
# connection is offline at once, so "no candidate online" is unambiguous) and
# away_after_s = 0.
#
# Where the man page leaves a detail open, the tests accept either reading and say so:
# a queued send may or may not be followed by a "queued" task frame of its own (the ack
# already says queued), so the helpers step over such creation frames (task state "queued"
# without a reason) when they wait for another frame; the sender of an untracked send may or
# may not get a task frame when it is assigned.

import asyncio
import collections
import time

from harness import Meshd, async_test, now_ms, same_json

LOAD = ("auth_token", "route_direct", "route_skills")
SKILL = "translate"
TASK_KEYS = {"id", "state", "skill", "from", "agent", "created_ms", "updated_ms",
             "deadline_ms"}
_ABSENT = object()
_ANY = object()


def config(lease_s=60, queue_cap=None, queue_ttl_s=None):
    lines = ["[tasks]", f"lease_s = {lease_s}"]
    if queue_cap is not None:
        lines.append(f"queue_cap = {queue_cap}")
    if queue_ttl_s is not None:
        lines.append(f"queue_ttl_s = {queue_ttl_s}")
    lines += ["", "[presence]", "grace_ms = 0", "away_after_s = 0", ""]
    return "\n".join(lines)


def daemon(**tasks):
    return Meshd(load=LOAD, extra=config(**tasks))


# ---- a connection with a queue of frames read but not consumed yet ----------------------

class Conn:
    """One device of a principal. reply(ref) reads until the frame answering ref and keeps
    what came before it in `pending`, in order; next() hands out pending frames first.
    `seen` is the highest seq this device got (msg, task, or the ack of its own send), to
    resume from; `log` keeps every frame with a seq, in arrival order."""

    def __init__(self, client, name):
        self.c = client
        self.name = name
        self.pending = collections.deque()
        self.seen = 0
        self.log = []
        self.replay = []
        self.skipped = []  # creation "queued" task frames stepped over (see top comment)
        self.welcome = None
        self.token = None
        self.last_seq = 0
        self._n = 0

    def _ref(self, prefix):
        self._n += 1
        return f"{prefix}-{self._n}"

    async def _wire(self, timeout):
        f = await self.c.recv(timeout)
        if f["type"] in ("msg", "task", "ack") and type(f.get("seq")) is int:
            if not f.get("dup"):
                # Frames to one device leave in seq order (ORDER AND GUARANTEES).
                assert f["seq"] > self.last_seq, (
                    f"{self.c.label}: seq {f['seq']} after {self.last_seq}: {f}")
                self.last_seq = f["seq"]
            self.seen = max(self.seen, f["seq"])
            self.log.append(f)
        return f

    async def next(self, timeout=5):
        if self.pending:
            return self.pending.popleft()
        return await self._wire(timeout)

    async def reply(self, ref, timeout=5):
        """The frame answering ref (ok, ack, error, who, ...); earlier frames stay pending."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.c.label}: no answer to ref {ref!r} in {timeout}s; "
                                     f"pending {list(self.pending)}")
            f = await self._wire(left)
            if f.get("ref") == ref:
                return f
            self.pending.append(f)

    async def request(self, frame, timeout=5):
        """Send a frame that must be answered ok."""
        ref = frame.get("ref") or self._ref(frame["type"])
        await self.c.send_frame({**frame, "ref": ref})
        f = await self.reply(ref, timeout)
        assert f["type"] == "ok", f"{self.c.label}: {frame} answered {f}, expected ok"
        return f

    async def refused(self, frame, code, timeout=5):
        """Send a frame that must be answered error{code} echoing its ref."""
        ref = frame.get("ref") or self._ref("bad")
        await self.c.send_frame({**frame, "ref": ref})
        f = await self.reply(ref, timeout)
        assert f["type"] == "error" and f.get("code") == code, (
            f"{self.c.label}: {frame} answered {f}, expected error {code!r}")
        assert isinstance(f.get("message"), str) and f["message"], f
        return f

    async def status(self, status):
        await self.request({"type": "status", "status": status})

    async def move(self, tid, state, **fields):
        """A task frame (working, done, failed, canceled) that must be answered ok."""
        await self.request({"type": "task", "id": tid, "state": state, **fields})

    async def who(self, **filters):
        ref = self._ref("who")
        await self.c.send_frame({"type": "who", "ref": ref, **filters})
        f = await self.reply(ref)
        assert f["type"] == "who", f
        return [p["id"] for p in f["principals"]]

    async def quiet(self, timeout=0.3):
        """Nothing more arrives (creation "queued" task frames aside)."""
        left = [f for f in self.pending if not is_creation_frame(f)]
        assert not left, f"{self.c.label}: unexpected frames {left}"
        self.pending.clear()
        deadline = time.monotonic() + timeout
        while True:
            t = deadline - time.monotonic()
            if t <= 0:
                return
            try:
                f = await self._wire(t)
            except AssertionError as e:
                if "no frame within" in str(e):
                    return
                raise
            assert is_creation_frame(f), f"{self.c.label}: unexpected frame {f}"

    async def close(self):
        await self.c.close()


def is_creation_frame(f):
    return (f.get("type") == "task" and isinstance(f.get("task"), dict)
            and f["task"].get("state") == "queued" and "reason" not in f["task"])


async def join(m, token, name, *, device="d", resume=None, skills=None, status=None):
    """Log in; frames replayed before synced (msg and task) are pending. With skills, publish
    a profile listing them; with status, set it."""
    c = await m.connect(token, device=device, resume=resume, label=f"{name}/{device}")
    conn = Conn(c, name)
    conn.token = token
    if isinstance(resume, int):
        conn.seen = conn.last_seq = resume
    conn.welcome = await c.expect("welcome")
    assert conn.welcome["id"] == name, conn.welcome
    while True:
        f = await conn._wire(5)
        if f["type"] == "synced":
            break
        assert f["type"] in ("msg", "task"), f"{name}: before synced: {f}"
        conn.replay.append(f)
        conn.pending.append(f)
    if skills is not None:
        await conn.request({"type": "profile", "skills": skills})
    if status is not None:
        await conn.status(status)
    return conn


async def wait_offline(observer, *names, timeout=5):
    """Wait until who no longer lists any of names as online (grace_ms = 0)."""
    deadline = time.monotonic() + timeout
    while True:
        online = set(await observer.who(online=True, kind="agent"))
        if not online & set(names):
            return
        assert time.monotonic() < deadline, f"still online after {timeout}s: {online}"
        await asyncio.sleep(0.05)


# ---- checks -----------------------------------------------------------------------------

async def send_skill(u, body, *, state, agent=None, skill=SKILL, task=_ABSENT, id=None,
                     ref=None):
    """A send to skill:NAME (tracked unless task=None) answered by an ack with this state
    (and agent). For a tracked send assigned at once, also the sender's "assigned" task
    frame right after the ack. Returns the ack."""
    ref = ref or u._ref("send")
    frame = {"type": "send", "to": f"skill:{skill}", "ref": ref, "body": body}
    if task is _ABSENT:
        task = {}
    if task is not None:
        frame["task"] = task
    if id is not None:
        frame["id"] = id
    await u.c.send_frame(frame)
    a = await u.reply(ref)
    assert a["type"] == "ack", f"send {frame} answered {a}"
    assert type(a.get("seq")) is int and a["seq"] > 0, a
    assert type(a.get("task")) is int, f"an ack of a send to a skill names its task: {a}"
    # An untracked send "is done once assigned": its ack may say either (state=tuple).
    states = state if isinstance(state, tuple) else (state,)
    assert a.get("state") in states, f"expected ack state {state!r}: {a}"
    if state != "queued":
        assert a.get("agent") == agent, f"expected ack agent {agent!r}: {a}"
    else:
        assert a.get("agent") is None, f"a queued ack names no agent: {a}"
    assert "dup" not in a or a["dup"] is False, a
    if task is not None and state == "assigned":
        # It comes after the ack (seq order): frames still pending came before the ack.
        held, u.pending = u.pending, collections.deque()
        try:
            await expect_task(u, a["task"], "assigned", msg=a["seq"], agent=agent,
                              skill=skill)
        finally:
            u.pending = held + u.pending
    return a


async def expect_task(conn, tid, state, *, msg, agent=_ABSENT, skill=SKILL, timeout=5,
                      **fields):
    """The next frame is a task frame {seq, ts, task:{id, state, skill, msg, agent, ...}};
    agent=_ABSENT means none (absent or null). Creation "queued" frames are stepped over."""
    while True:
        f = await conn.next(timeout)
        if is_creation_frame(f) and not (state == "queued" and "reason" not in fields):
            conn.skipped.append(f)
            continue
        break
    assert f["type"] == "task", f"{conn.c.label}: expected task {tid} {state}, got {f}"
    assert type(f.get("seq")) is int and type(f.get("ts")) is int, f
    t = f.get("task")
    assert isinstance(t, dict), f
    assert t.get("id") == tid and t.get("state") == state, (
        f"{conn.c.label}: expected task {tid} {state}, got {f}")
    assert t.get("skill") == skill, f
    assert t.get("msg") == msg, f"{conn.c.label}: task frame msg should be {msg}: {f}"
    if agent is _ABSENT:
        assert t.get("agent") is None, f"{conn.c.label}: no holder expected: {f}"
    elif agent is _ANY:
        assert isinstance(t.get("agent"), str), f"{conn.c.label}: a holder expected: {f}"
    else:
        assert t.get("agent") == agent, f"{conn.c.label}: expected agent {agent!r}: {f}"
    for k, v in fields.items():
        if v is _ABSENT:
            assert t.get(k) is None, f"{conn.c.label}: task.{k} should be absent: {f}"
        else:
            assert k in t and same_json(t[k], v), f"{conn.c.label}: task.{k} != {v!r}: {f}"
    return f


async def expect_work(agent, tid, body, *, frm="u", skill=SKILL, deadline=None, timeout=5):
    """The next frame of an agent is the msg of task tid."""
    f = await agent.next(timeout)
    assert f["type"] == "msg", f"{agent.c.label}: expected the msg of task {tid}, got {f}"
    assert f.get("from") == frm and f.get("to") == f"skill:{skill}", f
    assert same_json(f.get("body"), body), f
    assert type(f.get("seq")) is int and type(f.get("ts")) is int, f
    t = f.get("task")
    assert isinstance(t, dict) and t.get("id") == tid, (
        f"{agent.c.label}: the agent's copy carries task {{id:{tid}}}: {f}")
    assert t.get("deadline") == deadline, f
    return f


def tasks(m, *args):
    """meshctl tasks --json ARGS (meshctl(8): {"tasks":[...]}): the list, each object
    checked for its fields."""
    doc = m.ctl("tasks", *args)
    assert isinstance(doc, dict) and isinstance(doc.get("tasks"), list), doc
    r = doc["tasks"]
    for t in r:
        assert isinstance(t, dict) and TASK_KEYS <= set(t), t
        assert type(t["id"]) is int and isinstance(t["state"], str), t
        assert t["agent"] is None or isinstance(t["agent"], str), t
        assert type(t["created_ms"]) is int and type(t["updated_ms"]) is int, t
        assert t["created_ms"] <= t["updated_ms"], t
        assert t["deadline_ms"] is None or type(t["deadline_ms"]) is int, t
    ids = [t["id"] for t in r]
    assert ids == sorted(ids, reverse=True), f"newest first: {ids}"
    return r


def tasks_by_id(m, *args):
    return {t["id"]: t for t in tasks(m, *args)}


async def agents(m, names, skills=(SKILL,), online=True, observer=None):
    """Agents with a profile listing skills: connected, or (online=False) closed again and,
    with an observer, seen offline."""
    out = {}
    for n in names:
        out[n] = await join(m, m.add_user(n, agent=True), n, skills=list(skills))
    if not online:
        for n in names:
            await out[n].close()
        if observer is not None:
            await wait_offline(observer, *names)
    return out


async def rejoin(m, old, **kw):
    """The same principal and device again, resuming from what the old connection saw."""
    kw.setdefault("device", old.c.label.split("/", 1)[1])
    return await join(m, old.token, old.name, resume=old.seen, **kw)


async def user(m, name="u", device="d"):
    return await join(m, m.add_user(name), name, device=device)


# ---- 1. dispatch ------------------------------------------------------------------------

@async_test
async def test_dispatch_fewest_unfinished_then_round_robin_by_name():
    async with daemon() as m:
        u = await user(m)
        # Connected out of name order: ties go round-robin in name order, not arrival order.
        ag = await agents(m, ["a3", "a1", "a2"])
        acks, got = [], []
        for i in range(6):
            body = {"text": f"job {i}"}
            want = ["a1", "a2", "a3"][i % 3]
            a = await send_skill(u, body, state="assigned", agent=want, id=f"j{i}")
            acks.append(a)
            msg = await expect_work(ag[want], a["task"], body)
            got.append((want, msg))
        assert [a["agent"] for a in acks] == ["a1", "a2", "a3", "a1", "a2", "a3"]
        ids = [a["task"] for a in acks]
        assert len(set(ids)) == 6, f"task ids are unique: {ids}"
        # Each agent's log got its two messages, in order, and nobody else's.
        for n, c in ag.items():
            seqs = [msg["seq"] for who_, msg in got if who_ == n]
            assert seqs == sorted(seqs) and len(seqs) == 2, (n, seqs)
            await c.quiet(0.1)
        # a2 finishes both of its tasks: it now holds the fewest (0), so it gets the next
        # one, and the one after (1 against 2 each).
        for a in (acks[1], acks[4]):
            await ag["a2"].move(a["task"], "working")
            await expect_task(u, a["task"], "working", msg=a["seq"], agent="a2")
            await ag["a2"].move(a["task"], "done", result={"ok": a["task"]})
            await expect_task(u, a["task"], "done", msg=a["seq"], agent="a2",
                              result={"ok": a["task"]})
        for i in (6, 7):
            body = {"text": f"job {i}"}
            a = await send_skill(u, body, state="assigned", agent="a2")
            await expect_work(ag["a2"], a["task"], body)
        for c in ag.values():
            await c.quiet(0.1)
        await u.quiet(0.1)


# ---- 2. status ----------------------------------------------------------------------------

@async_test
async def test_busy_dnd_and_away_agents_are_skipped():
    async with daemon() as m:
        u = await user(m)
        ag = await agents(m, ["a1", "a2", "a3", "a4"])
        await ag["a1"].status("busy")
        await ag["a2"].status("dnd")
        await ag["a4"].status("away")
        held = []
        for i in range(3):  # a3 gets all, though it holds more each time
            a = await send_skill(u, {"n": i}, state="assigned", agent="a3")
            await expect_work(ag["a3"], a["task"], {"n": i})
            held.append(a)
        # a1 available again: a candidate with the fewest tasks (0 against a3's 3).
        await ag["a1"].status("available")
        a = await send_skill(u, {"n": 3}, state="assigned", agent="a1")
        await expect_work(ag["a1"], a["task"], {"n": 3})
        # Nobody available: the send waits in the queue...
        await ag["a1"].status("busy")
        await ag["a3"].status("dnd")
        q = await send_skill(u, {"n": 4}, state="queued")
        for c in ag.values():
            await c.quiet(0.2)
        # ... and goes to the first agent that becomes available.
        await ag["a2"].status("available")
        await expect_work(ag["a2"], q["task"], {"n": 4})
        await expect_task(u, q["task"], "assigned", msg=q["seq"], agent="a2")
        for n in ("a1", "a3", "a4"):
            await ag[n].quiet(0.1)
        await u.quiet(0.1)


# ---- 3. queue -----------------------------------------------------------------------------

@async_test
async def test_queued_while_no_agent_online_then_assigned_in_order():
    async with daemon() as m:
        u = await user(m)
        ag = await agents(m, ["a1", "a2"], online=False, observer=u)
        deadline = now_ms() + 60000
        jobs = [({"text": f"q{i}"}, {"deadline": deadline} if i == 1 else {}) for i in range(3)]
        acks = []
        for i, (body, task) in enumerate(jobs):
            acks.append(await send_skill(u, body, state="queued", task=task, id=f"q{i}"))
        ids = [a["task"] for a in acks]
        assert ids == sorted(ids) and len(set(ids)) == 3, ids
        # A resend with the same id: the first ack, dup, and the task's current state.
        await u.c.send_frame({"type": "send", "to": "skill:translate", "ref": "again",
                              "id": "q0", "task": {}, "body": jobs[0][0]})
        d = await u.reply("again")
        assert d["type"] == "ack" and d.get("dup") is True, d
        assert d["seq"] == acks[0]["seq"] and d["task"] == ids[0], d
        assert d["state"] == "queued", d
        # meshctl status shows what waits, by skill.
        st = m.ctl("status")["tasks"]
        assert st == {"queued": 3, "assigned": 0, "working": 0,
                      "queued_by_skill": {"translate": 3}}, st
        assert "tasks:        3 queued (translate 3), 0 assigned, 0 working\n" in \
            m.ctl("status", json=False)
        # a1 connects: it gets all three, in order, and the sender learns each assignment.
        a1 = await rejoin(m, ag["a1"])
        for (body, task), a in zip(jobs, acks):
            await expect_work(a1, a["task"], body, deadline=task.get("deadline"))
        for a in acks:
            await expect_task(u, a["task"], "assigned", msg=a["seq"], agent="a1")
        await a1.quiet(0.2)
        await u.quiet(0.1)
        # The queued messages entered a1's log only: a2, connecting now, has none.
        a2 = await rejoin(m, ag["a2"])
        assert a2.welcome["seq"] == 0 and not a2.replay, (a2.welcome, a2.replay)
        await a2.quiet(0.2)
        # The dup now reports the new state.
        await u.c.send_frame({"type": "send", "to": "skill:translate", "ref": "again2",
                              "id": "q0", "task": {}, "body": jobs[0][0]})
        d = await u.reply("again2")
        assert d.get("dup") is True and d["task"] == ids[0] and d["state"] == "assigned", d
        await u.quiet(0.1)
        st = m.ctl("status")["tasks"]
        assert st == {"queued": 0, "assigned": 3, "working": 0, "queued_by_skill": {}}, st


@async_test
async def test_candidates_are_other_agents_listing_the_skill():
    async with daemon() as m:
        u = await user(m)
        ag = await agents(m, ["a1"], skills=("cooking",))
        # A user listing a skill is no candidate, and no agent lists it: unknown_peer.
        await u.request({"type": "profile", "skills": ["sing"]})
        await u.refused({"type": "send", "to": "skill:sing", "task": {}, "body": 1},
                        "unknown_peer")
        # An agent does not get its own send: with a1 the only one, it waits.
        q = await send_skill(ag["a1"], "self", state="queued", skill="cooking")
        await ag["a1"].quiet(0.3)
        # Publishing the skill makes an agent a candidate: a2 gets the queued send.
        ag.update(await agents(m, ["a2"], skills=()))
        await ag["a2"].request({"type": "profile", "skills": ["cooking"]})
        await expect_work(ag["a2"], q["task"], "self", frm="a1", skill="cooking")
        await expect_task(ag["a1"], q["task"], "assigned", msg=q["seq"], agent="a2",
                          skill="cooking")


# ---- 4. restart ---------------------------------------------------------------------------

@async_test
async def test_queue_and_task_states_survive_sigkill():
    async with daemon(lease_s=60) as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        ag.update(await agents(m, ["a2"], online=False, observer=u))
        t1 = await send_skill(u, {"n": 1}, state="assigned", agent="a1")
        await expect_work(ag["a1"], t1["task"], {"n": 1})
        await ag["a1"].move(t1["task"], "working")
        await expect_task(u, t1["task"], "working", msg=t1["seq"], agent="a1")
        await ag["a1"].status("busy")
        t2 = await send_skill(u, {"n": 2}, state="queued")
        t3 = await send_skill(u, {"n": 3}, state="queued")
        await u.quiet(0.1)

        m.kill9()
        m.start()

        ts = tasks_by_id(m)
        assert set(ts) == {t1["task"], t2["task"], t3["task"]}, ts
        assert ts[t1["task"]]["state"] == "working" and ts[t1["task"]]["agent"] == "a1", ts
        for t in (t2, t3):
            assert ts[t["task"]]["state"] == "queued" and ts[t["task"]]["agent"] is None, ts
        u = await rejoin(m, u)
        await u.quiet(0.2)
        # a1 is busy (its status survived); a2 connects and gets the queue, in order.
        a2 = await rejoin(m, ag["a2"])
        await expect_work(a2, t2["task"], {"n": 2})
        await expect_work(a2, t3["task"], {"n": 3})
        await expect_task(u, t2["task"], "assigned", msg=t2["seq"], agent="a2")
        await expect_task(u, t3["task"], "assigned", msg=t3["seq"], agent="a2")
        # a1 comes back within its lease and finishes the task it was working on.
        a1 = await rejoin(m, ag["a1"])
        await a1.quiet(0.2)
        await a1.move(t1["task"], "done", result="fertig")
        await expect_task(u, t1["task"], "done", msg=t1["seq"], agent="a1", result="fertig")
        ts = tasks_by_id(m)
        assert ts[t1["task"]]["state"] == "done", ts
        for t in (t2, t3):
            assert ts[t["task"]]["state"] == "assigned" and ts[t["task"]]["agent"] == "a2", ts
        await u.quiet(0.1)


# ---- 5. leases ----------------------------------------------------------------------------

@async_test
async def test_reconnect_within_lease_keeps_the_task():
    async with daemon(lease_s=2) as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        t = await send_skill(u, {"n": 1}, state="assigned", agent="a1")
        await expect_work(ag["a1"], t["task"], {"n": 1})
        ag.update(await agents(m, ["a2"]))  # a candidate, should the task come free
        await ag["a1"].close()
        await wait_offline(u, "a1")
        a1 = await rejoin(m, ag["a1"])  # well within lease_s = 2
        await asyncio.sleep(3)          # past where the lease would have run out
        await ag["a2"].quiet(0.1)
        await u.quiet(0.1)
        await a1.move(t["task"], "working")
        await expect_task(u, t["task"], "working", msg=t["seq"], agent="a1")
        assert tasks_by_id(m)[t["task"]]["agent"] == "a1"


@async_test
async def test_lease_expiry_moves_the_task_and_the_old_agent_gets_conflict():
    async with daemon(lease_s=1) as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        body = {"text": "Guten Tag"}
        t = await send_skill(u, body, state="assigned", agent="a1")
        first = await expect_work(ag["a1"], t["task"], body)
        await ag["a1"].move(t["task"], "working")
        await expect_task(u, t["task"], "working", msg=t["seq"], agent="a1")
        ag.update(await agents(m, ["a2"]))
        t0 = time.monotonic()
        await ag["a1"].close()
        # The lease holds for lease_s = 1 s: nothing for a2 yet.
        await ag["a2"].quiet(0.5)
        got = await expect_work(ag["a2"], t["task"], body, timeout=10)
        took = time.monotonic() - t0
        assert took >= 0.9, f"the task moved {took:.2f}s after the disconnect, lease_s = 1"
        assert got["seq"] == 1, f"the task entered a2's empty log now: {got}"
        await expect_task(u, t["task"], "queued", msg=t["seq"], reason="lease_expired",
                          previous="a1")
        await expect_task(u, t["task"], "assigned", msg=t["seq"], agent="a2")
        ts = tasks_by_id(m)
        assert ts[t["task"]]["state"] == "assigned" and ts[t["task"]]["agent"] == "a2", ts
        # a1 comes back: the task is no longer its own.
        a1 = await rejoin(m, ag["a1"])
        await a1.refused({"type": "task", "id": t["task"], "state": "done"}, "conflict")
        await a1.refused({"type": "task", "id": t["task"], "state": "working"}, "conflict")
        await ag["a2"].move(t["task"], "done", result={"text": "Good day"})
        await expect_task(u, t["task"], "done", msg=t["seq"], agent="a2",
                          result={"text": "Good day"})
        await u.quiet(0.1)
        assert first["task"]["id"] == got["task"]["id"]


@async_test
async def test_requeued_task_goes_ahead_of_younger_work():
    async with daemon(lease_s=1) as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        old = await send_skill(u, "old", state="assigned", agent="a1")
        await expect_work(ag["a1"], old["task"], "old")
        await ag["a1"].status("busy")
        young = await send_skill(u, "young", state="queued")
        assert tasks_by_id(m)[old["task"]]["lease_until_ms"] is None, "a1 is connected"
        await ag["a1"].close()
        await wait_offline(u, "a1")
        lease = tasks_by_id(m)[old["task"]]["lease_until_ms"]
        assert type(lease) is int and lease <= now_ms() + 1500, lease
        await expect_task(u, old["task"], "queued", msg=old["seq"], reason="lease_expired",
                          previous="a1", timeout=10)
        # Back in the queue ahead of the younger send: a2 gets it first.
        a2 = (await agents(m, ["a2"]))["a2"]
        await expect_work(a2, old["task"], "old")
        await expect_work(a2, young["task"], "young")
        await expect_task(u, old["task"], "assigned", msg=old["seq"], agent="a2")
        await expect_task(u, young["task"], "assigned", msg=young["seq"], agent="a2")


@async_test
async def test_leases_start_again_when_meshd_starts():
    async with daemon(lease_s=2) as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        t = await send_skill(u, "job", state="assigned", agent="a1")
        await expect_work(ag["a1"], t["task"], "job")
        await ag["a1"].move(t["task"], "working")
        await expect_task(u, t["task"], "working", msg=t["seq"], agent="a1")
        m.kill9()
        m.start()
        t0 = time.monotonic()
        u = await rejoin(m, u)
        a2 = (await agents(m, ["a2"]))["a2"]
        # a1 never comes back: 2 s after the start its task moves to a2.
        await expect_work(a2, t["task"], "job", timeout=10)
        took = time.monotonic() - t0
        assert took >= 1.5, f"moved {took:.2f}s after the restart with lease_s = 2"
        await expect_task(u, t["task"], "queued", msg=t["seq"], reason="lease_expired",
                          previous="a1")
        await expect_task(u, t["task"], "assigned", msg=t["seq"], agent="a2")


@async_test
async def test_agent_copy_carries_the_send_id():
    # IDEMPOTENT SENDS: "The id is stored with the message and shown to recipients in msg";
    # RECEIVING: msg.id is "present when the sender gave one". The agent is the recipient.
    # (WORK DISPATCH's example of the agent's copy happens to show no id.)
    async with daemon() as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        t = await send_skill(u, "x", state="assigned", agent="a1", id="j-9")
        w = await expect_work(ag["a1"], t["task"], "x")
        assert w.get("id") == "j-9", f"the agent's copy should carry the send's id: {w}"


# ---- 6. deadline --------------------------------------------------------------------------

@async_test
async def test_deadline_expires_held_and_queued_tasks():
    async with daemon() as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        deadline = now_ms() + 1500
        t = await send_skill(u, "work", state="assigned", agent="a1",
                             task={"deadline": deadline})
        w = await expect_work(ag["a1"], t["task"], "work", deadline=deadline)
        await ag["a1"].move(t["task"], "working")
        await expect_task(u, t["task"], "working", msg=t["seq"], agent="a1")
        # Nobody available: a second task with a deadline waits in the queue.
        await ag["a1"].status("busy")
        deadline2 = now_ms() + 1500
        q = await send_skill(u, "later", state="queued", task={"deadline": deadline2})
        # Both expire: the sender is told, and so is the holder (in its log).
        await expect_task(u, t["task"], "expired", msg=t["seq"], agent="a1",
                          reason="deadline", timeout=10)
        assert now_ms() >= deadline - 50, "expired before its deadline"
        await expect_task(u, q["task"], "expired", msg=q["seq"], reason="deadline",
                          timeout=10)
        assert now_ms() >= deadline2 - 50, "expired before its deadline"
        await expect_task(ag["a1"], t["task"], "expired", msg=w["seq"], agent="a1",
                          reason="deadline")
        await ag["a1"].refused({"type": "task", "id": t["task"], "state": "done"},
                               "conflict")
        ts = tasks_by_id(m)
        assert ts[t["task"]]["state"] == "expired" and ts[t["task"]]["deadline_ms"] == deadline
        assert ts[q["task"]]["state"] == "expired" and ts[q["task"]]["agent"] is None, ts
        # The expired queued task is never handed out.
        await ag["a1"].status("available")
        await ag["a1"].quiet(0.3)
        await u.quiet(0.1)


# ---- 7. cancel ----------------------------------------------------------------------------

@async_test
async def test_cancel_by_the_sender_only():
    async with daemon() as m:
        u = await user(m)
        v = await user(m, "v")
        ag = await agents(m, ["a1"])
        t = await send_skill(u, "job", state="assigned", agent="a1")
        w = await expect_work(ag["a1"], t["task"], "job")
        await ag["a1"].move(t["task"], "working")
        await expect_task(u, t["task"], "working", msg=t["seq"], agent="a1")
        tid = t["task"]
        # Only the sender cancels; only the holder moves it on; others do not see it.
        await ag["a1"].refused({"type": "task", "id": tid, "state": "canceled"}, "forbidden")
        await u.refused({"type": "task", "id": tid, "state": "done"}, "forbidden")
        await u.refused({"type": "task", "id": tid, "state": "working"}, "forbidden")
        await v.refused({"type": "task", "id": tid, "state": "canceled"}, "not_found")
        await v.refused({"type": "task", "id": tid, "state": "done"}, "not_found")
        assert tasks_by_id(m)[tid]["state"] == "working"
        await u.move(tid, "canceled", reason="changed my mind")
        await expect_task(u, tid, "canceled", msg=t["seq"], agent="a1",
                          reason="changed my mind")
        await expect_task(ag["a1"], tid, "canceled", msg=w["seq"], agent="a1",
                          reason="changed my mind")
        await ag["a1"].refused({"type": "task", "id": tid, "state": "done"}, "conflict")
        await ag["a1"].refused({"type": "task", "id": tid, "state": "failed"}, "conflict")
        await u.refused({"type": "task", "id": tid, "state": "canceled"}, "conflict")
        assert tasks_by_id(m)[tid]["state"] == "canceled"
        # A queued task canceled is never handed out.
        await ag["a1"].status("busy")
        q = await send_skill(u, "queued job", state="queued")
        await u.move(q["task"], "canceled")
        await expect_task(u, q["task"], "canceled", msg=q["seq"])
        await ag["a1"].status("available")
        await ag["a1"].quiet(0.3)
        ts = tasks_by_id(m)
        assert ts[q["task"]]["state"] == "canceled" and ts[q["task"]]["agent"] is None, ts
        await u.quiet(0.1)
        await v.quiet(0.1)


# ---- 8. race ------------------------------------------------------------------------------

RACERS = 20
ROUNDS = 3


async def collect(conn, seconds):
    """Every frame a connection gets within `seconds` (pending ones included)."""
    out = list(conn.pending)
    conn.pending.clear()
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        try:
            out.append(await conn._wire(left))
        except AssertionError as e:
            if "no frame within" in str(e):
                return out
            raise


@async_test
async def test_agents_connecting_at_once_race_for_one_queued_task():
    async with daemon() as m:
        u = await user(m)
        names = [f"r{i:02d}" for i in range(RACERS)]
        ag = await agents(m, names, online=False, observer=u)
        for rnd in range(ROUNDS):
            body = {"round": rnd}
            q = await send_skill(u, body, state="queued")
            conns = await asyncio.gather(*(rejoin(m, ag[n]) for n in names))
            # The sender learns who got it; then every agent has had time to get a copy.
            f = await expect_task(u, q["task"], "assigned", msg=q["seq"], agent=_ANY,
                                  timeout=10)
            win = f["task"]["agent"]
            assert win in names, f
            frames = await asyncio.gather(*(collect(c, 0.5) for c in conns))
            winners = []
            for n, c, fs in zip(names, conns, frames):
                assert all(f["type"] == "msg" for f in fs), (n, fs)
                if fs:
                    assert len(fs) == 1, f"{n} got {fs}"
                    assert fs[0]["task"]["id"] == q["task"] and same_json(fs[0]["body"], body)
                    winners.append(n)
            assert winners == [win], f"round {rnd}: only {win} gets it, got {winners}"
            await u.quiet(0.2)
            ts = tasks_by_id(m)
            assert ts[q["task"]]["state"] == "assigned" and ts[q["task"]]["agent"] == win, ts
            # The winner finishes; everybody leaves again for the next round.
            wc = conns[names.index(win)]
            await wc.move(q["task"], "done")
            await expect_task(u, q["task"], "done", msg=q["seq"], agent=win)
            for n, c in zip(names, conns):
                ag[n] = c
            await asyncio.gather(*(c.close() for c in conns))
            await wait_offline(u, *names)


# ---- 9. meshctl tasks ---------------------------------------------------------------------

@async_test
async def test_meshctl_tasks_lists_and_filters_what_the_protocol_reported():
    async with daemon() as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        ag.update(await agents(m, ["b1"], skills=("summarize",)))
        t0 = now_ms()
        done = await send_skill(u, "d", state="assigned", agent="a1")
        await ag["a1"].move(done["task"], "working")
        await ag["a1"].move(done["task"], "done", result=1)
        working = await send_skill(u, "w", state="assigned", agent="a1")
        await ag["a1"].move(working["task"], "working")
        failed = await send_skill(u, "f", state="assigned", agent="b1", skill="summarize")
        await ag["b1"].move(failed["task"], "failed", reason="no model")
        # An untracked send is no task meshctl lists.
        untracked = await send_skill(u, "x", state=("assigned", "done"), agent="a1",
                                     task=None)
        await ag["a1"].status("busy")
        deadline = now_ms() + 600000
        queued = await send_skill(u, "q", state="queued", task={"deadline": deadline})
        canceled = await send_skill(u, "c", state="queued")
        await u.move(canceled["task"], "canceled")
        await ag["b1"].status("busy")
        assigned = await send_skill(u, "a", state="queued", skill="summarize")
        await ag["b1"].status("available")
        for t, body in ((done, "d"), (working, "w")):
            await expect_work(ag["a1"], t["task"], body)
        x = await ag["a1"].next()
        assert x["type"] == "msg" and x["body"] == "x", x
        await expect_work(ag["b1"], failed["task"], "f", skill="summarize")
        await expect_work(ag["b1"], assigned["task"], "a", skill="summarize")
        # The protocol's view, from the sender's task frames (last state of each task).
        want = {}
        for t, skill in ((done, SKILL), (working, SKILL), (failed, "summarize"),
                         (queued, SKILL), (canceled, SKILL), (assigned, "summarize")):
            want[t["task"]] = {"skill": skill, "state": t["state"], "agent": t.get("agent")}
        for f in await collect(u, 0.5):
            if f["type"] == "task" and f["task"]["id"] in want:
                want[f["task"]["id"]]["state"] = f["task"]["state"]
                want[f["task"]["id"]]["agent"] = f["task"].get("agent")
        expected = {done["task"]: ("done", "a1"), working["task"]: ("working", "a1"),
                    failed["task"]: ("failed", "b1"), queued["task"]: ("queued", None),
                    canceled["task"]: ("canceled", None),
                    assigned["task"]: ("assigned", "b1")}
        assert {k: (v["state"], v["agent"]) for k, v in want.items()} == expected, want
        t1 = now_ms()

        everything = tasks(m)
        assert [t["id"] for t in everything] == sorted(want, reverse=True), everything
        assert untracked["task"] not in [t["id"] for t in everything]
        for t in everything:
            w = want[t["id"]]
            assert (t["state"], t["agent"], t["skill"], t["from"]) == (
                w["state"], w["agent"], w["skill"], "u"), (t, w)
            assert t0 - 2000 <= t["created_ms"] <= t["updated_ms"] <= t1 + 2000, t
            assert t["deadline_ms"] == (deadline if t["id"] == queued["task"] else None), t

        def ids(*args):
            return [t["id"] for t in tasks(m, *args)]

        def want_ids(state=None, skill=None):
            return sorted((k for k, v in want.items()
                           if (state is None or v["state"] == state)
                           and (skill is None or v["skill"] == skill)), reverse=True)

        for state in ("queued", "assigned", "working", "done", "failed", "expired",
                      "canceled"):
            assert ids("--state", state) == want_ids(state=state), state
        for skill in (SKILL, "summarize", "nothing"):
            assert ids("--skill", skill) == want_ids(skill=skill), skill
        assert ids("--state", "failed", "--skill", "summarize") == [failed["task"]]
        assert ids("--state", "failed", "--skill", SKILL) == []
        assert ids("--state", "queued", "--skill", SKILL) == [queued["task"]]

        # Without --json: a table with a header, one row per task, newest first.
        text = m.ctl("tasks", json=False)
        lines = [l for l in text.splitlines() if l.strip()]
        assert lines[0].split() == ["ID", "STATE", "SKILL", "FROM", "AGENT", "AGE",
                                    "DEADLINE", "(UTC)"], text
        rows = [l.split() for l in lines[1:]]
        assert [int(r[0]) for r in rows] == sorted(want, reverse=True), text
        for r in rows:
            w = want[int(r[0])]
            assert r[1:5] == [w["state"], w["skill"], "u", w["agent"] or "-"], (r, w)
            assert len(r) == 7, r
            if int(r[0]) == queued["task"]:
                assert r[6].endswith("Z") and r[6] != "-", r
            else:
                assert r[6] == "-", r
        text = m.ctl("tasks", "--state", "working", json=False)
        lines = [l for l in text.splitlines() if l.strip()]
        assert [int(l.split()[0]) for l in lines[1:]] == [working["task"]], text


# ---- 10. replay ---------------------------------------------------------------------------

@async_test
async def test_sender_device_gets_every_task_frame_on_resume_in_seq_order():
    async with daemon() as m:
        tu = m.add_user("u")
        phone = await join(m, tu, "u", device="phone")
        await phone.close()
        laptop = await join(m, tu, "u", device="laptop")
        ag = await agents(m, ["a1"])
        a1 = ag["a1"]
        t1 = await send_skill(laptop, {"n": 1}, state="assigned", agent="a1", id="r1")
        await expect_work(a1, t1["task"], {"n": 1})
        await a1.move(t1["task"], "working")
        await expect_task(laptop, t1["task"], "working", msg=t1["seq"], agent="a1")
        await a1.move(t1["task"], "done", result={"n": 1, "ok": True})
        await expect_task(laptop, t1["task"], "done", msg=t1["seq"], agent="a1",
                          result={"n": 1, "ok": True})
        d2 = now_ms() + 600000
        t2 = await send_skill(laptop, {"n": 2}, state="assigned", agent="a1",
                              task={"deadline": d2})
        await expect_work(a1, t2["task"], {"n": 2}, deadline=d2)
        await a1.move(t2["task"], "failed", reason="no model")
        await expect_task(laptop, t2["task"], "failed", msg=t2["seq"], agent="a1",
                          reason="no model")
        await a1.status("busy")
        t3 = await send_skill(laptop, {"n": 3}, state="queued")
        await laptop.move(t3["task"], "canceled", reason="never mind")
        await expect_task(laptop, t3["task"], "canceled", msg=t3["seq"], reason="never mind")
        await a1.status("available")
        t4 = await send_skill(laptop, {"n": 4}, state="assigned", agent="a1")
        await expect_work(a1, t4["task"], {"n": 4})
        await laptop.quiet(0.2)
        # What the laptop saw, by seq: its acks (its own sends) and every task frame.
        live = {f["seq"]: f for f in laptop.log}
        sends = {t["seq"]: t for t in (t1, t2, t3, t4)}
        assert set(sends) <= set(live), (sends, live)
        task_frames = [f for f in laptop.log
                       if f["type"] == "task" and not is_creation_frame(f)]
        # t1 assigned, working, done; t2 assigned, failed; t3 canceled; t4 assigned.
        assert len(task_frames) == 7, task_frames

        async def check_replay(conn):
            got = conn.replay
            seqs = [f["seq"] for f in got]
            assert seqs == sorted(set(seqs)), f"replay in seq order, once each: {seqs}"
            assert seqs == sorted(live), f"replay {seqs}, laptop saw {sorted(live)}"
            for f in got:
                if f["seq"] in sends:
                    a = sends[f["seq"]]
                    assert f["type"] == "msg" and f["from"] == "u", f
                    assert f["to"] == "skill:translate" and f["task"]["id"] == a["task"], f
                    # The sender's own copy, as for any send (RECEIVING: id when given).
                    assert f.get("id") == ("r1" if a is t1 else None), f
                else:
                    assert f["type"] == "task" and same_json(f, live[f["seq"]]), (
                        f"replayed {f}, live {live[f['seq']]}")
            conn.pending.clear()  # all checked above
            await conn.quiet(0.2)

        # The phone resumes from where it stopped; a new tablet gets the whole log.
        phone = await rejoin(m, phone)
        await check_replay(phone)
        await check_replay(await join(m, tu, "u", device="tablet"))


# ---- 11. queue TTL ------------------------------------------------------------------------

@async_test
async def test_queue_ttl_expires_tracked_and_untracked_sends():
    async with daemon(queue_ttl_s=1) as m:
        u = await user(m)
        ag = await agents(m, ["a1"], online=False, observer=u)
        t0 = time.monotonic()
        tracked = await send_skill(u, "tracked", state="queued")
        untracked = await send_skill(u, "untracked", state="queued", task=None)
        for t in (tracked, untracked):
            await expect_task(u, t["task"], "expired", msg=t["seq"], reason="queue_ttl",
                              timeout=10)
        took = time.monotonic() - t0
        assert took >= 0.9, f"expired {took:.2f}s after the send, queue_ttl_s = 1"
        await u.quiet(0.2)
        ts = tasks_by_id(m)
        assert set(ts) == {tracked["task"]}, ts
        assert ts[tracked["task"]]["state"] == "expired" and ts[tracked["task"]]["agent"] is None
        # Nothing of it reaches an agent that connects later.
        a1 = await rejoin(m, ag["a1"])
        assert a1.welcome["seq"] == 0 and not a1.replay, (a1.welcome, a1.replay)
        await a1.quiet(0.3)


# ---- queue cap ----------------------------------------------------------------------------

@async_test
async def test_full_queue_refuses_with_rate_limited():
    async with daemon(queue_cap=2) as m:
        u = await user(m)
        ag = await agents(m, ["a1"], online=False, observer=u)
        q1 = await send_skill(u, 1, state="queued")
        q2 = await send_skill(u, 2, state="queued")
        await u.quiet(0.1)
        e = await u.refused({"type": "send", "to": "skill:translate", "task": {}, "body": 3},
                            "rate_limited")
        assert "retry_after_ms" not in e or (type(e["retry_after_ms"]) is int
                                             and e["retry_after_ms"] >= 1), e
        e = await u.refused({"type": "send", "to": "skill:translate", "body": 3},
                            "rate_limited")
        assert set(tasks_by_id(m)) == {q1["task"], q2["task"]}
        # Not stored: the queue drains into a1, and the next send takes the next seq.
        a1 = await rejoin(m, ag["a1"])
        await expect_work(a1, q1["task"], 1)
        await expect_work(a1, q2["task"], 2)
        for q in (q1, q2):
            await expect_task(u, q["task"], "assigned", msg=q["seq"], agent="a1")
        last = u.last_seq
        t = await send_skill(u, 4, state="assigned", agent="a1")
        assert t["seq"] == last + 1, (last, t)
        await expect_work(a1, t["task"], 4)
        # queue_cap is reloadable: 1 now.
        m.write_config(extra=config(queue_cap=1))
        m.ctl("reload")
        await a1.close()
        await wait_offline(u, "a1")
        await send_skill(u, 5, state="queued")
        await u.refused({"type": "send", "to": "skill:translate", "task": {}, "body": 6},
                        "rate_limited")


# ---- 12. bad input ------------------------------------------------------------------------

@async_test
async def test_refused_sends_and_task_frames():
    async with daemon() as m:
        u = await user(m)
        ag = await agents(m, ["a1"])
        ag.update(await agents(m, ["b1"], skills=("other",)))  # lists a skill, not SKILL
        send = {"type": "send", "body": 1}
        await u.refused({**send, "to": "skill:"}, "unknown_peer")
        await u.refused({**send, "to": "skill:nobody-lists-this"}, "unknown_peer")
        for bad_task in (5, "x", True, [1], [{}]):
            await u.refused({**send, "to": "skill:translate", "task": bad_task}, "bad_frame")
        await u.refused({**send, "to": "skill:translate",
                         "task": {"deadline": now_ms() - 1000}}, "bad_frame")
        await u.refused({**send, "to": "skill:translate",
                         "task": {"deadline": "tomorrow"}}, "bad_frame")
        # "task" only goes with a send to a skill.
        await u.refused({**send, "to": "b1", "task": {}}, "bad_frame")
        await u.quiet(0.1)
        await ag["a1"].quiet(0.1)
        await ag["b1"].quiet(0.1)
        assert tasks(m) == []
        # Nothing was stored: the first good send takes seq 1.
        t = await send_skill(u, "ok", state="assigned", agent="a1")
        assert t["seq"] == 1, t
        await expect_work(ag["a1"], t["task"], "ok")
        tid = t["task"]
        a1 = ag["a1"]
        await a1.refused({"type": "task", "id": tid + 1000, "state": "done"}, "not_found")
        await u.refused({"type": "task", "id": tid + 1000, "state": "canceled"}, "not_found")
        await a1.refused({"type": "task", "id": tid, "state": "paused"}, "bad_frame")
        await a1.refused({"type": "task", "id": tid, "state": 3}, "bad_frame")
        await a1.refused({"type": "task", "id": tid}, "bad_frame")
        await a1.refused({"type": "task", "id": str(tid), "state": "working"}, "bad_frame")
        await a1.refused({"type": "task", "state": "working"}, "bad_frame")
        await a1.refused({"type": "task", "id": tid, "state": "failed", "reason": "r" * 201},
                         "bad_frame")
        await a1.refused({"type": "task", "id": tid, "state": "failed", "reason": 7},
                         "bad_frame")
        assert tasks_by_id(m)[tid]["state"] == "assigned"
        await u.quiet(0.1)
        # An untracked send has no states to move: conflict.
        x = await send_skill(u, "untracked", state=("assigned", "done"), agent="a1", task=None)
        f = await a1.next()
        assert f["type"] == "msg" and f["body"] == "untracked", f
        await a1.refused({"type": "task", "id": x["task"], "state": "done"}, "conflict")
        await u.refused({"type": "task", "id": x["task"], "state": "canceled"}, "conflict")
        # The man page does not say whether the sender of an untracked send gets a task
        # frame for its assignment (meshd sends "assigned"); if it does, it is about x.
        for f in await collect(u, 0.3):
            assert f["type"] == "task" and f["task"]["id"] == x["task"], f
            assert f["task"]["state"] in ("assigned", "done") and f["task"]["msg"] == x["seq"]
        # meshctl tasks refuses a state or skill that cannot be.
        assert m.ctl_fail("tasks", "--state", "paused")["code"] == "bad_request"
        assert m.ctl_fail("tasks", "--skill", "no such skill")["code"] == "bad_request"
        # The task is still fine to work on.
        await a1.move(tid, "working")
        await a1.move(tid, "working")  # working twice is fine
        await a1.move(tid, "failed", reason="r" * 200)
        await expect_task(u, tid, "working", msg=t["seq"], agent="a1")
        # Whether the second working (no change of state) is a frame of its own is open.
        f = await u.next()
        if f["task"]["state"] == "working":
            f = await u.next()
        assert f["type"] == "task" and f["task"]["state"] == "failed", f
        assert f["task"]["reason"] == "r" * 200, f
        await u.quiet(0.1)


@async_test
async def test_skill_send_without_route_skills_is_unknown_peer():
    # The harness's default modules.load: no route_skills.
    async with Meshd(extra="[presence]\ngrace_ms = 0\naway_after_s = 0\n") as m:
        assert "route_skills" not in m.opts["load"]
        u = await user(m)
        await agents(m, ["a1"])
        await u.refused({"type": "send", "to": "skill:translate", "task": {}, "body": 1},
                        "unknown_peer")
        await u.refused({"type": "send", "to": "skill:translate", "body": 1}, "unknown_peer")
        await u.quiet(0.1)
