"""Write firmware/vectors.json, the golden frames of firmware/WIRE.md, from leaf's encoder.

    python tools/make_vectors.py           # rewrite the file
    python tools/make_vectors.py --check   # exit 1 if the file is not what this script makes

Each vector is {"name", "fields", "frame_hex"}: ``fields`` is the body in JSON form (integer
keys as strings, floats as JSON numbers), ``frame_hex`` the whole frame, 0x00 included. The
firmware's tests encode the readings and decode the acks and commands; leaf's tests do both.
tests/test_framing.py re-derives some of them by hand, so they are not only self-consistent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from leaf.bridges.framing import crc16, encode_body, encode_frame  # noqa: E402 (after sys.path)

OUT = ROOT / "firmware" / "vectors.json"


def _run_to_the_end() -> dict[int, Any]:
    """A reading whose payload ends in a run of exactly 254 non-zero bytes.

    The only zeros are the kind's key and value (bytes 1 and 2); a 233-byte text makes the rest
    254 bytes long, and ``boot`` is the first value from 0x01010101 whose bytes and CRC have no
    zero, so COBS ends on a full group (no trailing 0x01: the canonical form).
    """
    boot = 0x01010101
    while True:
        fields = {0: 0, 1: "run", 2: 1, 3: {"s": "x" * 233}, 6: boot}
        body = encode_body(fields)
        payload = body + crc16(body).to_bytes(2, "big")
        if 0 not in payload[3:] and len(payload) == 3 + 254:
            return fields
        boot += 1


def vectors() -> list[tuple[str, dict[int, Any]]]:
    every_type = {"i0": 0, "i23": 23, "i24": 24, "i255": 255, "i256": 256, "i65535": 65535,
                  "i65536": 65536, "n1": -1, "n24": -24, "n25": -25, "n256": -256,
                  "n257": -257, "f": 21.5, "f-neg": -273.15, "f-tenth": 0.1, "f-zero": -0.0,
                  "f-big": 1e300, "text": "ok", "text-utf8": "h\u00e9llo \u00b0C",
                  "text-empty": "", "yes": True, "no": False,
                  # text keys sort by their UTF-8 bytes: "aa" before "b", "B" before "a", ...
                  "b": 1, "aa": 2, "B": 3, "_": 4, "9": 5, "-": 6}
    return [
        ("reading-minimal", {0: 0, 1: "s1", 2: 1, 3: {"t": 1}, 6: 7}),
        ("reading-every-type", {0: 0, 1: "pump3", 2: 17, 3: every_type, 4: 1_700_000_000_123,
                                5: True, 6: 123456}),
        ("reading-wide-ints", {0: 0, 1: "w", 2: 2, 3: {"u32": 2**32 - 1, "u32p1": 2**32,
                                                       "u64": 2**64 - 1, "n32": -2**32,
                                                       "n32m1": -2**32 - 1, "n64": -2**64},
                               4: 0, 6: 2**32 - 1}),
        ("reading-example", {0: 0, 1: "pump3", 2: 17, 3: {"temp": 21.5, "rh": 40}, 6: 123456}),
        ("reading-long-device", {0: 0, 1: "abcdefghijklmnopqrstuvwxyz_-0123", 2: 3,
                                 3: {"v": 1.5}, 5: True, 6: 99}),
        ("reading-seq-0", {0: 0, 1: "pump3", 2: 0, 3: {"temp": 20}, 6: 42}),
        ("reading-seq-max", {0: 0, 1: "pump3", 2: 2**32 - 1, 3: {"temp": 20}, 4: 2**64 - 1,
                             6: 42}),
        ("reading-empty-readings", {0: 0, 1: "hb", 2: 9, 3: {}, 6: 1}),
        ("reading-zeros", {0: 0, 1: "z", 2: 0, 3: {"a": 0, "b": 0.0, "c": False}, 4: 0, 6: 0}),
        ("reading-cobs-long-run", {0: 0, 1: "run", 2: 300, 3: {"s": "x" * 300}, 6: 5}),
        ("reading-cobs-run-to-the-end", _run_to_the_end()),
        ("ack", {0: 1, 1: "pump3", 2: 17}),
        ("ack-seq-0", {0: 1, 1: "pump3", 2: 0}),
        ("ack-seq-max", {0: 1, 1: "abcdefghijklmnopqrstuvwxyz_-0123", 2: 2**32 - 1}),
        ("command-no-args", {0: 2, 1: "pump3", 2: 0, 7: "reset"}),
        ("command-args", {0: 2, 1: "pump3", 2: 5, 7: "set",
                          8: {"rate": 10, "mode": "auto", "on": True, "gain": 1.5,
                              "offset": -3}}),
    ]


def render() -> str:
    out = [{"name": name, "fields": {str(k): v for k, v in fields.items()},
            "frame_hex": encode_frame(fields).hex()} for name, fields in vectors()]
    return json.dumps(out, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python tools/make_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
