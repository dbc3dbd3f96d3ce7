# tests/e2e/test_config: meshd's command line and config errors (contract §4-5; design.md
# "Config", "Daemon log lines"): --check, --version, FILE:LINE:COL, module loading.

import json
import os
import re
import subprocess
import tempfile
import time

from harness import Meshd, async_test, meshd_bin


def run_meshd(*args, timeout=15, cwd=None):
    p = subprocess.Popen([meshd_bin(), *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"meshd {' '.join(args)} still running after {timeout}s\n"
                             f"stderr: {err.decode(errors='replace')}")
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def error_lines(text, path):
    """{(line, col): message} for every `PATH:LINE:COL: message` line."""
    rx = re.compile(re.escape(path) + r":(\d+):(\d+): (.+)$")
    found = {}
    for line in text.splitlines():
        m = rx.match(line)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = m.group(3)
    return found


def base_config(m, limits_lines=""):
    return f"""# meshd e2e config
[server]
listen = ["127.0.0.1:0"]
data_dir = "{m.data_dir}"

[control]
socket = "{m.socket}"

[modules]
dir = "{m.opts['modules_dir']}"
load = ["auth_token", "route_direct"]

[limits]
{limits_lines}"""


# Line numbers below count from the first line of base_config(): [limits] is line 13.
BAD_LIMITS = """max_frame = 5
hello_timeout_ms = "fast"
  colour = "blue"
"""
EXPECTED_BAD = {
    (14, 13): ("max_frame", "1024"),        # bad value: the value's column
    (15, 20): ("hello_timeout_ms",),        # wrong type: the value's column
    (16, 3): ("colour",),                   # unknown key: the key's column
}


def check_bad_errors(text, path):
    found = error_lines(text, path)
    assert set(found) == set(EXPECTED_BAD), (
        f"expected errors at {sorted(EXPECTED_BAD)} (line, col), got {found}\n{text}")
    for pos, words in EXPECTED_BAD.items():
        for w in words:
            assert w in found[pos], f"{path}:{pos[0]}:{pos[1]}: message lacks {w!r}: {found[pos]}"


def test_check_good_config():
    with Meshd(start=False) as m:
        rc, out, err = run_meshd("--config", m.config_path, "--check")
        assert rc == 0, (rc, out, err)
        assert not error_lines(out + err, m.config_path), out + err
        assert not os.path.exists(m.socket), "--check must not start the daemon"


def test_check_reports_every_error_with_position():
    with Meshd(start=False) as m:
        m.write_raw_config(base_config(m, BAD_LIMITS))
        rc, out, err = run_meshd("--config", m.config_path, "--check")
        assert rc == 1, (rc, out, err)
        check_bad_errors(out + err, m.config_path)


def test_check_syntax_error_position():
    with Meshd(start=False) as m:
        m.write_raw_config(base_config(m, "max_frame = = 3\n"))
        rc, out, err = run_meshd("--config", m.config_path, "--check")
        assert rc == 1, (rc, out, err)
        found = error_lines(out + err, m.config_path)
        assert found and all(line == 14 for line, _ in found), f"expected line 14: {out + err}"


def test_check_unknown_table_and_missing_file():
    with Meshd(start=False) as m:
        m.write_raw_config(base_config(m, "max_frame = 2048\n") + "\n[bogus]\nx = 1\n")
        rc, out, err = run_meshd("--config", m.config_path, "--check")
        assert rc == 1, (rc, out, err)
        found = error_lines(out + err, m.config_path)
        assert any(line in (16, 17) for line, _ in found), f"[bogus] at line 16: {out + err}"
        missing = os.path.join(m.tmp, "nope.toml")
        rc, out, err = run_meshd("--config", missing, "--check")
        assert rc == 1 and missing in out + err, (rc, out, err)


def test_check_list_values():
    with Meshd(start=False) as m:
        text = base_config(m).replace('listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:99999"]')
        m.write_raw_config(text)
        rc, out, err = run_meshd("--config", m.config_path, "--check")
        assert rc == 1, (rc, out, err)
        found = error_lines(out + err, m.config_path)
        assert [line for line, _ in found] == [3], f"bad port on line 3: {out + err}"
        m.write_raw_config(base_config(m, 'max_depth = 64\n[storage]\nsync = "sometimes"\n'))
        rc, out, err = run_meshd("--config", m.config_path, "--check")
        assert rc == 1
        found = error_lines(out + err, m.config_path)
        assert list(found) == [(16, 8)], f"sync value at 16:8: {out + err}"


def test_version():
    rc, out, err = run_meshd("--version")
    assert rc == 0, (rc, out, err)
    assert re.match(r"^meshd 0\.1\.0(\s|$)", out), f"--version printed {out!r}"


def test_start_with_bad_config_exits_1():
    with Meshd(start=False) as m:
        m.write_raw_config(base_config(m, BAD_LIMITS))
        rc, out, err = run_meshd("--config", m.config_path)
        assert rc == 1, (rc, out, err)
        check_bad_errors(err, m.config_path)
        assert "event=server.ready" not in err
        assert not os.path.exists(m.socket)


def test_relative_paths_resolve_against_config_dir():
    # design.md: relative data_dir, control.socket, modules.dir are relative to the config
    # file's directory, not to the working directory.
    with Meshd(start=False) as m:
        text = base_config(m).replace(f'"{m.data_dir}"', '"data"').replace(
            f'"{m.socket}"', '"control.sock"')
        m.write_raw_config(text)
        with tempfile.TemporaryDirectory() as elsewhere:
            m.start(cwd=elsewhere)  # server.ready must name control=<config dir>/control.sock
            assert os.path.exists(m.socket), "control.sock not created in the config dir"
            assert os.path.exists(os.path.join(m.data_dir, "meshd.db")), os.listdir(m.tmp)
            assert os.listdir(elsewhere) == [], os.listdir(elsewhere)
            assert m.ctl("status")["store"]["path"] == os.path.join(m.data_dir, "meshd.db")
            m.stop_sync()


@async_test
async def test_no_auth_module_nobody_logs_in():
    async with Meshd(load=["route_direct"]) as m:
        await m.wait_log(r"^level=warn event=modules\.none_auth ")
        rc, out, err = m.ctl_raw("user", "add", "alice")
        token = None
        if rc == 0:
            token = json.loads(out).get("token")
        c = await m.connect(token or "mshd_" + "A" * 43)
        await c.expect_error("unauthorized")
        assert await c.wait_closed() == 1008


def test_missing_module_file_exits_1():
    with Meshd(start=False, load=["auth_token", "no_such_module", "route_direct"]) as m:
        rc, out, err = run_meshd("--config", m.config_path)
        assert rc == 1, (rc, out, err)
        path = os.path.join(m.opts["modules_dir"], "no_such_module.so")
        lines = [l for l in err.splitlines() if "event=module.load_failed" in l]
        assert len(lines) == 1, err
        assert lines[0].startswith("level=error event=module.load_failed "), lines
        assert path in lines[0], f"the line must name {path}: {lines[0]}"
        # design.md: `level=error event=module.load_failed file=/path/x.so message="..."`
        assert f" file={path} " in lines[0], f"design.md wants a file={path} field: {lines[0]}"
        assert "event=server.ready" not in err
        assert not os.path.exists(m.socket)


def test_module_not_a_meshd_module_exits_1():
    with Meshd(start=False) as m:
        mods = os.path.join(m.tmp, "fake_modules")
        os.makedirs(mods)
        real = m.opts["modules_dir"]
        for f in os.listdir(real):
            os.symlink(os.path.join(real, f), os.path.join(mods, f))
        with open(os.path.join(mods, "junk.so"), "wb") as f:
            f.write(b"this is not an ELF file\n")
        m.write_config(modules_dir=mods, load=["auth_token", "route_direct", "junk"])
        rc, out, err = run_meshd("--config", m.config_path)
        assert rc == 1, (rc, out, err)
        path = os.path.join(mods, "junk.so")
        lines = [l for l in err.splitlines() if "event=module.load_failed" in l]
        assert len(lines) == 1 and path in lines[0], err
        assert f" file={path} " in lines[0], f"design.md wants a file={path} field: {lines[0]}"
        assert "event=server.ready" not in err


def test_module_with_unknown_abi_refused():
    # Issue: the loader refuses unknown ABI versions with a message naming the file.
    # tests/e2e/modules/abi_future.cc answers an ABI number this meshd does not host.
    built = os.environ.get("MESHD_TEST_MODULES_DIR")
    assert built, "meson passes MESHD_TEST_MODULES_DIR (the build dir of abi_future.so)"
    with Meshd(start=False) as m:
        mods = os.path.join(m.tmp, "abi_modules")
        os.makedirs(mods)
        real = m.opts["modules_dir"]
        for f in os.listdir(real):
            os.symlink(os.path.join(real, f), os.path.join(mods, f))
        os.symlink(os.path.join(built, "abi_future.so"), os.path.join(mods, "abi_future.so"))
        m.write_config(modules_dir=mods, load=["auth_token", "route_direct", "abi_future"])
        rc, out, err = run_meshd("--config", m.config_path)
        assert rc == 1, (rc, out, err)
        path = os.path.join(mods, "abi_future.so")
        lines = [l for l in err.splitlines() if "event=module.load_failed" in l]
        assert len(lines) == 1 and f" file={path} " in lines[0], err
        assert "module ABI 1001" in lines[0] and "hosts ABI 1" in lines[0], lines[0]
        assert "event=server.ready" not in err
