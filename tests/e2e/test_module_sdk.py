# tests/e2e/test_module_sdk: the module ABI as a module author meets it (meshd-modules(3)).
#
# The example module modules/examples/wordfilter is built the way a user builds one: meshd is
# installed (meson install --destdir), the example's own Makefile compiles it with the
# installed header found by pkg-config (meshd.pc) and nothing else, and a real meshd loads
# it. Then its section is checked like a core section (FILE:LINE:COL, --check, reload).

import os
import shutil
import subprocess
import tempfile

import pytest

from harness import Meshd, async_test, meshd_bin
from test_config import error_lines, run_meshd

BUILD_ROOT = os.environ.get("MESHD_BUILD_ROOT")
MESON = os.environ.get("MESON") or shutil.which("meson")


def run(cmd, env=None, cwd=None, timeout=120):
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{out}"
    return out


@pytest.fixture(scope="module")
def wordfilter_so():
    """Install meshd into a temp root, build the example from the installed copy of its
    source with its Makefile, and return the module's path."""
    assert BUILD_ROOT, "meson passes MESHD_BUILD_ROOT (the build dir to install from)"
    assert MESON, "meson is needed to install the build"
    root = tempfile.mkdtemp(prefix="meshd-sdk-")
    try:
        dest = os.path.join(root, "dest")
        run([MESON, "install", "-C", BUILD_ROOT, "--destdir", dest, "--no-rebuild", "--quiet"])
        pcs = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs if f == "meshd.pc"]
        headers = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs
                   if f == "module.h"]
        examples = [d for d, _, fs in os.walk(dest) if "wordfilter.c" in fs]
        assert len(pcs) == 1 and len(headers) == 1 and len(examples) == 1, (pcs, headers,
                                                                             examples)
        assert headers[0].endswith(os.path.join("include", "meshd", "module.h")), headers
        src = os.path.join(root, "wordfilter")
        shutil.copytree(examples[0], src)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PKG_CONFIG_PATH": os.path.dirname(pcs[0]),
            "PKG_CONFIG_LIBDIR": os.path.dirname(pcs[0]),  # only the installed meshd.pc
            "PKG_CONFIG_SYSROOT_DIR": dest,
        }
        out = run(["make", "-C", src], env=env)
        # The compile line must take the header from the installed tree, not the source tree.
        assert f"-I{dest}" in out, out
        so = os.path.join(src, "wordfilter.so")
        assert os.path.exists(so)
        # `make install` puts it where meshd.pc says modules go.
        staged = os.path.join(root, "staged")
        run(["make", "-C", src, "install", f"DESTDIR={staged}"], env=env)
        installed = [os.path.join(d, f) for d, _, fs in os.walk(staged) for f in fs]
        assert len(installed) == 1 and installed[0].endswith(
            os.path.join("lib", "meshd", "modules", "wordfilter.so")), installed
        yield so
    finally:
        shutil.rmtree(root, ignore_errors=True)


def modules_with(m, so):
    """A modules dir with the shipped modules and the example."""
    mods = os.path.join(m.tmp, "sdk_modules")
    os.makedirs(mods)
    real = m.opts["modules_dir"]
    for f in os.listdir(real):
        os.symlink(os.path.join(real, f), os.path.join(mods, f))
    os.symlink(so, os.path.join(mods, "wordfilter.so"))
    return mods


LOAD = ["auth_token", "route_direct", "wordfilter"]


def sdk_meshd(so, extra, start=True):
    m = Meshd(start=False, load=LOAD, extra=extra)
    m.write_config(modules_dir=modules_with(m, so))
    m._want_start = start
    return m


@async_test
async def test_example_module_refuses_the_word(wordfilter_so):
    async with sdk_meshd(wordfilter_so, '[wordfilter]\nword = "Classified"\n') as m:
        assert "event=module.loaded name=wordfilter version=1.0.0" in m.log_text()
        alice, bob = m.add_user("alice"), m.add_user("bob")
        a = await m.login(alice)
        b = await m.login(bob)
        await a.send("bob", {"text": "the weather is fine"}, ref="r1")
        ok = await a.expect("ack", ref="r1")
        await a.send("bob", {"text": "this is CLASSIFIED stuff"}, ref="r2")
        e = await a.expect_error("forbidden", ref="r2")
        assert "wordfilter" in e["message"], e
        msg = await b.expect("msg")
        assert msg["body"] == {"text": "the weather is fine"} and msg["seq"] == ok["seq"]
        await b.assert_no_frame()
        # Refused means not stored: the next send takes the very next seq.
        await a.send("bob", {"text": "fine again"}, ref="r3")
        nxt = await a.expect("ack", ref="r3")
        assert nxt["seq"] == ok["seq"] + 1, (ok, nxt)


@async_test
async def test_reload_applies_new_word_without_dropping(wordfilter_so):
    async with sdk_meshd(wordfilter_so, '[wordfilter]\nword = "alpha"\n') as m:
        a = await m.login(m.add_user("alice"))
        m.add_user("bob")
        await a.send("bob", "alpha", ref="1")
        await a.expect_error("forbidden", ref="1")
        m.write_config(extra='[wordfilter]\nword = "beta"\ncase_sensitive = true\n')
        r = m.ctl("reload")
        assert "wordfilter.word" in r["applied"] and "wordfilter.case_sensitive" in r["applied"], r
        await a.send("bob", "alpha", ref="2")
        await a.expect("ack", ref="2")
        await a.send("bob", "BETA", ref="3")
        await a.expect("ack", ref="3")
        await a.send("bob", "beta", ref="4")
        await a.expect_error("forbidden", ref="4")
        # A bad section is refused with its position; the running word stays.
        m.write_config(extra='[wordfilter]\nword = "gamma"\ncase_sensitive = "yes"\n')
        e = m.ctl_fail("reload")
        assert e["code"] == "bad_config", e
        assert f"{m.config_path}:" in e["message"], e
        assert "wordfilter.case_sensitive must be a boolean" in e["message"], e
        await a.send("bob", "beta", ref="5")
        await a.expect_error("forbidden", ref="5")
        await a.send("bob", "gamma", ref="6")
        await a.expect("ack", ref="6")
        assert a.close_code is None


def test_section_checked_at_check_and_start(wordfilter_so):
    m = sdk_meshd(wordfilter_so, '[wordfilter]\nwrod = "x"\ncase_sensitive = 3\n', start=False)
    with m:
        text = open(m.config_path).read().splitlines()
        wrod_line = text.index('wrod = "x"') + 1
        for args in (["--check", "--config", m.config_path], ["--config", m.config_path]):
            rc, out, err = run_meshd(*args)
            assert rc == 1, (args, rc, out, err)
            found = error_lines(err, m.config_path)
            assert found.get((wrod_line, 1)) == ("unknown key wordfilter.wrod (did you mean "
                                                 "wordfilter.word?)"), err
            assert found.get((wrod_line + 1, 18)) == (
                "wordfilter.case_sensitive must be a boolean (compare letters exactly), got 3"), err
            assert "event=server.ready" not in err


def test_check_accepts_good_section_and_init_failure_names_module(wordfilter_so):
    with sdk_meshd(wordfilter_so, '[wordfilter]\nword = "x"\n', start=False) as m:
        rc, out, err = run_meshd("--check", "--config", m.config_path)
        assert rc == 0 and out.strip() == f"{m.config_path}: ok", (rc, out, err)
        # No word: the module's init refuses, meshd names the module and says what to set.
        m.write_config(extra="")
        rc, out, err = run_meshd("--config", m.config_path)
        assert rc == 1, (rc, out, err)
        assert "event=wordfilter.no_word module=wordfilter" in err, err
        assert "wordfilter.so" in err and "its init failed" in err, err
