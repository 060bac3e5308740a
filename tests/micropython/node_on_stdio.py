# Runs the real sensor-node application under MicroPython with its UART on
# stdin/stdout (the test connects those to a pty whose other side leaf reads):
#   micropython node_on_stdio.py DEVICE FRAMES
# Sends FRAMES readings asking for acks, keeps polling until every one is
# acknowledged (or a deadline passes), runs commands, and reports on stderr.
import sys
import select
from leaf_sensor.app import SensorNode
from leaf_sensor.ticks import ticks_add, ticks_diff, ticks_ms


class StdioUart:
    def __init__(self):
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)

    def write(self, data):
        self._out.write(data)
        self._out.flush()
        return len(data)

    def read(self, n=-1):
        if not self._poll.poll(0):
            return None
        return self._in.read(1)


class Counter:
    def __init__(self):
        self.n = 0

    def read(self):
        self.n += 1
        return {"temp": 20.0 + self.n / 10, "n": self.n}


device, frames = sys.argv[1], int(sys.argv[2])
node = SensorNode(StdioUart(), device, [Counter()], period_ms=20, boot=4242, resend_ms=500)
commands = []
node.on_command("blink", lambda args: commands.append(args))
start = ticks_ms()
while ticks_diff(ticks_ms(), start) < 20000:
    node.poll()
    if node.sent >= frames:
        node._next = ticks_add(ticks_ms(), 1 << 27)  # no more samples: only resends and input
        if len(node.resend) == 0 and commands:
            break
    node.sleep(5)
sys.stderr.write("sent=%d unacked=%d commands=%r\n" % (node.sent, len(node.resend), commands))
