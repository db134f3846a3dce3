"""The ports the process serves, bound once at start-up, before any role runs.

Why here and not in the role that serves the port: a port another process holds, a privileged
one, or an address this host does not have is not a bug of the role. Bound by the webhooks role,
it crashed the role; the supervisor restarted it with a traceback each time until the restart
intensity ran out, and the process exited 1 seconds later (a mock, never restarted, was simply
missing). Bound at start-up, it is one line naming the setting, and exit 1 at once, as for a
dependency that refuses us (docs/contract.md, section 8, "Processes and configuration").

The process keeps the bound sockets and lends the serving role a copy each time it starts: a role
restarted after a bug serves the same port, and callbacks that arrive meanwhile wait in the
kernel's backlog instead of being refused. Once the process stops, it closes its own copies: the
role's server finishes what it has, and the port refuses new connections when that server closes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from chat4all_workers.errors import PortUnavailableError
from chat4all_workers.frozen import frozen

# Connections the kernel holds beyond those a server is accepting (a burst of Meta's callbacks, a
# role restarting). A server given the sockets listens with the same (asyncio's create_server
# calls listen() again, with 100 unless told).
BACKLOG = 1024


@frozen
class Address:
    """Where a server listens, and the settings that say so (named when it cannot be bound)."""

    host: str
    port: int  # 0: a port the OS picks (tests)
    # "webhooks.host, webhooks.port; env CHAT4ALL_WEBHOOKS_HOST, CHAT4ALL_WEBHOOKS_PORT"
    settings: str

    @classmethod
    def of(
        cls, host: str, port: int, *, keys: tuple[str, str], env_of: Callable[[str], str]
    ) -> Address:
        """`host` and `port`, set by the settings `keys` (`Settings.env_of` names their
        environment variables)."""
        names = ", ".join(keys)
        return cls(host, port, f"{names}; env {', '.join(env_of(key) for key in keys)}")


class Listening:
    """An address bound and listening: one socket per address the host resolves to, as asyncio's
    `create_server` binds them (`localhost` may be two)."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets

    @property
    def port(self) -> int:
        """The bound port (the OS's pick for port 0)."""
        return int(self._sockets[0].getsockname()[1])

    def lend(self) -> list[socket.socket]:
        """Copies of the listening sockets for one server to serve and close; the process keeps
        its own, so the port stays bound while the server is restarted."""
        return [sock.dup() for sock in self._sockets]

    def close(self) -> None:
        """Close the process's own sockets: the port is released once the servers' copies are
        closed too."""
        for sock in self._sockets:
            sock.close()


async def listen(name: str, address: Address) -> Listening:
    """Bind and listen on `address` for `name` (the role, or "operations"); PortUnavailableError
    naming the address, its setting and the OS's reason when it cannot be."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            address.host,
            address.port,
            family=socket.AF_UNSPEC,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except OSError as exc:
        raise _unavailable(name, address, exc) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _unavailable(name, address, exc) from None
    return Listening(sockets)


def _unavailable(name: str, address: Address, exc: OSError) -> PortUnavailableError:
    where, reason = f"{address.host}:{address.port}", exc.strerror or str(exc)
    return PortUnavailableError(
        name, f"cannot listen on {where} ({address.settings}): {reason.lower()}"
    )
