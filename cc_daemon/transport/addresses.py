"""Daemon addresses: ``unix:///abs/path.sock`` and ``tcp://HOST:PORT``, for both ends.

Owns: parsing and checking an address (the OS limit of a socket path, the port range,
IPv6 brackets), its canonical text, the base URL an HTTP client uses for it, and the
socket family and address to bind or connect to.

Must not: import anything but the standard library. The client imports this module, and
a client must not load the server.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

#: Longest Unix socket path the kernel accepts (sun_path is 108 bytes on Linux, 104 on BSD).
MAX_UNIX_PATH = 107 if os.uname().sysname == "Linux" else 103


class AddressError(ValueError):
    """An address that cannot be used; the message is for humans."""


@dataclass(frozen=True)
class ListenAddress:
    """Where a daemon listens: what ``serve --listen`` takes and what clients connect to."""

    scheme: str  # "unix" or "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        if text.startswith("unix://"):
            path = text[len("unix://"):]
            if not path.startswith("/"):
                raise AddressError(f"unix socket path must be absolute: {text!r} (use unix:///abs/path.sock)")
            return cls.unix(Path(path))
        if text.startswith("tcp://"):
            return cls._parse_tcp(text)
        raise AddressError(f"unsupported listen address {text!r}: use unix:///abs/path.sock or tcp://HOST:PORT")

    @classmethod
    def unix(cls, path: Path) -> ListenAddress:
        if len(os.fsencode(str(path))) > MAX_UNIX_PATH:
            raise AddressError(f"unix socket path is {len(os.fsencode(str(path)))} bytes, longer than "
                               f"the OS limit of {MAX_UNIX_PATH}: {path}")
        return cls("unix", path=str(path))

    @classmethod
    def _parse_tcp(cls, text: str) -> ListenAddress:
        rest = text[len("tcp://"):].rstrip("/")
        if rest.startswith("["):
            host, sep, port_text = rest[1:].partition("]:")
        else:
            host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise AddressError(f"tcp address needs HOST:PORT: {text!r} (IPv6: tcp://[::1]:8765)")
        try:
            port = int(port_text)
        except ValueError:
            raise AddressError(f"tcp port is not a number: {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise AddressError(f"tcp port out of range 0..65535: {port}")
        return cls("tcp", host=host, port=port)

    def url(self) -> str:
        return f"{self.scheme}://{self.without_scheme()}"

    def without_scheme(self) -> str:
        """``HOST:PORT`` (``[::1]:PORT`` for IPv6) or the socket path: the form the reference's
        discovery file gives, next to its ``transport``."""
        return (self.path or "") if self.scheme == "unix" else self._host_port()

    def base_url(self) -> str:
        """The URL prefix of the daemon's endpoints for ``requests`` (with ``requests-unixsocket``
        for ``http+unix://``, which takes the socket path percent-encoded as its host)."""
        if self.scheme == "unix":
            return "http+unix://" + quote(self.path or "", safe="")
        return f"http://{self._host_port()}"

    def _host_port(self) -> str:
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def family(self) -> socket.AddressFamily:
        if self.scheme == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in (self.host or "") else socket.AF_INET

    def sockaddr(self) -> str | tuple[str, int]:
        """What ``bind`` or ``connect`` takes for this address, in a socket of ``family``."""
        if self.scheme == "unix":
            return self.path or ""
        return self.host or "", self.port or 0

    def is_loopback(self) -> bool:
        if self.scheme == "unix":
            return True
        try:
            infos = socket.getaddrinfo(self.host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return False
        return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
