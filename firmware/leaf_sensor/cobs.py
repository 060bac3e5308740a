"""COBS (consistent overhead byte stuffing) on preallocated buffers.

The encoded frame has no 0x00 byte, so 0x00 ends it and a receiver that lost its place is back
in step at the next one. A final run of 254 non-zero bytes gets no extra 0x01 code byte (the
canonical form that firmware/vectors.json pins). Neither function allocates.
"""


def encode(src, n: int, dst) -> int:
    """COBS of src[0:n] into dst, then the 0x00 delimiter; returns the frame's length.

    dst needs wire.encoded_size(n) bytes.
    """
    code_at = 0  # where the current group's code byte goes
    out = 1
    code = 1
    i = 0
    while i < n:
        b = src[i]
        i += 1
        if b:
            dst[out] = b
            out += 1
            code += 1
            if code != 0xFF:
                continue
            dst[code_at] = 0xFF
            if i == n:  # the data ends on a full group: nothing more to say
                dst[out] = 0
                return out + 1
        else:
            dst[code_at] = code
        code_at = out
        out += 1
        code = 1
    dst[code_at] = code
    dst[out] = 0
    return out + 1


def decode(buf, n: int) -> int:
    """Decodes the frame buf[0:n] (no delimiter) in place; returns its length, -1 if malformed.

    In place is safe: the write position never passes the read position.
    """
    i = 0
    out = 0
    while i < n:
        code = buf[i]
        if code == 0 or i + code > n:
            return -1
        i += 1
        for _ in range(code - 1):
            b = buf[i]
            if b == 0:
                return -1
            buf[out] = b
            out += 1
            i += 1
        if code != 0xFF and i < n:
            buf[out] = 0
            out += 1
    return out
