# tests/e2e/test_bad_input: malformed frames get an error frame with the right code (and the
# client's ref) and leave the connection usable (contract §1, §3; design.md "Error codes for
# bad input"). One daemon for the module (limits.max_frame = 65536); each case uses its own
# pair of users and, after the bad frame, sends and receives a normal message on the same
# connection.

import contextlib
import itertools
import json

import pytest

from harness import Meshd, async_test, check_msg, now_ms

MAX_FRAME = 65536
_names = itertools.count(1)


@pytest.fixture(scope="module")
def daemon():
    with Meshd(limits={"max_frame": MAX_FRAME}) as m:
        yield m


@contextlib.asynccontextmanager
async def users(m):
    n = next(_names)
    a, b = f"alice{n}", f"bob{n}"
    ca = await m.login(m.add_user(a), label=a)
    cb = await m.login(m.add_user(b), label=b)
    ca.name, cb.name = a, b
    try:
        yield ca, cb
    except BaseException:
        m.print_log("test failed")
        raise
    finally:
        await ca.close()
        await cb.close()


async def still_usable(ca, cb, seq):
    """The same connection sends and receives a normal message; nothing else was stored."""
    t0 = now_ms()
    await ca.send(cb.name, {"after": "error"}, ref="ok-1")
    ack = await ca.expect("ack")
    assert ack.get("ref") == "ok-1" and ack.get("seq") == seq, (
        f"after the bad frame, expected ack ref=ok-1 seq={seq}: {ack}")
    msg = await cb.expect("msg")
    check_msg(msg, seq=seq, frm=ca.name, to=cb.name, body={"after": "error"}, t0=t0,
              t1=now_ms())
    # And the other direction, so the erroring connection also receives.
    await cb.send(ca.name, "back", ref="ok-2")
    await cb.expect("ack", ref="ok-2", seq=seq + 1)
    check_msg(await ca.expect("msg"), seq=seq + 1, frm=cb.name, to=ca.name, body="back")
    await ca.assert_no_frame(0.05)
    await cb.assert_no_frame(0.05)


NO_REF = object()

# (case id, frame text or bytes; "{to}" is replaced by the peer's name, expected code, ref)
CASES = [
    ("invalid_json", '{"type":"send",', "bad_frame", NO_REF),
    ("invalid_json_trailing", '{"type":"send","to":"{to}","body":1} x', "bad_frame", NO_REF),
    ("invalid_json_single_quotes", "{'type':'send'}", "bad_frame", NO_REF),
    ("empty_text", "", "bad_frame", NO_REF),
    ("not_object_array", '[{"type":"send","to":"{to}","body":1}]', "bad_frame", NO_REF),
    ("not_object_number", "42", "bad_frame", NO_REF),
    ("not_object_string", '"send"', "bad_frame", NO_REF),
    ("no_type", '{"to":"{to}","body":1,"ref":"r1"}', "bad_frame", "r1"),
    ("type_number", '{"type":5,"ref":"r2"}', "bad_frame", "r2"),
    ("type_null", '{"type":null,"ref":"r3"}', "bad_frame", "r3"),
    ("type_object", '{"type":{"x":"send"},"ref":"r4"}', "bad_frame", "r4"),
    ("unknown_type", '{"type":"frobnicate","ref":"r5"}', "unknown_type", "r5"),
    ("unknown_type_case", '{"type":"SEND","to":"{to}","body":1,"ref":"r6"}', "unknown_type",
     "r6"),
    ("send_missing_to", '{"type":"send","ref":"r7","body":1}', "bad_frame", "r7"),
    ("send_to_number", '{"type":"send","to":42,"ref":"r8","body":1}', "bad_frame", "r8"),
    ("send_missing_body", '{"type":"send","to":"{to}","ref":"r9"}', "bad_frame", "r9"),
    ("unknown_peer", '{"type":"send","to":"nobody-here","ref":"r10","body":1}',
     "unknown_peer", "r10"),
    ("binary_frame", b'{"type":"send","to":"{to}","ref":"r11","body":1}', "bad_frame", NO_REF),
    ("deep_nesting", '{"type":"send","to":"{to}","ref":"r12","body":' + "[" * 1000 + "]" * 1000
     + "}", "bad_frame", NO_REF),
    ("deep_nesting_objects", '{"type":"send","to":"{to}","ref":"r13","body":'
     + '{"a":' * 200 + "1" + "}" * 200 + "}", "bad_frame", NO_REF),
    ("id_too_long", '{"type":"send","to":"{to}","ref":"r14","body":1,"id":"' + "x" * 65 + '"}',
     "bad_frame", "r14"),
    ("id_empty", '{"type":"send","to":"{to}","ref":"r15","body":1,"id":""}', "bad_frame", "r15"),
    ("id_space", '{"type":"send","to":"{to}","ref":"r16","body":1,"id":"a b"}', "bad_frame",
     "r16"),
    ("id_control_char", '{"type":"send","to":"{to}","ref":"r17","body":1,"id":"a\\u0001b"}',
     "bad_frame", "r17"),
    ("id_del_char", '{"type":"send","to":"{to}","ref":"r18","body":1,"id":"a\\u007fb"}',
     "bad_frame", "r18"),
    ("id_non_ascii", '{"type":"send","to":"{to}","ref":"r19","body":1,"id":"caf\u00e9"}',
     "bad_frame", "r19"),
    ("id_number", '{"type":"send","to":"{to}","ref":"r20","body":1,"id":7}', "bad_frame", "r20"),
    ("ack_upto_above_head", '{"type":"ack","upto":1000}', "bad_frame", NO_REF),
    ("ack_upto_negative", '{"type":"ack","upto":-1}', "bad_frame", NO_REF),
    ("ack_upto_string", '{"type":"ack","upto":"1"}', "bad_frame", NO_REF),
    ("ack_upto_float", '{"type":"ack","upto":0.5}', "bad_frame", NO_REF),
    ("ack_missing_upto", '{"type":"ack","ref":"r21"}', "bad_frame", "r21"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@async_test
async def test_bad_frame(daemon, case):
    _, frame, code, ref = case
    async with users(daemon) as (ca, cb):
        if isinstance(frame, bytes):
            frame = frame.replace(b"{to}", cb.name.encode())
        else:
            frame = frame.replace("{to}", cb.name)
        await ca.send_frame(frame)
        err = await ca.expect_error(code)
        if ref is not NO_REF:
            assert err.get("ref") == ref, f"error must echo ref {ref!r}: {err}"
        await ca.assert_no_frame(0.1)
        assert ca.close_code is None
        await cb.assert_no_frame(0.05)  # nothing was delivered
        await still_usable(ca, cb, seq=1)


def send_of_size(to, ref, size):
    """A send frame of exactly `size` bytes (UTF-8)."""
    head = '{"type":"send","to":"%s","ref":"%s","body":"' % (to, ref)
    tail = '"}'
    pad = size - len(head) - len(tail)
    assert pad > 0
    frame = head + "p" * pad + tail
    assert len(frame.encode()) == size
    return frame


@async_test
async def test_too_large(daemon):
    async with users(daemon) as (ca, cb):
        await ca.send_frame(send_of_size(cb.name, "big", 70000))
        await ca.expect_error("too_large")
        await ca.assert_no_frame(0.1)
        await cb.assert_no_frame(0.05)
        await still_usable(ca, cb, seq=1)


@async_test
async def test_max_frame_boundary(daemon):
    async with users(daemon) as (ca, cb):
        # Exactly max_frame bytes is allowed ("larger than" is refused).
        frame = send_of_size(cb.name, "edge", MAX_FRAME)
        await ca.send_frame(frame)
        await ca.expect("ack", ref="edge", seq=1)
        msg = await cb.expect("msg")
        assert msg["body"] == json.loads(frame)["body"], "body of max_frame send altered"
        await ca.send_frame(send_of_size(cb.name, "over", MAX_FRAME + 1))
        await ca.expect_error("too_large")
        await cb.assert_no_frame(0.05)
        await still_usable(ca, cb, seq=2)


@async_test
async def test_fragmented_frames(daemon):
    async with users(daemon) as (ca, cb):
        # A message in several WebSocket fragments is one frame.
        frame = send_of_size(cb.name, "frag", 30000)
        parts = [frame[i:i + 7000] for i in range(0, len(frame), 7000)]
        await ca.ws.send(iter(parts))
        await ca.expect("ack", ref="frag", seq=1)
        msg = await cb.expect("msg")
        assert msg["body"] == json.loads(frame)["body"]
        # Fragments adding up to more than max_frame are refused as a whole.
        big = send_of_size(cb.name, "fragbig", 70000)
        await ca.ws.send(iter([big[i:i + 10000] for i in range(0, len(big), 10000)]))
        await ca.expect_error("too_large")
        await cb.assert_no_frame(0.05)
        await still_usable(ca, cb, seq=2)


@async_test
async def test_nesting_within_limit_accepted(daemon):
    async with users(daemon) as (ca, cb):
        body = json.loads("[" * 40 + "]" * 40)
        await ca.send(cb.name, body, ref="n40")
        await ca.expect("ack", ref="n40", seq=1)
        check_msg(await cb.expect("msg"), seq=1, frm=ca.name, to=cb.name, body=body)


@async_test
async def test_id_of_64_printable_chars_accepted(daemon):
    async with users(daemon) as (ca, cb):
        ident = "".join(chr(c) for c in range(0x21, 0x7F))[:64]
        assert len(ident) == 64
        await ca.send(cb.name, "id ok", ref="id64", id=ident)
        await ca.expect("ack", ref="id64", seq=1)
        msg = await cb.expect("msg")
        assert msg.get("id") == ident, msg


@async_test
async def test_unknown_fields_ignored(daemon):
    async with users(daemon) as (ca, cb):
        await ca.send(cb.name, "x", ref="uf", color="blue", extra={"nested": [1, 2]})
        await ca.expect("ack", ref="uf", seq=1)
        check_msg(await cb.expect("msg"), seq=1, frm=ca.name, to=cb.name, body="x")
        await ca.send_frame({"type": "ack", "upto": 1, "why": "because"})
        await ca.assert_no_frame(0.1)  # ack upto has no reply
        await still_usable(ca, cb, seq=2)


@async_test
async def test_garbage_stream_closed_1008(daemon):
    # contract §1: a connection that keeps sending garbage may be closed with 1008 after the
    # error frame. meshd allows 99 bad frames in a row; the 100th closes the connection.
    async with users(daemon) as (ca, cb):
        for _ in range(99):
            await ca.send_frame("{garbage")
        for _ in range(99):
            await ca.expect_error("bad_frame")
        await ca.assert_no_frame(0.1)  # still open after 99
        await still_usable(ca, cb, seq=1)  # a good frame resets the count
        for _ in range(100):
            await ca.send_frame(b"\x00binary")
        for _ in range(100):
            await ca.expect_error("bad_frame")
        code = await ca.wait_closed(timeout=5)
        assert code == 1008, f"garbage stream closed with {code}, expected 1008"
