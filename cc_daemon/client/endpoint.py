"""Where a daemon is: an explicit address, or the discovery file of a data dir.

Owns: the ``Endpoint`` a client connects to (address, base URL, token) and reading the
discovery file and the token it names.

Must not: parse addresses or discovery records itself (``transport.addresses`` and
``discovery`` are the one parser of each, for both ends) or send anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .. import discovery
from ..storage import DataDir, read_json
from ..transport.addresses import ListenAddress
from .exceptions import DaemonError, NotRunning


@dataclass(frozen=True)
class Endpoint:
    """Where a daemon listens: its address, the base URL requests understands, its token."""

    address: str
    base_url: str
    token: str | None

    @classmethod
    def from_address(cls, address: str, token: str | None = None) -> Endpoint:
        """``unix:///abs/path.sock`` (no token needed) or ``tcp://HOST:PORT`` (``[::1]`` for IPv6);
        ``AddressError`` (a ``ValueError``) names what is wrong with any other text."""
        parsed = ListenAddress.parse(address)
        return cls(parsed.url(), parsed.base_url(), None if parsed.scheme == "unix" else token)


def discover(data_dir: str | os.PathLike[str] | None = None) -> tuple[Endpoint, dict[str, Any]]:
    """The endpoint of the daemon serving ``data_dir`` (default: ``$CHEETAHCLAWS_HOME`` or
    ``~/.cheetahclaws``) and its discovery record, in whichever form it was written (ours or
    the reference daemon's); raises ``NotRunning`` without one."""
    layout = DataDir.resolve(data_dir)
    found = discovery.parse(read_json(layout.discovery_file), layout.default_token_file)
    if found is None:
        raise NotRunning(f"no daemon discovery file at {layout.discovery_file}; is the daemon running?")
    token = None
    if found.token_path is not None:
        try:
            token = found.token_path.read_text().strip()
        except OSError as exc:
            raise DaemonError(f"cannot read the daemon token at {found.token_path}: {exc.strerror}") from None
    return Endpoint.from_address(found.address.url(), token), found.record
