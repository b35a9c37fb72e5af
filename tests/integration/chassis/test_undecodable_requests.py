"""A request body that does not parse is INVALID_ARGUMENT with a clear message on every cardinality — not
UNKNOWN with the parser's text — and costs at most one WARNING line, never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc import aio
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.errors import Reason, error_reason
from services.chassis.grpc_server import RunningServer, build_server
from services.chassis.settings import GrpcSettings

NAME = "steward.vault.v1.PutRecordRequest"


def nested(levels: int) -> Struct:
    """A Struct ``levels`` objects deep, built bottom-up (protobuf's own copy refuses deep ones)."""
    inner = Struct()
    inner.fields["leaf"].string_value = "x"
    for _ in range(levels - 1):
        outer = Struct()
        outer.fields["a"].struct_value.MergeFromString(inner.SerializeToString())
        inner = outer
    return inner


def raw_put(levels: int) -> bytes:
    """PutRecordRequest bytes with record data ``levels`` deep, serialised without re-parsing."""
    record = pb.NewRecord(kind=pb.RECORD_KIND_NOTE).SerializeToString()
    data = nested(1).SerializeToString()
    for _ in range(levels - 1):
        entry = b"\x0a\x01a" + b"\x12" + _varint(len(b"\x2a" + _varint(len(data)) + data))
        entry += b"\x2a" + _varint(len(data)) + data
        data = b"\x0a" + _varint(len(entry)) + entry
    record += b"\x1a" + _varint(len(data)) + data
    return b"\x0a" + _varint(len(record)) + record


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


BAD_BODIES = {
    "random bytes": b"\xff\xff\xff\xff\x0f\x8a",
    "invalid UTF-8": pb.PutRecordRequest(record=pb.NewRecord(subject_id="ok"))
    .SerializeToString()
    .replace(b"ok", b"\xc3\x28"),
    "too deep": raw_put(100),
}


async def _echo(request: pb.PutRecordRequest, context: aio.ServicerContext) -> bytes:
    return str(request.record.kind).encode()


async def _echo_stream(request: pb.PutRecordRequest, context: aio.ServicerContext) -> AsyncIterator[bytes]:
    yield str(request.record.kind).encode()


async def _count(requests: AsyncIterator[pb.PutRecordRequest], context: aio.ServicerContext) -> bytes:
    return str(len([r async for r in requests])).encode()


async def _count_stream(
    requests: AsyncIterator[pb.PutRecordRequest], context: aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield str(request.record.kind).encode()


def _register(server: aio.Server) -> list[str]:
    parse = {"request_deserializer": pb.PutRecordRequest.FromString}
    handler = grpc.method_handlers_generic_handler(
        "test.Parse",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_echo, **parse),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_echo_stream, **parse),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_count, **parse),
            "BothStream": grpc.stream_stream_rpc_method_handler(_count_stream, **parse),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    return ["test.Parse"]


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    running = await build_server(GrpcSettings(), register=_register, trust_identity_metadata=True, port=0)
    yield running
    await running.server.stop(0)


async def _call(channel: aio.Channel, method: str, body: bytes) -> list[bytes]:
    path = f"/test.Parse/{method}"
    if method == "Unary":
        return [await channel.unary_unary(path)(body)]
    if method == "ServerStream":
        return [item async for item in channel.unary_stream(path)(body)]
    good = pb.PutRecordRequest(record=pb.NewRecord(kind=pb.RECORD_KIND_NOTE)).SerializeToString()
    if method == "ClientStream":
        return [await channel.stream_unary(path)(iter([good, body]))]
    return [item async for item in channel.stream_stream(path)(iter([good, body]))]


@pytest.mark.parametrize("method", ["Unary", "ServerStream", "ClientStream", "BothStream"])
@pytest.mark.parametrize("body", sorted(BAD_BODIES))
async def test_an_undecodable_body_is_invalid_argument_saying_which_message(
    server: RunningServer, method: str, body: str
) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await _call(channel, method, BAD_BODIES[body])
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"request body is not a valid {NAME}: ")
    assert "DecodeError" not in details and "Unexpected" not in details
    assert error_reason(caught.value) == Reason.UNDECODABLE_REQUEST
    if body == "too deep":
        assert "more than 100 messages deep" in details
    if body == "invalid UTF-8":
        assert "UTF-8" in details


async def test_data_nested_as_deep_as_protobuf_allows_is_accepted(server: RunningServer) -> None:
    # The limit is protobuf's (100 message levels): record data in PutRecord may nest 33 objects deep, not 34.
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await _call(channel, "Unary", raw_put(33)) == [str(pb.RECORD_KIND_NOTE).encode()]
        with pytest.raises(aio.AioRpcError) as caught:
            await _call(channel, "Unary", raw_put(34))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_flood_of_bad_bodies_logs_one_warning_and_no_trace(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for _ in range(20):
            with pytest.raises(aio.AioRpcError):
                await _call(channel, "Unary", BAD_BODIES["random bytes"])
    noted = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in noted] == ["undecodable request refused with INVALID_ARGUMENT"]
    assert noted[0].levelno == logging.WARNING
    assert noted[0].method == "/test.Parse/Unary"  # type: ignore[attr-defined]
    assert not any(r.exc_info for r in caplog.records)
