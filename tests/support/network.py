"""Network stand-ins: a resolver with fixed answers (a tiny DNS zone) and a free port on 127.0.0.1."""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult


class MappingResolver(AbstractResolver):
    """A test resolver: answers from a fixed mapping of names to address lists, like a tiny DNS zone."""

    def __init__(self, mapping: dict[str, list[str]]) -> None:
        self.mapping = mapping
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.mapping:
            raise OSError(f"test resolver has no entry for {host}")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.mapping[host]
        ]

    async def close(self) -> None:
        self.closed = True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
