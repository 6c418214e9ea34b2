"""Where a process group meets: an address and a free port on the node that asks.

A module of its own that imports nothing heavy: the driver asks a Ray task on the learners' first
bundle for a port before any actor exists, and Ray imports a remote function's module in the
worker that runs it; in `tiny_r1v.trainer.actors` that would be torch and transformers first."""

from __future__ import annotations

import socket

import ray


def free_port() -> tuple[str, int]:
    """(this node's IP address, a port free on it now)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return ray.util.get_node_ip_address(), sock.getsockname()[1]
