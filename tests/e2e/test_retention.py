# tests/e2e/test_retention: storage.max_log_entries and storage.retention_days delete old log
# entries in the background; welcome says the oldest seq still stored, and a device that
# would have received deleted entries is told with a `gap` frame instead of silently getting
# fewer messages. Bodies go with their last reference.

import asyncio
import os
import sqlite3
import time

from harness import Meshd, async_test


def db_count(m, sql):
    db = sqlite3.connect(f"file:{os.path.join(m.data_dir, 'meshd.db')}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


async def wait_oldest(m, token, want, timeout=10):
    """Log in until welcome.oldest reaches `want` (retention runs about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        c = await m.login(token, device="probe", resume="head", label="probe")
        oldest = c.welcome["oldest"]
        await c.close()
        if oldest >= want or time.monotonic() > deadline:
            return oldest
        await asyncio.sleep(0.3)


@async_test
async def test_log_cap_deletes_old_entries_and_signals_the_gap():
    async with Meshd(storage={"max_log_entries": 5}) as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        a = await m.login(ta, label="alice")
        # bob's phone saw the first two messages, then went away.
        phone = await m.login(tb, device="phone", label="bob/phone")
        for i in range(2):
            await a.send("bob", {"i": i}, ref=f"r{i}")
            await a.expect("ack", ref=f"r{i}")
            f = await phone.expect("msg")
            await phone.send_frame({"type": "ack", "upto": f["seq"]})
        await phone.close()
        for i in range(2, 20):
            await a.send("bob", {"i": i}, ref=f"r{i}")
            await a.expect("ack", ref=f"r{i}")
        assert await wait_oldest(m, tb, 16) == 16

        # A new device: welcome says 16, a gap covers 1..15, then 16..20 in order.
        laptop = await m.login(tb, device="laptop", label="bob/laptop")
        assert laptop.welcome["oldest"] == 16 and laptop.welcome["seq"] == 20
        assert laptop.gaps == [{"type": "gap", "from": 1, "to": 15, "reason": "retention"}]
        assert laptop.replay_frames[0]["type"] == "gap"
        assert [f["seq"] for f in laptop.replayed] == [16, 17, 18, 19, 20]
        assert [f["body"]["i"] for f in laptop.replayed] == [15, 16, 17, 18, 19]
        # The phone's cursor is 2: it missed 3..15.
        phone = await m.login(tb, device="phone", label="bob/phone")
        assert phone.gaps == [{"type": "gap", "from": 3, "to": 15, "reason": "retention"}]
        assert [f["seq"] for f in phone.replayed] == [16, 17, 18, 19, 20]
        # Resuming inside what is kept: no gap.
        tablet = await m.login(tb, device="tablet", resume=17, label="bob/tablet")
        assert tablet.gaps == [] and [f["seq"] for f in tablet.replayed] == [18, 19, 20]
        # alice's log (her 20 sends) was capped too.
        assert a.welcome["oldest"] == 1
        assert await wait_oldest(m, ta, 16) == 16
        # Bodies referenced by no log are gone: 15 of the 20 messages.
        assert db_count(m, "SELECT COUNT(*) FROM messages") == 5
        assert db_count(m, "SELECT COUNT(*) FROM log") == 10
        m.check_log_clean()
        for c in (a, laptop, phone, tablet):
            await c.close()


@async_test
async def test_retention_days_and_cap_apply_on_reload_and_survive_restart():
    async with Meshd() as m:
        ta, tb = m.add_user("alice"), m.add_user("bob")
        a = await m.login(ta, label="alice")
        for i in range(10):
            await a.send("bob", {"i": i}, ref=f"r{i}")
            await a.expect("ack", ref=f"r{i}")
        await a.close()
        # Nothing is deleted without a limit.
        await asyncio.sleep(1.5)
        assert db_count(m, "SELECT COUNT(*) FROM log") == 20
        m.write_config(storage={"max_log_entries": 1})
        m.ctl("reload")
        assert await wait_oldest(m, tb, 10) == 10  # the newest entry always stays
        await m.restart()
        b = await m.login(tb, device="new", label="bob")
        assert b.welcome["oldest"] == 10 and b.welcome["seq"] == 10
        assert b.gaps == [{"type": "gap", "from": 1, "to": 9, "reason": "retention"}]
        # Seqs continue after the restart: never reused.
        a = await m.login(ta, label="alice")
        await a.send("bob", {"i": 10}, ref="r10")
        await a.expect("ack", ref="r10")
        f = await b.expect("msg")
        assert f["seq"] == 11 and f["body"] == {"i": 10}
        await a.close()
        await b.close()
