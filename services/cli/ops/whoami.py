"""``steward whoami``: who the gateway takes the caller for."""

from __future__ import annotations

from steward.gateway.v1 import gateway_pb2

from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, fields_text, timestamp_text

__all__ = ["whoami"]


@operator_command(None, "whoami")
def whoami(run: Invocation) -> None:
    """Who the gateway takes you for: principal, roles or scopes, tenant, token expiry."""
    client = run.client
    me = client.call(client.admin.WhoAmI, gateway_pb2.WhoAmIRequest())
    run.emit(
        {"whoami": as_json(me)},
        fields_text(
            [
                ("principal", me.principal),
                ("kind", me.principal_kind),
                ("roles", " ".join(me.roles) or "-"),
                ("scopes", " ".join(me.scopes) or "-"),
                ("tenant", me.tenant_id or "-"),
                ("credential", me.credential_id),
                ("expires", timestamp_text(me, "credential_expires_at")),
            ]
        ),
    )
