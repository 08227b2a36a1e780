"""The discovery record, ``<data-dir>/daemon.json``: what a running daemon says about itself.

Owns: the record's shape, in one place for the daemon that writes it and for the client
and the CLI that read it. A record carries the reference daemon's fields in the
reference's forms (``address`` as ``HOST:PORT`` or a bare socket path, ``transport``, an
ISO-8601 UTC ``started_at``, ``schema``: 1), which the released cheetahclaws clients read,
and ours beside them (``url``, ``api_version``, ``data_dir``, ``token_path``). Reading
accepts the record in either form: ours, one written by the reference daemon, and the
one cc_daemon wrote before (``address`` as a ``unix://`` or ``tcp://`` URL).

Must not: touch the disk or the network (``storage`` writes the file atomically, the
client connects), or import anything beyond the standard library and
``transport.addresses``: every CLI start imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .transport.addresses import AddressError, ListenAddress

#: The version of the record's layout, as the reference numbers it (its readers check nothing
#: else, and our fields are additions it ignores).
SCHEMA = 1
SCHEMES = ("unix", "tcp")
URL_PREFIXES = tuple(f"{scheme}://" for scheme in SCHEMES)


def build(address: ListenAddress, addresses: list[ListenAddress], *, pid: int, version: str, api_version: str,
          started_at: float, data_dir: Path, token_path: Path | None) -> dict[str, Any]:
    """The record of a daemon listening at ``addresses``, of which clients should use
    ``address`` (the reference's fields hold that one only); ``token_path`` is None when
    no listener is TCP."""
    return {
        "pid": pid,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "transport": address.scheme,
        "address": address.without_scheme(),
        "version": version,
        "schema": SCHEMA,
        "url": address.url(),
        "addresses": [each.url() for each in addresses],
        "api_version": api_version,
        "data_dir": str(data_dir),
        "token_path": str(token_path) if token_path is not None else None,
    }


@dataclass(frozen=True)
class Discovered:
    """A record read back: where the daemon listens and where its token is."""

    address: ListenAddress
    #: The bearer token's file for TCP (``None`` on a Unix socket, which needs none).
    token_path: Path | None
    pid: int | None
    record: dict[str, Any]
    #: Every address the daemon listens on, ``address`` among them.
    addresses: tuple[ListenAddress, ...] = ()

    def tcp_address(self) -> ListenAddress | None:
        """The daemon's TCP listener, if it has one (what a browser can reach)."""
        return next((each for each in self.addresses if each.scheme == "tcp"), None)


def parse(record: Any, default_token_path: Path) -> Discovered | None:
    """``record`` understood, or None when it names no usable address (absent, not a record,
    an unknown transport, a malformed address). ``default_token_path`` is where a TCP
    daemon's token is when the record does not say: the reference records ``token_path``
    only when it is not the default."""
    if not isinstance(record, dict):
        return None
    try:
        address = _address(record)
    except AddressError:
        return None
    if address is None:
        return None
    addresses = _all_addresses(record, address)
    token_path = None
    if any(each.scheme == "tcp" for each in addresses):
        named = record.get("token_path")
        token_path = Path(named).expanduser() if isinstance(named, str) and named else default_token_path
    pid = record.get("pid")
    return Discovered(address, token_path, pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                      record, addresses)


def _all_addresses(record: dict[str, Any], address: ListenAddress) -> tuple[ListenAddress, ...]:
    """``address`` and the others of ``addresses`` (ours; the reference has one address only),
    skipping entries that do not parse: one bad entry must not hide the daemon."""
    found = [address]
    listed = record.get("addresses")
    for text in listed if isinstance(listed, list) else ():
        try:
            each = ListenAddress.parse(text) if isinstance(text, str) else None
        except AddressError:
            continue
        if each is not None and each not in found:
            found.append(each)
    return tuple(found)


def _address(record: dict[str, Any]) -> ListenAddress | None:
    for key in ("url", "address"):  # ours first; before there was "url", "address" was the URL
        text = record.get(key)
        if isinstance(text, str) and text.startswith(URL_PREFIXES):
            return ListenAddress.parse(text)
    transport, text = record.get("transport"), record.get("address")
    if transport in SCHEMES and isinstance(text, str) and text:
        return ListenAddress.parse(f"{transport}://{text}")
    return None
