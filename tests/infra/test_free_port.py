"""`harness.deployment.free_port`: a port picked for a server a test starts is kept from everyone
else until that server binds it (a mock once exited 1 with `address already in use` for a port
picked half a minute before)."""

from __future__ import annotations

import socket

from harness.deployment import free_port


def test_free_port_is_never_handed_out_again_by_the_kernel_but_a_server_binds_it() -> None:
    picked = {free_port() for _ in range(100)}
    others = []
    for _ in range(2000):  # what other tests' picks and servers on port 0 get meanwhile
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            others.append(sock.getsockname()[1])

    assert len(picked) == 100
    assert picked.isdisjoint(others)
    for port in picked:  # the test's own server, which binds it by number (SO_REUSEADDR)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
