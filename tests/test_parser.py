"""Unit tests of the pure core: the client-protocol parser, subjects and the hub.

The parser is exercised with whole inputs, byte-by-byte feeding and (hypothesis) arbitrary
chunkings of valid and of arbitrary streams; the outcome - the events, then the -ERR text of
the error that ended the stream, if any - must never depend on how the bytes were chunked.
"""

from __future__ import annotations

import gc
import json
import time
from collections import Counter
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leaf.errors import ProtocolError
from leaf.hub import Hub, Subscription
from leaf.proto import encode
from leaf.proto.events import Connect, HPub, Ok, Ping, Pong, Pub, Sub, Unsub
from leaf.proto.parser import (
    MAX_CONTROL_LINE_EXCEEDED,
    MAX_PAYLOAD_VIOLATION,
    UNKNOWN_OP,
    ServerParser,
)
from leaf.subjects import (
    SubjectIndex,
    is_literal,
    is_valid_literal_subject,
    is_valid_subject,
    matches,
)

# -- helpers ---------------------------------------------------------------------------------------

Outcome = tuple[list[Any], Any]
NO_ERROR = "no error"


def flat(events: list[Any]) -> list[Any]:
    """Batched events (PubBatch) as the single events they stand for."""
    out: list[Any] = []
    for ev in events:
        singles = getattr(ev, "singles", None)
        out.extend(singles() if singles is not None else [ev])
    return out


def run(chunks: list[bytes], make: Callable[[], ServerParser] = ServerParser) -> Outcome:
    """Feed ``chunks`` to a fresh parser: the events, and the err of the error (or NO_ERROR).

    The parser may raise ProtocolError and nothing else; after an error nothing more is fed,
    as the connection is closed then.
    """
    parser = make()
    events: list[Any] = []
    for chunk in chunks:
        try:
            events += parser.feed(chunk)
        except ProtocolError as exc:
            return flat(events + exc.events), exc.err
    return flat(events), NO_ERROR


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def describe(ev: Any) -> tuple:
    """An event as plain values, independent of the parser's internal representation."""
    if isinstance(ev, Pub):
        return ("pub", ev.subject, ev.reply, ev.payload)
    if isinstance(ev, HPub):
        return ("hpub", ev.subject, ev.reply, ev.hdr_len, ev.payload)
    if isinstance(ev, Sub):
        return ("sub", ev.subject, ev.queue, ev.sid)
    if isinstance(ev, Unsub):
        return ("unsub", ev.sid, ev.max_msgs)
    if isinstance(ev, Connect):
        return ("connect", ev.options)
    # (Ping(), Pong() and Ok() are equal empty tuples: tell them apart by type.)
    if isinstance(ev, Ping):
        return ("ping",)
    if isinstance(ev, Pong):
        return ("pong",)
    if isinstance(ev, Ok):
        return ("ok",)
    raise AssertionError(f"unexpected event {ev!r}")


CONNECT_HDRS = b'CONNECT {"verbose":false,"headers":true}\r\n'

# -- hypothesis: valid streams -------------------------------------------------------------------

_token = st.text("abcXYZ09_-$*>", min_size=1, max_size=4)
_subject = st.lists(_token, min_size=1, max_size=4).map(".".join).map(str.encode)
_sid = st.integers(1, 99999).map(lambda i: str(i).encode())
_sep = st.sampled_from([b" ", b"\t", b"  ", b" \t "])
_eol = st.sampled_from([b"\r\n", b"\n"])
_case = st.sampled_from([bytes.upper, bytes.lower, bytes.title])
_payload = st.binary(max_size=48) | st.sampled_from([b"", b"\r\n", b"PUB x 1\r\n", b"\n\n"])


@st.composite
def _op(draw: st.DrawFn) -> tuple[bytes, tuple]:
    """One op in wire form with the event it must parse to."""
    kind = draw(st.sampled_from(["pub", "pub", "hpub", "sub", "unsub", "ping", "pong", "ok"]))
    sep, eol, case = draw(_sep), draw(_eol), draw(_case)
    if kind == "pub":
        subj, payload = draw(_subject), draw(_payload)
        reply = draw(st.sampled_from([b""]) | _subject)
        args = [subj] + ([reply] if reply else []) + [str(len(payload)).encode()]
        line = case(b"pub") + sep + sep.join(args) + eol
        return line + payload + b"\r\n", ("pub", subj, reply, payload)
    if kind == "hpub":
        subj, body = draw(_subject), draw(_payload)
        reply = draw(st.sampled_from([b""]) | _subject)
        fields = draw(st.lists(st.sampled_from([b"A: b", b"X-Trace: abc", b"K: "]), max_size=3))
        hdr = b"NATS/1.0\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
        payload = hdr + body
        args = [subj] + ([reply] if reply else []) + [b"%d" % len(hdr), b"%d" % len(payload)]
        line = case(b"hpub") + sep + sep.join(args) + eol
        return line + payload + b"\r\n", ("hpub", subj, reply, len(hdr), payload)
    if kind == "sub":
        subj, sid = draw(_subject), draw(_sid)
        queue = draw(st.sampled_from([b""]) | _subject)
        args = [subj] + ([queue] if queue else []) + [sid]
        return case(b"sub") + sep + sep.join(args) + eol, ("sub", subj, queue, sid)
    if kind == "unsub":
        sid, mx = draw(_sid), draw(st.sampled_from([0, 1, 5, 123456]))
        args = [sid] + ([b"%d" % mx] if mx else [])
        return case(b"unsub") + sep + sep.join(args) + eol, ("unsub", sid, mx)
    word = {"ping": b"ping", "pong": b"pong", "ok": b"+ok"}[kind]
    return case(word) + eol, (kind,)


@st.composite
def valid_stream(draw: st.DrawFn) -> tuple[bytes, list[tuple]]:
    ops = draw(st.lists(_op(), max_size=12))
    # Runs of identical ops (a sensor publishing one subject) take the parser's batch path.
    ops = [o for o in ops for _ in range(draw(st.sampled_from([1, 1, 1, 3])))]
    data = CONNECT_HDRS + b"".join(w for w, _ in ops)
    expected = [("connect", {"verbose": False, "headers": True})] + [e for _, e in ops]
    return data, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_stream(), st.data())
def test_valid_streams_parse_the_same_however_chunked(stream: tuple[bytes, list[tuple]],
                                                      data: st.DataObject) -> None:
    raw, expected = stream
    whole = run([raw])
    assert whole[1] == NO_ERROR
    assert [describe(e) for e in whole[0]] == expected
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=16))
    assert run(cut(raw, points)) == whole


@settings(max_examples=40, deadline=None)
@given(valid_stream())
def test_valid_streams_byte_by_byte(stream: tuple[bytes, list[tuple]]) -> None:
    raw, _ = stream
    assert run(bytewise(raw)) == run([raw])


# -- hypothesis: arbitrary bytes -------------------------------------------------------------------

_soup = st.lists(st.sampled_from([
    b"PUB ", b"HPUB ", b"SUB ", b"UNSUB ", b"PING", b"PONG", b"+OK", b"CONNECT ", b"INFO ",
    b"-ERR ", b"pub\t", b"foo", b".", b"*", b">", b" ", b"\t", b"\r\n", b"\n", b"\r", b"0",
    b"1", b"5", b"12", b"99", b"{}", b'{"headers":true}', b"NATS/1.0\r\n", b"x", b"\x00",
    b"\x0c", b"MSG ",
]), max_size=40).map(b"".join)
_limits = st.sampled_from([(4096, 1 << 20), (12, 16), (5, 4), (1, 1)])




@st.composite
def mutated_stream(draw: st.DrawFn) -> bytes:
    raw, _ = draw(valid_stream())
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + draw(st.binary(max_size=3)) + raw[at + draw(st.integers(0, 3)):]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=120), _soup, mutated_stream()), _limits, st.data())
def test_arbitrary_bytes_only_protocol_errors_and_chunking_never_matters(
        raw: bytes, limits: tuple[int, int], data: st.DataObject) -> None:
    make = lambda: ServerParser(max_control_line=limits[0], max_payload=limits[1])  # noqa: E731
    whole = run([raw], make)
    assert whole[1] in (NO_ERROR, None, UNKNOWN_OP, MAX_CONTROL_LINE_EXCEEDED,
                        MAX_PAYLOAD_VIOLATION)
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert run(cut(raw, points), make) == whole
    assert run(bytewise(raw), make) == whole


# -- fixed cases -----------------------------------------------------------------------------------

SESSION = (CONNECT_HDRS + b"SUB foo 1\r\nPUB foo 5\r\nhello\r\nPUB foo reply.to.me 5\r\nworld\r\n"
           b"HPUB foo 40 47\r\nNATS/1.0\r\nX-Trace: abc\r\nX-Trace: def\r\n\r\npayload\r\n"
           b"HPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\nSUB foo.* 2\r\nSUB foo.bar workers 4\r\n"
           b"UNSUB 3 3\r\nPING\r\nPONG\r\n+OK\r\n" + b"PUB s 2\r\nab\r\n" * 5)


def test_whole_input_and_byte_by_byte_give_the_same_events() -> None:
    whole = run([SESSION])
    assert whole[1] == NO_ERROR
    assert [describe(e) for e in whole[0]] == [
        ("connect", {"verbose": False, "headers": True}),
        ("sub", b"foo", b"", b"1"),
        ("pub", b"foo", b"", b"hello"),
        ("pub", b"foo", b"reply.to.me", b"world"),
        ("hpub", b"foo", b"", 40, b"NATS/1.0\r\nX-Trace: abc\r\nX-Trace: def\r\n\r\npayload"),
        ("hpub", b"foo", b"", 12, b"NATS/1.0\r\n\r\n"),
        ("sub", b"foo.*", b"", b"2"),
        ("sub", b"foo.bar", b"workers", b"4"),
        ("unsub", b"3", 3),
        ("ping",), ("pong",), ("ok",),
    ] + [("pub", b"s", b"", b"ab")] * 5
    assert run(bytewise(SESSION)) == whole


@pytest.mark.parametrize("line,reply,tail", [
    (b"PUB foo 5\r\n", b"", b" 5\r\nhello\r\n"),
    (b"PUB foo r 5\r\n", b"r", b" r 5\r\nhello\r\n"),
    (b"pub\tfoo\t\tr  5\n", b"r", b" r 5\r\nhello\r\n"),
    (b"PUB foo 05\r\n", b"", b" 05\r\nhello\r\n"),
])
def test_pub_tail_is_the_wire_form_after_the_subject(line: bytes, reply: bytes,
                                                     tail: bytes) -> None:
    """``MSG <subject> <sid>`` + tail is the delivery, whatever spacing the PUB used."""
    [ev] = flat(ServerParser().feed(line + b"hello\r\n"))
    assert isinstance(ev, Pub)
    assert (ev.subject, ev.reply, ev.payload, ev.tail) == (b"foo", reply, b"hello", tail)


def test_hpub_tail_carries_both_sizes() -> None:
    p = ServerParser()
    [_, ev] = p.feed(CONNECT_HDRS + b"HPUB\tfoo  r\t12 14\nNATS/1.0\r\n\r\nhi\r\n")
    assert isinstance(ev, HPub)
    assert ev.tail == b" r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
    assert (ev.hdr_len, ev.payload) == (12, b"NATS/1.0\r\n\r\nhi")


def test_events_before_an_error_are_returned_with_it() -> None:
    p = ServerParser()
    with pytest.raises(ProtocolError) as exc:
        p.feed(b"PING\r\nSUB a 1\r\nPUB a 1\r\nx\r\nFOO\r\nPING\r\n")
    assert exc.value.err == UNKNOWN_OP
    assert [describe(e) for e in flat(exc.value.events)] == [
        ("ping",), ("sub", b"a", b"", b"1"), ("pub", b"a", b"", b"x")]


def test_events_before_an_error_in_a_later_chunk() -> None:
    p = ServerParser()
    assert p.feed(b"PUB a 3\r\nx") == []
    with pytest.raises(ProtocolError) as exc:
        p.feed(b"yz\r\nSUB b 2\r\nPUB a 1\r\nxy\r\n")
    assert exc.value.err == UNKNOWN_OP       # payload not followed by CRLF
    assert [describe(e) for e in flat(exc.value.events)] == [
        ("pub", b"a", b"", b"xyz"), ("sub", b"b", b"", b"2")]


def _err(data: bytes, **limits: int) -> Any:
    with pytest.raises(ProtocolError) as exc:
        ServerParser(**limits).feed(data)
    return exc.value.err


def test_max_control_line() -> None:
    ok = ServerParser(max_control_line=16)
    # 16 bytes of arguments; the op and the separators after it do not count.
    assert ok.feed(b"SUB   " + b"s" * 14 + b" 1\r\n") == [Sub(b"s" * 14, b"", b"1")]
    assert _err(b"SUB " + b"s" * 15 + b" 1\r\n", max_control_line=16) == MAX_CONTROL_LINE_EXCEEDED
    assert _err(b"PUB " + b"s" * 15 + b" 1\r\nx\r\n", max_control_line=16) == \
        MAX_CONTROL_LINE_EXCEEDED
    assert _err(b'CONNECT {"name":"' + b"n" * 20 + b'"}\r\n', max_control_line=16) == \
        MAX_CONTROL_LINE_EXCEEDED
    # Before the newline arrives, too.
    assert _err(b"SUB " + b"s" * 17, max_control_line=16) == MAX_CONTROL_LINE_EXCEEDED
    # The default is nats-server's 4096.
    assert _err(b"PUB " + b"s" * 4095 + b" 0\r\n\r\n") == MAX_CONTROL_LINE_EXCEEDED
    assert ServerParser().feed(b"PUB " + b"s" * 4094 + b" 0\r\n\r\n")


def test_max_control_line_at_the_limit_split_before_lf() -> None:
    """A line of exactly max_control_line argument bytes whose CR and LF arrive apart."""
    line = b"SUB " + b"s" * 14 + b" 1"         # 16 bytes of arguments
    for chunks in ([line + b"\r", b"\n"], [line, b"\r", b"\n"], bytewise(line + b"\r\n")):
        assert run(chunks, lambda: ServerParser(max_control_line=16)) == \
            ([Sub(b"s" * 14, b"", b"1")], NO_ERROR)


def test_max_payload() -> None:
    p = ServerParser(max_payload=10)
    assert [describe(e) for e in flat(p.feed(b"PUB a 10\r\n0123456789\r\n"))] == [
        ("pub", b"a", b"", b"0123456789")]
    assert _err(b"PUB a 11\r\n", max_payload=10) == MAX_PAYLOAD_VIOLATION
    hp = ServerParser(max_payload=10)
    hp.feed(CONNECT_HDRS)
    with pytest.raises(ProtocolError) as exc:
        hp.feed(b"HPUB a 5 11\r\n")
    assert exc.value.err == MAX_PAYLOAD_VIOLATION


@pytest.mark.parametrize("data", [
    b"FOO bar\r\n", b"FOO", b"PUBX a 1\r\n", b"SUB\r\n", b"UNSUBX 1\r\n", b"\r\n", b"\n",
    b"MSG a 1 1\r\nx\r\n", b"INFO{}\r\n", b"PUB a 1\r\nxy\r\n", b"PUB a 1\r\nx\n\n",
])
def test_unknown_op(data: bytes) -> None:
    assert _err(data) == UNKNOWN_OP


@pytest.mark.parametrize("data", [
    b"PUB foo\r\n", b"PUB a b c 1\r\n", b"PUB a x\r\n", b"PUB a -1\r\n", b"PUB a 1234567890\r\n",
    b"SUB a\r\n", b"SUB a b c d\r\n", b"UNSUB \r\n", b"UNSUB 1 2 3\r\n",
    b"CONNECT {nope\r\n", b"CONNECT []\r\n", b"INFO x\r\n",
    b"HPUB a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",          # headers were not negotiated
    CONNECT_HDRS + b"HPUB a 5 4\r\n", CONNECT_HDRS + b"HPUB a 4\r\n",
])
def test_malformed_arguments_close_silently(data: bytes) -> None:
    assert _err(data) is None


def test_hpub_accepted_in_the_same_feed_as_the_connect_that_enables_headers() -> None:
    events = ServerParser().feed(CONNECT_HDRS + b"HPUB a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
    assert [describe(e)[0] for e in events] == ["connect", "hpub"]
    assert _err(b'CONNECT {"headers":false}\r\nHPUB a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n') is None


def test_shared_line_cache_does_not_leak_header_support() -> None:
    cache: dict[bytes, tuple] = {}
    hpub = b"HPUB a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
    assert len(ServerParser(line_cache=cache).feed(CONNECT_HDRS + hpub)) == 2
    with pytest.raises(ProtocolError) as exc:
        ServerParser(line_cache=cache).feed(hpub)
    assert exc.value.err is None


def test_argument_splitting_follows_nats_server() -> None:
    """PUB/HPUB split on spaces and tabs only; SUB/UNSUB also on CR."""
    p = ServerParser()
    events = p.feed(b"PUB foo\r 1\r\nx\r\nPUB a\x0cb 1\r\ny\r\nSUB foo\rbar 1\r\nUNSUB 1\r 2\r\n")
    assert [describe(e) for e in flat(events)] == [
        ("pub", b"foo\r", b"", b"x"), ("pub", b"a\x0cb", b"", b"y"),
        ("sub", b"foo", b"bar", b"1"), ("unsub", b"1", 2)]


def test_unknown_op_is_refused_before_its_newline() -> None:
    p = ServerParser()
    assert p.feed(b"PI") == []          # could still become PING
    with pytest.raises(ProtocolError) as exc:
        p.feed(b"X")
    assert exc.value.err == UNKNOWN_OP


def test_text_after_ping_is_ignored_whatever_its_length() -> None:
    p = ServerParser(max_control_line=16)
    assert p.feed(b"PING ") == []
    for _ in range(100):
        assert p.feed(b"junk" * 10) == []
    assert [describe(e) for e in p.feed(b"\r\n")] == [("ping",)]


# -- dribbling costs O(n) ------------------------------------------------------------------------

def _dribble_costs(streams: list[tuple[bytes, dict[str, int]]], reps: int = 5) -> list[float]:
    """Least CPU time (of this thread: a busy machine does not inflate it) to feed each stream
    one byte at a time; the streams take turns so that drift hits them alike."""
    plans = [(bytewise(data), limits) for data, limits in streams]
    best = [float("inf")] * len(plans)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            for i, (chunks, limits) in enumerate(plans):
                p = ServerParser(**limits)
                t0 = time.thread_time()
                for c in chunks:
                    p.feed(c)
                best[i] = min(best[i], time.thread_time() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return best


@pytest.mark.parametrize("case", ["payload", "control-line", "after-ping", "separators"])
def test_dribbling_one_byte_at_a_time_is_linear(case: str) -> None:
    def build(n: int) -> tuple[bytes, dict[str, int]]:
        if case == "payload":
            return b"PUB foo %d\r\n" % n + b"x" * n + b"\r\n", {}
        if case == "control-line":
            return b"PUB " + b"s" * n + b" 0\r\n\r\n", {"max_control_line": 10 ** 6}
        if case == "after-ping":            # ignored text, longer than max_control_line
            return b"PING " + b"j" * n + b"\r\n", {}
        return b"PUB" + b" " * n + b"foo 0\r\n\r\n", {}   # separators do not count either

    small, big = build(20_000), build(80_000)
    events, error = run(bytewise(small[0]), lambda: ServerParser(**small[1]))
    assert error == NO_ERROR and len(events) == 1
    t_small, t_big = _dribble_costs([small, big])
    # Linear: ~4x for 4x the bytes; quadratic would be ~16x.
    assert t_big / t_small < 8, (case, t_small, t_big)


# -- subjects ------------------------------------------------------------------------------------

@pytest.mark.parametrize("subject", [
    b"foo", b"foo.bar", b"foo.*", b"foo.>", b">", b"*", b"*.*", b"a*b", b"foo>", b"$SYS.x",
    b"_INBOX.a-b", "ü.x".encode(), b"a.*.c.>",
])
def test_valid_subjects(subject: bytes) -> None:
    assert is_valid_subject(subject)


@pytest.mark.parametrize("subject", [
    b"", b".", b"foo..bar", b".foo", b"foo.", b"foo.>.bar", b">.a", b"a b", b"a\tb", b"a\rb",
    b"a\nb", b"a\x0cb",
])
def test_invalid_subjects(subject: bytes) -> None:
    assert not is_valid_subject(subject)


def test_literal_subjects() -> None:
    assert is_literal(b"foo.bar") and is_literal(b"a*b.c>") and is_literal(b"")
    assert not is_literal(b"foo.*") and not is_literal(b">")
    assert is_valid_literal_subject(b"foo.bar")
    assert is_valid_literal_subject(b"a*b.c>")
    # As nats-server's IsValidLiteralSubject: no whitespace check (PUB never splits on CR).
    assert is_valid_literal_subject(b"foo\r")
    for bad in (b"", b"foo.*", b"foo.>", b"*", b"a..b", b".a", b"a."):
        assert not is_valid_literal_subject(bad), bad


@pytest.mark.parametrize("pattern,subject,expected", [
    (b"foo", b"foo", True), (b"foo", b"foo.bar", False), (b"foo.*", b"foo.bar", True),
    (b"foo.*", b"foo", False), (b"foo.*", b"foo.bar.baz", False), (b"foo.>", b"foo", False),
    (b"foo.>", b"foo.bar", True), (b"foo.>", b"foo.bar.baz", True), (b">", b"a", True),
    (b">", b"a.b.c", True), (b"*", b"a.b", False), (b"*.b", b"a.b", True),
    (b"a*b", b"a*b", True), (b"a*b", b"axb", False), (b"foo>", b"foo.x", False),
    # wildcards in the subject match token by token like literals
    (b"foo.*", b"foo.*", True), (b"foo.>", b"foo.>", True), (b"foo.bar", b"foo.*", False),
    (b"Foo", b"foo", False),
])
def test_matches(pattern: bytes, subject: bytes, expected: bool) -> None:
    assert matches(pattern, subject) is expected


class _S:
    def __init__(self, subject: bytes) -> None:
        self.subject = subject

    def __repr__(self) -> str:
        return f"_S({self.subject!r})"


_ptoken = st.sampled_from([b"a", b"b", b"c", b"*", b">"])
_pattern = st.lists(_ptoken, min_size=1, max_size=4).map(b".".join).filter(is_valid_subject)
_literal = st.lists(st.sampled_from([b"a", b"b", b"c", b"*", b">"]), min_size=1,
                    max_size=5).map(b".".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_pattern, max_size=12), st.lists(st.integers(0, 11), max_size=8),
       st.lists(_literal, min_size=1, max_size=6))
def test_subject_index_agrees_with_matches(patterns: list[bytes], removals: list[int],
                                           subjects: list[bytes]) -> None:
    idx: SubjectIndex[_S] = SubjectIndex()
    subs = [_S(p) for p in patterns]
    for s in subs:
        idx.add(s)
    live = list(subs)
    for i in removals:
        if i < len(subs):
            assert idx.remove(subs[i]) is (subs[i] in live)
            if subs[i] in live:
                live.remove(subs[i])
    assert len(idx) == len(live)
    assert Counter(map(id, idx)) == Counter(map(id, live))
    for subject in subjects:
        got = idx.match(subject)
        assert Counter(map(id, got)) == Counter(id(s) for s in live if matches(s.subject, subject))


def test_subject_index_add_remove_and_pruning() -> None:
    idx: SubjectIndex[_S] = SubjectIndex()
    a, b, c, d, d2 = (_S(b"a.b.c"), _S(b"a.b.d"), _S(b"a.*"), _S(b"a.>"), _S(b"a.>"))
    for s in (a, b, c, d, d2):
        idx.add(s)
    assert {id(s) for s in idx.match(b"a.b.c")} == {id(a), id(d), id(d2)}
    assert {id(s) for s in idx.match(b"a.x")} == {id(c), id(d), id(d2)}
    assert idx.match(b"a") == [] and idx.match(b"b.b.c") == []
    assert idx.remove(d) and not idx.remove(d)
    assert {id(s) for s in idx.match(b"a.b.d")} == {id(b), id(d2)}   # the twin stays
    assert not idx.remove(_S(b"a.b.c"))          # an equal subject, another subscription
    assert not idx.remove(_S(b"x.y"))
    for s in (a, b, c, d2):
        assert idx.remove(s)
    assert len(idx) == 0 and list(idx) == []
    assert idx._root.children == {}              # every emptied branch was pruned
    idx.add(a)
    idx.add(b)
    idx.remove(a)
    assert list(idx._root.children) == [b"a"]
    assert list(idx._root.children[b"a"].children[b"b"].children) == [b"d"]


def test_subject_with_empty_token_matches_nothing() -> None:
    idx: SubjectIndex[_S] = SubjectIndex()
    for p in (b">", b"*", b"foo.>", b"foo.*", b"foo.*.bar", b"*.foo"):
        idx.add(_S(p))
    for subject in (b"", b".", b"foo..bar", b"foo.", b".foo", b"..", b"foo.bar."):
        assert idx.match(subject) == [], subject


# -- hub -----------------------------------------------------------------------------------------

class Rcv:
    """A subscriber's owner as the hub sees it (the attributes of hub.Receiver)."""

    def __init__(self, echo: bool = True, headers: bool = True) -> None:
        self.out = bytearray()
        self.iov: list[bytes] = []
        self.queued = False
        self.echo = echo
        self.headers = headers
        self.out_bytes = 0
        self.subs: dict[bytes, Subscription] = {}
        self.retired_subs: list[Subscription] = []

    def retired(self, sub: Subscription) -> None:
        self.retired_subs.append(sub)

    def written(self) -> bytes:
        """Everything queued, in wire order, as the driver would write it."""
        return b"".join(self.iov) + bytes(self.out)

    def take(self) -> bytes:
        out = self.written()
        self.iov.clear()
        self.out.clear()
        self.queued = False
        return out


def subscribe(hub: Hub, rcv: Rcv, subject: bytes, sid: bytes, queue: bytes = b"") -> Subscription:
    sub = Subscription(subject, sid, rcv, queue)
    rcv.subs[sid] = sub
    hub.add(sub)
    return sub


def publish(hub: Hub, subject: bytes, payload: bytes, reply: bytes = b"",
            origin: object = None) -> int:
    return hub.publish(subject, reply, len(payload), encode.tail(reply, payload), -1, origin)


def hpublish(hub: Hub, subject: bytes, hdr: bytes, body: bytes, reply: bytes = b"") -> int:
    payload = hdr + body
    return hub.publish(subject, reply, len(payload), encode.htail(reply, len(hdr), payload),
                       len(hdr))


def test_hub_fan_out() -> None:
    woken: list[int] = []
    hub = Hub(on_dirty=lambda: woken.append(1))
    r1, r2, r3, r4 = Rcv(), Rcv(), Rcv(), Rcv()
    subscribe(hub, r1, b"foo.bar", b"1")
    subscribe(hub, r2, b"foo.*", b"2")
    subscribe(hub, r3, b">", b"3")
    subscribe(hub, r4, b"foo", b"4")
    assert publish(hub, b"foo.bar", b"hello", b"r") == 3
    assert publish(hub, b"foo.bar", b"again") == 3
    # The driver is woken once per receiver that newly has output (it
    # coalesces the wake-ups into one flush), not once per message.
    assert woken == [1, 1, 1]
    assert sorted(map(id, hub.take_dirty())) == sorted(map(id, (r1, r2, r3)))
    assert r1.take() == b"MSG foo.bar 1 r 5\r\nhello\r\nMSG foo.bar 1 5\r\nagain\r\n"
    assert r2.take() == b"MSG foo.bar 2 r 5\r\nhello\r\nMSG foo.bar 2 5\r\nagain\r\n"
    assert r3.take() == b"MSG foo.bar 3 r 5\r\nhello\r\nMSG foo.bar 3 5\r\nagain\r\n"
    assert r4.out == b"" and not r4.queued
    assert hub.dirty == []
    assert publish(hub, b"foo", b"x") == 2     # r3 (>) and r4
    assert woken == [1] * 5  # r3 and r4 queued anew
    assert r3.take() == b"MSG foo 3 1\r\nx\r\n" and r4.take() == b"MSG foo 4 1\r\nx\r\n"
    hub.take_dirty()
    assert publish(hub, b"foo.bar.baz", b"x") == 1 and r3.take() == b"MSG foo.bar.baz 3 1\r\nx\r\n"


def test_hub_queue_groups_pick_exactly_one_member() -> None:
    hub = Hub()
    q1 = [Rcv() for _ in range(3)]
    q2 = [Rcv() for _ in range(2)]
    plain = Rcv()
    for i, r in enumerate(q1):
        subscribe(hub, r, b"work", b"%d" % i, b"q1")
    for i, r in enumerate(q2):
        subscribe(hub, r, b"work", b"%d" % i, b"q2")
    subscribe(hub, plain, b"work", b"p")
    for i in range(300):
        assert publish(hub, b"work", b"%03d" % i) == 3
    got = {id(r): bytes(r.out).count(b"MSG work ") for r in q1 + q2}
    assert sum(got[id(r)] for r in q1) == 300 and sum(got[id(r)] for r in q2) == 300
    assert all(got[id(r)] > 0 for r in q1 + q2)         # the pick is spread, not fixed
    assert bytes(plain.out).count(b"MSG work p 3\r\n") == 300
    payloads = Counter()
    for r in q1:
        payloads.update(bytes(r.out).split(b"\r\n")[1::2])
    assert payloads == Counter(b"%03d" % i for i in range(300))


def test_hub_echo() -> None:
    hub = Hub()
    quiet, loud, other = Rcv(echo=False), Rcv(echo=True), Rcv()
    subscribe(hub, quiet, b"e", b"1")
    subscribe(hub, loud, b"e", b"2")
    assert publish(hub, b"e", b"a", origin=quiet) == 1
    assert quiet.out == b"" and loud.take() == b"MSG e 2 1\r\na\r\n"
    assert publish(hub, b"e", b"b", origin=loud) == 2
    assert quiet.take() == b"MSG e 1 1\r\nb\r\n" and loud.take() == b"MSG e 2 1\r\nb\r\n"
    # In a queue group the publisher's own member is skipped for another one.
    subscribe(hub, quiet, b"g", b"3", b"q")
    subscribe(hub, other, b"g", b"4", b"q")
    for _ in range(20):
        assert publish(hub, b"g", b"x", origin=quiet) == 1
    assert quiet.out == b"" and bytes(other.out).count(b"MSG g 4 1\r\n") == 20


def test_hub_limit_applies_to_routes_already_cached() -> None:
    """UNSUB <sid> <max> after traffic has flowed (the route is cached) still counts."""
    hub = Hub()
    r = Rcv()
    s = subscribe(hub, r, b"m", b"1")
    for _ in range(3):
        hub.publish_many([(b"m", b"", 1, encode.tail(b"", b"x"))])
    hub.limit(s, 4)
    hub.publish_many([(b"m", b"", 1, encode.tail(b"", b"y"))] * 3)
    assert r.take().count(b"MSG m 1") == 4
    assert r.subs == {} and len(hub) == 0


def test_hub_max_msgs_expiry() -> None:
    hub = Hub()
    r = Rcv()
    s = subscribe(hub, r, b"m", b"1")
    hub.limit(s, 2)
    assert publish(hub, b"m", b"a") == 1
    assert r.retired_subs == [] and r.subs == {b"1": s}
    assert publish(hub, b"m", b"b") == 1
    assert r.retired_subs == [s] and r.subs == {} and len(hub) == 0
    assert not hub.has_interest(b"m")
    assert publish(hub, b"m", b"c") == 0
    assert r.take() == b"MSG m 1 1\r\na\r\nMSG m 1 1\r\nb\r\n"
    # A queue member that expires hands over to the rest of its group.
    a, b = Rcv(), Rcv()
    sa = subscribe(hub, a, b"w", b"1", b"q")
    subscribe(hub, b, b"w", b"2", b"q")
    hub.limit(sa, 1)
    for _ in range(30):
        publish(hub, b"w", b"x")
    assert bytes(a.out).count(b"MSG") <= 1
    assert bytes(a.out).count(b"MSG") + bytes(b.out).count(b"MSG") == 30


def test_hub_route_cache_follows_subscribe_and_unsubscribe() -> None:
    hub = Hub()
    r = Rcv()
    assert publish(hub, b"a.b", b"x") == 0          # caches "no route"
    lit = subscribe(hub, r, b"a.b", b"1")
    assert publish(hub, b"a.b", b"x") == 1
    hub.remove(lit)
    assert publish(hub, b"a.b", b"x") == 0
    wild = subscribe(hub, r, b"a.*", b"2")          # a wildcard reaches a cached literal route
    assert publish(hub, b"a.b", b"x") == 1
    other = subscribe(hub, r, b"z", b"3")            # an unrelated literal keeps that route
    assert publish(hub, b"a.b", b"x") == 1
    hub.remove(wild)
    assert publish(hub, b"a.b", b"x") == 0 and not hub.has_interest(b"a.b")
    full = subscribe(hub, r, b">", b"4")
    assert hub.has_interest(b"a.b") and publish(hub, b"a.b", b"x") == 1
    hub.remove_all([full, other])
    assert len(hub) == 0 and publish(hub, b"a.b", b"x") == 0 and publish(hub, b"z", b"x") == 0
    assert r.take() == b"MSG a.b 1 1\r\nx\r\n" + b"MSG a.b 2 1\r\nx\r\n" * 2 + \
        b"MSG a.b 4 1\r\nx\r\n"


def test_hub_headers_and_receivers_without_them() -> None:
    hub = Hub()
    aware, plain = Rcv(headers=True), Rcv(headers=False)
    subscribe(hub, aware, b"h", b"1")
    subscribe(hub, plain, b"h", b"2")
    hdr = b"NATS/1.0\r\nA: b\r\n\r\n"
    assert hpublish(hub, b"h", hdr, b"hello", b"r") == 2
    assert hpublish(hub, b"h", hdr, b"") == 2
    assert aware.take() == b"HMSG h 1 r 18 23\r\n" + hdr + b"hello\r\nHMSG h 1 18 18\r\n" + \
        hdr + b"\r\n"
    assert plain.take() == b"MSG h 2 r 5\r\nhello\r\nMSG h 2 0\r\n\r\n"


def test_hub_callbacks_and_denied_subjects() -> None:
    hub = Hub()
    seen: list[tuple] = []
    hub.add(Subscription(b"cb.>", b"i", None, callback=lambda *a: seen.append(a)))
    r = Rcv()
    s = subscribe(hub, r, b"cb.*", b"1")
    s.denied = lambda subject: subject.endswith(b".secret")
    publisher = Rcv()
    assert publish(hub, b"cb.x", b"pay", b"rep", origin=publisher) == 2
    payload = b"NATS/1.0\r\n\r\nhi"
    assert hub.publish(b"cb.secret", b"", len(payload), encode.htail(b"", 12, payload), 12,
                       publisher) == 1
    assert seen == [(b"cb.x", b"rep", -1, b"pay"), (b"cb.secret", b"", 12, b"NATS/1.0\r\n\r\nhi")]
    assert r.take() == b"MSG cb.x 1 rep 3\r\npay\r\n"


@pytest.mark.parametrize("size", [2, 600], ids=["small", "by-reference"])
@pytest.mark.parametrize("limited", [False, True], ids=["fast-path", "with-max-msgs"])
def test_hub_batch_publish_equals_single_publishes(limited: bool, size: int) -> None:
    def build() -> tuple[Hub, list[Rcv]]:
        hub = Hub()
        rs = [Rcv(), Rcv(echo=False), Rcv()]
        subscribe(hub, rs[0], b"s.*", b"1")
        subscribe(hub, rs[1], b"s.x", b"2")
        hub.limit(subscribe(hub, rs[2], b">", b"3"), 4 if limited else 0)
        return hub, rs

    tails = [encode.tail(b"r", b"%02d" % i * (size // 2)) for i in range(6)]
    single_hub, single = build()
    # Something already queued before the batch and after it keeps its place.
    publish(single_hub, b"s.before", b"b")
    missed_single = sum(single_hub.publish(b"s.x", b"r", size, t, -1, single[1]) == 0
                        for t in tails)
    publish(single_hub, b"s.after", b"a")
    batch_hub, batch = build()
    publish(batch_hub, b"s.before", b"b")
    missed: list[tuple[bytes, bytes]] = []
    batch_hub.publish_batch(b"s.x", b"r", size, tails, batch[1],
                            lambda subject, reply: missed.append((subject, reply)))
    assert len(missed) == missed_single == 0
    publish(batch_hub, b"s.after", b"a")
    assert [r.written() for r in batch] == [r.written() for r in single]
    assert batch[0].written() == b"MSG s.before 1 1\r\nb\r\n" + b"".join(
        b"MSG s.x 1" + t for t in tails) + b"MSG s.after 1 1\r\na\r\n"
    assert batch[2].written().count(b"MSG") == (4 if limited else 8)
    assert [len(r.subs) for r in batch] == [len(r.subs) for r in single]
    assert len(batch_hub) == len(single_hub) == (2 if limited else 3)


@pytest.mark.parametrize("limited", [False, True], ids=["fast-path", "with-max-msgs"])
def test_hub_publish_many_equals_single_publishes(limited: bool) -> None:
    """Mixed subjects in one call deliver exactly what one publish per message does,
    and report the requests nobody received."""
    def build() -> tuple[Hub, list[Rcv]]:
        hub = Hub()
        rs = [Rcv(), Rcv(echo=False), Rcv(), Rcv()]
        subscribe(hub, rs[0], b"s.*", b"1")
        subscribe(hub, rs[1], b"s.x", b"2")
        hub.limit(subscribe(hub, rs[2], b">", b"3"), 3 if limited else 0)
        subscribe(hub, rs[3], b"s.y", b"4", queue=b"q")
        return hub, rs

    msgs = [(subj, reply, 2, encode.tail(reply, b"%02d" % i))
            for i, (subj, reply) in enumerate([(b"s.x", b"r"), (b"s.y", b""), (b"t", b"r2"),
                                               (b"s.x", b""), (b"u", b"")] * 2)]
    single_hub, single = build()
    missed_single = [(m[0], m[1]) for m in msgs
                     if single_hub.publish(m[0], m[1], m[2], m[3], -1, single[1]) == 0 and m[1]]
    many_hub, many = build()
    missed: list[tuple[bytes, bytes]] = []
    many_hub.publish_many(msgs, many[1], lambda subject, reply: missed.append((subject, reply)))
    assert [bytes(r.out) for r in many] == [bytes(r.out) for r in single]
    assert missed == missed_single
    assert missed_single == ([(b"t", b"r2")] if limited else [])
    assert len(many_hub) == len(single_hub) == (3 if limited else 4)


def test_connect_options_roundtrip_through_encode() -> None:
    """encode.connect output is what the parser reads back (used by the uplink)."""
    opts = {"verbose": False, "headers": True, "name": "x y"}
    assert ServerParser().feed(encode.connect(opts)) == [Connect(opts)]
    assert json.loads(encode.info({"a": 1})[5:]) == {"a": 1}


def test_hub_internal_publish_reaches_callback_subscribers() -> None:
    """``origin`` defaults to None (an internal publisher: a bridge, the stream); callback
    subscriptions have no owner (None) either, which must not be taken for an echo check."""
    hub = Hub()
    seen: list[tuple] = []
    hub.add(Subscription(b"in.>", b"i", None, callback=lambda *a: seen.append(a)))
    assert hub.publish(b"in.x", b"", 1, encode.tail(b"", b"x")) == 1
    assert seen == [(b"in.x", b"", -1, b"x")]
