# Runs under the MicroPython unix port (never under CPython): tests/test_firmware_codec.py
# starts `micropython driver.py COMMAND` with firmware/ on MICROPYPATH, a JSON request on stdin,
# and reads one JSON answer from stdout. Floats travel as the hex of their 64-bit pattern, so
# no decimal conversion stands between the two sides.
import binascii
import json
import struct
import sys

import micropython
from leaf_sensor import FrameDecoder, ReadingEncoder, encode_reading
from leaf_sensor.decoder import Ack


def untag(v):
    if type(v) is list:  # ["f", hex]: a float
        return struct.unpack(">d", binascii.unhexlify(v[1]))[0]
    return v


def tag(v):
    if type(v) is float:
        return ["f", binascii.hexlify(struct.pack(">d", v)).decode()]
    return v


def hexof(b):
    return binascii.hexlify(b).decode()


def encode(req):
    """[{device, seq, readings, time, ack, boot}] -> [frame hex]"""
    out = []
    for r in req:
        readings = {}
        for k in r["readings"]:
            readings[k] = untag(r["readings"][k])
        out.append(hexof(encode_reading(r["device"], r["seq"], readings, r["boot"],
                                        r.get("time"), r.get("ack", False))))
    return out


def decode(req):
    """{"chunks": [hex], "device": name or null, "bytewise": bool} -> messages and counters"""
    dec = FrameDecoder(req.get("device"))
    msgs = []
    for chunk in req["chunks"]:
        data = binascii.unhexlify(chunk)
        if req.get("bytewise"):
            for i in range(len(data)):
                msgs.extend(dec.feed(data[i:i + 1]))
        else:
            msgs.extend(dec.feed(data))
    out = []
    for m in msgs:
        if isinstance(m, Ack):
            out.append(["ack", m.device, m.seq])
        else:
            args = {}
            for k in m.args:
                args[k] = tag(m.args[k])
            out.append(["command", m.device, m.seq, m.name, args])
    return {"messages": out, "errors": dec.errors, "ignored": dec.ignored, "frames": dec.frames}


def heap(req):
    """Encodes a numeric reading with the heap locked: any allocation raises MemoryError."""
    values = {}
    for k in req["readings"]:
        values[k] = untag(req["readings"][k])
    enc = ReadingEncoder(req["device"], list(values), req["boot"], req["ack"])
    seq = req["seq"]
    time = req["time"]
    micropython.heap_lock()
    try:
        n = enc.encode(seq, values, time)
        failed = None
    except MemoryError:
        n = 0
        failed = "allocated"
    micropython.heap_unlock()
    frame = bytes(enc.frame[:n])
    return {"frame": hexof(frame), "failed": failed}


COMMANDS = {"encode": encode, "decode": decode, "heap": heap}
print(json.dumps(COMMANDS[sys.argv[1]](json.loads(sys.stdin.read()))))
