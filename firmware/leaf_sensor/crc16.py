"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR).

Bitwise rather than table-driven: a 512-byte table costs more RAM than a frame of a few dozen
bytes costs time. Works on a region of a buffer, so no slice is ever made; allocates nothing.
"""


def crc16(buf, start: int, end: int, crc: int = 0xFFFF) -> int:
    """The CRC of buf[start:end], continuing from ``crc``."""
    for i in range(start, end):
        crc ^= buf[i] << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
    return crc
