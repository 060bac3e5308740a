"""leaf_sensor: the sensor-node side of leaf's serial wire format (see ../WIRE.md).

Build a ReadingEncoder once per device and write ``enc.frame[:enc.encode(seq, values)]`` to
the UART; feed what the UART reads to a FrameDecoder to get leaf's acks and commands.
"""

from .decoder import Ack, Command, FrameDecoder
from .frame import ReadingEncoder, encode_reading
from .wire import MAX_ENCODED, MAX_PAYLOAD, encoded_size, is_name

__version__ = "0.1.0"
