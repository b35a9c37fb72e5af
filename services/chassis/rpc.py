"""Wrapping gRPC method handlers of any cardinality with one async context manager.

Server interceptors in ``grpc.aio`` see only the method name; anything that needs the servicer
context (the peer's certificate, aborting with a status) must wrap the handler itself, once per
cardinality. :func:`wrap_rpc_handler` does that in one place: ``around(context)`` is entered before
the behaviour runs and exited after it finishes (or fails), for unary and streaming calls alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from grpc import aio

__all__ = ["Around", "wrap_rpc_handler"]

Around = Callable[[aio.ServicerContext], AbstractAsyncContextManager[None]]


def _unary(behavior: Callable[..., Any], around: Around) -> Callable[..., Any]:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        async with around(context):
            return await behavior(request, context)

    return call


def _streaming(behavior: Callable[..., Any], around: Around) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        async with around(context):
            async for item in behavior(request, context):
                yield item

    return call


def wrap_rpc_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler with ``around(context)`` around its behaviour, whatever its cardinality."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, around), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, around), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, around), **serializers)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, around), **serializers)
    return handler
