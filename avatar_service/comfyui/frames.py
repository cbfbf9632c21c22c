"""Websocket frames from the server (RFC 6455, section 5), decoded many per read of the socket.

websocket-client opens the socket (the handshake) and sends our frames; this reader decodes what
arrives. The library parses each incoming frame in several Python calls and asks the socket for
its header, length and payload separately; a job on ComfyUI is about 160 small messages, and that
parsing was the largest part of the service's CPU per job. Here one ``recv`` of up to
``READ_AHEAD`` bytes usually holds several frames, and each is cut out of the buffer with a few
slices. ``FrameReader.message`` answers whole messages (fragments joined) and control frames.

Errors: ``ConnectionClosed`` when the peer closes the TCP connection, ``FrameError`` for a frame
no server may send (masked, reserved bits without an extension, an unknown opcode, a control
frame that is fragmented or too long, a message over ``max_message``); a read timeout is the
socket's own ``TimeoutError``.
"""

from __future__ import annotations

from collections.abc import Callable

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = frozenset({TEXT, BINARY})
_CONTROL = frozenset({CLOSE, PING, PONG})

# Bytes asked of the socket per read when the buffer holds no whole frame. (64 KiB was tried:
# no less CPU, and the soak's resident memory grew twice as fast, each read allocating 64 KiB.)
READ_AHEAD = 4096
# The largest message accepted (a preview image is tens of KiB; ComfyUI's own limit is 10 MiB
# per frame for what clients send it).
MAX_MESSAGE = 64 * 1024 * 1024


class FrameError(Exception):
    """A frame the server must not send: the connection cannot go on."""


class ConnectionClosed(Exception):
    """The server closed the TCP connection (possibly mid-frame)."""


class FrameReader:
    """Whole websocket messages read off a connected socket, ``(opcode, payload)`` at a time."""

    def __init__(
        self,
        recv: Callable[[int], bytes],
        *,
        read_ahead: int = READ_AHEAD,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self._recv = recv
        self._read_ahead = read_ahead
        self._max_message = max_message
        self._buffer = b""
        self._start = 0  # where the unread part of the buffer starts
        # A fragmented message being put together: its opcode and the parts so far.
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def message(self) -> tuple[int, bytes]:
        """The next message (TEXT or BINARY, fragments joined) or control frame (CLOSE, PING,
        PONG, which may come between the fragments of a message)."""
        while True:
            fin, opcode, payload = self._frame()
            if opcode in _CONTROL:
                if not fin or len(payload) > 125:
                    raise FrameError(f"control frame {opcode:#x} fragmented or over 125 bytes")
                return opcode, payload
            if opcode == CONTINUATION:
                if self._opcode is None:
                    raise FrameError("continuation frame without a message to continue")
            elif opcode in _DATA:
                if self._opcode is not None:
                    raise FrameError("new message before the previous one ended")
                if fin:
                    return opcode, payload
                self._opcode = opcode
            else:
                raise FrameError(f"unknown opcode {opcode:#x}")
            self._size += len(payload)
            if self._size > self._max_message:
                raise FrameError(f"message over {self._max_message} bytes")
            self._parts.append(payload)
            if fin:
                whole, opcode = b"".join(self._parts), self._opcode
                self._opcode, self._parts, self._size = None, [], 0
                return opcode, whole

    def _frame(self) -> tuple[bool, int, bytes]:
        """The next frame: (FIN, opcode, payload)."""
        self._fill(2)
        buffer, start = self._buffer, self._start
        first, second = buffer[start], buffer[start + 1]
        if first & 0x70:
            raise FrameError("reserved bits set, but no extension was agreed")
        if second & 0x80:
            raise FrameError("a server's frame must not be masked")
        length, header = second & 0x7F, 2
        if length == 126:
            self._fill(4)
            buffer, start = self._buffer, self._start
            length, header = int.from_bytes(buffer[start + 2 : start + 4], "big"), 4
        elif length == 127:
            self._fill(10)
            buffer, start = self._buffer, self._start
            length, header = int.from_bytes(buffer[start + 2 : start + 10], "big"), 10
        if length > self._max_message:
            raise FrameError(f"frame of {length} bytes, over {self._max_message}")
        end = start + header + length
        if end > len(buffer):
            self._fill(header + length)
            buffer, start = self._buffer, self._start
            end = start + header + length
        self._start = end
        return bool(first & 0x80), first & 0x0F, buffer[start + header : end]

    def _fill(self, needed: int) -> None:
        """Read until the buffer holds ``needed`` unread bytes (several reads joined once).

        What was read is kept when a read fails (a timeout), for the next call.
        """
        have = len(self._buffer) - self._start
        if have >= needed:
            return
        parts = [self._buffer[self._start :]]
        try:
            while have < needed:
                chunk = self._recv(max(self._read_ahead, needed - have))
                if not chunk:
                    raise ConnectionClosed("the server closed the connection")
                parts.append(chunk)
                have += len(chunk)
        finally:
            self._buffer = b"".join(parts)
            self._start = 0
