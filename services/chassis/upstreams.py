"""Channels to the other Steward services a service calls (the gateway forwards to them; dsr resolves
subjects and shreds tenants through the vault): one long-lived channel per upstream, mTLS when a CA is set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grpc import aio
from pydantic import BaseModel, Field, model_validator

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.errors import Reason, Unavailable
from services.chassis.grpc_server import channel_options
from services.chassis.settings import GrpcSettings
from services.chassis.tls_reload import CertificateFiles, ReloadingChannel

__all__ = ["UpstreamSettings", "Upstreams"]


class UpstreamSettings(BaseModel):
    """Where one forwarded service listens and the client certificate the gateway shows it (mTLS)."""

    address: str = Field(default="", description="host:port of the service; empty = not deployed (UNAVAILABLE).")
    ca_file: Path | None = Field(default=None, description="CA that signed the service's certificate.")
    cert_file: Path | None = Field(default=None, description="The gateway's client certificate (name 'gateway').")
    key_file: Path | None = None
    server_name: str = Field(default="", description="TLS name to verify when it differs from the address host.")

    @property
    def tls(self) -> bool:
        """True when the channel to this service uses (m)TLS."""
        return self.ca_file is not None

    @model_validator(mode="after")
    def _client_cert_pair(self) -> UpstreamSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file (the gateway's client certificate) or neither")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("a client certificate needs ca_file to verify the service")
        return self


class Upstreams:
    """One long-lived channel per configured upstream (mTLS when a CA is configured).

    A TLS channel is rebuilt when its certificate, key or CA files change on disk (cert-manager renewals), the
    old one draining: see :class:`services.chassis.tls_reload.ReloadingChannel`.
    """

    def __init__(
        self,
        settings: Mapping[str, UpstreamSettings],
        grpc_settings: GrpcSettings,
        *,
        interceptors: Iterable[aio.ClientInterceptor] = (),
        clock: Clock = SYSTEM_CLOCK,
        reload_check_s: float = 1.0,
    ) -> None:
        self._settings = dict(settings)
        self._channels: dict[str, aio.Channel] = {}
        self._reloading: dict[str, ReloadingChannel] = {}
        base = channel_options(grpc_settings)
        client_interceptors = list(interceptors)
        for name, upstream in self._settings.items():
            if not upstream.address:
                continue
            # round_robin: with a headless Service (dns:///vault-headless:50051) every pod gets calls,
            # including pods the HPA adds; pick_first would pin all traffic to one of them.
            options: list[tuple[str, Any]] = [*base, ("grpc.lb_policy_name", "round_robin")]
            if upstream.server_name:
                options.append(("grpc.ssl_target_name_override", upstream.server_name))
            if upstream.tls:
                files = CertificateFiles(
                    cert_file=upstream.cert_file, key_file=upstream.key_file, ca_file=upstream.ca_file
                )
                self._reloading[name] = ReloadingChannel(
                    f"upstream_{name}",
                    upstream.address,
                    files,
                    options=options,
                    interceptors=client_interceptors,
                    clock=clock,
                    check_interval_s=reload_check_s,
                )
            else:
                channel = aio.insecure_channel(upstream.address, options=options, interceptors=client_interceptors)
                self._channels[name] = channel

    def channel(self, name: str) -> aio.Channel:
        """The channel to ``name`` now (a new one after its TLS files changed); UNAVAILABLE when not configured."""
        reloading = self._reloading.get(name)
        if reloading is not None:
            return reloading.get()
        channel = self._channels.get(name)
        if channel is None:
            raise Unavailable(
                f"the {name} service is not reachable through this gateway (no address configured)",
                reason=Reason.UPSTREAM_UNAVAILABLE,
            )
        return channel

    async def close(self) -> None:
        """Close every channel (and wait for replaced ones to drain)."""
        for channel in self._channels.values():
            await channel.close()
        for reloading in self._reloading.values():
            await reloading.close()
