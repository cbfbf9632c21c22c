"""FrameReader: server frames decoded from whatever pieces the socket hands over."""

from __future__ import annotations

import struct

import pytest

from avatar_service.comfyui.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    ConnectionClosed,
    FrameError,
    FrameReader,
)


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    """One frame as a server would send it (``mask`` only to make a bad one)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = bytes([first, size | (0x80 if mask else 0)])
    elif size < 1 << 16:
        header = bytes([first, 126 | (0x80 if mask else 0)]) + struct.pack(">H", size)
    else:
        header = bytes([first, 127 | (0x80 if mask else 0)]) + struct.pack(">Q", size)
    return header + (b"\0\0\0\0" if mask else b"") + payload


class Pieces:
    """A socket's ``recv`` that hands over the given bytes in pieces of at most ``size``, then
    b"" (the peer closed); it records what it was asked for."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.asked = data, size, []

    def __call__(self, bufsize: int) -> bytes:
        self.asked.append(bufsize)
        piece, self.data = (
            self.data[: min(self.size, bufsize)],
            self.data[min(self.size, bufsize) :],
        )
        return piece


MESSAGES = [
    (TEXT, b'{"type": "progress"}'),
    (BINARY, b"\x00\x00\x00\x01" + bytes(range(256)) * 3),  # a 16-bit length
    (TEXT, b"x" * 70_000),  # a 64-bit length
    (TEXT, b""),
    (PONG, b"beat"),
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 125, 4096, 1 << 20])
def test_messages_come_out_whole_however_the_bytes_are_cut(piece: int) -> None:
    """Frames split across reads, or many in one read, are each answered whole and in order."""
    stream = b"".join(frame(opcode, payload) for opcode, payload in MESSAGES)
    reader = FrameReader(Pieces(stream, piece))
    assert [reader.message() for _ in MESSAGES] == MESSAGES
    with pytest.raises(ConnectionClosed):
        reader.message()


def test_several_small_frames_take_one_read() -> None:
    """A read asks for READ_AHEAD bytes, so that small frames that arrived together cost one."""
    stream = b"".join(frame(TEXT, b"%d" % n) for n in range(50))
    recv = Pieces(stream, 1 << 20)
    reader = FrameReader(recv, read_ahead=4096)
    assert [reader.message() for _ in range(50)] == [(TEXT, b"%d" % n) for n in range(50)]
    assert recv.asked == [4096]


def test_fragments_are_joined_and_control_frames_pass_between_them() -> None:
    """A fragmented message is answered once, joined; a ping between its fragments first."""
    stream = (
        frame(TEXT, b"ab", fin=False)
        + frame(PING, b"?")
        + frame(CONTINUATION, b"cd", fin=False)
        + frame(CONTINUATION, b"ef")
        + frame(CLOSE, struct.pack(">H", 1000))
    )
    reader = FrameReader(Pieces(stream, 3))
    assert reader.message() == (PING, b"?")
    assert reader.message() == (TEXT, b"abcdef")
    assert reader.message() == (CLOSE, b"\x03\xe8")


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (frame(TEXT, b"hi", mask=True), "must not be masked"),
        (bytes([0x80 | 0x40 | TEXT, 0]), "reserved bits"),
        (frame(0x3, b""), "unknown opcode 0x3"),
        (frame(CONTINUATION, b"x"), "continuation frame without a message"),
        (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), "new message before"),
        (frame(PING, b"x" * 126), "over 125 bytes"),
        (frame(PING, b"", fin=False), "fragmented"),
        (frame(BINARY, b"x" * 201), "frame of 201 bytes, over 200"),
        (frame(TEXT, b"x" * 110, fin=False) + frame(CONTINUATION, b"x" * 110), "message over 200"),
    ],
)
def test_frames_no_server_may_send_end_the_connection(stream: bytes, message: str) -> None:
    """A frame that breaks the protocol raises FrameError, saying what was wrong."""
    reader = FrameReader(Pieces(stream, 4096), max_message=200)
    with pytest.raises(FrameError, match=message):
        reader.message()


def test_a_connection_closed_mid_frame_is_closed_not_a_short_message() -> None:
    """The peer going away inside a frame raises ConnectionClosed; nothing partial comes out."""
    reader = FrameReader(Pieces(frame(TEXT, b"hello")[:-2], 4096))
    with pytest.raises(ConnectionClosed):
        reader.message()


def test_a_read_timeout_reaches_the_caller_and_the_frame_is_read_after() -> None:
    """The socket's TimeoutError passes through (the client pings then); the bytes that came
    before it are kept, and the frame is whole on the next call."""
    whole = frame(TEXT, b"late")
    pieces = [whole[:1], None, whole[1:3], None, whole[3:]]

    def recv(_bufsize: int) -> bytes:
        piece = pieces.pop(0)
        if piece is None:
            raise TimeoutError("timed out")
        return piece

    reader = FrameReader(recv)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            reader.message()
    assert reader.message() == (TEXT, b"late")
