"""Server-Sent Events on the wire: frames, and the writer that sends them.

Owns: rendering an event (or a gap) as an SSE frame for one viewer, HTTP/1.1 chunk framing
(raw text for HTTP/1.0), batches cut into writes of bounded size, and the non-blocking
send the live tail uses.

Must not: read the event bus or decide when to write; the stream's thread and the live
tail (``live_tail``) do.
"""

from __future__ import annotations

import socket
import time

from ..events import Event, Gap
from ..identity import Caller


def render_frame(event_id: int | None, event_type: str, data_json: str) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event_type}\ndata: {data_json}\n\n"


class SseWriter:
    """Writes SSE text to a socket, framed as HTTP/1.1 chunks (or raw for HTTP/1.0)."""

    #: A batch goes out in writes of about this much: a reader that stops reading then pins
    #: one such piece in its stream's thread, not a whole page of events rendered (str,
    #: bytes and chunk framing: three copies of up to 512 events).
    WRITE_CHARS = 64 * 1024

    def __init__(self, wfile, sock: socket.socket, chunked: bool, viewer: Caller):
        self._wfile = wfile
        self._sock = sock
        self.chunked = chunked
        self.viewer = viewer

    def encode(self, text: str) -> bytes:
        data = text.encode("utf-8")
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def encode_events(self, batch: list[Event | Gap]) -> tuple[bytes, int]:
        """The frames of the first items of ``batch``, about ``WRITE_CHARS`` at most (at least
        one item), and how many items that is."""
        frames: list[str] = []
        size = 0
        for item in batch:
            frame = self._frame(item)
            frames.append(frame)
            size += len(frame)
            if size >= self.WRITE_CHARS:
                break
        return self.encode("".join(frames)), len(frames)

    def _frame(self, item: Event | Gap) -> str:
        event = item.as_event(time.time()) if isinstance(item, Gap) else item
        return render_frame(event.id, event.type, event.to_json(self.viewer))

    def send(self, text: str) -> None:
        self._wfile.write(self.encode(text))

    def send_events(self, batch: list[Event | Gap]) -> None:
        while batch:
            data, count = self.encode_events(batch)
            self._wfile.write(data)
            batch = batch[count:]

    def send_bytes(self, data: bytes) -> None:
        self._wfile.write(data)

    def send_without_waiting(self, data: bytes) -> int:
        """Write what the socket takes now; returns how many bytes that was (0 when full)."""
        try:
            return self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def finish(self) -> None:
        if self.chunked:
            self._wfile.write(b"0\r\n\r\n")
