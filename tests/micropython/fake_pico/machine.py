# A stand-in for the rp2 port's `machine`, for running firmware/main.py under the unix port
# (a machine.py on MICROPYPATH shadows the built-in one). The I2C bus holds the BME280
# registers given as JSON in $LEAF_FAKE_I2C; the third WDT.feed() prints what happened as JSON
# and ends the program (main.py loops forever otherwise).
import binascii
import json
import os
import sys

made = {"uart": None, "i2c": None, "wdt": None, "pins": []}
_tx = bytearray()


class Pin:
    OUT = 1
    IN = 0

    def __init__(self, id, mode=-1):
        self.id = id
        self._v = 0
        made["pins"].append(id)

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = v


class UART:
    def __init__(self, id, baudrate=9600, tx=None, rx=None):
        made["uart"] = [id, baudrate, tx.id, rx.id]

    def write(self, buf):
        _tx.extend(buf)
        return len(buf)

    def read(self, n=-1):
        return None


class I2C:
    def __init__(self, id, sda=None, scl=None, freq=400000):
        made["i2c"] = [id, sda.id, scl.id, freq]
        self.mem = bytearray(256)
        regs = json.loads(os.getenv("LEAF_FAKE_I2C"))
        for reg in regs:
            data = binascii.unhexlify(regs[reg])
            self.mem[int(reg):int(reg) + len(data)] = data

    def readfrom_mem(self, addr, reg, n):
        if addr != 0x76:
            raise OSError(19)
        return bytes(self.mem[reg:reg + n])

    def readfrom_mem_into(self, addr, reg, buf):
        buf[:] = self.readfrom_mem(addr, reg, len(buf))

    def writeto_mem(self, addr, reg, buf):
        if addr != 0x76:
            raise OSError(19)


class WDT:
    def __init__(self, id=0, timeout=5000):
        made["wdt"] = timeout
        self.feeds = 0

    def feed(self):
        self.feeds += 1
        if self.feeds == 3:
            made["tx"] = binascii.hexlify(_tx).decode()
            made["feeds"] = self.feeds
            print(json.dumps(made))
            sys.exit(0)
