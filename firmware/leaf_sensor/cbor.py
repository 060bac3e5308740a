"""A tiny CBOR (RFC 8949) codec for the wire format.

Encoding writes the canonical form of firmware/WIRE.md (shortest integer heads, 64-bit floats,
definite lengths) into a caller's buffer at an offset and returns the new offset: no
allocation for integers, floats and booleans; a text value allocates its UTF-8 copy. A full
buffer raises IndexError, never grows it.
Decoding (acks and commands, a few a minute) builds ordinary objects and accepts any valid
CBOR, skipping tags, so that bodies with keys this firmware does not know still decode.
"""

from struct import pack_into, unpack_from

_MAX_DEPTH = 8  # nesting we accept when decoding: recursion is costly on a microcontroller


def put_head(buf, off: int, major: int, n: int) -> int:
    """The head of major type ``major`` with argument ``n`` (0 <= n < 2**64)."""
    m = major << 5
    if n < 24:
        buf[off] = m | n
        return off + 1
    if n < 0x100:
        buf[off] = m | 24
        buf[off + 1] = n
        return off + 2
    if n < 0x10000:
        info, fmt, size = 25, ">H", 2
    elif n < 0x100000000:
        info, fmt, size = 26, ">I", 4
    else:
        info, fmt, size = 27, ">Q", 8
    if off + 1 + size > len(buf):
        raise IndexError("buffer full")
    buf[off] = m | info
    pack_into(fmt, buf, off + 1, n)
    return off + 1 + size


def put_bytes(buf, off: int, data) -> int:
    """Copies already-encoded bytes (a pre-encoded key, say)."""
    end = off + len(data)
    if end > len(buf):  # a slice store past the end would grow a bytearray
        raise IndexError("buffer full")
    buf[off:end] = data
    return end


def put_text(buf, off: int, s: str) -> int:
    raw = s.encode()
    return put_bytes(buf, put_head(buf, off, 3, len(raw)), raw)


def text_item(s: str) -> bytes:
    """The whole CBOR item of text ``s``, to copy later without encoding it again."""
    raw = s.encode()
    buf = bytearray(9 + len(raw))
    return bytes(buf[:put_bytes(buf, put_head(buf, 0, 3, len(raw)), raw)])


def put_value(buf, off: int, v) -> int:
    """A reading or argument value: bool, int (-2**64 <= v < 2**64), float or text."""
    if v is True or v is False:
        buf[off] = 0xF5 if v else 0xF4
        return off + 1
    t = type(v)
    if t is int:
        if not -0x10000000000000000 <= v < 0x10000000000000000:
            raise ValueError("int out of range")
        return put_head(buf, off, 0, v) if v >= 0 else put_head(buf, off, 1, -1 - v)
    if t is float:
        if off + 9 > len(buf):
            raise IndexError("buffer full")
        buf[off] = 0xFB
        pack_into(">d", buf, off + 1, v)
        return off + 9
    if t is str:
        return put_text(buf, off, v)
    raise TypeError("not a wire value")


# -- decoding -------------------------------------------------------------------------------------

def _argument(buf, i, end, info):
    if info < 24:
        return info, i
    if info > 27:
        raise ValueError("bad additional info")
    size = 1 << (info - 24)
    if i + size > end:
        raise ValueError("truncated")
    n = 0
    for j in range(i, i + size):
        n = (n << 8) | buf[j]
    return n, i + size


def _half(h):
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        v = mant * 2.0 ** -24
    elif exp == 31:
        v = float("nan") if mant else float("inf")
    else:
        v = (mant + 1024) * 2.0 ** (exp - 25)
    return -v if h & 0x8000 else v


def _simple(buf, i, end, info):
    if info == 20:
        return False, i
    if info == 21:
        return True, i
    if info < 24:
        return None, i  # null, undefined and unassigned simple values
    if info == 24:
        if i >= end:
            raise ValueError("truncated")
        return None, i + 1
    size = (0, 2, 4, 8)[info - 24] if info < 28 else 0
    if not size or i + size > end:
        raise ValueError("bad simple value")
    if size == 2:
        return _half((buf[i] << 8) | buf[i + 1]), i + 2
    return unpack_from(">f" if size == 4 else ">d", buf, i)[0], i + size


def _chunks(buf, i, end, major, depth):
    parts = []
    while True:
        if i >= end:
            raise ValueError("truncated")
        if buf[i] == 0xFF:
            i += 1
            break
        if buf[i] >> 5 != major or buf[i] & 31 == 31:
            raise ValueError("bad chunk")
        part, i = _item(buf, i, end, depth)
        parts.append(part)
    if major == 2:
        return b"".join(parts), i
    return "".join(parts), i


def _item(buf, i, end, depth):
    if i >= end:
        raise ValueError("truncated")
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deep")
    major = buf[i] >> 5
    info = buf[i] & 31
    i += 1
    if major == 7:
        if info == 31:
            raise ValueError("unexpected break")
        return _simple(buf, i, end, info)
    if info == 31:
        if major == 2 or major == 3:
            return _chunks(buf, i, end, major, depth)
        if major != 4 and major != 5:
            raise ValueError("bad indefinite length")
        n = -1
    else:
        n, i = _argument(buf, i, end, info)
    if major == 0:
        return n, i
    if major == 1:
        return -1 - n, i
    if major == 2 or major == 3:
        if i + n > end:
            raise ValueError("truncated")
        raw = bytes(buf[i:i + n])
        return (raw if major == 2 else str(raw, "utf-8")), i + n
    if major == 6:
        return _item(buf, i, end, depth + 1)  # a tag: its content stands for it
    if major == 4:
        items: list = []
        while n != 0:
            if n < 0 and i < end and buf[i] == 0xFF:
                return items, i + 1
            item, i = _item(buf, i, end, depth + 1)
            items.append(item)
            n -= 1
        return items, i
    pairs: dict = {}
    while n != 0:
        if n < 0 and i < end and buf[i] == 0xFF:
            return pairs, i + 1
        key, i = _item(buf, i, end, depth + 1)
        pairs[key], i = _item(buf, i, end, depth + 1)
        n -= 1
    return pairs, i


def decode(buf, start: int, end: int):
    """The one CBOR item that fills buf[start:end]; ValueError (or another error) if not."""
    value, i = _item(buf, start, end, 0)
    if i != end:
        raise ValueError("bytes after the item")
    return value
