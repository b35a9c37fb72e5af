"""The naive baseline the vault is measured against: the same PutRecord RPC, but each record is
encrypted by its own Transit ``encrypt`` call and inserted, with no DEKs, no cache, no audit, no outbox.

It is what a first implementation of "encrypt customer data with Vault" usually looks like, served
through the same gRPC stack on the same machine so the comparison isolates the encryption design.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from concurrent.futures import ThreadPoolExecutor

import hvac
from grpc import aio
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, Text, insert
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.db import make_engine

__all__ = ["start_naive_vault"]

_metadata = MetaData()
_records = Table(
    "naive_records",
    _metadata,
    Column("id", String(36), primary_key=True),
    Column("ciphertext", Text),
    Column("blob", LargeBinary, nullable=True),
)


class NaiveVault(vault_pb2_grpc.VaultServiceServicer):
    """PutRecord = one Transit encrypt + one insert."""

    def __init__(self, bao_url: str, token: str, db_url: str, workers: int = 16) -> None:
        self.engine = make_engine(db_url)
        _metadata.create_all(self.engine)
        self.client = hvac.Client(url=bao_url, token=token)
        self.client.secrets.transit.create_key(name="naive-baseline", key_type="aes256-gcm96")
        self.pool = ThreadPoolExecutor(workers)
        self.transit_calls = 0

    def _put(self, data: bytes) -> str:
        reply = self.client.secrets.transit.encrypt_data(
            name="naive-baseline", plaintext=base64.b64encode(data).decode()
        )
        self.transit_calls += 1
        record_id = str(uuid.uuid4())
        with self.engine.begin() as connection:
            connection.execute(insert(_records), [{"id": record_id, "ciphertext": reply["data"]["ciphertext"]}])
        return record_id

    async def PutRecord(self, request: pb.PutRecordRequest, context: aio.ServicerContext) -> pb.PutRecordResponse:
        data = request.record.data.SerializeToString(deterministic=True)
        record_id = await asyncio.get_running_loop().run_in_executor(self.pool, self._put, data)
        return pb.PutRecordResponse(record=pb.Record(id=record_id, kind=request.record.kind, version=1))


async def start_naive_vault(bao_url: str, token: str, db_url: str) -> tuple[aio.Server, int, NaiveVault]:
    """Serve the baseline (its database at ``db_url``) on a free port."""
    servicer = NaiveVault(bao_url, token, db_url)
    server = aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    vault_pb2_grpc.add_VaultServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, servicer
