"""leaf's side of the sensor wire format (firmware/WIRE.md): leaf/bridges/framing.py.

The golden vectors are checked both ways and some are re-derived by hand here (RFC 8949's
examples, Wikipedia's COBS examples, the stdlib's CRC), so they are not only self-consistent.
Stream decoding is fuzzed: garbage, truncations and bit flips between intact frames.
"""

from __future__ import annotations

import binascii
import json
import struct
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from leaf.bridges.framing import (MAX_ENCODED, MAX_PAYLOAD, Ack, Command, FrameDecoder,
                                  FrameError, LineDecoder, Reading, ack_frame, cobs_decode,
                                  cobs_encode, command_frame, crc16, decode_frame, encode_body,
                                  encode_frame, encode_message)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "firmware" / "vectors.json").read_text(encoding="utf-8"))


def fields_of(vector: dict[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in vector["fields"].items()}


def strict(v: Any) -> Any:
    """A form where True != 1, 1 != 1.0 and 0.0 != -0.0, for exact comparisons."""
    if isinstance(v, dict):
        return {strict(k): strict(x) for k, x in v.items()}
    if isinstance(v, float):
        return ("float", struct.pack(">d", v).hex())
    return (type(v).__name__, v)


def payload_of(body: bytes) -> bytes:
    """body + CRC, the CRC from the standard library (crc_hqx with 0xFFFF = CCITT-FALSE)."""
    return body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")


# -- golden vectors ------------------------------------------------------------------------------

def test_vectors_cover_what_wire_md_promises() -> None:
    names = {v["name"] for v in VECTORS}
    assert {"reading-minimal", "reading-every-type", "reading-long-device", "reading-seq-0",
            "reading-seq-max", "ack", "command-no-args", "command-args", "reading-zeros",
            "reading-cobs-long-run", "reading-cobs-run-to-the-end"} <= names
    frames = {v["name"]: bytes.fromhex(v["frame_hex"]) for v in VECTORS}
    assert b"\xff" in frames["reading-cobs-long-run"][:-1]  # a full 254-byte COBS group
    assert frames["reading-cobs-run-to-the-end"][-256] == 0xFF  # ... ending the frame
    assert len(fields_of(next(v for v in VECTORS if v["name"] == "reading-long-device"))[1]) == 32


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_vector_encodes_to_its_bytes_and_decodes_to_its_fields(vector: dict[str, Any]) -> None:
    fields, frame = fields_of(vector), bytes.fromhex(vector["frame_hex"])
    assert encode_frame(fields) == frame
    msg = decode_frame(frame)
    assert strict(msg.fields()) == strict(fields)
    assert encode_message(msg) == frame
    assert FrameDecoder().feed(frame) == [msg]


def test_the_vectors_file_is_what_the_script_makes() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_vectors
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert make_vectors.render() == (ROOT / "firmware" / "vectors.json").read_text("utf-8")


def test_minimal_reading_by_hand() -> None:
    # {0: 0, 1: "s1", 2: 1, 3: {"t": 1}, 6: 7}: a map of 5, then key/value pairs in key order.
    body = bytes([0xA5, 0x00, 0x00, 0x01, 0x62, 0x73, 0x31, 0x02, 0x01,
                  0x03, 0xA1, 0x61, 0x74, 0x01, 0x06, 0x07])
    crc = binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")
    assert 0 not in crc
    # COBS: zeros at 1 and 2 -> groups [a5] [] [the other 13 body bytes + 2 CRC bytes].
    frame = b"\x02\xa5" + b"\x01" + bytes([16]) + body[3:] + crc + b"\x00"
    vector = next(v for v in VECTORS if v["name"] == "reading-minimal")
    assert vector["frame_hex"] == frame.hex()
    assert decode_frame(frame) == Reading("s1", 1, {"t": 1}, boot=7)


def test_ack_and_command_by_hand() -> None:
    body = b"\xa3\x00\x01\x01\x65pump3\x02\x11"  # {0: 1, 1: "pump3", 2: 17}
    assert encode_body({0: 1, 1: "pump3", 2: 17}) == body
    assert ack_frame("pump3", 17) == cobs_encode(payload_of(body)) + b"\x00"
    body = b"\xa5\x00\x02\x01\x65pump3\x02\x05\x07\x63set\x08\xa1\x64rate\x0a"
    assert command_frame("pump3", 5, "set", {"rate": 10}) == cobs_encode(payload_of(body)) + b"\0"


# RFC 8949 Appendix A (the ones whose preferred form is also ours: floats there need 64 bits).
RFC_EXAMPLES = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"),
    (1000, "1903e8"), (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"), (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"), (1.1, "fb3ff199999999999a"),
    (1.0e300, "fb7e37e43c8800759c"), (-4.1, "fbc010666666666666"), (False, "f4"), (True, "f5"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ('"\\', "62225c"), ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"), ({}, "a0"), ({1: 2, 3: 4}, "a201020304"),
]


@pytest.mark.parametrize("value, cbor_hex", RFC_EXAMPLES, ids=[h for _, h in RFC_EXAMPLES])
def test_cbor_encoding_matches_rfc_8949_examples(value: Any, cbor_hex: str) -> None:
    assert encode_body({0: value}) == bytes.fromhex("a100" + cbor_hex)


def test_floats_are_always_64_bit_and_keys_sort_by_utf8_bytes() -> None:
    assert encode_body({0: 1.0}) == bytes.fromhex("a100fb3ff0000000000000")  # not f93c00
    assert encode_body({3: 0, 1: 0, 2: 0}) == bytes.fromhex("a3010002000300")
    body = encode_body({0: {"b": 1, "aa": 2, "B": 3, "_": 4}})
    assert body == bytes.fromhex("a100a4" "614203" "615f04" "62616102" "616201")


# -- COBS and CRC ---------------------------------------------------------------------------------

COBS_EXAMPLES = [  # Wikipedia's table, delimiter left out
    ("00", "0101"), ("0000", "010101"), ("001100", "01021101"), ("11220033", "0311220233"),
    ("11223344", "0511223344"), ("11000000", "0211010101"),
    (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(0, 255)).hex(), "01ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)).hex() + "0001", "fe" + bytes(range(3, 256)).hex() + "0201"),
]


@pytest.mark.parametrize("raw, encoded", COBS_EXAMPLES, ids=range(len(COBS_EXAMPLES)))
def test_cobs_wikipedia_examples(raw: str, encoded: str) -> None:
    assert cobs_encode(bytes.fromhex(raw)) == bytes.fromhex(encoded)
    assert cobs_decode(bytes.fromhex(encoded)) == bytes.fromhex(raw)


def test_cobs_decode_rejects_malformed_and_accepts_a_redundant_final_group() -> None:
    for bad in (b"", b"\x00", b"\x05\x11\x22", b"\x03\x11\x00", b"\x02\x11\x04\x01"):
        with pytest.raises(FrameError) as e:
            cobs_decode(bad)
        assert e.value.reason == "cobs"
    assert cobs_decode(b"\xff" + bytes(range(1, 255)) + b"\x01") == bytes(range(1, 255))


@given(st.binary(max_size=2000))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + -(-len(data) // 254) + (not data)
    assert cobs_decode(encoded) == data


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


def crc_by_definition(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, straight from its parameters (and like the firmware's)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


@given(st.binary(max_size=300))
def test_crc_agrees_with_its_definition(data: bytes) -> None:
    assert crc16(data) == crc_by_definition(data)


# -- messages: round trips and the rules ---------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
values = st.one_of(st.booleans(), st.integers(-2**64, 2**64 - 1), st.floats(width=64),
                   st.text(st.characters(codec="utf-8"), max_size=20))
u32 = st.integers(0, 2**32 - 1)
readings = st.builds(Reading, names, u32, st.dictionaries(names, values, max_size=8),
                     time=st.none() | st.integers(0, 2**64 - 1), ack=st.booleans(), boot=u32)
commands = st.builds(Command, names, u32, names, st.dictionaries(names, values, max_size=6))
messages = st.one_of(readings, commands, st.builds(Ack, names, u32))


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and strict(a.fields()) == strict(b.fields())


@given(messages)
def test_messages_round_trip(msg: Reading | Ack | Command) -> None:
    try:
        frame = encode_message(msg)
    except FrameError as e:
        assert e.reason == "too_long" and len(encode_body(msg.fields())) + 2 > MAX_PAYLOAD
        return
    assert frame.count(0) == 1 and frame.endswith(b"\x00")
    assert same(decode_frame(frame), msg)


finite = st.one_of(st.booleans(), st.integers(-2**64, 2**64 - 1), st.floats(allow_nan=False),
                   st.text(st.characters(codec="utf-8"), max_size=20))


@given(st.builds(Reading, names, u32, st.dictionaries(names, finite, max_size=8),
                 time=st.none() | st.integers(0, 2**64 - 1), ack=st.booleans(), boot=u32))
def test_decoders_take_any_valid_cbor_not_only_the_canonical_form(r: Reading) -> None:
    # cbor2's own choices: half/single floats where exact, map keys in insertion order, and
    # unknown keys (the format may grow): all decode to the same reading.
    fields = {99: ["future", {"x": None}], **dict(reversed(list(r.fields().items())))}
    body = cbor2.dumps(fields, canonical=True)
    assert same(decode_frame(cobs_encode(payload_of(body))), r)
    body = cbor2.dumps(dict(reversed(list(r.fields().items()))))
    assert same(decode_frame(cobs_encode(payload_of(body))), r)


def reason(body: bytes) -> str:
    with pytest.raises(FrameError) as e:
        decode_frame(cobs_encode(payload_of(body)))
    return e.value.reason


@pytest.mark.parametrize("fields", [
    {0: 3, 1: "a", 2: 1},  # unknown kind
    {0: True, 1: "a", 2: 1},  # a bool is not a kind
    {0: 1, 1: "a"},  # ack without seq
    {0: 1, 1: "a.b", 2: 1},  # a dot would split subjects
    {0: 1, 1: "", 2: 1},
    {0: 1, 1: "x" * 33, 2: 1},
    {0: 1, 1: "a", 2: 2**32},
    {0: 1, 1: "a", 2: -1},
    {0: 1, 1: "a", 2: 1.0},
    {0: 0, 1: "a", 2: 1, 6: 1},  # reading without readings
    {0: 0, 1: "a", 2: 1, 3: {"t": 1}},  # ... without boot
    {0: 0, 1: "a", 2: 1, 3: {"bad key": 1}, 6: 1},
    {0: 0, 1: "a", 2: 1, 3: {"t": [1, 2]}, 6: 1},  # arrays are not values
    {0: 0, 1: "a", 2: 1, 3: {"t": None}, 6: 1},
    {0: 0, 1: "a", 2: 1, 3: {"t": b"raw"}, 6: 1},
    {0: 0, 1: "a", 2: 1, 3: {"t": 1}, 4: None, 6: 1},
    {0: 0, 1: "a", 2: 1, 3: {"t": 1}, 4: -5, 6: 1},
    {0: 0, 1: "a", 2: 1, 3: {"t": 1}, 5: 1, 6: 1},
    {0: 0, 1: "a", 2: 1, 3: [1], 6: 1},
    {0: 2, 1: "a", 2: 1},  # command without a name
    {0: 2, 1: "a", 2: 1, 7: "go", 8: [1]},
    {0: 2, 1: "a", 2: 1, 7: "go!", 8: {}},
], ids=range(22))
def test_frames_that_decode_but_break_the_rules_are_schema_errors(fields: dict) -> None:
    assert reason(cbor2.dumps(fields)) == "schema"


def test_bodies_that_are_not_one_cbor_item_are_cbor_errors() -> None:
    good = encode_body({0: 1, 1: "a", 2: 1})
    assert reason(good + b"\x01") == "cbor"  # trailing bytes
    assert reason(good[:-1]) == "cbor"  # truncated
    assert reason(b"\xa1\x00\x62\xff\xfe") == "cbor"  # bad UTF-8
    assert reason(b"\x1c") == "cbor"  # reserved additional information
    assert reason(b"\x9f" * 500) == "cbor"  # nesting past cbor2's limit, never ours


def test_payload_limits() -> None:
    with pytest.raises(FrameError) as e:
        encode_message(Reading("a", 1, {"t": "x" * 1100}))
    assert e.value.reason == "too_long"
    big = Reading("a", 1, {"t": "x" * 1000})
    assert len(cobs_decode(encode_message(big)[:-1])) <= MAX_PAYLOAD
    assert decode_frame(encode_message(big)) == big
    dec = FrameDecoder()
    dec.feed(b"\x01\x00" b"\x02\x11\x00" b"\x03\x11\x22\x00")  # payloads of 0, 1, 2 bytes
    assert dec.errors["crc"] == 3
    dec = FrameDecoder()
    dec.feed(cobs_encode(payload_of(b"\x01" * 1100)) + b"\x00")
    assert dec.errors["too_long"] == 1


def test_builders_validate() -> None:
    with pytest.raises(FrameError):
        ack_frame("no spaces", 1)
    with pytest.raises(FrameError):
        command_frame("a", 1, "set", {"k": [1]})  # type: ignore[dict-item]
    with pytest.raises(FrameError):
        Reading("a", 1, {"t": "\ud800"})  # not encodable as UTF-8
    assert decode_frame(command_frame("a", 1, "go", None)) == Command("a", 1, "go")


# -- streams: garbage, truncations, bit flips ----------------------------------------------------

def detectable(record: bytes) -> bool:
    """Damage a CRC-16 can see: the record is not, by a 1-in-65536 chance, a frame whose
    payload's CRC (checked with the standard library) happens to match."""
    try:
        p = cobs_decode(record)
    except FrameError:
        return True
    return len(p) < 3 or binascii.crc_hqx(p[:-2], 0xFFFF) != int.from_bytes(p[-2:], "big")


@st.composite
def damaged(draw: st.DrawFn, frame: bytes) -> bytes:
    """``frame`` (0x00 included) hurt as a serial line hurts it; still ends with 0x00."""
    how = draw(st.sampled_from(["garbage", "truncate", "drop", "flip-wire", "flip-data"]))
    body = frame[:-1]
    if how == "garbage":
        out = draw(st.binary(max_size=60))
    elif how == "truncate":  # the rest of the frame was lost
        out = body[:draw(st.integers(0, len(body) - 1))]
    elif how == "drop":  # bytes lost in the middle
        i = draw(st.integers(0, len(body) - 1))
        out = body[:i] + body[i + draw(st.integers(1, len(body) - i)):]
    elif how == "flip-wire":  # a bit flips on the line: may even make a 0x00
        i, bit = draw(st.integers(0, len(body) - 1)), draw(st.integers(0, 7))
        out = body[:i] + bytes([body[i] ^ (1 << bit)]) + body[i + 1:]
    else:  # a bit flips in the payload (re-stuffed, so only the CRC can tell)
        payload = bytearray(cobs_decode(body))
        i, bit = draw(st.integers(0, len(payload) - 1)), draw(st.integers(0, 7))
        payload[i] ^= 1 << bit
        out = cobs_encode(bytes(payload))
    return out + b"\x00"


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Any], int]:
    """A stream of intact and damaged frames: (bytes, the intact messages, damaged records)."""
    data, intact, bad = b"", [], 0
    for msg in draw(st.lists(messages, min_size=1, max_size=12)):
        try:
            frame = encode_message(msg)
        except FrameError:
            continue
        if draw(st.booleans()):
            data += frame
            intact.append(msg)
        else:
            hurt = draw(damaged(frame))
            records = hurt.split(b"\x00")[:-1]
            assume(all(detectable(r) for r in records if r))
            data += hurt
            bad += len(records)
    return data, intact, bad


def forms(msgs: list[Any]) -> list[Any]:
    """Comparable forms of messages (NaN readings included)."""
    return [(type(m).__name__, strict(m.fields())) for m in msgs]


def feed_in_chunks(dec: FrameDecoder, data: bytes, cuts: list[int]) -> list[Any]:
    out, start = [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        out += dec.feed(data[start:cut])
        start = max(start, cut)
    return out


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(streams(), st.lists(st.integers(0, 10**6), max_size=20))
def test_stream_decodes_every_intact_frame_and_counts_every_damaged_one(
        stream: tuple[bytes, list[Any], int], cuts: list[int]) -> None:
    data, intact, bad = stream
    whole, chunked, bytewise = FrameDecoder(), FrameDecoder(), FrameDecoder()
    got = forms(whole.feed(data))
    assert got == forms(intact)
    assert sum(whole.errors.values()) == bad
    assert whole.frames == len(intact)
    assert forms(feed_in_chunks(chunked, data, cuts)) == got
    assert forms([m for i in range(len(data)) for m in bytewise.feed(data[i:i + 1])]) == got
    assert chunked.errors == bytewise.errors == whole.errors
    assert whole.buffered == 0


@given(st.binary(max_size=3000), st.lists(st.integers(0, 10**6), max_size=10))
def test_garbage_never_raises(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder()
    out = feed_in_chunks(dec, data, cuts)
    assert dec.buffered <= MAX_ENCODED
    # every delimited record is a message or one error; an unfinished over-long one is one too
    tail_too_long = len(data) - (data.rfind(0) + 1) > MAX_ENCODED
    assert len(out) + sum(dec.errors.values()) == data.count(0) + tail_too_long
    assert dec.feed(b"\x00" + ack_frame("back", 1)) == [Ack("back", 1)]  # in step again


cbor_trees = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.integers(0, 9) | st.text(max_size=4), kids, max_size=5), max_leaves=20)


@given(cbor_trees)
def test_any_cbor_body_with_a_good_crc_is_a_message_or_a_counted_error(tree: Any) -> None:
    dec = FrameDecoder()
    out = dec.feed(cobs_encode(payload_of(cbor2.dumps(tree))) + b"\x00")
    assert len(out) + dec.errors["schema"] + dec.errors["too_long"] == 1


def test_a_stream_without_delimiters_keeps_memory_bounded() -> None:
    dec = FrameDecoder()
    junk = bytes(range(1, 256)) * 16  # 4 KiB, no 0x00
    for _ in range(256):  # 1 MiB
        assert dec.feed(junk) == []
        assert dec.buffered <= MAX_ENCODED
    assert dec.errors["too_long"] == 1  # one over-long record, however long
    frame = ack_frame("pump3", 17)
    assert dec.feed(frame) == []  # still inside the over-long record: this frame is its tail
    assert dec.feed(frame + frame) == [Ack("pump3", 17)] * 2
    assert dec.errors == {"crc": 0, "cobs": 0, "cbor": 0, "schema": 0, "too_long": 1, "empty": 0}


def test_delimiters_alone_are_counted_empty() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00" + ack_frame("a", 1)) == [Ack("a", 1)]
    assert dec.errors["empty"] == 2


# -- lines and JSON lines ------------------------------------------------------------------------

def test_lines_split_strip_cr_and_skip_blank_lines() -> None:
    dec = LineDecoder()
    assert dec.feed(b"temp=21.5\r\nrh=4") == ["temp=21.5"]
    assert dec.feed(b"0\n\r\n\nok \xc2\xb0C\n") == ["rh=40", "ok \u00b0C"]
    assert dec.feed(b"bad \xff\nnext\n") == ["next"]
    assert dec.errors == {"too_long": 0, "utf8": 1, "json": 0}


def test_over_long_lines_are_dropped_up_to_the_next_newline() -> None:
    dec = LineDecoder(max_line=16)
    assert dec.feed(b"x" * 10) == []
    assert dec.feed(b"y" * 10) == []  # 20 > 16: dropped, however long it goes on
    for _ in range(100):
        assert dec.feed(b"z" * 1000) == []
        assert dec._splitter.buffered <= 16
    assert dec.feed(b"\nshort\n" + b"q" * 17 + b"\n" + b"p" * 16 + b"\n") == ["short", "p" * 16]
    assert dec.errors["too_long"] == 2


def test_json_lines_give_objects_and_count_the_rest() -> None:
    dec = LineDecoder(json=True)
    got = dec.feed(b'{"temp": 21.5, "device": "a"}\n[1, 2]\nnot json\n"text"\n'
                   b'{"nested": {"x": null}}\r\n' + b"[" * 900 + b"\n")
    assert got == [{"temp": 21.5, "device": "a"}, {"nested": {"x": None}}]
    assert dec.errors == {"too_long": 0, "utf8": 0, "json": 4}


@given(st.binary(max_size=2000), st.booleans(), st.lists(st.integers(0, 10**6), max_size=10))
def test_line_decoders_never_raise_and_chunking_does_not_matter(
        data: bytes, as_json: bool, cuts: list[int]) -> None:
    whole, parts = LineDecoder(json=as_json, max_line=64), LineDecoder(json=as_json, max_line=64)
    got = whole.feed(data)
    out, start = [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        out += parts.feed(data[start:cut])
        start = max(start, cut)
    assert out == got and parts.errors == whole.errors
