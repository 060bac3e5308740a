"""Unit tests of the leaf-node dialect's pure modules.

- ``leaf.proto.leafnode``: ``LeafParser`` (what a hub sends a leaf) and the encoders
  ``ls_plus``/``ls_minus``/``lmsg``;
- ``leaf.interest``: ``InterestLedger`` (local interest as LS+/LS- changes);
- ``leaf.proto.leafconn``: ``LeafSession`` (handshake, permissions, keep-alive);
- ``leaf.hub``: routing through the hub's interest (``Subscription(..., remote=True)``).

Wire vectors are the lines of transcript (b) in docs/nats-protocol.md §2.13, recorded against a
real nats-server 2.15.1 hub. The transcript's first INFO is abbreviated there (``...``), so the
complete leafnode-port INFO of §2.2 stands in for it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leaf.errors import ProtocolError
from leaf.hub import Hub, Subscription
from leaf.interest import Change, InterestLedger
from leaf.proto import encode
from leaf.proto.events import LeafMsg, Pubs
from leaf.proto.leafconn import (
    AWAIT_CONNECT_INFO,
    AWAIT_INFO,
    UP,
    LeafSession,
    LeafSettings,
)
from leaf.proto.leafnode import (
    LEAF_MAX_CONTROL_LINE,
    LeafParser,
    lmsg,
    ls_minus,
    ls_plus,
)
from leaf.proto.parser import MAX_CONTROL_LINE_EXCEEDED, MAX_PAYLOAD_VIOLATION, UNKNOWN_OP
from test_parser import NO_ERROR, Rcv, bytewise, cut, flat  # Rcv: the hub's view of a subscriber
from test_parser import run as run_parser

# -- helpers ---------------------------------------------------------------------------------------

Outcome = tuple[list[tuple], Any]


def describe(ev: Any) -> tuple:
    """An event as ``(type name, *fields)``: Ping(), Pong() and Ok() are all equal to ``()``
    as tuples, so the type must take part in every comparison."""
    return (type(ev).__name__, *ev)


def run(chunks: list[bytes], make: Callable[[], LeafParser] = LeafParser) -> Outcome:
    """The client parser tests' run with a leafnode parser: the (flattened, described) events
    and the err of the error that ended the stream (or NO_ERROR)."""
    events, err = run_parser(chunks, make)  # type: ignore[arg-type]
    return [describe(e) for e in events], err


def parse_error(data: bytes, **limits: int) -> ProtocolError:
    """The ProtocolError a fresh parser raises on ``data`` (fails if there is none)."""
    with pytest.raises(ProtocolError) as exc:
        LeafParser(**limits).feed(data)
    return exc.value


# Expected events, built from values (the tail is the client form: `` [reply] <size>\r\n...``).
def ev_msg(subject: bytes, reply: bytes, payload: bytes) -> tuple:
    return ("Pub", subject, reply, len(payload), encode.tail(reply, payload))


def ev_hmsg(subject: bytes, reply: bytes, hdr: bytes, body: bytes) -> tuple:
    payload = hdr + body
    return ("HPub", subject, reply, len(hdr), len(payload), encode.htail(reply, len(hdr), payload))


def ev_qmsg(subject: bytes, reply: bytes, queues: tuple[bytes, ...], payload: bytes,
            hdr_len: int = -1) -> tuple:
    tail = encode.htail(reply, hdr_len, payload) if hdr_len >= 0 else encode.tail(reply, payload)
    return ("LeafMsg", subject, reply, queues, hdr_len, len(payload), tail)


def lmsg_queues(subject: bytes, reply: bytes, queues: list[bytes] | tuple[bytes, ...],
                payload: bytes, hdr_len: int = -1) -> bytes:
    """The queue forms, encoded independently of the code under test:
    ``LMSG <subj> | <q>... <size>`` / ``LMSG <subj> + <reply> <q>... <size>`` (HMSG: two sizes)."""
    op = b"HMSG" if hdr_len >= 0 else b"LMSG"
    mark = b"+ " + reply if reply else b"|"
    sizes = (b"%d " % hdr_len if hdr_len >= 0 else b"") + b"%d" % len(payload)
    return b"%b %b %b %b %b\r\n%b\r\n" % (op, subject, mark, b" ".join(queues), sizes, payload)


# -- transcript (b), hub -> leaf -------------------------------------------------------------------

INFO_LEAF_PORT = (
    b'INFO {"server_id":"NABU25Q5FF4CJYAB3OAJRAJNBVGN3IPYCVVYF7ETUXXUHCSW4LVEUXI2","server_name":'
    b'"hub","version":"2.15.1","proto":3,"git_commit":"b2fd3ef","go":"go1.27.2","host":'
    b'"127.0.0.1","port":14231,"headers":true,"auth_required":true,"max_payload":1048576,"ip":'
    b'"127.0.0.1:14231","client_id":8,"nonce":"3-5yiC2nLyhJhN8","compression":"s2_auto","api_lvl"'
    b':5,"info_on_connect":true,"leafnode_urls":["127.0.0.1:14231"]} \r\n')
INFO_CONNECT_INFO = (
    b'INFO {"server_id":"NABU25Q5FF4CJYAB3OAJRAJNBVGN3IPYCVVYF7ETUXXUHCSW4LVEUXI2","server_name":'
    b'"hub","version":"2.15.1","proto":3,"git_commit":"b2fd3ef","go":"go1.27.2","host":'
    b'"127.0.0.1","port":14231,"headers":true,"auth_required":true,"max_payload":1048576,"ip":'
    b'"127.0.0.1:14231","client_id":8,"connect_info":true,"remote_account":"$G","api_lvl":5,'
    b'"info_on_connect":true,"leafnode_urls":["127.0.0.1:14231"]} \r\n')
HUB_INFO = json.loads(INFO_LEAF_PORT[5:])
HUB_CONNECT_INFO = json.loads(INFO_CONNECT_INFO[5:])
HDR = b"NATS/1.0\r\nX-K: v\r\n\r\n"            # 20 bytes, as in `HMSG leaf.sub 20 24`
LOOP_ERR = 'Loop detected for leafnode account="$G". Delaying attempt to reconnect for 30s'
INBOX = b"_INBOX.1ar7fKhntb7YXgyrUlX486"

# (the exact bytes the hub sent, the event they must parse to)
TRANSCRIPT: list[tuple[bytes, tuple]] = [
    (INFO_LEAF_PORT, ("Info", HUB_INFO)),
    (INFO_CONNECT_INFO, ("Info", HUB_CONNECT_INFO)),
    (b"LS+ $SYS.REQ.ACCOUNT.PING.CONNZ\r\n", ("LeafSub", b"$SYS.REQ.ACCOUNT.PING.CONNZ", b"", 0)),
    (b"LS+ $SYS.REQ.ACCOUNT.PING.STATZ\r\n", ("LeafSub", b"$SYS.REQ.ACCOUNT.PING.STATZ", b"", 0)),
    (b"LS+ $SYS.REQ.SERVER.PING.CONNZ\r\n", ("LeafSub", b"$SYS.REQ.SERVER.PING.CONNZ", b"", 0)),
    (b"LS+ $SYS.REQ.USER.INFO\r\n", ("LeafSub", b"$SYS.REQ.USER.INFO", b"", 0)),
    (b"LS+ $LDS.II5Fq5tbskBrDtrd9wKC9M\r\n", ("LeafSub", b"$LDS.II5Fq5tbskBrDtrd9wKC9M", b"", 0)),
    (b"LS+ hub.sub\r\n", ("LeafSub", b"hub.sub", b"", 0)),
    (b"LS+ svc.q workers 1\r\n", ("LeafSub", b"svc.q", b"workers", 1)),
    (b"LS+ svc.echo\r\n", ("LeafSub", b"svc.echo", b"", 0)),
    (b"PING\r\n", ("Ping",)),
    (b"PONG\r\n", ("Pong",)),
    (b"LMSG leaf.sub 5\r\nhello\r\n", ev_msg(b"leaf.sub", b"", b"hello")),
    (b"LMSG leaf.sub hub.reply.1 5\r\nhello\r\n", ev_msg(b"leaf.sub", b"hub.reply.1", b"hello")),
    (b"LMSG leaf.wild.a.b 1\r\nw\r\n", ev_msg(b"leaf.wild.a.b", b"", b"w")),
    (b"HMSG leaf.sub 20 24\r\n" + HDR + b"body\r\n", ev_hmsg(b"leaf.sub", b"", HDR, b"body")),
    (b"HMSG leaf.sub hub.reply.2 20 24\r\n" + HDR + b"body\r\n",
     ev_hmsg(b"leaf.sub", b"hub.reply.2", HDR, b"body")),
    (b"LMSG leaf.q | workers 4\r\njob1\r\n", ev_qmsg(b"leaf.q", b"", (b"workers",), b"job1")),
    (b"LMSG leaf.q + hub.reply.3 workers 4\r\njob2\r\n",
     ev_qmsg(b"leaf.q", b"hub.reply.3", (b"workers",), b"job2")),
    (b"HMSG leaf.q + hub.reply.4 workers 20 24\r\n" + HDR + b"job3\r\n",
     ev_qmsg(b"leaf.q", b"hub.reply.4", (b"workers",), HDR + b"job3", 20)),
    (b"PONG\r\n", ("Pong",)),
    (b"LMSG _INBOX.pyleaf.r1 9\r\npong:ping\r\n", ev_msg(b"_INBOX.pyleaf.r1", b"", b"pong:ping")),
    (b"LS+ " + INBOX + b".*\r\n", ("LeafSub", INBOX + b".*", b"", 0)),
    (b"LMSG leaf.sub " + INBOX + b".1ar7fKhntb7YXgyrUlX4A68bec 2\r\nq?\r\n",
     ev_msg(b"leaf.sub", INBOX + b".1ar7fKhntb7YXgyrUlX4A68bec", b"q?")),
    (b"LMSG leaf.q | workers 6\r\nafter0\r\n", ev_qmsg(b"leaf.q", b"", (b"workers",), b"after0")),
    (b"LS+ dyn.x\r\n", ("LeafSub", b"dyn.x", b"", 0)),
    (b"LS+ dyn.q g 1\r\n", ("LeafSub", b"dyn.q", b"g", 1)),
    (b"LS+ dyn.q g 2\r\n", ("LeafSub", b"dyn.q", b"g", 2)),
    (b"LS+ dyn.q g 1\r\n", ("LeafSub", b"dyn.q", b"g", 1)),
    (b"LS- dyn.q g\r\n", ("LeafUnsub", b"dyn.q", b"g")),
    (b"LS- dyn.x\r\n", ("LeafUnsub", b"dyn.x", b"")),
    (b"-ERR '" + LOOP_ERR.encode() + b"'\r\n", ("Err", LOOP_ERR)),
]
TRANSCRIPT_BYTES = b"".join(wire for wire, _ in TRANSCRIPT)
TRANSCRIPT_EVENTS = [event for _, event in TRANSCRIPT]


# -- LeafParser: the transcript --------------------------------------------------------------------

@pytest.mark.parametrize("wire,expected", TRANSCRIPT, ids=[w[:32].decode() for w, _ in TRANSCRIPT])
def test_each_transcript_op_parses_to_its_event(wire: bytes, expected: tuple) -> None:
    assert run([wire]) == ([expected], NO_ERROR)


def test_queue_form_tails_are_in_the_client_form() -> None:
    """A LeafMsg's tail is what follows ``MSG <subject> <sid>`` for a local delivery: the
    queue names and the ``|``/``+`` marker are gone."""
    events = LeafParser().feed(b"LMSG leaf.q | workers 4\r\njob1\r\n"
                               b"LMSG leaf.q + hub.reply.3 workers 4\r\njob2\r\n"
                               b"HMSG leaf.q + hub.reply.4 workers 20 24\r\n" + HDR + b"job3\r\n"
                               b"HMSG leaf.q | a b c 20 24\r\n" + HDR + b"job4\r\n")
    assert [type(e) for e in events] == [LeafMsg] * 4
    assert [e.tail for e in events] == [
        b" 4\r\njob1\r\n", b" hub.reply.3 4\r\njob2\r\n",
        b" hub.reply.4 20 24\r\n" + HDR + b"job3\r\n", b" 20 24\r\n" + HDR + b"job4\r\n"]
    assert [e.queues for e in events] == [(b"workers",)] * 3 + [(b"a", b"b", b"c")]
    assert [e.hdr_len for e in events] == [-1, -1, 20, 20]
    assert [e.payload for e in events] == [b"job1", b"job2", HDR + b"job3", HDR + b"job4"]


def test_plain_messages_come_out_as_client_parser_events() -> None:
    """Plain LMSG/HMSG take the client parser's path: Pubs/PubBatch and HPub."""
    events = LeafParser().feed(b"LMSG a 1\r\nx\r\nLMSG b r 1\r\ny\r\nHMSG h 20 24\r\n" + HDR +
                               b"body\r\n" + b"LMSG s 2\r\nab\r\n" * 3)
    assert isinstance(events[0], Pubs)
    names = [type(e).__name__ for e in events]
    assert set(names) == {"Pubs", "HPub", "PubBatch"} and names[1] == "HPub"
    assert [describe(e) for e in flat(events)] == [
        ev_msg(b"a", b"", b"x"), ev_msg(b"b", b"r", b"y"), ev_hmsg(b"h", b"", HDR, b"body"),
    ] + [ev_msg(b"s", b"", b"ab")] * 3


def test_transcript_whole_and_byte_by_byte() -> None:
    whole = run([TRANSCRIPT_BYTES])
    assert whole == (TRANSCRIPT_EVENTS, NO_ERROR)
    assert run(bytewise(TRANSCRIPT_BYTES)) == whole


def test_transcript_split_at_every_offset() -> None:
    whole = run([TRANSCRIPT_BYTES])
    for i in range(len(TRANSCRIPT_BYTES) + 1):
        assert run([TRANSCRIPT_BYTES[:i], TRANSCRIPT_BYTES[i:]]) == whole, i


def test_leaf_to_hub_encoders_match_the_transcript() -> None:
    """What the leaf sent in transcript (b), byte for byte."""
    hdr = b"NATS/1.0\r\nX-Leaf: yes\r\n\r\n"        # 25 bytes
    assert ls_plus(b"leaf.sub") == b"LS+ leaf.sub\r\n"
    assert ls_plus(b"leaf.wild.>") == b"LS+ leaf.wild.>\r\n"
    assert ls_plus(b"leaf.q", b"workers", 1) == b"LS+ leaf.q workers 1\r\n"
    assert ls_plus(b"_INBOX.pyleaf.>") == b"LS+ _INBOX.pyleaf.>\r\n"
    assert ls_plus(b"dyn.q", b"g", 2) == b"LS+ dyn.q g 2\r\n"
    assert ls_plus(b"dyn.q", b"g") == b"LS+ dyn.q g 1\r\n"    # a queue LS+ always has a weight
    assert ls_minus(b"dyn.q", b"g") == b"LS- dyn.q g\r\n"    # ... and its LS- never has one
    assert ls_minus(b"dyn.x") == b"LS- dyn.x\r\n"
    assert lmsg(b"hub.sub", b"", b"from1") == b"LMSG hub.sub 5\r\nfrom1\r\n"
    assert lmsg(b"hub.sub", b"leaf.reply.1", b"from2") == \
        b"LMSG hub.sub leaf.reply.1 5\r\nfrom2\r\n"
    assert lmsg(b"hub.sub", b"", hdr + b"from3", len(hdr)) == \
        b"HMSG hub.sub 25 30\r\n" + hdr + b"from3\r\n"
    assert lmsg(b"hub.sub", b"leaf.reply.2", hdr + b"from4", len(hdr)) == \
        b"HMSG hub.sub leaf.reply.2 25 30\r\n" + hdr + b"from4\r\n"
    assert lmsg(b"svc.echo", b"_INBOX.pyleaf.r1", b"ping") == \
        b"LMSG svc.echo _INBOX.pyleaf.r1 4\r\nping\r\n"
    # The dialect is symmetric: what we send parses back to what we meant.
    wire = (ls_plus(b"leaf.q", b"workers", 3) + ls_minus(b"leaf.q", b"workers") +
            lmsg(b"hub.sub", b"r", hdr + b"x", len(hdr)) + lmsg(b"hub.sub", b"", b""))
    assert run([wire]) == ([("LeafSub", b"leaf.q", b"workers", 3),
                            ("LeafUnsub", b"leaf.q", b"workers"),
                            ev_hmsg(b"hub.sub", b"r", hdr, b"x"),
                            ev_msg(b"hub.sub", b"", b"")], NO_ERROR)


# -- LeafParser: errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"LS+ s q\r\n",                 # queue interest without its (mandatory) weight
    b"LS+ s q x\r\n", b"LS+ s q -1\r\n", b"LS+ a b 1 2\r\n", b"LS+ \r\n", b"LS- \r\n",
    b"LS- a b c d\r\n",
    b"LMSG s x\r\n", b"LMSG s -1\r\n", b"LMSG s 1234567890\r\n", b"LMSG s\r\n", b"LMSG s r 5x\r\n",
    b"LMSG s | 5\r\n",              # queue form without queue names
    b"LMSG s | q x\r\n", b"LMSG s a b 5\r\n",
    b"HMSG s 5\r\n", b"HMSG s 5 4\r\n", b"HMSG s x 4\r\n", b"HMSG s | 2 x\r\n",
    b"INFO x\r\n", b"INFO []\r\n",
])
def test_malformed_lines_raise_protocol_error(data: bytes) -> None:
    exc = parse_error(data)
    assert exc.err != MAX_PAYLOAD_VIOLATION


@pytest.mark.parametrize("data", [
    b"FOO\r\n", b"FOO bar\r\n", b"MSG a 1 1\r\nx\r\n", b"PUB a 1\r\nx\r\n", b"SUB a 1\r\n",
    b"UNSUB 1\r\n", b"CONNECT {}\r\n", b"LMSGX a 1\r\n", b"LS+x\r\n", b"LS*\r\n", b"\r\n", b"X",
    b"LMSG a 1\r\nxy\r\n",          # payload not followed by CRLF
])
def test_unknown_ops_raise_protocol_error(data: bytes) -> None:
    assert parse_error(data).err == UNKNOWN_OP


@pytest.mark.parametrize("line", [
    b"LMSG a 11\r\n", b"LMSG a r 11\r\n", b"LMSG a | q 11\r\n", b"LMSG a + r q1 q2 11\r\n",
    b"HMSG a 5 11\r\n", b"HMSG a r 5 11\r\n", b"HMSG a | q 5 11\r\n", b"HMSG a + r q 5 11\r\n",
])
def test_oversize_payload_is_a_max_payload_violation(line: bytes) -> None:
    """Refused on the control line alone, before any of the payload arrives."""
    assert parse_error(line, max_payload=10).err == MAX_PAYLOAD_VIOLATION
    ok = line.replace(b"11", b"10")
    assert run([ok + b"NATS/1.0\r\n\r\n\r\n"[:10] + b"\r\n"],
               lambda: LeafParser(max_payload=10))[1] == NO_ERROR


def test_events_before_an_error_come_with_it() -> None:
    exc = parse_error(b"PING\r\nLS+ a\r\nLMSG a 1\r\nx\r\nLMSG q | g 1\r\ny\r\nLS+ s q\r\nPONG\r\n")
    assert [describe(e) for e in flat(exc.events)] == [
        ("Ping",), ("LeafSub", b"a", b"", 0), ev_msg(b"a", b"", b"x"),
        ev_qmsg(b"q", b"", (b"g",), b"y")]


def test_leaf_control_lines_may_be_long() -> None:
    """A message for many queue groups exceeds the client limit (4096) but not the leaf one."""
    names = [b"group%04d" % i for i in range(1000)]
    wire = lmsg_queues(b"s", b"r", names, b"x")
    assert len(wire) > 4096
    assert run([wire]) == ([ev_qmsg(b"s", b"r", tuple(names), b"x")], NO_ERROR)
    assert run(bytewise(wire))[0] == run([wire])[0]
    huge = b"LS+ " + b"s" * (LEAF_MAX_CONTROL_LINE + 1) + b"\r\n"
    assert parse_error(huge).err == MAX_CONTROL_LINE_EXCEEDED


# -- LeafParser: hypothesis ------------------------------------------------------------------------

_token = st.text("abcXYZ09_-$", min_size=1, max_size=4)
_subject = st.lists(_token, min_size=1, max_size=4).map(".".join).map(str.encode)
_pattern = st.lists(_token | st.just("*"), min_size=1, max_size=3).map(".".join).map(
    str.encode).flatmap(lambda s: st.sampled_from([s, s + b".>"]))
_reply = st.just(b"") | _subject
_queue = st.text("abcqw09_-.", min_size=1, max_size=6).map(str.encode)
_payload = st.binary(max_size=40) | st.sampled_from([b"", b"\r\n", b"LMSG x 1\r\n", b"\n\n"])
_header = st.lists(st.sampled_from([b"A: b", b"X-K: v", b"K: "]), max_size=3).map(
    lambda fields: b"NATS/1.0\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n")
_info = st.dictionaries(st.sampled_from(["server_id", "max_payload", "leafnode_urls", "x"]),
                        st.integers() | st.text(max_size=6) | st.lists(st.text(max_size=4)),
                        max_size=4)
_err_text = st.text("abcXYZ =\"$.:0", min_size=1, max_size=30)
_sep = st.sampled_from([b" ", b" ", b" ", b"\t", b"  ", b" \t"])


@st.composite
def leaf_op(draw: st.DrawFn) -> tuple[bytes, tuple]:
    """One hub op in wire form with the event it must parse to."""
    kind = draw(st.sampled_from(["info", "ls+", "ls+q", "ls-", "lmsg", "lmsg", "hmsg", "qmsg",
                                 "qhmsg", "ping", "pong", "ok", "err"]))
    if kind == "info":
        options = draw(_info)
        return encode.info(options), ("Info", options)
    if kind == "ls+":
        subject = draw(_pattern)
        return ls_plus(subject), ("LeafSub", subject, b"", 0)
    if kind == "ls+q":
        subject, queue, weight = draw(_pattern), draw(_queue), draw(st.integers(1, 99999))
        return ls_plus(subject, queue, weight), ("LeafSub", subject, queue, weight)
    if kind == "ls-":
        subject, queue = draw(_pattern), draw(st.just(b"") | _queue)
        return ls_minus(subject, queue), ("LeafUnsub", subject, queue)
    if kind in ("lmsg", "hmsg"):
        subject, reply, body = draw(_subject), draw(_reply), draw(_payload)
        if kind == "lmsg":
            return lmsg(subject, reply, body), ev_msg(subject, reply, body)
        hdr = draw(_header)
        return lmsg(subject, reply, hdr + body, len(hdr)), ev_hmsg(subject, reply, hdr, body)
    if kind in ("qmsg", "qhmsg"):
        subject, reply, body = draw(_subject), draw(_reply), draw(_payload)
        queues = tuple(draw(st.lists(_queue, min_size=1, max_size=3)))
        hdr = draw(_header) if kind == "qhmsg" else b""
        hdr_len = len(hdr) if kind == "qhmsg" else -1
        return (lmsg_queues(subject, reply, queues, hdr + body, hdr_len),
                ev_qmsg(subject, reply, queues, hdr + body, hdr_len))
    if kind == "err":
        text = draw(_err_text)
        return encode.err(text), ("Err", text)
    word = {"ping": b"PING", "pong": b"PONG", "ok": b"+OK"}[kind]
    return word + b"\r\n", ({"ping": "Ping", "pong": "Pong", "ok": "Ok"}[kind],)


@st.composite
def respaced(draw: st.DrawFn, op: st.SearchStrategy[tuple[bytes, tuple]]) -> tuple[bytes, tuple]:
    """Sometimes the separators of an LS/LMSG/HMSG control line become tabs or runs: the
    events (and the client-form tails) must not change."""
    wire, expected = draw(op)
    if not wire.startswith((b"LS", b"LMSG", b"HMSG")) or draw(st.booleans()):
        return wire, expected
    line, rest = wire.split(b"\r\n", 1)
    parts = line.split(b" ")
    line = parts[0] + b"".join(draw(_sep) + p for p in parts[1:])
    return line + b"\r\n" + rest, expected


@st.composite
def leaf_stream(draw: st.DrawFn) -> tuple[bytes, list[tuple]]:
    ops = draw(st.lists(respaced(leaf_op()), max_size=10))
    # Runs of identical messages take the parser's batch path (PubBatch).
    ops = [o for o in ops for _ in range(draw(st.sampled_from([1, 1, 1, 3])))]
    return b"".join(w for w, _ in ops), [e for _, e in ops]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaf_stream(), st.data())
def test_valid_ops_round_trip_however_chunked(stream: tuple[bytes, list[tuple]],
                                              data: st.DataObject) -> None:
    raw, expected = stream
    whole = run([raw])
    assert whole == (expected, NO_ERROR)
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert run(cut(raw, points)) == whole


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaf_stream())
def test_valid_ops_round_trip_byte_by_byte(stream: tuple[bytes, list[tuple]]) -> None:
    raw, expected = stream
    assert run(bytewise(raw)) == (expected, NO_ERROR)


_soup = st.lists(st.sampled_from([
    b"LMSG ", b"HMSG ", b"LS+ ", b"LS- ", b"PING", b"PONG", b"+OK", b"INFO ", b"-ERR ", b"lmsg\t",
    b"| ", b"+ ", b"q ", b"foo", b".", b"*", b">", b" ", b"\t", b"\r\n", b"\n", b"\r", b"0", b"1",
    b"5", b"12", b"99", b"{}", b"'x'", b"NATS/1.0\r\n", b"x", b"\x00", b"\x0c", b"MSG ", b"PUB ",
]), max_size=40).map(b"".join)


@st.composite
def mutated_stream(draw: st.DrawFn) -> bytes:
    raw, _ = draw(leaf_stream())
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + draw(st.binary(max_size=3)) + raw[at + draw(st.integers(0, 3)):]


_limits = st.sampled_from([(LEAF_MAX_CONTROL_LINE, 1 << 20), (12, 16), (5, 4), (1, 1)])


@pytest.mark.timeout(60)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=120), _soup, mutated_stream()), _limits, st.data())
def test_garbage_only_raises_protocol_error_and_chunking_never_matters(
        raw: bytes, limits: tuple[int, int], data: st.DataObject) -> None:
    """``run`` lets anything but ProtocolError escape; the global timeout catches a hang."""
    def make() -> LeafParser:
        return LeafParser(max_payload=limits[1], max_control_line=limits[0])

    whole = run([raw], make)
    assert whole[1] in (NO_ERROR, None, UNKNOWN_OP, MAX_CONTROL_LINE_EXCEEDED,
                        MAX_PAYLOAD_VIOLATION)
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert run(cut(raw, points), make) == whole
    assert run(bytewise(raw), make) == whole


# -- InterestLedger --------------------------------------------------------------------------------

def test_plain_interest_is_ref_counted() -> None:
    ledger = InterestLedger()
    assert ledger.add(b"a") == (b"a", b"", 1)          # 0 -> 1: LS+
    assert ledger.add(b"a") is None                     # 1 -> 2: nothing
    assert ledger.add(b"a.>") == (b"a.>", b"", 1)
    assert ledger.count(b"a") == 2 and len(ledger) == 2
    assert ledger.remove(b"a") is None                  # 2 -> 1: nothing
    assert ledger.remove(b"a") == (b"a", b"", 0)        # 1 -> 0: LS-
    assert ledger.remove(b"a") is None                  # never below 0
    assert ledger.count(b"a") == 0
    assert ledger.add(b"a") == (b"a", b"", 1)           # and announced again from 0
    assert sorted(ledger) == [(b"a", b"", 1), (b"a.>", b"", 1)]


def test_queue_weights_are_re_announced_on_every_change() -> None:
    ledger = InterestLedger()
    assert ledger.add(b"q", b"g") == (b"q", b"g", 1)
    assert ledger.add(b"q", b"g") == (b"q", b"g", 2)
    assert ledger.add(b"q", b"h") == (b"q", b"h", 1)
    assert ledger.add(b"q") == (b"q", b"", 1)           # plain interest in q is its own key
    assert ledger.count(b"q", b"g") == 2 and ledger.count(b"q") == 1
    assert sorted(ledger) == [(b"q", b"", 1), (b"q", b"g", 2), (b"q", b"h", 1)]
    assert ledger.remove(b"q", b"g") == (b"q", b"g", 1)
    assert ledger.remove(b"q", b"g") == (b"q", b"g", 0)  # withdrawn at 0
    assert ledger.remove(b"q", b"g") is None
    assert sorted(ledger) == [(b"q", b"", 1), (b"q", b"h", 1)]
    assert len(ledger) == 2


def wire(change: Change) -> bytes:
    subject, queue, weight = change
    return ls_plus(subject, queue, weight) if weight > 0 else ls_minus(subject, queue)


def test_ledger_changes_as_wire_match_the_hubs_own_behaviour() -> None:
    """The hub's interest updates in transcript (b) (sub dyn.x, queue-sub dyn.q g twice, a second
    sub dyn.x, then all gone): the same operations on the ledger give the same lines."""
    ledger = InterestLedger()
    changes = [ledger.add(b"dyn.x"), ledger.add(b"dyn.q", b"g"), ledger.add(b"dyn.q", b"g"),
               ledger.add(b"dyn.x"), ledger.remove(b"dyn.q", b"g"), ledger.remove(b"dyn.q", b"g"),
               ledger.remove(b"dyn.x"), ledger.remove(b"dyn.x")]
    assert b"".join(wire(c) for c in changes if c is not None) == (
        b"LS+ dyn.x\r\nLS+ dyn.q g 1\r\nLS+ dyn.q g 2\r\nLS+ dyn.q g 1\r\nLS- dyn.q g\r\n"
        b"LS- dyn.x\r\n")
    # After a reconnect the whole ledger is announced again: transcript (b)'s leaf LS+ burst.
    for subject, queue in [(b"leaf.sub", b""), (b"leaf.wild.>", b""), (b"leaf.q", b"workers"),
                           (b"_INBOX.pyleaf.>", b""), (b"leaf.sub", b"")]:
        ledger.add(subject, queue)
    assert sorted(wire(c) for c in ledger) == sorted([
        b"LS+ leaf.sub\r\n", b"LS+ leaf.wild.>\r\n", b"LS+ leaf.q workers 1\r\n",
        b"LS+ _INBOX.pyleaf.>\r\n"])


_ledger_ops = st.lists(st.tuples(st.booleans(), st.sampled_from([b"a", b"a.*", b">", b"b.c"]),
                                 st.sampled_from([b"", b"", b"g", b"h"])), max_size=60)


@settings(max_examples=200, deadline=None)
@given(_ledger_ops)
def test_announced_minus_withdrawn_is_the_ledger(ops: list[tuple[bool, bytes, bytes]]) -> None:
    """Whatever the order of adds and removes, a peer that applies the changes (also through the
    wire: ls_plus/ls_minus parsed by LeafParser) holds exactly what iterating the ledger gives."""
    ledger = InterestLedger()
    counts: Counter[tuple[bytes, bytes]] = Counter()
    announced: dict[tuple[bytes, bytes], int] = {}
    sent = bytearray()
    for is_add, subject, queue in ops:
        key = (subject, queue)
        before = counts[key]
        if is_add:
            counts[key] += 1
            change = ledger.add(subject, queue)
        else:
            counts[key] = max(before - 1, 0)
            change = ledger.remove(subject, queue)
        after = counts[key]
        if queue:   # every change of a queue group's size is announced, with the new size
            assert change == ((subject, queue, after) if after != before else None)
        else:       # plain interest: only 0 -> 1 and 1 -> 0
            assert change == ((subject, b"", after) if (before == 0) != (after == 0) else None)
        if change is not None:
            if change[2] > 0:
                announced[key] = change[2]
            else:
                del announced[key]
            sent += wire(change)
    current = {(s, q): w for s, q, w in ledger}
    assert current == announced
    assert current == {k: (n if k[1] else 1) for k, n in counts.items() if n}
    assert len(ledger) == len(current)
    assert all(ledger.count(s, q) == counts[(s, q)] for s, q in counts)
    # The same through the wire.
    seen: dict[tuple[bytes, bytes], int] = {}
    for ev in LeafParser().feed(bytes(sent)):
        if type(ev).__name__ == "LeafSub":
            seen[(ev.subject, ev.queue)] = ev.weight or 1
        else:
            del seen[(ev.subject, ev.queue)]
    assert seen == current


# -- LeafSession -----------------------------------------------------------------------------------

LDS = b"$LDS.ownLeafLoopDetect0"
SETTINGS = LeafSettings(name="pyleaf", account="$G", server_id="PYLEAF0001", version="2.15.1",
                        ping_interval=10.0, max_pings_out=2, first_info_timeout=1.0,
                        connect_timeout=2.0)


def session(now: float = 1000.0, **changes: Any) -> LeafSession:
    base = SETTINGS.__dict__ | changes
    return LeafSession(LeafSettings(**base), LDS, now)


def up(s: LeafSession, now: float = 1000.0, **connect_info: Any) -> LeafSession:
    """Through the handshake: the hub's first INFO, then its connect_info INFO."""
    assert s.receive_info(dict(HUB_INFO), now) == AWAIT_CONNECT_INFO
    assert s.receive_info(HUB_CONNECT_INFO | connect_info, now) == UP
    return s


def connect_json(hello: bytes) -> dict[str, Any]:
    info, connect, rest = hello.split(b"\r\n")
    assert rest == b""
    assert info.rstrip() == b'INFO {"compression":"off"}'
    assert connect.startswith(b"CONNECT ")
    return json.loads(connect[len(b"CONNECT "):])


@pytest.mark.parametrize("info", [
    {"server_id": "N", "client_id": 5, "max_payload": 1048576},    # a client port's INFO
    {"server_id": "N", "leafnode_urls": ["127.0.0.1:7422"]},       # no client_id
    {"server_id": "N", "client_id": 0, "leafnode_urls": []},
])
def test_first_info_that_is_not_a_leafnode_port_is_an_error(info: dict[str, Any]) -> None:
    s = session()
    with pytest.raises(ProtocolError):
        s.receive_info(info, 1000.0)
    assert s.phase == AWAIT_INFO


def test_first_info_then_hello() -> None:
    s = session()
    assert s.phase == AWAIT_INFO
    assert s.receive_info(dict(HUB_INFO), 1000.0) == AWAIT_CONNECT_INFO
    assert s.leafnode_urls == ["127.0.0.1:14231"] and s.max_payload == 1048576
    assert not s.tls_required
    hello = s.hello({"user": "leafy", "pass": "secret"})
    assert hello.startswith(b'INFO {"compression":"off"}')      # S2 declined before CONNECT
    opts = connect_json(hello)
    assert "lang" not in opts                                    # a client would be refused
    assert opts["headers"] is True and opts["protocol"] == 1
    assert opts["name"] == "pyleaf" and opts["remote_account"] == "$G"
    assert opts["version"] == "2.15.1" and opts["server_id"] == "PYLEAF0001"
    assert opts["user"] == "leafy" and opts["pass"] == "secret"
    assert "deny_pub" not in opts and "compress_mode" not in opts and "cluster" not in opts
    # Other credentials pass through as given.
    nkey = connect_json(s.hello({"nkey": "UABC", "sig": "c2ln"}))
    assert nkey["nkey"] == "UABC" and nkey["sig"] == "c2ln" and "user" not in nkey
    token = connect_json(s.hello({"auth_token": "t0k"}))
    assert token["auth_token"] == "t0k"


def test_hello_asks_the_hub_to_filter_our_denied_subscriptions() -> None:
    s = session(deny_subscribe=(b"nope.>", b"secret"), account="edge")
    s.receive_info(dict(HUB_INFO), 1000.0)
    opts = connect_json(s.hello({}))
    assert opts["deny_pub"] == ["nope.>", "secret"]
    assert opts["remote_account"] == "edge"


def test_connect_info_brings_the_session_up() -> None:
    s = session()
    s.receive_info(dict(HUB_INFO), 1000.0)
    # An async INFO that is not the connect_info one does not count.
    assert s.receive_info({"leafnode_urls": ["a:1", "b:2"]}, 1000.1) == AWAIT_CONNECT_INFO
    assert s.leafnode_urls == ["a:1", "b:2"]
    assert s.receive_info(HUB_CONNECT_INFO | {"remote_account": "ACC", "max_payload": 2048},
                          1000.2) == UP
    assert s.phase == UP and s.account == "ACC" and s.max_payload == 2048
    assert s.announce_self() == b"LS+ " + LDS + b"\r\n"
    assert s.receive_info({"leafnode_urls": ["c:3"]}, 1001.0) == UP
    assert s.leafnode_urls == ["c:3"]


# Permissions as the hub states them in its connect_info INFO, from the leaf's point of view:
# ``import`` = what we may subscribe to (LS+), ``export`` = what we may send (LMSG).
@pytest.mark.parametrize("perms,subject,allowed", [
    # deny: a literal matched by a deny pattern is refused ...
    ({"deny": ["hidden.>"]}, b"hidden.stuff", False),
    ({"deny": ["hidden.>"]}, b"hidden", True),
    ({"deny": ["hidden.>"]}, b"visible.stuff", True),
    # ... and a wildcard the deny pattern matches token for token too
    ({"deny": ["hidden.>"]}, b"hidden.>", False),
    ({"deny": ["hidden.>"]}, b"hidden.*", False),
    ({"deny": ["hidden.>"]}, b"hidden.*.x", False),
    # but not a wider wildcard: the hub filters what it sends under it
    ({"deny": ["hidden.>"]}, b">", True),
    ({"deny": ["hidden.>"]}, b"*.stuff", True),
    ({"deny": ["a.b"]}, b"a.*", True),
    ({"deny": ["a.*"]}, b"a.*", False),
    ({"deny": ["a.*"]}, b"a.b", False),
    ({"deny": ["a.*"]}, b"a.>", False),            # `*` matches the token `>` like any other
    ({"deny": ["a.*"]}, b"a.b.>", True),
    # allow: a literal must match an allow pattern ...
    ({"allow": ["foo.>", "bar.baz"]}, b"foo.x", True),
    ({"allow": ["foo.>", "bar.baz"]}, b"foo", False),
    ({"allow": ["foo.>", "bar.baz"]}, b"bar.baz", True),
    ({"allow": ["foo.>", "bar.baz"]}, b"bar.qux", False),
    # ... a wildcard may match one, or be matched by one
    ({"allow": ["foo.>", "bar.baz"]}, b"foo.*", True),
    ({"allow": ["foo.>", "bar.baz"]}, b"bar.*", True),
    ({"allow": ["foo.>", "bar.baz"]}, b"*.baz", True),
    ({"allow": ["foo.>", "bar.baz"]}, b">", True),
    ({"allow": ["foo.>", "bar.baz"]}, b"baz.*", False),
    ({"allow": ["foo.>", "bar.baz"]}, b"*", False),
    ({"allow": ["foo.>", "bar.baz"]}, b"bar.baz.>", False),
    # both: deny wins over allow
    ({"allow": ["foo.>"], "deny": ["foo.secret.>"]}, b"foo.secret.x", False),
    ({"allow": ["foo.>"], "deny": ["foo.secret.>"]}, b"foo.secret.>", False),
    ({"allow": ["foo.>"], "deny": ["foo.secret.>"]}, b"foo.>", True),
    ({"allow": ["foo.>"], "deny": ["foo.secret.>"]}, b"foo.open", True),
])
def test_may_announce_follows_import_permissions(perms: dict[str, list[str]], subject: bytes,
                                                 allowed: bool) -> None:
    s = up(session(), **{"import": perms})
    assert s.may_announce(subject) is allowed
    # Export rules are about what we send, not what we announce.
    s = up(session(), **{"export": perms})
    assert s.may_announce(subject) is True


@pytest.mark.parametrize("perms,subject,allowed", [
    ({"deny": ["forbidden.>"]}, b"forbidden.x", False),
    ({"deny": ["forbidden.>"]}, b"forbidden.x.y", False),
    ({"deny": ["forbidden.>"]}, b"forbidden", True),
    ({"deny": ["forbidden.>"]}, b"hub.sub", True),
    ({"deny": ["a.*"]}, b"a.b", False),
    ({"deny": ["a.*"]}, b"a.b.c", True),
    ({"allow": ["out.>", "svc.echo"]}, b"out.x", True),
    ({"allow": ["out.>", "svc.echo"]}, b"svc.echo", True),
    ({"allow": ["out.>", "svc.echo"]}, b"out", False),
    ({"allow": ["out.>", "svc.echo"]}, b"other", False),
    ({"allow": ["out.>"], "deny": ["out.secret"]}, b"out.secret", False),
    ({"allow": ["out.>"], "deny": ["out.secret"]}, b"out.open", True),
])
def test_may_send_follows_export_permissions(perms: dict[str, list[str]], subject: bytes,
                                             allowed: bool) -> None:
    s = up(session(), **{"export": perms})
    assert s.may_send(subject) is allowed
    assert s.filters_sends
    s = up(session(), **{"import": perms})
    assert s.may_send(subject) is True


def test_transcript_permissions_json_and_our_own_deny_lists() -> None:
    """§2.10's connect_info fragment (``>`` arrives JSON-escaped), plus our own deny lists,
    which apply before the connect_info INFO already and are merged with the hub's after it."""
    fragment = json.loads(b'{"import":{"deny":["hidden.\\u003e"]},'
                          b'"export":{"deny":["forbidden.\\u003e"]}}')
    s = session(deny_publish=(b"local.only.>",), deny_subscribe=(b"nope.>",))
    assert not s.may_send(b"local.only.x") and s.filters_sends
    assert not s.may_announce(b"nope.literal") and not s.may_announce(b"nope.>")
    up(s, **fragment)
    assert not s.may_announce(b"hidden.stuff") and s.may_announce(b"shown.stuff")
    assert not s.may_send(b"forbidden.x") and s.may_send(b"allowed.x")
    assert not s.may_send(b"local.only.x")
    assert not s.may_announce(b"nope.literal") and s.may_announce(b">")
    # No permissions at all: nothing to filter on sends.
    plain = up(session())
    assert not plain.filters_sends and plain.may_send(b"anything.at.all")


def test_async_info_replaces_the_hubs_permissions() -> None:
    """A later INFO carrying ``import``/``export`` (a config reload on the hub) replaces both
    rule sets, as a Go leaf's setPermissions does; an INFO without them changes nothing."""
    s = up(session(deny_subscribe=(b"mine.>",)), **{"import": {"deny": ["a.>"]},
                                                    "export": {"deny": ["b.>"]}})
    assert not s.may_announce(b"a.x") and not s.may_send(b"b.x")
    s.receive_info({"leafnode_urls": ["h:1"]}, 1001.0)
    assert not s.may_announce(b"a.x") and not s.may_send(b"b.x")
    assert s.receive_info({"import": {"allow": ["c.>"]}}, 1002.0) == UP
    assert s.may_announce(b"c.x") and not s.may_announce(b"a.x")
    assert s.may_send(b"b.x") and not s.filters_sends
    assert not s.may_announce(b"mine.x") and not s.may_announce(b"$KV.b.k")   # ours stay


@pytest.mark.parametrize("import_perms", [None, {"allow": [">"]}, {"deny": ["x"]}])
@pytest.mark.parametrize("subject", [
    b"$JS.API.INFO", b"$JS.API.STREAM.INFO.ORDERS", b"$JS.API.>", b"$KV.b.k", b"$KV.>",
    b"$OBJ.b.c", b"$LDS.x", b"$LDS.II5Fq5tbskBrDtrd9wKC9M", LDS,
])
def test_jetstream_and_loop_detection_subjects_are_never_announced(
        import_perms: dict[str, list[str]] | None, subject: bytes) -> None:
    s = session()
    assert not s.may_announce(subject)                   # before the connect_info INFO
    up(s, **({"import": import_perms} if import_perms is not None else {}))
    assert not s.may_announce(subject)
    # Domain-prefixed JetStream API subjects and wider wildcards are fine.
    assert s.may_announce(b"$JS.hub.API.INFO") and s.may_announce(b"orders.>")


def test_check_hub_interest_detects_our_own_loop_subject() -> None:
    s = up(session())
    s.check_hub_interest(b"$LDS.II5Fq5tbskBrDtrd9wKC9M")  # the hub's: fine
    s.check_hub_interest(b"hub.sub")
    with pytest.raises(ProtocolError) as exc:
        s.check_hub_interest(LDS)
    assert "Loop detected" in str(exc.value)


def test_keepalive_pings_every_interval_and_gives_up_when_stale() -> None:
    s = up(session(now=1000.0), now=1000.0)
    assert s.deadline() == 1010.0
    assert s.on_timer(1009.9) == b""
    assert s.on_timer(1010.0) == b"PING\r\n"
    assert s.deadline() == 1020.0 and s.pings_out == 1
    s.receive_pong(1010.25)                              # answered: reset, rtt measured
    assert s.pings_out == 0 and s.rtt == pytest.approx(0.25)
    assert s.on_timer(1015.0) == b""
    assert s.on_timer(1020.0) == b"PING\r\n"             # max_pings_out = 2 unanswered
    assert s.on_timer(1030.0) == b"PING\r\n"
    assert s.pings_out == 2
    with pytest.raises(ProtocolError) as exc:
        s.on_timer(1040.0)
    assert "Stale" in str(exc.value)


def test_explicit_ping_measures_rtt_from_the_first_unanswered_ping() -> None:
    s = up(session(now=500.0), now=500.0)
    assert s.ping(500.5) == b"PING\r\n"                  # sent when the link came up
    assert s.on_timer(510.4) == b""                      # the interval counts from that PING
    assert s.on_timer(510.5) == b"PING\r\n"
    s.receive_pong(511.0)
    assert s.rtt == pytest.approx(10.5) and s.pings_out == 0
    assert s.ping(520.0) == b"PING\r\n"
    s.receive_pong(520.125)
    assert s.rtt == pytest.approx(0.125)


def test_rtt_is_measured_when_the_clock_starts_at_zero() -> None:
    """``now`` is any monotonic clock; 0.0 is a valid reading (a test clock, a fresh one)."""
    s = up(session(now=0.0), now=0.0)
    s.ping(0.0)
    s.receive_pong(0.5)
    assert s.rtt == pytest.approx(0.5)


def test_first_info_timeout() -> None:
    s = session(now=1000.0)
    assert s.deadline() == 1001.0
    assert s.on_timer(1000.99) == b""
    with pytest.raises(ProtocolError):
        s.on_timer(1001.0)


def test_connect_info_timeout() -> None:
    s = session(now=1000.0)
    s.receive_info(dict(HUB_INFO), 1000.5)
    assert s.deadline() == 1002.5                        # counted from the first INFO
    assert s.on_timer(1002.4) == b""
    with pytest.raises(ProtocolError):
        s.on_timer(1002.5)


# -- hub routing with the hub's interest (remote subscriptions) ------------------------------------


def uplink_receiver() -> Rcv:
    """The uplink connection: never gets its own messages back, speaks headers."""
    return Rcv(echo=False, headers=True)


def local(hub: Hub, rcv: Rcv, subject: bytes, sid: bytes, queue: bytes = b"") -> Subscription:
    sub = Subscription(subject, sid, rcv, queue)
    rcv.subs[sid] = sub
    hub.add(sub)
    return sub


def remote(hub: Hub, uplink: Rcv, subject: bytes, queue: bytes = b"", max_size: int = 0,
           denied: Callable[[bytes], bool] | None = None) -> Subscription:
    """The hub's ``LS+ <subject> [<queue> <weight>]``, as the uplink adds it."""
    sub = Subscription(subject, b"", uplink, queue, remote=True)
    sub.max_size = max_size
    sub.denied = denied
    hub.add(sub)
    return sub


def pub(hub: Hub, subject: bytes, payload: bytes, reply: bytes = b"", origin: object = None,
        queues: tuple[bytes, ...] | None = None) -> int:
    return hub.publish(subject, reply, len(payload), encode.tail(reply, payload), -1, origin,
                       queues)


def hpub(hub: Hub, subject: bytes, hdr: bytes, body: bytes, reply: bytes = b"",
         origin: object = None, queues: tuple[bytes, ...] | None = None) -> int:
    payload = hdr + body
    return hub.publish(subject, reply, len(payload), encode.htail(reply, len(hdr), payload),
                       len(hdr), origin, queues)


def frames(data: bytes) -> list[tuple]:
    """What the uplink wrote, parsed back with the leaf dialect (the hub speaks it too)."""
    events, err = run([data])
    assert err == NO_ERROR
    return events


LEAF_HDR = b"NATS/1.0\r\nX-Leaf: yes\r\n\r\n"          # 25 bytes, transcript (b)


def test_local_publish_sends_one_frame_however_many_hub_patterns_match() -> None:
    hub = Hub()
    uplink, client, sub = uplink_receiver(), Rcv(), Rcv()
    for pattern in (b"hub.sub", b"hub.*", b">"):
        remote(hub, uplink, pattern)
    local(hub, sub, b"hub.sub", b"7")
    assert pub(hub, b"hub.sub", b"from1", origin=client) == 2
    assert pub(hub, b"hub.sub", b"from2", b"leaf.reply.1", origin=client) == 2
    assert hpub(hub, b"hub.sub", LEAF_HDR, b"from3", origin=client) == 2
    assert hpub(hub, b"hub.sub", LEAF_HDR, b"from4", b"leaf.reply.2", origin=client) == 2
    # Transcript (b)'s leaf -> hub lines, exactly.
    assert uplink.take() == (
        b"LMSG hub.sub 5\r\nfrom1\r\n"
        b"LMSG hub.sub leaf.reply.1 5\r\nfrom2\r\n"
        b"HMSG hub.sub 25 30\r\n" + LEAF_HDR + b"from3\r\n"
        b"HMSG hub.sub leaf.reply.2 25 30\r\n" + LEAF_HDR + b"from4\r\n")
    assert sub.take() == (
        b"MSG hub.sub 7 5\r\nfrom1\r\nMSG hub.sub 7 leaf.reply.1 5\r\nfrom2\r\n"
        b"HMSG hub.sub 7 25 30\r\n" + LEAF_HDR + b"from3\r\n"
        b"HMSG hub.sub 7 leaf.reply.2 25 30\r\n" + LEAF_HDR + b"from4\r\n")
    assert client.written() == b""
    # Only the hub is interested: still exactly one frame; nobody at all: none.
    assert pub(hub, b"hub.other", b"x", origin=client) == 1
    assert uplink.take() == b"LMSG hub.other 1\r\nx\r\n"
    assert pub(hub, b"a.b.c", b"x", origin=client) == 1
    assert uplink.take() == b"LMSG a.b.c 1\r\nx\r\n"
    hub.remove_all([s for s in hub.index if s.remote])
    assert pub(hub, b"hub.other", b"x", origin=client) == 0 and uplink.take() == b""


def test_hub_queue_group_alone_is_named_in_the_frame() -> None:
    hub = Hub()
    uplink, client = uplink_receiver(), Rcv()
    remote(hub, uplink, b"svc.q", b"workers")
    assert hub.has_interest(b"svc.q")
    assert pub(hub, b"svc.q", b"from5", origin=client) == 1
    assert pub(hub, b"svc.q", b"from6", b"leaf.reply.3", origin=client) == 1
    assert hpub(hub, b"svc.q", LEAF_HDR, b"from7", origin=client) == 1
    assert hpub(hub, b"svc.q", LEAF_HDR, b"from8", b"r.9", origin=client) == 1
    out = uplink.take()
    assert out == (b"LMSG svc.q | workers 5\r\nfrom5\r\n"
                   b"LMSG svc.q + leaf.reply.3 workers 5\r\nfrom6\r\n"
                   b"HMSG svc.q | workers 25 30\r\n" + LEAF_HDR + b"from7\r\n"
                   b"HMSG svc.q + r.9 workers 25 30\r\n" + LEAF_HDR + b"from8\r\n")
    assert frames(out) == [
        ev_qmsg(b"svc.q", b"", (b"workers",), b"from5"),
        ev_qmsg(b"svc.q", b"leaf.reply.3", (b"workers",), b"from6"),
        ev_qmsg(b"svc.q", b"", (b"workers",), LEAF_HDR + b"from7", 25),
        ev_qmsg(b"svc.q", b"r.9", (b"workers",), LEAF_HDR + b"from8", 25)]


def test_hub_queue_group_and_hub_plain_interest_share_one_frame() -> None:
    """A queue-form LMSG reaches the hub's plain subscribers too (§2.9 rule 2)."""
    hub = Hub()
    uplink = uplink_receiver()
    remote(hub, uplink, b"svc.*")
    remote(hub, uplink, b"svc.q", b"workers")
    remote(hub, uplink, b"svc.q")
    assert pub(hub, b"svc.q", b"job", b"rep") == 1
    assert uplink.take() == b"LMSG svc.q + rep workers 3\r\njob\r\n"
    assert pub(hub, b"svc.other", b"job") == 1
    assert uplink.take() == b"LMSG svc.other 3\r\njob\r\n"


def test_local_member_of_the_group_is_preferred_to_the_hub() -> None:
    hub = Hub()
    uplink, member, client = uplink_receiver(), Rcv(), Rcv()
    remote(hub, uplink, b"svc.q", b"workers")
    local(hub, member, b"svc.q", b"1", b"workers")
    for i in range(20):
        assert pub(hub, b"svc.q", b"%02d" % i, origin=client) == 1
    assert uplink.take() == b""                          # no plain hub interest: no frame at all
    assert member.take().count(b"MSG svc.q 1 2\r\n") == 20
    remote(hub, uplink, b"svc.>")                        # now the hub has plain interest too
    for i in range(20):
        assert pub(hub, b"svc.q", b"%02d" % i, b"rr", origin=client) == 2
    assert uplink.take() == b"".join(b"LMSG svc.q rr 2\r\n%02d\r\n" % i for i in range(20))
    assert member.take().count(b"MSG svc.q 1 rr 2\r\n") == 20


def test_two_hub_groups_are_named_in_one_frame() -> None:
    hub = Hub()
    uplink, member = uplink_receiver(), Rcv()
    remote(hub, uplink, b"svc.q", b"g1")
    remote(hub, uplink, b"svc.*", b"g2")
    remote(hub, uplink, b"svc.>", b"g2")                 # the same group twice: named once
    assert pub(hub, b"svc.q", b"hello") == 1
    [frame] = frames(uplink.take())
    assert frame[0] == "LeafMsg" and sorted(frame[3]) == [b"g1", b"g2"]
    assert frame == ev_qmsg(b"svc.q", b"", frame[3], b"hello")
    assert pub(hub, b"svc.q", b"hello", b"rep") == 1
    [frame] = frames(uplink.take())
    assert sorted(frame[3]) == [b"g1", b"g2"] and frame[2] == b"rep"
    # A local member of g1 takes that group's copy; only g2 is left for the hub.
    local(hub, member, b"svc.q", b"1", b"g1")
    assert pub(hub, b"svc.q", b"hello") == 2
    assert uplink.take() == b"LMSG svc.q | g2 5\r\nhello\r\n"
    assert member.take() == b"MSG svc.q 1 5\r\nhello\r\n"


def inbound_setup() -> tuple[Hub, Rcv, Rcv, list[Rcv], Rcv]:
    """A leaf whose local side has a plain sub, group ``workers`` (2 members) and group
    ``others`` on ``leaf.q``; the hub has plain interest, its own ``workers`` and ``others``."""
    hub = Hub()
    uplink, plain, other = uplink_receiver(), Rcv(), Rcv()
    workers = [Rcv(), Rcv()]
    local(hub, plain, b"leaf.q", b"1")
    local(hub, workers[0], b"leaf.q", b"2", b"workers")
    local(hub, workers[1], b"leaf.*", b"3", b"workers")
    local(hub, other, b"leaf.q", b"4", b"others")
    remote(hub, uplink, b"leaf.q")
    remote(hub, uplink, b"leaf.>", b"workers")
    remote(hub, uplink, b"leaf.q", b"others")
    return hub, uplink, plain, workers, other


def test_inbound_plain_message_reaches_local_plain_subs_only() -> None:
    hub, uplink, plain, workers, other = inbound_setup()
    for i in range(10):
        assert pub(hub, b"leaf.q", b"%d" % i, origin=uplink, queues=()) == 1
    assert hpub(hub, b"leaf.q", HDR, b"body", b"hub.reply.2", origin=uplink, queues=()) == 1
    assert plain.take() == b"".join(b"MSG leaf.q 1 1\r\n%d\r\n" % i for i in range(10)) + \
        b"HMSG leaf.q 1 hub.reply.2 20 24\r\n" + HDR + b"body\r\n"
    assert [w.written() for w in workers] == [b"", b""] and other.written() == b""
    assert uplink.written() == b""                       # never back to the hub


def test_inbound_queue_message_reaches_plain_subs_and_one_member_of_each_listed_group() -> None:
    hub, uplink, plain, workers, other = inbound_setup()
    for i in range(30):
        assert pub(hub, b"leaf.q", b"j%02d" % i, b"hub.reply.3", origin=uplink,
                   queues=(b"workers",)) == 2
    assert plain.take().count(b"MSG leaf.q 1 hub.reply.3 3\r\n") == 30
    got = [w.take() for w in workers]
    assert got[0].count(b"MSG leaf.q 2 ") + got[1].count(b"MSG leaf.q 3 ") == 30
    assert all(got)                                      # spread over the members
    assert other.written() == b"" and uplink.written() == b""
    # Both groups listed: one member of each; a group we do not have: plain subs only.
    assert pub(hub, b"leaf.q", b"x", origin=uplink, queues=(b"workers", b"others")) == 3
    assert other.take() == b"MSG leaf.q 4 1\r\nx\r\n"
    assert pub(hub, b"leaf.q", b"y", origin=uplink, queues=(b"nobody",)) == 1
    assert uplink.written() == b"" and other.written() == b""


def test_inbound_queue_message_for_a_group_only_the_hub_has_goes_nowhere_else() -> None:
    hub = Hub()
    uplink, plain = uplink_receiver(), Rcv()
    remote(hub, uplink, b"svc.q", b"workers")
    remote(hub, uplink, b"svc.q")
    local(hub, plain, b"svc.q", b"1")
    assert pub(hub, b"svc.q", b"x", origin=uplink, queues=(b"workers",)) == 1
    assert pub(hub, b"svc.q", b"y", origin=uplink, queues=()) == 1
    assert plain.take() == b"MSG svc.q 1 1\r\nx\r\nMSG svc.q 1 1\r\ny\r\n"
    assert uplink.written() == b""


def test_remote_max_size_skips_oversize_messages() -> None:
    hub = Hub()
    uplink, sub, client = uplink_receiver(), Rcv(), Rcv()
    remote(hub, uplink, b"big.>", max_size=10)
    remote(hub, uplink, b"grp.x", b"workers", max_size=10)
    local(hub, sub, b"big.x", b"1")
    assert pub(hub, b"big.x", b"0123456789", origin=client) == 2
    assert pub(hub, b"big.x", b"0123456789A", origin=client) == 1     # local only
    assert hpub(hub, b"big.x", b"NATS/1.0\r\n\r\n", b"", origin=client) == 1   # 12 > 10
    assert sub.take().count(b"MSG big.x 1 ") == 3
    assert uplink.take() == b"LMSG big.x 10\r\n0123456789\r\n"
    assert pub(hub, b"grp.x", b"0123456789A", origin=client) == 0
    assert pub(hub, b"grp.x", b"0123456789", origin=client) == 1
    assert uplink.take() == b"LMSG grp.x | workers 10\r\n0123456789\r\n"
    # The same through the batch paths.
    tails = [encode.tail(b"", b"%011d" % i) for i in range(3)]
    hub.publish_batch(b"big.x", b"", 11, tails, client)
    hub.publish_many([(b"big.x", b"", 11, t) for t in tails], client)
    assert uplink.written() == b"" and sub.take().count(b"MSG big.x 1 11\r\n") == 6


def test_remote_denied_filters_subjects() -> None:
    hub = Hub()
    uplink, sub = uplink_receiver(), Rcv()

    def denied(subject: bytes) -> bool:
        return subject.startswith(b"forbidden.")

    remote(hub, uplink, b">", denied=denied)
    remote(hub, uplink, b"forbidden.q", b"workers", denied=denied)
    local(hub, sub, b"forbidden.x", b"1")
    assert pub(hub, b"forbidden.x", b"a") == 1 and sub.take() == b"MSG forbidden.x 1 1\r\na\r\n"
    assert pub(hub, b"forbidden.q", b"a") == 0
    assert not hub.has_interest(b"forbidden.y")          # no interest: the broker answers 503
    assert pub(hub, b"allowed.x", b"b") == 1
    assert uplink.take() == b"LMSG allowed.x 1\r\nb\r\n"
    missed: list[tuple[bytes, bytes]] = []
    hub.publish_many([(b"forbidden.y", b"r", 1, encode.tail(b"r", b"c")),
                      (b"allowed.y", b"r", 1, encode.tail(b"r", b"d"))],
                     None, lambda s, r: missed.append((s, r)))
    assert missed == [(b"forbidden.y", b"r")]
    assert uplink.take() == b"LMSG allowed.y r 1\r\nd\r\n"


# publish_many and publish_batch against one publish per message --------------------------------

def batch_setup() -> tuple[Hub, dict[str, Rcv]]:
    """Every routing case at once: hub plain interest on several patterns, a hub-only queue
    group, a group both sides have, two hub groups, local plain subs and headers-less clients."""
    hub = Hub()
    r = {"uplink": uplink_receiver(), "client": Rcv(echo=False), "plain": Rcv(),
         "member": Rcv(), "other": Rcv(), "old": Rcv(headers=False)}
    for pattern in (b"p.*", b"p.x", b"p.>"):
        remote(hub, r["uplink"], pattern)
    remote(hub, r["uplink"], b"q.only", b"workers")
    remote(hub, r["uplink"], b"q.both", b"workers")
    remote(hub, r["uplink"], b"q.two", b"g1")
    remote(hub, r["uplink"], b"*.two", b"g2")
    local(hub, r["plain"], b"p.x", b"1")
    local(hub, r["plain"], b"q.*", b"2")
    local(hub, r["client"], b"p.>", b"3")
    local(hub, r["member"], b"q.both", b"4", b"workers")
    local(hub, r["other"], b"q.*", b"5", b"others")
    local(hub, r["old"], b"p.*", b"6")
    return hub, r


BATCH_SUBJECTS = [(b"p.x", b""), (b"p.x", b"rep"), (b"p.y", b""), (b"q.only", b""),
                  (b"q.only", b"rep"), (b"q.both", b""), (b"q.two", b"rep"), (b"none", b"r")]


@pytest.mark.parametrize("inbound", [False, True], ids=["local-publish", "from-the-hub"])
def test_publish_many_and_batch_equal_single_publishes(inbound: bool) -> None:
    def origin_of(r: dict[str, Rcv]) -> Rcv:
        return r["uplink"] if inbound else r["client"]

    queues = () if inbound else None
    msgs = [(subj, reply, 3, encode.tail(reply, b"m%02d" % i))
            for i, (subj, reply) in enumerate(BATCH_SUBJECTS * 3)]
    single_hub, single = batch_setup()
    missed_single = [(m[0], m[1]) for m in msgs
                     if single_hub.publish(*m, -1, origin_of(single), queues) == 0 and m[1]]
    many_hub, many = batch_setup()
    missed_many: list[tuple[bytes, bytes]] = []
    many_hub.publish_many(msgs, origin_of(many), lambda s, r: missed_many.append((s, r)), queues)
    # Runs of one control line, as PubBatch brings them, against one publish per message.
    batch_hub, batch = batch_setup()
    missed_batch: list[tuple[bytes, bytes]] = []
    runs = [(subj, reply, [encode.tail(reply, b"b%d%02d" % (k, i)) for i in range(4)])
            for k, (subj, reply) in enumerate(BATCH_SUBJECTS)]
    ref_hub, ref = batch_setup()
    missed_ref: list[tuple[bytes, bytes]] = []
    for subj, reply, tails in runs:
        for t in tails:
            if ref_hub.publish(subj, reply, 4, t, -1, origin_of(ref), queues) == 0 and reply:
                missed_ref.append((subj, reply))
        batch_hub.publish_batch(subj, reply, 4, tails, origin_of(batch),
                                lambda s, r: missed_batch.append((s, r)), queues)
    for name in single:
        assert many[name].written() == single[name].written(), name
        assert batch[name].written() == ref[name].written(), name
    assert missed_many == missed_single
    assert missed_batch == missed_ref
    # And what that is.
    up_single = single["uplink"].written()
    if inbound:
        assert up_single == b"" and batch["uplink"].written() == b""
        assert single["member"].written() == b"" and single["other"].written() == b""
        # p.x twice, q.only twice, q.both, q.two: plain subs only, never a local queue group
        assert single["plain"].written().count(b"MSG ") == 3 * 6
        assert single["client"].written().count(b"MSG ") == 3 * 3     # p.x twice, p.y
    else:
        expected: list[tuple] = []
        for i in range(0, len(msgs), len(BATCH_SUBJECTS)):
            m = [b"m%02d" % (i + k) for k in range(len(BATCH_SUBJECTS))]
            expected += [ev_msg(b"p.x", b"", m[0]), ev_msg(b"p.x", b"rep", m[1]),
                         ev_msg(b"p.y", b"", m[2]),
                         ev_qmsg(b"q.only", b"", (b"workers",), m[3]),
                         ev_qmsg(b"q.only", b"rep", (b"workers",), m[4]),
                         # q.both: the local member took it, and the hub has no plain interest
                         ev_qmsg(b"q.two", b"rep", (b"g1", b"g2"), m[6])]
        got = [f[:3] + (tuple(sorted(f[3])),) + f[4:] if f[0] == "LeafMsg" else f
               for f in frames(up_single)]
        assert got == expected                        # exactly one frame per message
        assert single["member"].written().count(b"MSG q.both 4 ") == 3
        assert single["client"].written() == b""      # echo off
    assert missed_single == [(b"none", b"r")] * 3


@pytest.mark.parametrize("inbound", [False, True], ids=["local-publish", "from-the-hub"])
def test_publish_batch_with_big_payloads(inbound: bool) -> None:
    """From BIG_PAYLOAD on a batch goes out by reference (iov): the same bytes as one publish
    per message, one LMSG each to the uplink for a local publish, none for the hub's."""
    tails = [encode.tail(b"", bytes([65 + i]) * 600) for i in range(3)]
    queues = () if inbound else None
    ref_hub, ref = batch_setup()
    for t in tails:
        ref_hub.publish(b"p.x", b"", 600, t, -1, ref["uplink" if inbound else "client"], queues)
    hub, r = batch_setup()
    hub.publish_batch(b"p.x", b"", 600, tails, r["uplink" if inbound else "client"], None, queues)
    for name in r:
        assert r[name].written() == ref[name].written(), name
    assert r["plain"].written().count(b"MSG p.x 1 600\r\n") == 3
    if inbound:
        assert r["uplink"].written() == b""
    else:
        assert r["uplink"].written() == b"".join(b"LMSG p.x" + t for t in tails)


def dispatch(hub: Hub, uplink: Rcv, events: list[Any]) -> None:
    """Deliver parsed hub events the way the uplink connection does."""
    for ev in events:
        name = type(ev).__name__
        if name == "Pubs":
            hub.publish_many(ev.msgs, uplink, None, ())
        elif name == "PubBatch":
            hub.publish_batch(ev.subject, ev.reply, ev.size, ev.tails, uplink, None, ())
        elif name == "HPub":
            hub.publish(ev.subject, ev.reply, ev.size, ev.tail, ev.hdr_len, uplink, ())
        elif name == "LeafMsg":
            hub.publish(ev.subject, ev.reply, ev.size, ev.tail, ev.hdr_len, uplink, ev.queues)


def test_transcript_messages_delivered_locally() -> None:
    """The hub's messages of transcript (b), parsed and dispatched, reach exactly the local
    subscribers of the leaf side of that session (leaf.sub, leaf.wild.>, leaf.q workers)."""
    hub = Hub()
    uplink, sub, wild, worker, bystander = uplink_receiver(), Rcv(), Rcv(), Rcv(), Rcv()
    local(hub, sub, b"leaf.sub", b"1")
    local(hub, wild, b"leaf.wild.>", b"2")
    local(hub, worker, b"leaf.q", b"3", b"workers")
    local(hub, bystander, b"leaf.q", b"4", b"bystanders")
    for wire, _ in TRANSCRIPT:
        if wire.startswith(b"LS+ ") and not wire.startswith(b"LS+ $LDS."):
            [ev] = LeafParser().feed(wire)
            remote(hub, uplink, ev.subject, ev.queue)
    messages = b"".join(w for w, _ in TRANSCRIPT if w.startswith((b"LMSG", b"HMSG")))
    dispatch(hub, uplink, LeafParser().feed(messages))
    assert sub.take() == (
        b"MSG leaf.sub 1 5\r\nhello\r\nMSG leaf.sub 1 hub.reply.1 5\r\nhello\r\n"
        b"HMSG leaf.sub 1 20 24\r\n" + HDR + b"body\r\n"
        b"HMSG leaf.sub 1 hub.reply.2 20 24\r\n" + HDR + b"body\r\n"
        b"MSG leaf.sub 1 " + INBOX + b".1ar7fKhntb7YXgyrUlX4A68bec 2\r\nq?\r\n")
    assert wild.take() == b"MSG leaf.wild.a.b 2 1\r\nw\r\n"
    assert worker.take() == (b"MSG leaf.q 3 4\r\njob1\r\nMSG leaf.q 3 hub.reply.3 4\r\njob2\r\n"
                             b"HMSG leaf.q 3 hub.reply.4 20 24\r\n" + HDR + b"job3\r\n"
                             b"MSG leaf.q 3 6\r\nafter0\r\n")
    assert bystander.written() == b"" and uplink.written() == b""


# on_interest ------------------------------------------------------------------------------------

def test_on_interest_reports_local_subscriptions_only() -> None:
    hub = Hub()
    seen: list[tuple[bytes, bytes, bool]] = []
    hub.on_interest = lambda sub, added: seen.append((sub.subject, sub.queue, added))
    uplink, a, b = uplink_receiver(), Rcv(), Rcv()
    s1 = local(hub, a, b"leaf.sub", b"1")
    s2 = local(hub, a, b"leaf.q", b"2", b"workers")
    r1 = remote(hub, uplink, b"hub.sub")
    r2 = remote(hub, uplink, b"svc.q", b"workers")
    s3 = local(hub, b, b"leaf.sub", b"1")
    cb = Subscription(b"internal.>", b"i", None, callback=lambda *args: None)
    hub.add(cb)
    assert seen == [(b"leaf.sub", b"", True), (b"leaf.q", b"workers", True),
                    (b"leaf.sub", b"", True), (b"internal.>", b"", True)]
    seen.clear()
    hub.remove(r1)
    hub.remove(s3)
    hub.remove(s3)                                       # not there any more: no report
    assert seen == [(b"leaf.sub", b"", False)]
    seen.clear()
    hub.remove_all([s1, s2, r2, cb])
    assert seen == [(b"leaf.sub", b"", False), (b"leaf.q", b"workers", False),
                    (b"internal.>", b"", False)]
    assert len(hub) == 0
    # Feeding the reports to a ledger gives what to announce (and a remote sub never shows).
    ledger = InterestLedger()
    changes: list[Change | None] = []
    hub.on_interest = lambda sub, added: changes.append(
        (ledger.add if added else ledger.remove)(sub.subject, sub.queue))
    x1, x2 = local(hub, a, b"x", b"1"), local(hub, b, b"x", b"1")
    remote(hub, uplink, b"x")
    hub.remove_all([x1, x2])
    assert changes == [(b"x", b"", 1), None, None, (b"x", b"", 0)]


def test_on_interest_reports_expiry_after_max_msgs() -> None:
    hub = Hub()
    seen: list[tuple[bytes, bool]] = []
    hub.on_interest = lambda sub, added: seen.append((sub.subject, added))
    r = Rcv()
    s = local(hub, r, b"once", b"1")
    hub.limit(s, 1)
    assert pub(hub, b"once", b"x") == 1
    assert seen == [(b"once", True), (b"once", False)]

