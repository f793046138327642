"""A minimal protobuf (proto2) wire-format reader and writer: enough for Caffe's NetParameter
without protoc or a compiled schema (CAFFE.md "Wire format").

The reader walks one in-memory buffer and yields fields; length-delimited values come back as
(start, end) offsets into that buffer so that large packed arrays can be viewed with
``np.frombuffer`` instead of being copied or decoded per element.
"""

from __future__ import annotations

from typing import Iterator

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Malformed protobuf bytes; ``offset`` is where in the buffer the problem was found."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at buf[pos]."""
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("truncated varint", start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes", start)


def fields(buf, start: int, end: int) -> Iterator[tuple[int, int, object, int]]:
    """(field number, wire type, value, offset of the tag) of each field in buf[start:end].

    value: an int for VARINT, FIXED64 and FIXED32 (the raw little-endian integer), and
    (value_start, value_end) for LEN. Raises WireError on bad tags, groups, or values running
    past `end`.
    """
    pos = start
    while pos < end:
        tag_at = pos
        tag, pos = read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0", tag_at)
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end)
        elif wire == LEN:
            n, pos = read_varint(buf, pos, end)
            if pos + n > end:
                raise WireError(f"length {n} runs past the end of its message ({end})", tag_at)
            value, pos = (pos, pos + n), pos + n
        elif wire in (FIXED32, FIXED64):
            size = 4 if wire == FIXED32 else 8
            if pos + size > end:
                raise WireError("truncated fixed-size value", tag_at)
            value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
        else:
            raise WireError(f"unsupported wire type {wire} (field {number})", tag_at)
        yield number, wire, value, tag_at


def varint_bytes(value: int) -> bytes:
    """The varint encoding of a non-negative int."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag_bytes(number: int, wire: int) -> bytes:
    return varint_bytes(number << 3 | wire)


def len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message or packed array)."""
    return tag_bytes(number, LEN) + varint_bytes(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return tag_bytes(number, VARINT) + varint_bytes(value)
