"""Handler-wrapping interceptors folded into one: same order as grpc's chain, each method wrapped once."""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from services.chassis.rpc import (
    ComposedInterceptor,
    MethodWrappingInterceptor,
    compose_interceptors,
    wrap_rpc_behaviour,
)

METHOD = "/pkg.Service/Call"


class Tagging(MethodWrappingInterceptor):
    """Appends its name to the call's trail before the inner behaviour runs."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name, self.trail, self.wrapped = name, trail, 0

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        self.wrapped += 1

        def unary(behaviour: Any) -> Any:
            async def call(request: Any, context: Any) -> Any:
                self.trail.append(self.name)
                return await behaviour(request, context)

            return call

        return wrap_rpc_behaviour(handler, unary, unary)


class Plain(aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return await continuation(handler_call_details)


class Details:
    method = METHOD
    invocation_metadata = ()


async def test_the_first_wraps_outermost_and_each_method_is_wrapped_once() -> None:
    trail: list[str] = []
    parts = [Tagging("outer", trail), Tagging("middle", trail), Tagging("inner", trail)]
    composed = ComposedInterceptor(parts)

    async def behaviour(request: bytes, _context: Any) -> bytes:
        trail.append("handler")
        return request

    handler = grpc.unary_unary_rpc_method_handler(behaviour)

    async def continuation(_details: Any) -> grpc.RpcMethodHandler:
        return handler

    first = await composed.intercept_service(continuation, Details())
    again = await composed.intercept_service(continuation, Details())
    assert again is first
    assert [part.wrapped for part in parts] == [1, 1, 1]
    assert await first.unary_unary(b"x", None) == b"x"
    assert trail == ["outer", "middle", "inner", "handler"]


def test_runs_are_folded_around_other_interceptors_in_order() -> None:
    trail: list[str] = []
    a, b, c = Tagging("a", trail), Tagging("b", trail), Tagging("c", trail)
    plain = Plain()
    folded = compose_interceptors([a, b, plain, c])
    assert len(folded) == 3
    assert isinstance(folded[0], ComposedInterceptor) and folded[0].parts == (a, b)
    assert folded[1] is plain
    assert isinstance(folded[2], ComposedInterceptor) and folded[2].parts == (c,)
