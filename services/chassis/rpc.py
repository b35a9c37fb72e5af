"""Wrapping gRPC method handlers of any cardinality: around their behaviour, and around their request parsing.

Server interceptors in ``grpc.aio`` see only the method name; anything that needs the servicer
context (the peer's certificate, aborting with a status) must wrap the handler itself, once per
cardinality. :func:`wrap_rpc_handler` does that in one place: ``around(context)`` is entered before
the behaviour runs and exited after it finishes (or fails), for unary and streaming calls alike.

:func:`refuse_undecodable_requests` guards request parsing. grpc parses the request body with the
handler's deserializer before any servicer code runs, and a body that does not parse (random bytes,
invalid UTF-8 in a string field, nesting past protobuf's depth limit) would surface as UNKNOWN with the
parser's exception text and a stack trace in the log. The wrapped deserializer never raises: it hands
the behaviour an :class:`UndecodableRequest`, and the behaviour aborts with INVALID_ARGUMENT instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

log = logging.getLogger("steward.grpc")

__all__ = [
    "PROTOBUF_DEPTH_LIMIT",
    "Around",
    "ComposedInterceptor",
    "DecodeFailureLog",
    "MethodWrappingInterceptor",
    "UndecodableRequest",
    "WrappedHandlers",
    "compose_interceptors",
    "rebuild_handler",
    "refuse_undecodable_requests",
    "wrap_rpc_behaviour",
    "wrap_rpc_handler",
]

Around = Callable[[aio.ServicerContext], AbstractAsyncContextManager[None]]
Behaviour = Callable[..., Any]

# protobuf (upb) refuses to decode messages nested deeper than this many message levels. A
# google.protobuf.Struct spends three per level of JSON (Struct, its map entry, Value), so record data
# can nest about 33 objects or lists deep (33 in PutRecord), the figure depending on where the Struct sits.
PROTOBUF_DEPTH_LIMIT = 100

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _rebuild(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behaviour, bool, bool], Behaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, request_streaming, response_streaming)``."""
    for kind, factory in _FACTORIES.items():
        behaviour = getattr(handler, kind)
        if behaviour:
            return factory(  # type: ignore[operator]
                wrap(behaviour, handler.request_streaming, handler.response_streaming),
                request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


rebuild_handler = _rebuild
"""Public name of :func:`_rebuild` for wrappers that need the outcome, not just an ``around`` (metrics)."""


def _unary(behavior: Behaviour, around: Around) -> Behaviour:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        async with around(context):
            return await behavior(request, context)

    return call


def _streaming(behavior: Behaviour, around: Around) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        async with around(context):
            async for item in behavior(request, context):
                yield item

    return call


def wrap_rpc_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler with ``around(context)`` around its behaviour, whatever its cardinality."""
    return _rebuild(
        handler, lambda behavior, _, streams: _streaming(behavior, around) if streams else _unary(behavior, around)
    )


class WrappedHandlers:
    """Per-method memo of a wrapped handler, so an interceptor wraps each method once, not on every call.

    grpc asks every interceptor for the handler on each call; rebuilding it (closures, a new
    ``RpcMethodHandler``) cost a few microseconds per interceptor per call. The memo is keyed by method
    and holds the inner handler it wrapped: when the inner one differs (another interceptor returned a
    fresh object), it wraps again. Only for wrappings that depend on the method and the handler alone.
    """

    def __init__(self, wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]) -> None:
        self._wrap = wrap
        self._memo: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``wrap(handler, method)``, built once per (method, handler)."""
        memo = self._memo.get(method)
        if memo is not None and memo[0] is handler:
            return memo[1]
        wrapped = self._wrap(handler, method)
        self._memo[method] = (handler, wrapped)
        return wrapped


def wrap_rpc_behaviour(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Behaviour], Behaviour],
    streaming: Callable[[Behaviour], Behaviour],
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour replaced by ``unary(behaviour)`` or ``streaming(behaviour)`` (by the
    response's cardinality). Cheaper per call than :func:`wrap_rpc_handler`: no context manager is entered."""
    return _rebuild(handler, lambda behavior, _, streams: streaming(behavior) if streams else unary(behavior))


class MethodWrappingInterceptor(aio.ServerInterceptor):
    """An interceptor whose work is a wrapping of the handler that depends on the method and the handler alone.

    Subclasses implement :meth:`wrap_handler`; the wrapped handler is built once per method
    (:class:`WrappedHandlers`), and :func:`compose_interceptors` folds neighbouring ones into one
    :class:`ComposedInterceptor`, so grpc runs one interceptor coroutine per call instead of one each.
    """

    _handlers: WrappedHandlers | None = None

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` (of ``method``) with this interceptor's work around it."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if self._handlers is None:
            self._handlers = WrappedHandlers(self.wrap_handler)
        return self._handlers.get(handler, handler_call_details.method)


class ComposedInterceptor(MethodWrappingInterceptor):
    """Several :class:`MethodWrappingInterceptor` as one; the first wraps outermost, as in grpc's chain."""

    def __init__(self, parts: Sequence[MethodWrappingInterceptor]) -> None:
        self.parts = tuple(parts)

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        for part in reversed(self.parts):
            handler = part.wrap_handler(handler, method)
        return handler


def compose_interceptors(interceptors: Sequence[aio.ServerInterceptor]) -> list[aio.ServerInterceptor]:
    """``interceptors`` in the same order, each run of :class:`MethodWrappingInterceptor` ones folded into one."""
    result: list[aio.ServerInterceptor] = []
    run: list[MethodWrappingInterceptor] = []
    for interceptor in interceptors:
        if isinstance(interceptor, MethodWrappingInterceptor):
            run.append(interceptor)
            continue
        if run:
            result.append(ComposedInterceptor(run))
            run = []
        result.append(interceptor)
    if run:
        result.append(ComposedInterceptor(run))
    return result


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """What the wrapped deserializer returns for a body that does not parse; ``message`` is caller-safe."""

    message: str
    reason: str


def _reason(exc: Exception) -> str:
    # Classify instead of forwarding the parser's text: the caller gets a stable, byte-free explanation.
    text = str(exc)
    if "UTF-8" in text:
        return "a string field is not valid UTF-8; send text as UTF-8"
    if "MaxDepth" in text or "recursion" in text.lower():
        return (
            f"it nests more than {PROTOBUF_DEPTH_LIMIT} messages deep (protobuf's decoding limit; a Struct such as "
            "record data may nest about 33 objects or lists deep); flatten the data"
        )
    return "the bytes are not a protobuf encoding of it (corrupt wire format); send a serialised message"


class DecodeFailureLog:
    """Logs undecodable requests at WARNING, at most once per method per ``interval_s``, counting the rest.

    One bad client (or one leaked key) sending garbage at the rate limit must not flood the logs.
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def record(self, method: str, refused: UndecodableRequest) -> None:
        """Note one refused request; log it unless this method already logged within the interval."""
        now = self.clock()
        last = self._last.get(method)
        if last is not None and now - last < self.interval_s:
            self._suppressed[method] = self._suppressed.get(method, 0) + 1
            return
        self._last[method] = now
        log.warning(
            "undecodable request refused with INVALID_ARGUMENT",
            extra={
                "method": method,
                "reason": refused.reason,
                "suppressed_since_last": self._suppressed.pop(method, 0),
                "log_interval_s": self.interval_s,
            },
        )


def _message_name(deserializer: Callable[[bytes], Any], method: str) -> str:
    # Generated handlers use the message class's FromString, whose owner names the message type.
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "") or f"request of {method}")


def refuse_undecodable_requests(
    handler: grpc.RpcMethodHandler, *, method: str, failures: DecodeFailureLog
) -> grpc.RpcMethodHandler:
    """The same handler, answering INVALID_ARGUMENT (not UNKNOWN) when a request body does not parse.

    Handlers without a deserializer (raw bytes, e.g. the gateway's pass-through) are returned as they are.
    """
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    name = _message_name(deserializer, method)

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # anything the parser raises means the body is not a valid message
            reason = _reason(exc)
            return UndecodableRequest(f"request body is not a valid {name}: {reason}", reason)

    async def refuse(request: UndecodableRequest, context: aio.ServicerContext) -> None:
        # Imported here: errors wraps its handlers with this module, so it cannot be imported at the top.
        from services.chassis.errors import InvalidArgument, Reason, abort_for

        failures.record(method, request)
        await abort_for(context, InvalidArgument(request.message, reason=Reason.UNDECODABLE_REQUEST))

    async def checked(requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            if request.__class__ is UndecodableRequest:
                await refuse(request, context)
            yield request

    def wrap(behavior: Behaviour, request_streaming: bool, response_streaming: bool) -> Behaviour:
        if request_streaming:

            async def unary_of_stream(requests: Any, context: aio.ServicerContext) -> Any:
                return await behavior(checked(requests, context), context)

            async def stream_of_stream(requests: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                async for item in behavior(checked(requests, context), context):
                    yield item

            return stream_of_stream if response_streaming else unary_of_stream

        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            if request.__class__ is UndecodableRequest:
                await refuse(request, context)
            return await behavior(request, context)

        async def streaming(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            if request.__class__ is UndecodableRequest:
                await refuse(request, context)
            async for item in behavior(request, context):
                yield item

        return streaming if response_streaming else unary

    return _rebuild(handler, wrap, request_deserializer=decode)
