# tests/e2e/test_directory: profiles and who (meshd-protocol(7), PRESENCE AND DIRECTORY):
# profiles published and kept across a restart, who filtered by skill, kind and online and
# paged with next, last_seen, hidden principals (meshctl hide/unhide, meshctl who), profiles
# deleted with their principal, and bad frames naming their field.

import json

from harness import Meshd, async_test, now_ms

PRESENCE = "[presence]\ngrace_ms = 0\n"


async def publish(c, ref="p", **fields):
    await c.send_frame({"type": "profile", "ref": ref, **fields})
    await c.expect("ok", ref=ref)


async def who(c, ref="q", **filters):
    await c.send_frame({"type": "who", "ref": ref, **filters})
    return await c.expect("who", ref=ref)


def ids(reply):
    return [p["id"] for p in reply["principals"]]


async def who_all(c, **filters):
    """Every page: the ids in order, and how many pages it took."""
    got, pages, after = [], 0, None
    while True:
        f = dict(filters)
        if after is not None:
            f["after"] = after
        r = await who(c, ref=f"page{pages}", **f)
        pages += 1
        got += ids(r)
        assert pages < 100, "who never ends"
        if "next" not in r:
            return got, pages
        assert isinstance(r["next"], str) and r["next"], r
        after = r["next"]


async def directory(m):
    """alice (user, online), bob (user), helper and translator (agents; translator online);
    helper and translator translate, translator also summarizes."""
    ta, tb = m.add_user("alice"), m.add_user("bob")
    th, tt = m.add_user("helper", agent=True), m.add_user("translator", agent=True)
    ch = await m.login(th, label="helper")
    await publish(ch, display_name="Helper", skills=["Translate"], metadata={"v": 1})
    await ch.close()
    ct = await m.login(tt, label="translator")
    await publish(ct, display_name="Translator", description="EN/DE",
                  skills=["summarize", "translate"], metadata={"model": "m-7"})
    ca = await m.login(ta, label="alice")
    return ca, ct, tb


@async_test
async def test_who_filters_by_skill_kind_and_online():
    async with Meshd(extra=PRESENCE) as m:
        ca, ct, _ = await directory(m)
        r = await who(ca)
        assert ids(r) == ["alice", "bob", "helper", "translator"] and "next" not in r, r
        by_id = {p["id"]: p for p in r["principals"]}
        t = by_id["translator"]
        assert t["kind"] == "agent" and t["online"] is True and t["status"] == "available", t
        assert t["note"] == "" and abs(t["last_seen"] - now_ms()) < 5000, t
        assert t["profile"] == {"display_name": "Translator", "description": "EN/DE",
                                "skills": ["summarize", "translate"],
                                "metadata": {"model": "m-7"}}, t
        assert by_id["helper"]["profile"]["skills"] == ["translate"], by_id["helper"]
        assert by_id["helper"]["online"] is False and type(by_id["helper"]["last_seen"]) is int
        assert by_id["bob"]["profile"] is None and by_id["bob"]["last_seen"] is None, by_id["bob"]
        assert "hidden" not in t, t

        assert ids(await who(ca, skill="translate")) == ["helper", "translator"]
        assert ids(await who(ca, skill="TRANSLATE")) == ["helper", "translator"]
        assert ids(await who(ca, skill="summarize")) == ["translator"]
        assert ids(await who(ca, skill="cooking")) == []
        assert ids(await who(ca, skill="translate", online=True)) == ["translator"]
        assert ids(await who(ca, skill="translate", online=False)) == ["helper"]
        assert ids(await who(ca, kind="agent")) == ["helper", "translator"]
        assert ids(await who(ca, kind="user")) == ["alice", "bob"]
        assert ids(await who(ca, online=True)) == ["alice", "translator"]
        assert ids(await who(ca, online=False)) == ["bob", "helper"]
        assert ids(await who(ca, kind="user", online=True)) == ["alice"]
        # Filters follow changes: a new profile replaces the skills, going offline shows.
        await publish(ct, skills=["summarize"])
        assert ids(await who(ca, skill="translate")) == ["helper"]
        await ct.close()
        await ca.barrier()
        assert ids(await who(ca, online=True)) == ["alice"]


@async_test
async def test_who_pages_with_next():
    async with Meshd(extra=PRESENCE) as m:
        names = [f"p{i:02d}" for i in range(23)]
        tokens = {n: m.add_user(n, agent=(i % 2 == 0)) for i, n in enumerate(names)}
        c = await m.login(tokens["p00"])
        for n in names[1:8]:  # some with a skill
            x = await m.login(tokens[n], label=n)
            await publish(x, skills=["s"])
            await x.close()
        r = await who(c, limit=5)
        assert ids(r) == names[:5] and r["next"] == "p04", r
        r2 = await who(c, limit=5, after=r["next"])
        assert ids(r2) == names[5:10], r2
        got, pages = await who_all(c, limit=5)
        assert got == names and pages == 5, (got, pages)
        got, pages = await who_all(c, limit=500)
        assert got == names and pages == 1
        got, _ = await who_all(c, limit=2, kind="agent")
        assert got == names[0::2], got
        got, pages = await who_all(c, limit=3, skill="s")
        assert got == names[1:8] and pages == 3, (got, pages)
        # The last page has no next, also when it is exactly full.
        r = await who(c, limit=7, skill="s")
        assert ids(r) == names[1:8] and "next" not in r, r
        # Default limit 50.
        assert ids(await who(c)) == names


@async_test
async def test_profile_and_last_seen_survive_restart():
    async with Meshd(extra=PRESENCE) as m:
        tb = m.add_user("bot", agent=True)
        ta = m.add_user("alice")
        cb = await m.login(tb, label="bot")
        meta = {"owner": "ops", "version": "1.2", "nested": {"list": [1, 2.5, None, True]}}
        await publish(cb, display_name="Bot ü", description="does things",
                      skills=["a.b", "c_d", "e-f"], metadata=meta)
        await cb.close()
        await m.restart()
        ca = await m.login(ta)
        r = await who(ca, skill="c_d")
        assert ids(r) == ["bot"], r
        p = r["principals"][0]
        assert p["profile"] == {"display_name": "Bot ü", "description": "does things",
                                "skills": ["a.b", "c_d", "e-f"], "metadata": meta}, p
        assert p["online"] is False and type(p["last_seen"]) is int, p
        assert p["last_seen"] <= now_ms(), p
        # An empty profile frame clears it.
        cb = await m.login(tb, label="bot/again")
        await publish(cb)
        p = (await who(ca, kind="agent"))["principals"][0]
        assert p["profile"] == {"display_name": "", "description": "", "skills": [],
                                "metadata": {}}, p
        assert ids(await who(ca, skill="c_d")) == []


@async_test
async def test_hidden_principals_not_listed_but_reachable():
    async with Meshd(extra=PRESENCE) as m:
        ca, ct, tb = await directory(m)
        out = m.ctl("hide", "Translator", json=False)
        assert "translator" in out and "hid" in out, out
        assert m.ctl("hide", "translator") == {"id": "translator", "hidden": True}
        assert ids(await who(ca)) == ["alice", "bob", "helper"]
        assert ids(await who(ca, skill="translate")) == ["helper"]
        assert ids(await who(ca, online=True)) == ["alice"]
        # Still reachable and watchable by name.
        await ca.send("translator", "hi", ref="s")
        await ca.expect("ack", ref="s")
        assert (await ct.expect("msg"))["body"] == "hi"
        await ca.send_frame({"type": "watch", "ids": ["translator"], "ref": "w"})
        w = await ca.expect("watch", ref="w")
        assert w["presence"][0]["id"] == "translator" and w["presence"][0]["online"] is True, w
        # The admin sees everyone, hidden ones marked.
        listing = m.ctl("who")["principals"]
        assert [p["id"] for p in listing] == ["alice", "bob", "helper", "translator"], listing
        assert [p["hidden"] for p in listing] == [False, False, False, True], listing
        table = m.ctl("who", json=False)
        lines = table.splitlines()
        assert lines[0].split()[:4] == ["NAME", "KIND", "ONLINE", "STATUS"], table
        row = [line for line in lines if line.startswith("translator")]
        assert row and "(hidden)" in row[0] and "summarize,translate" in row[0], table
        assert "(hidden)" not in [line for line in lines if line.startswith("helper")][0]
        # Hidden survives a restart; unhide lists it again.
        await m.restart()
        ca = await m.login(m.add_user("carol"), label="carol")
        assert "translator" not in ids(await who(ca))
        assert m.ctl("unhide", "translator") == {"id": "translator", "hidden": False}
        assert "translator" in ids(await who(ca))
        e = m.ctl_fail("hide", "nobody")
        assert e["code"] == "not_found" and "nobody" in e["message"], e
        e = m.ctl_fail("hide", "Bad Name")
        assert e["code"] == "bad_name", e


@async_test
async def test_meshctl_who_filters():
    async with Meshd(extra=PRESENCE) as m:
        await directory(m)
        def listed(*args):
            return [p["id"] for p in m.ctl("who", *args)["principals"]]
        assert listed("--skill", "translate") == ["helper", "translator"]
        assert listed("--kind", "agent", "--online") == ["translator"]
        assert listed("--online") == ["alice", "translator"]
        assert listed("--kind", "user") == ["alice", "bob"]
        p = m.ctl("who", "--skill", "summarize")["principals"][0]
        assert p["profile"]["metadata"] == {"model": "m-7"} and p["online"] is True, p
        text = m.ctl("who", "--skill", "nothing", json=False)
        assert text == "no principals match\n", text
        for args, word in ((["who", "--kind", "robot"], "--kind"),
                           (["sessions", "--online"], "--online"),
                           (["status", "--skill", "x"], "--skill"),
                           (["who", "extra"], "extra"),
                           (["hide"], "NAME")):
            rc, out, err = m.ctl_raw(*args)
            assert rc == 2, (args, rc, out, err)
            assert word in err and json.loads(out)["error"]["code"] == "usage", (args, out, err)
        e = m.ctl_fail("who", "--skill", "no spaces")
        assert e["code"] == "bad_request" and "skill" in e["message"], e


@async_test
async def test_profile_goes_with_its_principal():
    async with Meshd(extra=PRESENCE) as m:
        tb = m.add_user("bot", agent=True)
        ca = await m.login(m.add_user("alice"))
        cb = await m.login(tb, label="bot")
        await publish(cb, skills=["x"])
        await cb.send_frame({"type": "status", "status": "dnd", "ref": "s"})
        await cb.expect("ok", ref="s")
        m.ctl("hide", "bot")
        m.ctl("user", "del", "bot")
        await cb.wait_closed()
        m.add_user("bot", agent=True)
        r = await who(ca, kind="agent")
        assert ids(r) == ["bot"], r
        p = r["principals"][0]
        assert p["profile"] is None and p["status"] == "available" and p["last_seen"] is None, p
        assert ids(await who(ca, skill="x")) == []


@async_test
async def test_bad_directory_frames():
    async with Meshd(extra=PRESENCE + "[directory]\nmax_profile_bytes = 300\n") as m:
        c = await m.login(m.add_user("alice"))
        big = "d" * 300
        cases = [
            ({"type": "profile", "description": big}, "too_large", "max_profile_bytes"),
            ({"type": "profile", "display_name": 5}, "bad_frame", '"display_name"'),
            ({"type": "profile", "description": ["x"]}, "bad_frame", '"description"'),
            ({"type": "profile", "skills": "translate"}, "bad_frame", '"skills"'),
            ({"type": "profile", "skills": ["ok", "not ok"]}, "bad_frame", '"skills"[1]'),
            ({"type": "profile", "skills": ["x" * 65]}, "bad_frame", '"skills"[0]'),
            ({"type": "profile", "skills": [""]}, "bad_frame", '"skills"[0]'),
            ({"type": "profile", "skills": [f"s{i}" for i in range(65)]}, "bad_frame",
             '"skills"'),
            ({"type": "profile", "metadata": [1]}, "bad_frame", '"metadata"'),
            ({"type": "who", "kind": "robot"}, "bad_frame", '"kind"'),
            ({"type": "who", "skill": "a b"}, "bad_frame", '"skill"'),
            ({"type": "who", "skill": 5}, "bad_frame", '"skill"'),
            ({"type": "who", "online": "yes"}, "bad_frame", '"online"'),
            ({"type": "who", "limit": 0}, "bad_frame", '"limit"'),
            ({"type": "who", "limit": 501}, "bad_frame", '"limit"'),
            ({"type": "who", "after": "Not A Name"}, "bad_frame", '"after"'),
        ]
        for i, (frame, code, names) in enumerate(cases):
            ref = f"b{i}"
            await c.send_frame({**frame, "ref": ref})
            e = await c.expect_error(code, ref=ref)
            assert names in e["message"], f"{frame}: the message should name {names}: {e}"
        # Nothing was published by the refused frames; a fitting one is accepted.
        p = (await who(c))["principals"][0]
        assert p["profile"] is None, p
        await publish(c, description="d" * 200, ref="fits")
        await m.restart()
        c = await m.login(m.add_user("bob"), label="bob")
        p = (await who(c))["principals"][0]
        assert p["id"] == "alice" and p["profile"]["description"] == "d" * 200, p
