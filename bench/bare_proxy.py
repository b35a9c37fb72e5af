"""The least a grpc.aio proxy can do: forward every unary call's bytes to one upstream, nothing else (no
authentication, interceptors, metadata, deadlines or logs). The gateway benchmark puts it in front of the echo
server, in its own process like the gateway, so ``bare proxy -> echo / bare echo`` is the ceiling any Python
gRPC gateway can reach on this machine, and ``gateway -> echo / bare proxy -> echo`` what the gateway's own
work costs above that floor.

Run: ``python -m bench.bare_proxy PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from grpc import aio


class _Forward(grpc.GenericRpcHandler):
    """Every method, unary-unary, bytes through to the upstream channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method  # type: ignore[attr-defined]
        handler = self._handlers.get(method)
        if handler is None:
            upstream = self._channel.unary_unary(method)

            async def forward(request: bytes, _context: Any) -> bytes:
                return bytes(await upstream(request))

            handler = self._handlers[method] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


async def serve(port: int, upstream_port: int) -> None:
    """Forward ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` until killed."""
    async with aio.insecure_channel(f"127.0.0.1:{upstream_port}") as channel:
        server = aio.server()
        server.add_generic_rpc_handlers((_Forward(channel),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
