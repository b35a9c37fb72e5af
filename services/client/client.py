"""``StewardClient``: an internal app's connection to the gateway (grpc.aio, TLS).

It sends the API key as ``authorization: Bearer <key>``, gives every call a deadline, puts an idempotency
key (a UUID4) on every PutRecord/PutRecords — the same key on each retry of that write, so a retry after a
lost answer returns the first result instead of storing twice — and retries only what
:func:`services.client.retry.is_retryable` allows, with capped full-jitter backoff inside an overall budget.
Its TLS files (CA, client certificate and key) are re-read when they change, so a renewed certificate is used
without restarting the app (:class:`services.chassis.tls_reload.ReloadingChannel`).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc import aio
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.tls_reload import CertificateFiles, ReloadingChannel
from services.client.retry import RetryPolicy, is_retryable

__all__ = ["StewardClient"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _path(path: str | Path | None) -> Path | None:
    return Path(path) if path is not None else None


class StewardClient:
    """Calls the vault through the gateway for one API key. Use as ``async with StewardClient(...) as c``."""

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        interceptors: Sequence[aio.ClientInterceptor] = (),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        reload_check_s: float = 5.0,
    ) -> None:
        """``target`` is the gateway's ``host:port``; ``ca_file`` the CA that signed its certificate (system roots
        when omitted); ``cert_file``/``key_file`` a client certificate when the gateway requires one;
        ``server_name`` overrides the name checked against the certificate; ``timeout_s`` is each attempt's
        deadline unless a call gives its own. The files are checked for changes at most every
        ``reload_check_s``; after a change the next call opens a new channel (calls on the old one finish)."""
        if (cert_file is None) != (key_file is None):
            raise ValueError("give both cert_file and key_file for a client certificate, or neither")
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        files = CertificateFiles(cert_file=_path(cert_file), key_file=_path(key_file), ca_file=_path(ca_file))
        self._reloading = ReloadingChannel(
            "steward_client",
            target,
            files,
            options=options,
            interceptors=interceptors,
            check_interval_s=reload_check_s,
        )
        self._stubs_of: aio.Channel | None = None
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),)
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng

    @property
    def channel(self) -> aio.Channel:
        """The channel to call on now: a new one once the TLS files changed."""
        channel = self._reloading.get()
        if channel is not self._stubs_of:
            self._stubs_of = channel
            self._vault = vault_pb2_grpc.VaultServiceStub(channel)
            self._vault_admin = vault_pb2_grpc.VaultAdminServiceStub(channel)
        return channel

    @property
    def vault(self) -> vault_pb2_grpc.VaultServiceStub:
        """The vault's record API on the current channel (``client.call(client.vault.GetRecord, ...)``)."""
        _ = self.channel
        return self._vault

    @property
    def vault_admin(self) -> vault_pb2_grpc.VaultAdminServiceStub:
        """The vault's tenant administration API on the current channel."""
        _ = self.channel
        return self._vault_admin

    async def __aenter__(self) -> StewardClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (calls in flight are cancelled) and wait for replaced ones to drain."""
        await self._reloading.close()

    async def call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Req,
        *,
        idempotent: bool,
        timeout_s: float | None = None,
    ) -> Resp:
        """Call a unary stub ``method`` (e.g. ``client.vault.DeleteRecord``) with the key, a deadline and retries.

        ``idempotent`` says whether repeating the call is harmless (reads; writes with an idempotency key):
        only then is a DEADLINE_EXCEEDED retried. The last error is raised when attempts or budget run out.
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry.budget_s
        attempt = 0
        while True:
            attempt += 1
            remaining = give_up_at - loop.time()
            try:
                return await method(
                    request, metadata=self.metadata, timeout=max(0.0, min(timeout_s or self.timeout_s, remaining))
                )
            except grpc.RpcError as err:
                if attempt >= self.retry.max_attempts or not is_retryable(err, idempotent):
                    raise
                delay = self.retry.delay_s(attempt, err, self._rng)
                if loop.time() + delay >= give_up_at:
                    raise
                await self._sleep(delay)

    async def put_record(
        self, record: pb.NewRecord, *, idempotency_key: str | None = None, timeout_s: float | None = None
    ) -> pb.Record:
        """Store one record; a fresh idempotency key unless one is given (keep it to reconcile a failed call)."""
        request = pb.PutRecordRequest(record=record, idempotency_key=idempotency_key or str(uuid.uuid4()))
        response = await self.call(self.vault.PutRecord, request, idempotent=True, timeout_s=timeout_s)
        return response.record

    async def put_records(
        self, records: Sequence[pb.NewRecord], *, idempotency_key: str | None = None, timeout_s: float | None = None
    ) -> list[pb.Record]:
        """Store up to 500 records all-or-nothing, with an idempotency key as :meth:`put_record`."""
        request = pb.PutRecordsRequest(records=records, idempotency_key=idempotency_key or str(uuid.uuid4()))
        response = await self.call(self.vault.PutRecords, request, idempotent=True, timeout_s=timeout_s)
        return list(response.records)

    async def get_record(self, record_id: str, *, timeout_s: float | None = None) -> pb.Record:
        """One record with its data."""
        request = pb.GetRecordRequest(record_id=record_id)
        response = await self.call(self.vault.GetRecord, request, idempotent=True, timeout_s=timeout_s)
        return response.record

    async def list_records(
        self,
        *,
        subject_id: str = "",
        kind: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListRecordsResponse:
        """One page of records (follow ``next_page_token`` until it is empty)."""
        request = pb.ListRecordsRequest(
            subject_id=subject_id,
            kind=kind,  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        return await self.call(self.vault.ListRecords, request, idempotent=True, timeout_s=timeout_s)
