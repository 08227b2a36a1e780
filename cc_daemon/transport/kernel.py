"""What this package asks of the kernel: socket timeouts, and the signal mask of its threads.

Owns: receive and send timeouts kept by the kernel (SO_RCVTIMEO / SO_SNDTIMEO) and the
file objects that turn their expiry into ``TimeoutError``; blocking the stop signals in
every thread the transport starts.

Must not: know about HTTP or the daemon's services.
"""

from __future__ import annotations

import io
import signal
import socket
import struct


def leave_signals_to_the_main_thread() -> None:
    """Block the stop signals in the calling thread.

    Python runs signal handlers only in the main thread; a SIGTERM the kernel hands to
    another thread only raises a flag there, which a main thread asleep in an untimed wait
    never looks at: ``serve`` then ignored that SIGTERM (about 2 stops in 5 right after an
    event stream closed, with the live tail). Every thread of this package blocks them, so
    the kernel hands them to the main thread (or to one of the few other service threads).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Receive and send timeouts kept by the kernel (SO_RCVTIMEO / SO_SNDTIMEO) on a blocking socket.

    ``settimeout`` gives the same timeouts with a poll() before every recv and every send:
    two more system calls, and GIL hand-offs, per request.
    """
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    timeval = struct.pack("ll", whole, micros or (0 if whole else 1))  # all zero would mean "never"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class TimeoutSocketIO(socket.SocketIO):
    """Reads a socket with kernel timeouts: an expired one raises TimeoutError, as under ``settimeout``."""

    def readinto(self, buffer) -> int:
        received = super().readinto(buffer)
        if received is None:  # EAGAIN on a blocking socket: SO_RCVTIMEO expired
            self._timeout_occurred = True
            raise TimeoutError("timed out")
        return received


class TimeoutSocketWriter(io.BufferedIOBase):
    """Unbuffered writes (each ``write`` is one ``sendall``); an expired send timeout raises TimeoutError."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        try:
            self._sock.sendall(data)
        except BlockingIOError:  # EAGAIN on a blocking socket: SO_SNDTIMEO expired
            raise TimeoutError("timed out") from None
        return len(data)

    def fileno(self) -> int:
        return self._sock.fileno()
