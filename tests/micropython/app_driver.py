# Runs under the MicroPython unix port (never under CPython): tests/test_firmware_app.py starts
# `micropython app_driver.py COMMAND` with firmware/ on MICROPYPATH, a JSON request on stdin,
# and reads one JSON answer from stdout. The node, the drivers and the resend queue run here
# against fake buses; floats travel as the hex of their 64-bit pattern.
import binascii
import json
import struct
import sys

import micropython

from leaf_sensor.app import SensorNode
from leaf_sensor.drivers.bme280 import BME280
from leaf_sensor.drivers.ds18b20 import DS18B20, crc8
from leaf_sensor.resend import ResendQueue


def tag(v):
    if type(v) is float:
        return ["f", binascii.hexlify(struct.pack(">d", v)).decode()]
    return v


def untag(v):
    if type(v) is list:
        return struct.unpack(">d", binascii.unhexlify(v[1]))[0]
    return v


def hexof(b):
    return binascii.hexlify(bytes(b)).decode()


class FakeUART:
    """write() collects what the node sends; read() hands out what the test queued (or None)."""

    def __init__(self):
        self.tx = bytearray()
        self.rx = bytearray()

    def write(self, buf):
        self.tx.extend(buf)
        return len(buf)

    def read(self, n=-1):
        if not self.rx:
            return None
        data = bytes(self.rx)
        self.rx = bytearray()
        return data

    def take(self):
        data = bytes(self.tx)
        self.tx = bytearray()
        return data


class FakeI2C:
    """A register map at one address; records every register write."""

    def __init__(self, addr, regs):
        self.addr = addr
        self.mem = bytearray(256)
        for reg in regs:
            data = binascii.unhexlify(regs[reg])
            r = int(reg)
            self.mem[r:r + len(data)] = data
        self.writes = []

    def _check(self, addr):
        if addr != self.addr:
            raise OSError(19)  # ENODEV, as machine.I2C says when nobody acks

    def readfrom_mem(self, addr, reg, n):
        self._check(addr)
        return bytes(self.mem[reg:reg + n])

    def readfrom_mem_into(self, addr, reg, buf):
        self._check(addr)
        for i in range(len(buf)):
            buf[i] = self.mem[reg + i]

    def writeto_mem(self, addr, reg, buf):
        self._check(addr)
        self.writes.append([reg, hexof(buf)])


class FakeOneWire:
    """One DS18B20 behind micropython-lib's onewire.OneWire interface; logs the transaction."""

    def __init__(self, scratch, present=True, bytewise=False):
        self.scratch = binascii.unhexlify(scratch)
        self.present = present
        self.log = []
        if bytewise:  # a bus with readbyte() only
            self.readinto = None
            self._pos = 0

    def reset(self, required=False):
        self.log.append("reset")
        self._pos = 0
        return self.present

    def writebyte(self, b):
        self.log.append("w%02x" % b)

    def select_rom(self, rom):
        self.log.append("rom" + hexof(rom))

    def readinto(self, buf):
        self.log.append("read%d" % len(buf))
        buf[:] = self.scratch[:len(buf)]

    def readbyte(self):
        b = self.scratch[self._pos]
        self._pos += 1
        return b


class ConstSensor:
    def __init__(self, values, fail_from=-1):
        self.values = {}
        for k in values:
            self.values[k] = untag(values[k])
        self.fail_from = fail_from
        self.reads = 0

    def read(self):
        self.reads += 1
        if 0 <= self.fail_from < self.reads:
            raise OSError(5)
        return self.values


def no_sleep(ms):
    pass


def sensor(spec):
    kind = spec["kind"]
    if kind == "const":
        return ConstSensor(spec["values"], spec.get("fail_from", -1))
    if kind == "bme280":
        return BME280(FakeI2C(spec.get("addr", 0x76), spec["regs"]), spec.get("addr", 0x76),
                      sleep=no_sleep)
    if kind == "ds18b20":
        return DS18B20(FakeOneWire(spec["scratch"]), conv_ms=0, sleep=no_sleep)
    raise ValueError(kind)


def tagged(d):
    out = {}
    for k in d:
        out[k] = tag(d[k])
    return out


def node(req):
    """Runs poll() at each step's time after queuing its rx bytes; reports what was sent."""
    uart = FakeUART()
    commands = []
    n = SensorNode(uart, req["device"], [sensor(s) for s in req["sensors"]], req["period"],
                   boot=req["boot"], ack=req.get("ack", True), queue=req.get("queue", 8),
                   resend_ms=req.get("resend_ms", 2000),
                   resend_max_ms=req.get("resend_max_ms", 60000),
                   now_ms=(lambda: req["device_time"]) if "device_time" in req else None)
    for name in req.get("handlers", ()):
        n.on_command(name, lambda args, name=name: commands.append([name, tagged(args)]))
    if req.get("failing_handler"):
        def boom(args):
            raise RuntimeError("handler failed")
        n.on_command(req["failing_handler"], boom)
    steps = []
    if "start_seq" in req:
        n.seq = req["start_seq"]
    for step in req["steps"]:
        if step.get("rx"):
            uart.rx.extend(binascii.unhexlify(step["rx"]))
        n.poll(step["t"])
        q = n.resend
        steps.append({"tx": hexof(uart.take()),
                      "pending": q.seqs() if q is not None else None,
                      "dropped": q.dropped if q is not None else 0})
    return {"steps": steps, "commands": commands, "sensor_errors": n.sensor_errors,
            "command_errors": n.command_errors, "unknown_commands": n.unknown_commands,
            "seq": n.seq, "decoder_errors": n.decoder.errors, "bad_keys": n.bad_keys,
            "encode_errors": n.encode_errors}


def queue(req):
    """Drives a ResendQueue directly: ops are ["add", seq, t], ["ack", seq], ["due", t]."""
    q = ResendQueue(req["capacity"], req.get("slot", 64), req["first_ms"], req["max_ms"])
    out = []
    for op in req["ops"]:
        if op[0] == "add":
            q.add(op[1], bytes([op[1] & 0xFF]) * 4, op[2])
            out.append(None)
        elif op[0] == "ack":
            out.append(q.ack(op[1]))
        else:
            out.append([bytes(f)[0] for f in q.due(op[1])])
    return {"results": out, "pending": q.seqs(), "dropped": q.dropped, "resent": q.resent,
            "len": len(q)}


def bme280(req):
    i2c = FakeI2C(req.get("addr", 0x76), req["regs"])
    try:
        dev = BME280(i2c, req.get("addr", 0x76), sleep=no_sleep)
        got = tagged(dev.read())
        raw = list(dev.measure())
        error = None
    except OSError as e:
        got, raw, error = None, None, str(e)
    return {"reading": got, "raw": raw, "writes": i2c.writes, "error": error}


def ds18b20(req):
    bus = FakeOneWire(req["scratch"], req.get("present", True), req.get("bytewise", False))
    rom = binascii.unhexlify(req["rom"]) if req.get("rom") else None
    dev = DS18B20(bus, rom, conv_ms=0, sleep=no_sleep)
    try:
        got = tagged(dev.read())
        error = None
    except Exception as e:
        got = None
        error = type(e).__name__
    return {"reading": got, "error": error, "log": bus.log, "crc_errors": dev.crc_errors,
            "crc8": crc8(binascii.unhexlify(req["scratch"])[:8])}


class FakeWDT:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1


def run(req):
    """run(loops) with a fake clock that advances by each nap, a fake watchdog and UART."""
    uart = FakeUART()
    wdt = FakeWDT()
    clock = [0]
    naps = []

    def sleep(ms):
        naps.append(ms)
        clock[0] += ms

    n = SensorNode(uart, req["device"], [sensor(s) for s in req["sensors"]], req["period"],
                   boot=req["boot"], ack=req.get("ack", True), clock=lambda: clock[0],
                   wdt=wdt, sleep=sleep)
    n.run(req["loops"])
    return {"feeds": wdt.feeds, "naps": naps, "tx": hexof(uart.take()), "clock": clock[0]}


class NullUART:
    def write(self, buf):
        return len(buf)

    def read(self, n=-1):
        return None


def idle(req):
    """Polls between samples (frames pending, none due) with the heap locked."""
    n = SensorNode(NullUART(), "pump3", [ConstSensor({"v": 1})], 1000, boot=1,
                   resend_ms=5000)
    n.poll(0)
    n.poll(1000)
    failed = None
    micropython.heap_lock()
    try:
        for t in range(1001, 1999, 7):
            n.poll(t)
    except MemoryError:
        failed = "allocated"
    micropython.heap_unlock()
    control = None  # the lock is real: a generator (what any_due() spares poll) trips it
    micropython.heap_lock()
    try:
        for _ in n.resend.due(1500):
            pass
    except MemoryError:
        control = "allocated"
    micropython.heap_unlock()
    return {"failed": failed, "control": control, "pending": n.resend.seqs()}


COMMANDS = {"idle": idle, "node": node, "queue": queue, "bme280": bme280, "ds18b20": ds18b20,
            "run": run}
print(json.dumps(COMMANDS[sys.argv[1]](json.loads(sys.stdin.read()))))
